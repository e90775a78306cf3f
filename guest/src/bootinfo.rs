//! The boot information a VMM hands over, read into the guest's own memory.
//!
//! Two sources are understood: the PVH `hvm_start_info` structure (Xen's PVH boot ABI, version 1 or
//! later, which carries a memory map) and the Linux zero page (`struct boot_params`) of the 64-bit
//! boot protocol. Either way the result is a [`BootInfo`] that owns a copy of the command line and
//! of the memory map, so the VMM's structures may be overwritten afterwards. Everything read is
//! checked: magic values, entry counts, memory map entries that wrap around or overlap, structures
//! that must lie in memory the map describes, and a command line that must end with a NUL byte.
//!
//! "Described" rather than "RAM": firmware may keep these structures in its own reserved memory.
//! QEMU's qboot, for one, puts `hvm_start_info` in the reserved BIOS area and the command line and
//! memory map in an ACPI NVS entry, while VMMs that load the guest themselves (Firecracker, Cloud
//! Hypervisor) use RAM.
//!
//! Modules, initrds and ACPI tables are not read.

use core::fmt;

/// The most memory map entries accepted (the Linux zero page has room for 128).
pub const MAX_MEMORY_REGIONS: usize = 128;

/// The longest command line accepted, without its terminating NUL (the x86 Linux limit).
pub const MAX_CMDLINE_LEN: usize = 2048;

/// `hvm_start_info.magic`.
pub const PVH_START_INFO_MAGIC: u32 = 0x336e_c578;

/// Field offsets of PVH's `hvm_start_info`.
mod pvh {
    pub const MAGIC: u64 = 0;
    pub const VERSION: u64 = 4;
    pub const CMDLINE_PADDR: u64 = 24;
    pub const MEMMAP_PADDR: u64 = 40;
    pub const MEMMAP_ENTRIES: u64 = 48;
    /// Size of the structure (version 1).
    pub const START_INFO_SIZE: u64 = 56;
    /// `hvm_memmap_table_entry`: addr u64, size u64, type u32, reserved u32.
    pub const MEMMAP_ENTRY_SIZE: u64 = 24;
}

/// Field offsets of Linux's `struct boot_params` (the zero page).
mod zero_page {
    /// `struct boot_params` fills one page.
    pub const SIZE: u64 = 4096;
    /// `ext_cmd_line_ptr`: bits 63:32 of the command line address.
    pub const EXT_CMD_LINE_PTR: u64 = 0x0c8;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: u64 = 0x1e8;
    /// `hdr.cmd_line_ptr`: bits 31:0 of the command line address.
    pub const CMD_LINE_PTR: u64 = 0x228;
    /// `e820_table`: entries of addr u64, size u64, type u32, packed.
    pub const E820_TABLE: u64 = 0x2d0;
    pub const E820_ENTRY_SIZE: u64 = 20;
}

/// How the guest was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BootProtocol {
    /// 32-bit PVH entry, `ebx` = `hvm_start_info`.
    Pvh = 1,
    /// Linux 64-bit boot protocol, `rsi` = zero page.
    Linux64 = 2,
}

impl BootProtocol {
    /// The protocol for the number the entry code passes (the discriminants above).
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Pvh),
            2 => Some(Self::Linux64),
            _ => None,
        }
    }

    /// The name printed in the `boot protocol=` line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pvh => "pvh",
            Self::Linux64 => "linux64",
        }
    }
}

/// One memory map entry (E820 semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type; [`MemoryRegion::RAM`] is usable RAM.
    pub kind: u32,
}

impl MemoryRegion {
    /// E820 type 1: usable RAM.
    pub const RAM: u32 = 1;

    const EMPTY: Self = Self {
        addr: 0,
        size: 0,
        kind: 0,
    };

    /// One past the last byte. Parsing rejects regions for which this overflows.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }

    /// Whether the region is usable RAM.
    pub fn is_ram(&self) -> bool {
        self.kind == Self::RAM
    }

    /// Whether `[addr, addr + len)` lies inside this region.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr && addr.checked_add(len).is_some_and(|end| end <= self.end())
    }
}

/// Totals over the RAM entries of a memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySummary {
    /// Sum of the sizes of all RAM entries.
    pub ram_bytes: u64,
    /// Highest end address of a RAM entry.
    pub top: u64,
}

impl MemorySummary {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    /// RAM in KiB, rounded down.
    pub fn ram_kib(&self) -> u64 {
        self.ram_bytes / Self::KIB
    }

    /// RAM in MiB, rounded up.
    pub fn ram_mib(&self) -> u64 {
        self.ram_bytes.div_ceil(Self::MIB)
    }

    /// The top of RAM in MiB, rounded up.
    pub fn top_mib(&self) -> u64 {
        self.top.div_ceil(Self::MIB)
    }
}

/// What the guest knows from its VMM: protocol, command line and memory map, in its own memory.
#[derive(Clone, Debug)]
pub struct BootInfo {
    protocol: BootProtocol,
    cmdline: [u8; MAX_CMDLINE_LEN],
    cmdline_len: usize,
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: usize,
}

impl BootInfo {
    /// The protocol the guest was entered through.
    pub fn protocol(&self) -> BootProtocol {
        self.protocol
    }

    /// The command line (empty when the VMM passed none).
    pub fn cmdline(&self) -> &str {
        // Parsing checked that these bytes are UTF-8; an empty string is the harmless fallback.
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or_default()
    }

    /// The memory map, in the VMM's order.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// Sum and top of the RAM entries.
    pub fn memory_summary(&self) -> MemorySummary {
        self.memory_map()
            .iter()
            .filter(|region| region.is_ram())
            .fold(
                MemorySummary {
                    ram_bytes: 0,
                    top: 0,
                },
                |summary, region| MemorySummary {
                    ram_bytes: summary.ram_bytes + region.size,
                    top: summary.top.max(region.end()),
                },
            )
    }

    /// Whether `[addr, addr + len)` lies inside a single RAM entry.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        self.ram_region_containing(addr, len).is_some()
    }

    fn ram_region_containing(&self, addr: u64, len: u64) -> Option<&MemoryRegion> {
        self.memory_map()
            .iter()
            .find(|region| region.is_ram() && region.contains(addr, len))
    }

    /// The first memory map entry, of any type, that contains `[addr, addr + len)`.
    fn region_containing(&self, addr: u64, len: u64) -> Option<&MemoryRegion> {
        self.memory_map()
            .iter()
            .find(|region| region.contains(addr, len))
    }

    /// Rejects a VMM structure that lies outside every memory map entry (in a hole or in MMIO
    /// space).
    fn check_described(
        &self,
        what: &'static str,
        addr: u64,
        len: u64,
    ) -> Result<(), BootInfoError> {
        match self.region_containing(addr, len) {
            Some(_) => Ok(()),
            None => Err(BootInfoError::OutsideMemoryMap { what, addr, len }),
        }
    }

    fn empty(protocol: BootProtocol) -> Self {
        Self {
            protocol,
            cmdline: [0; MAX_CMDLINE_LEN],
            cmdline_len: 0,
            regions: [MemoryRegion::EMPTY; MAX_MEMORY_REGIONS],
            region_count: 0,
        }
    }

    /// Appends a region, rejecting entries that wrap around the address space.
    fn push_region(&mut self, region: MemoryRegion) -> Result<(), BootInfoError> {
        let index = self.region_count;
        if region.addr.checked_add(region.size).is_none() {
            return Err(BootInfoError::RegionWraps { index, region });
        }
        let slot = self
            .regions
            .get_mut(index)
            .ok_or(BootInfoError::BadRegionCount {
                count: index as u64 + 1,
            })?;
        *slot = region;
        self.region_count += 1;
        Ok(())
    }

    /// Rejects maps without RAM and maps in which two RAM entries overlap (RAM would be counted
    /// twice).
    fn check_memory_map(&self) -> Result<(), BootInfoError> {
        let map = self.memory_map();
        for (first, a) in map.iter().enumerate().filter(|(_, region)| region.is_ram()) {
            for (second, b) in map.iter().enumerate().skip(first + 1) {
                if b.is_ram() && a.addr < b.end() && b.addr < a.end() {
                    return Err(BootInfoError::RegionsOverlap { first, second });
                }
            }
        }
        if self.memory_summary().ram_bytes == 0 {
            return Err(BootInfoError::NoRam);
        }
        Ok(())
    }

    /// Copies the NUL-terminated command line at `addr` (0: none), which must lie in a memory map
    /// entry.
    fn read_cmdline(
        &mut self,
        memory: &impl PhysicalMemory,
        addr: u64,
    ) -> Result<(), BootInfoError> {
        if addr == 0 {
            return Ok(());
        }
        let region = self
            .region_containing(addr, 1)
            .ok_or(BootInfoError::OutsideMemoryMap {
                what: "command line",
                addr,
                len: 1,
            })?;
        // Never read past the entry the command line starts in.
        let readable = (region.end() - addr).min(MAX_CMDLINE_LEN as u64 + 1);
        for offset in 0..readable {
            let byte = read_bytes::<1>(memory, "command line", addr + offset)?[0];
            if byte == 0 {
                let len = offset as usize;
                core::str::from_utf8(&self.cmdline[..len])
                    .map_err(|_| BootInfoError::CmdlineNotUtf8)?;
                self.cmdline_len = len;
                return Ok(());
            }
            if let Some(slot) = self.cmdline.get_mut(offset as usize) {
                *slot = byte;
            }
        }
        Err(BootInfoError::CmdlineUnterminated { addr })
    }
}

/// Read access to guest-physical memory.
pub trait PhysicalMemory {
    /// Fills `buf` from guest-physical address `addr`, or fails if that range may not be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Unreadable>;
}

/// A guest-physical range that [`PhysicalMemory`] refused to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

/// Why the boot information was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// A structure lies at a null or unmapped address.
    Unreadable {
        /// Which structure.
        what: &'static str,
        /// Its guest-physical address.
        addr: u64,
    },
    /// `hvm_start_info.magic` is wrong.
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// PVH start info version 0 has no memory map.
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// Zero memory map entries, or more than [`MAX_MEMORY_REGIONS`].
    BadRegionCount {
        /// The count found.
        count: u64,
    },
    /// A memory map entry wraps around the 64-bit address space.
    RegionWraps {
        /// Its position in the map.
        index: usize,
        /// The entry.
        region: MemoryRegion,
    },
    /// Two RAM entries overlap.
    RegionsOverlap {
        /// Position of the earlier entry.
        first: usize,
        /// Position of the later entry.
        second: usize,
    },
    /// The memory map lists no RAM.
    NoRam,
    /// A structure lies outside every memory map entry.
    OutsideMemoryMap {
        /// Which structure.
        what: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// Its length (1 for the command line, whose length is not known yet).
        len: u64,
    },
    /// No NUL within [`MAX_CMDLINE_LEN`] bytes or before the end of its memory map entry.
    CmdlineUnterminated {
        /// Its guest-physical address.
        addr: u64,
    },
    /// The command line is not UTF-8.
    CmdlineNotUtf8,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { what, addr } => write!(f, "{what} at unreadable address {addr:#x}"),
            Self::BadMagic { found } => {
                write!(f, "PVH start info magic {found:#x}, expected {PVH_START_INFO_MAGIC:#x}")
            }
            Self::NoMemoryMap { version } => write!(f, "PVH start info version {version} has no memory map"),
            Self::BadRegionCount { count } => {
                write!(f, "{count} memory map entries, expected 1 to {MAX_MEMORY_REGIONS}")
            }
            Self::RegionWraps { index, region } => write!(
                f,
                "memory map entry {index} (addr={:#x} size={:#x}) wraps around",
                region.addr, region.size
            ),
            Self::RegionsOverlap { first, second } => {
                write!(f, "memory map RAM entries {first} and {second} overlap")
            }
            Self::NoRam => write!(f, "the memory map lists no RAM"),
            Self::OutsideMemoryMap { what, addr, len } => write!(
                f,
                "{what} [{addr:#x}, {:#x}) lies outside the memory map",
                addr.saturating_add(*len)
            ),
            Self::CmdlineUnterminated { addr } => write!(
                f,
                "command line at {addr:#x} has no NUL within {MAX_CMDLINE_LEN} bytes of its memory map entry"
            ),
            Self::CmdlineNotUtf8 => write!(f, "command line is not UTF-8"),
        }
    }
}

/// Reads the PVH `hvm_start_info` at `start_info` (the `ebx` of the PVH entry).
pub fn parse_pvh(memory: &impl PhysicalMemory, start_info: u64) -> Result<BootInfo, BootInfoError> {
    const WHAT: &str = "PVH start info";
    let magic = read_u32(memory, WHAT, start_info + pvh::MAGIC)?;
    if magic != PVH_START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic { found: magic });
    }
    let version = read_u32(memory, WHAT, start_info + pvh::VERSION)?;
    if version < 1 {
        return Err(BootInfoError::NoMemoryMap { version });
    }
    let cmdline = read_u64(memory, WHAT, start_info + pvh::CMDLINE_PADDR)?;
    let memmap = read_u64(memory, WHAT, start_info + pvh::MEMMAP_PADDR)?;
    let entries = read_u32(memory, WHAT, start_info + pvh::MEMMAP_ENTRIES)?;
    check_region_count(entries.into())?;

    let mut info = BootInfo::empty(BootProtocol::Pvh);
    for index in 0..u64::from(entries) {
        let entry = memmap + index * pvh::MEMMAP_ENTRY_SIZE;
        info.push_region(MemoryRegion {
            addr: read_u64(memory, "PVH memory map", entry)?,
            size: read_u64(memory, "PVH memory map", entry + 8)?,
            kind: read_u32(memory, "PVH memory map", entry + 16)?,
        })?;
    }
    info.check_memory_map()?;
    info.check_described(WHAT, start_info, pvh::START_INFO_SIZE)?;
    info.check_described(
        "PVH memory map",
        memmap,
        u64::from(entries) * pvh::MEMMAP_ENTRY_SIZE,
    )?;
    info.read_cmdline(memory, cmdline)?;
    Ok(info)
}

/// Reads the Linux zero page at `zero_page` (the `rsi` of the 64-bit entry).
pub fn parse_zero_page(
    memory: &impl PhysicalMemory,
    zero_page: u64,
) -> Result<BootInfo, BootInfoError> {
    const WHAT: &str = "zero page";
    let entries = read_bytes::<1>(memory, WHAT, zero_page + zero_page::E820_ENTRIES)?[0];
    check_region_count(entries.into())?;
    let cmdline_low = read_u32(memory, WHAT, zero_page + zero_page::CMD_LINE_PTR)?;
    let cmdline_high = read_u32(memory, WHAT, zero_page + zero_page::EXT_CMD_LINE_PTR)?;
    let cmdline = (u64::from(cmdline_high) << 32) | u64::from(cmdline_low);

    let mut info = BootInfo::empty(BootProtocol::Linux64);
    for index in 0..u64::from(entries) {
        let entry = zero_page + zero_page::E820_TABLE + index * zero_page::E820_ENTRY_SIZE;
        info.push_region(MemoryRegion {
            addr: read_u64(memory, WHAT, entry)?,
            size: read_u64(memory, WHAT, entry + 8)?,
            kind: read_u32(memory, WHAT, entry + 16)?,
        })?;
    }
    info.check_memory_map()?;
    info.check_described(WHAT, zero_page, zero_page::SIZE)?;
    info.read_cmdline(memory, cmdline)?;
    Ok(info)
}

fn check_region_count(count: u64) -> Result<(), BootInfoError> {
    if count == 0 || count > MAX_MEMORY_REGIONS as u64 {
        return Err(BootInfoError::BadRegionCount { count });
    }
    Ok(())
}

fn read_bytes<const N: usize>(
    memory: &impl PhysicalMemory,
    what: &'static str,
    addr: u64,
) -> Result<[u8; N], BootInfoError> {
    let mut bytes = [0; N];
    memory
        .read(addr, &mut bytes)
        .map_err(|Unreadable| BootInfoError::Unreadable { what, addr })?;
    Ok(bytes)
}

fn read_u32(
    memory: &impl PhysicalMemory,
    what: &'static str,
    addr: u64,
) -> Result<u32, BootInfoError> {
    read_bytes(memory, what, addr).map(u32::from_le_bytes)
}

fn read_u64(
    memory: &impl PhysicalMemory,
    what: &'static str,
    addr: u64,
) -> Result<u64, BootInfoError> {
    read_bytes(memory, what, addr).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Guest memory from 0 up to `bytes.len()`; address 0 and anything above are unreadable.
    struct FakeMemory {
        bytes: Vec<u8>,
    }

    impl FakeMemory {
        fn new(size: usize) -> Self {
            Self {
                bytes: vec![0; size],
            }
        }

        fn put(&mut self, addr: u64, data: &[u8]) {
            self.bytes[addr as usize..addr as usize + data.len()].copy_from_slice(data);
        }

        fn put_u32(&mut self, addr: u64, value: u32) {
            self.put(addr, &value.to_le_bytes());
        }

        fn put_u64(&mut self, addr: u64, value: u64) {
            self.put(addr, &value.to_le_bytes());
        }
    }

    impl PhysicalMemory for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
            let start = usize::try_from(addr).map_err(|_| Unreadable)?;
            let end = start.checked_add(buf.len()).ok_or(Unreadable)?;
            if start == 0 || end > self.bytes.len() {
                return Err(Unreadable);
            }
            buf.copy_from_slice(&self.bytes[start..end]);
            Ok(())
        }
    }

    /// The map QEMU and Firecracker give a 128 MiB guest: low RAM, the BIOS hole, RAM from 1 MiB.
    const QEMU_128M: [(u64, u64, u32); 3] =
        [(0, 0x9fc00, 1), (0x9fc00, 0x400, 2), (MIB, 127 * MIB, 1)];

    const START_INFO: u64 = 0x6000;
    const MEMMAP: u64 = 0x6100;
    const CMDLINE: u64 = 0x20000;

    fn pvh_memory(regions: &[(u64, u64, u32)], cmdline: &[u8]) -> FakeMemory {
        let mut memory = FakeMemory::new(0x10_0000);
        memory.put_u32(START_INFO, PVH_START_INFO_MAGIC);
        memory.put_u32(START_INFO + 4, 1);
        memory.put_u64(START_INFO + 24, CMDLINE);
        memory.put_u64(START_INFO + 40, MEMMAP);
        memory.put_u32(START_INFO + 48, regions.len() as u32);
        for (index, (addr, size, kind)) in regions.iter().enumerate() {
            let entry = MEMMAP + 24 * index as u64;
            memory.put_u64(entry, *addr);
            memory.put_u64(entry + 8, *size);
            memory.put_u32(entry + 16, *kind);
        }
        memory.put(CMDLINE, cmdline);
        memory
    }

    const ZERO_PAGE: u64 = 0x7000;

    fn zero_page_memory(
        regions: &[(u64, u64, u32)],
        cmdline_addr: u64,
        cmdline: &[u8],
    ) -> FakeMemory {
        let mut memory = FakeMemory::new(0x10_0000);
        memory.put(ZERO_PAGE + 0x1e8, &[regions.len() as u8]);
        memory.put_u32(ZERO_PAGE + 0x228, cmdline_addr as u32);
        memory.put_u32(ZERO_PAGE + 0x0c8, (cmdline_addr >> 32) as u32);
        for (index, (addr, size, kind)) in regions.iter().enumerate() {
            let entry = ZERO_PAGE + 0x2d0 + 20 * index as u64;
            memory.put_u64(entry, *addr);
            memory.put_u64(entry + 8, *size);
            memory.put_u32(entry + 16, *kind);
        }
        if cmdline_addr != 0 {
            memory.put(cmdline_addr, cmdline);
        }
        memory
    }

    #[test]
    fn pvh_start_info_is_read() {
        let memory = pvh_memory(&QEMU_128M, b"keel.cpus=2 console=ttyS0\0");
        let info = parse_pvh(&memory, START_INFO).unwrap();
        assert_eq!(info.protocol(), BootProtocol::Pvh);
        assert_eq!(info.cmdline(), "keel.cpus=2 console=ttyS0");
        assert_eq!(info.memory_map().len(), 3);
        assert_eq!(info.memory_map()[1].kind, 2);
        let summary = info.memory_summary();
        assert_eq!(summary.ram_kib(), 639 + 127 * 1024);
        assert_eq!(summary.ram_mib(), 128);
        assert_eq!(summary.top_mib(), 128);
        assert!(info.is_ram(0x10000, 0x1000));
        assert!(!info.is_ram(0x9fc00, 1));
        assert!(!info.is_ram(128 * MIB - 1, 2));
    }

    #[test]
    fn zero_page_is_read_with_a_high_command_line_address() {
        let memory = zero_page_memory(&QEMU_128M, 0x20000, b"keel.echo\0");
        let info = parse_zero_page(&memory, ZERO_PAGE).unwrap();
        assert_eq!(info.protocol(), BootProtocol::Linux64);
        assert_eq!(info.cmdline(), "keel.echo");
        assert_eq!(info.memory_summary().top_mib(), 128);

        // ext_cmd_line_ptr supplies bits 63:32: 4 GiB + 0x20000 is outside this map.
        let mut memory = zero_page_memory(&QEMU_128M, 0x20000, b"keel.echo\0");
        memory.put_u32(ZERO_PAGE + 0x0c8, 1);
        assert_eq!(
            parse_zero_page(&memory, ZERO_PAGE).unwrap_err(),
            BootInfoError::OutsideMemoryMap {
                what: "command line",
                addr: (1 << 32) + 0x20000,
                len: 1
            }
        );
    }

    #[test]
    fn missing_command_line_is_empty() {
        let memory = zero_page_memory(&QEMU_128M, 0, b"");
        assert_eq!(parse_zero_page(&memory, ZERO_PAGE).unwrap().cmdline(), "");
    }

    #[test]
    fn sizes_round_as_documented() {
        let summary = MemorySummary {
            ram_bytes: 3 * MIB + 1536,
            top: 5 * MIB + 1,
        };
        assert_eq!(summary.ram_kib(), 3 * 1024 + 1);
        assert_eq!(summary.ram_mib(), 4);
        assert_eq!(summary.top_mib(), 6);
    }

    #[test]
    fn nonsense_is_rejected() {
        let good = || pvh_memory(&QEMU_128M, b"ok\0");

        let mut memory = good();
        memory.put_u32(START_INFO, 0x1234);
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::BadMagic { found: 0x1234 }
        );

        let mut memory = good();
        memory.put_u32(START_INFO + 4, 0);
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::NoMemoryMap { version: 0 }
        );

        for count in [0, 129, u32::MAX] {
            let mut memory = good();
            memory.put_u32(START_INFO + 48, count);
            assert_eq!(
                parse_pvh(&memory, START_INFO).unwrap_err(),
                BootInfoError::BadRegionCount {
                    count: count.into()
                }
            );
        }

        let mut memory = good();
        memory.put_u64(START_INFO + 40, 0x7fff_fff0);
        assert!(matches!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::Unreadable {
                what: "PVH memory map",
                ..
            }
        ));

        assert!(matches!(
            parse_pvh(&good(), 0).unwrap_err(),
            BootInfoError::Unreadable {
                what: "PVH start info",
                addr: 0
            }
        ));
    }

    #[test]
    fn bad_memory_maps_are_rejected() {
        let memory = pvh_memory(&[(0, 0x9fc00, 1), (u64::MAX - 10, 100, 2)], b"\0");
        assert!(matches!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::RegionWraps { index: 1, .. }
        ));

        let memory = pvh_memory(
            &[(0, 0x9fc00, 1), (MIB, 64 * MIB, 1), (32 * MIB, 64 * MIB, 1)],
            b"\0",
        );
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::RegionsOverlap {
                first: 1,
                second: 2
            }
        );

        // A reserved entry may overlap RAM: only RAM is summed.
        let memory = pvh_memory(&[(0, 64 * MIB, 1), (0xf0000, 0x10000, 2)], b"\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO)
                .unwrap()
                .memory_summary()
                .ram_mib(),
            64
        );

        let memory = pvh_memory(&[(0, 64 * MIB, 2)], b"\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::NoRam
        );
    }

    #[test]
    fn structures_must_lie_in_the_memory_map() {
        // RAM starts above the start info and the memory map.
        let memory = pvh_memory(&[(0x8000, 64 * MIB, 1)], b"\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::OutsideMemoryMap {
                what: "PVH start info",
                addr: START_INFO,
                len: 56
            }
        );
        let memory = pvh_memory(&[(0x6000, 0x100, 2), (0x8000, 64 * MIB, 1)], b"\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::OutsideMemoryMap {
                what: "PVH memory map",
                addr: MEMMAP,
                len: 48
            }
        );
        let memory = zero_page_memory(&[(0x8000, 64 * MIB, 1)], 0, b"");
        assert_eq!(
            parse_zero_page(&memory, ZERO_PAGE).unwrap_err(),
            BootInfoError::OutsideMemoryMap {
                what: "zero page",
                addr: ZERO_PAGE,
                len: 4096
            }
        );
    }

    #[test]
    fn command_line_must_be_described_terminated_and_utf8() {
        // In a hole of the map (the VGA window here).
        let mut memory = pvh_memory(&[(0, 0x9fc00, 1), (0x9fc00, 0x400, 2)], b"\0");
        memory.put_u64(START_INFO + 24, 0xa0000);
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::OutsideMemoryMap {
                what: "command line",
                addr: 0xa0000,
                len: 1
            }
        );

        // Firmware-reserved memory is fine: qboot keeps the command line in an ACPI NVS entry.
        let mut memory = pvh_memory(&[(0, 0x9fc00, 1), (0x9fc00, 0x20400, 4)], b"\0");
        memory.put_u64(START_INFO + 24, 0xa0000);
        memory.put(0xa0000, b"keel.echo\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap().cmdline(),
            "keel.echo"
        );

        let long = vec![b'x'; MAX_CMDLINE_LEN + 1];
        let memory = pvh_memory(&QEMU_128M, &long);
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::CmdlineUnterminated { addr: CMDLINE }
        );

        let mut longest = vec![b'y'; MAX_CMDLINE_LEN];
        longest.push(0);
        let memory = pvh_memory(&QEMU_128M, &longest);
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap().cmdline().len(),
            MAX_CMDLINE_LEN
        );

        // The RAM entry ends before the NUL would come.
        let memory = pvh_memory(&[(0, CMDLINE + 4, 1)], b"abcdef\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::CmdlineUnterminated { addr: CMDLINE }
        );

        let memory = pvh_memory(&QEMU_128M, b"\xff\xfe\0");
        assert_eq!(
            parse_pvh(&memory, START_INFO).unwrap_err(),
            BootInfoError::CmdlineNotUtf8
        );
    }
}
