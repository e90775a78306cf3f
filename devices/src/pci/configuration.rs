//! A PCI type-0 configuration header: what a function shows the driver in config space.
//!
//! [`PciConfiguration`] holds the 256-byte conventional config space as 64 dword registers,
//! each with a mask of the bits the driver may write. It implements the generic header
//! behaviour every function shares: identity registers (read-only), the command register,
//! 64-bit memory BARs with size probing, and the capability list. Device-specific capability
//! semantics (MSI-X control, virtio structures) stay with the device, which reads its
//! capability bytes back from here after a write.
//!
//! It deliberately does not model I/O BARs, 32-bit BARs, expansion ROMs, INTx or the PCIe
//! extended config space (offsets 0x100.. read as zero and ignore writes).
//!
//! ```
//! use devices::pci::configuration::{PciConfiguration, PciHeader};
//!
//! let mut config = PciConfiguration::new(&PciHeader {
//!     vendor_id: 0x1af4,
//!     device_id: 0x1042,
//!     revision: 1,
//!     class_code: 0x01_80_00,
//!     subsystem_vendor_id: 0x1af4,
//!     subsystem_id: 0x40,
//! });
//! config.add_memory_bar(0, 0x4000, 0xc000_0000).unwrap();
//! // Size probing as a driver does it: write all ones, read back the size mask.
//! config.write_register(4, 0, &[0xff; 4]);
//! assert_eq!(config.read_register(4) & !0xf, !(0x4000u32 - 1));
//! ```

use log::debug;

use crate::narrow::halves;

/// Number of dword registers in conventional config space.
pub const NUM_REGISTERS: usize = 64;
/// Size of conventional config space in bytes.
pub const CONFIG_SPACE_SIZE: usize = NUM_REGISTERS * 4;
/// Number of BAR slots in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Register (dword index) of vendor ID (low half) and device ID (high half).
pub const REG_ID: usize = 0;
/// Register of the command (low half) and status (high half) registers.
pub const REG_COMMAND_STATUS: usize = 1;
/// Register of revision ID (byte 0) and class code (bytes 1..=3).
pub const REG_CLASS_REVISION: usize = 2;
/// Register holding the header type (byte 2).
pub const REG_HEADER_TYPE: usize = 3;
/// Register of BAR 0; BAR *n* is at `REG_BAR0 + n`.
pub const REG_BAR0: usize = 4;
/// Register of subsystem vendor ID (low half) and subsystem ID (high half).
pub const REG_SUBSYSTEM: usize = 11;
/// Register holding the capabilities pointer (byte 0).
pub const REG_CAPABILITIES_POINTER: usize = 13;
/// Register of interrupt line (byte 0) and interrupt pin (byte 1).
pub const REG_INTERRUPT: usize = 15;

/// Command register bit: the function decodes its I/O BARs.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command register bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register bit: the function may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register bit: INTx assertion disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register bit: the capability list at the capabilities pointer is valid.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Memory BAR type bits: 64-bit address (bits 2:1 = 0b10).
const BAR_MEMORY_64BIT: u32 = 0b100;
/// Low bits of a memory BAR that are type flags, not address.
const BAR_FLAGS_MASK: u32 = 0xf;
/// First byte after the type-0 header: capabilities live from here on.
const FIRST_CAPABILITY_OFFSET: usize = 0x40;

/// The identity a function reports in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass, programming interface (`0x02_00_00` is Ethernet).
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// Errors building a configuration header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciConfigError {
    /// A BAR index is out of range or its slot (or the upper half's slot) is taken.
    #[error("BAR {index}: slot is out of range or already used")]
    BarSlot {
        /// Requested BAR index.
        index: usize,
    },
    /// A BAR size is not a power of two of at least 16 bytes.
    #[error("BAR {index}: size {size:#x} is not a power of two of at least 16 bytes")]
    BarSize {
        /// BAR index.
        index: usize,
        /// Requested size.
        size: u64,
    },
    /// A BAR address is not aligned to the BAR's size.
    #[error("BAR {index}: address {address:#x} is not aligned to its size {size:#x}")]
    BarAlignment {
        /// BAR index.
        index: usize,
        /// Requested address.
        address: u64,
        /// BAR size.
        size: u64,
    },
    /// The capability does not fit in the rest of config space, or is too short.
    #[error(
        "capability of {len} bytes does not fit in config space (next free offset {offset:#x})"
    )]
    CapabilitySpace {
        /// Capability length in bytes.
        len: usize,
        /// Where it would have gone.
        offset: usize,
    },
}

/// A memory BAR as the function currently decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (the lower slot of a 64-bit BAR).
    pub index: usize,
    /// Guest physical address the BAR is programmed to.
    pub address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// The driver moved a BAR: the VMM must route `[new_address, new_address + size)` to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub index: usize,
    /// Address the BAR was decoded at.
    pub old_address: u64,
    /// Address it is decoded at now.
    pub new_address: u64,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    size: u64,
    /// The address the VMM routes to this BAR; updated when a move is reported.
    applied_address: u64,
}

/// A type-0 configuration header with BARs and a capability list.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    registers: [u32; NUM_REGISTERS],
    writable: [u32; NUM_REGISTERS],
    bars: [Option<Bar>; NUM_BARS],
    /// Slots used as the upper half of a 64-bit BAR.
    upper_half: [bool; NUM_BARS],
    last_capability: Option<usize>,
    next_capability: usize,
}

impl PciConfiguration {
    /// A header for a single-function endpoint with the given identity, no BARs and no
    /// capabilities. Only the command register and the interrupt line are writable.
    pub fn new(header: &PciHeader) -> Self {
        let mut registers = [0u32; NUM_REGISTERS];
        let mut writable = [0u32; NUM_REGISTERS];
        registers[REG_ID] = u32::from(header.device_id) << 16 | u32::from(header.vendor_id);
        registers[REG_CLASS_REVISION] =
            (header.class_code & 0x00ff_ffff) << 8 | u32::from(header.revision);
        // Header type 0, single function: all zero.
        registers[REG_SUBSYSTEM] =
            u32::from(header.subsystem_id) << 16 | u32::from(header.subsystem_vendor_id);
        writable[REG_COMMAND_STATUS] = u32::from(
            COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE,
        );
        // The interrupt line is a scratch byte for the OS; the pin stays 0 (no INTx).
        writable[REG_INTERRUPT] = 0xff;
        PciConfiguration {
            registers,
            writable,
            bars: [None; NUM_BARS],
            upper_half: [false; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY_OFFSET,
        }
    }

    /// Reads dword register `reg` (0..64); registers beyond conventional space read as zero.
    pub fn read_register(&self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(0)
    }

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` inside dword register `reg`, keeping
    /// read-only bits. Returns the BARs this write moved (see [`PciConfiguration::take_bar_moves`]).
    /// Writes that cross the dword or land beyond conventional space are ignored.
    pub fn write_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarMove> {
        let Some(mask) = self.writable.get(reg).copied() else {
            return Vec::new();
        };
        let offset = match usize::try_from(offset) {
            Ok(offset) if !data.is_empty() && offset < 4 && data.len() <= 4 - offset => offset,
            _ => {
                debug!(
                    "pci config: {}-byte write at register {reg} offset {offset} ignored",
                    data.len()
                );
                return Vec::new();
            }
        };
        let mut bytes = self.registers[reg].to_le_bytes();
        bytes[offset..offset + data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(bytes);
        // Only bytes actually written may change.
        let mut written = 0u32;
        for byte in offset..offset + data.len() {
            written |= 0xff << (byte * 8);
        }
        let mask = mask & written;
        self.registers[reg] = (self.registers[reg] & !mask) | (value & mask);
        let touches_bar = (REG_BAR0..REG_BAR0 + NUM_BARS).contains(&reg);
        if touches_bar || reg == REG_COMMAND_STATUS {
            self.take_bar_moves()
        } else {
            Vec::new()
        }
    }

    /// Every register, for a snapshot.
    pub fn registers(&self) -> Vec<u32> {
        self.registers.to_vec()
    }

    /// Puts back the writable bits of saved `registers`, except the command register and the
    /// BARs: those must be written through the bus, which routes the BARs where they go (see
    /// [`Self::is_routing_register`]).
    pub fn restore_registers(&mut self, registers: &[u32]) {
        for (reg, &saved) in registers.iter().enumerate().take(NUM_REGISTERS) {
            if Self::is_routing_register(reg) {
                continue;
            }
            let mask = self.writable[reg];
            self.registers[reg] = (self.registers[reg] & !mask) | (saved & mask);
        }
    }

    /// Whether `reg` is the command register or a BAR: registers a restore writes through the
    /// bus so that it decodes the BARs where the guest had put them.
    pub fn is_routing_register(reg: usize) -> bool {
        reg == REG_COMMAND_STATUS || (REG_BAR0..REG_BAR0 + NUM_BARS).contains(&reg)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        // The low half of the command/status dword.
        let [low, high, _, _] = self.registers[REG_COMMAND_STATUS].to_le_bytes();
        u16::from_le_bytes([low, high])
    }

    /// Adds a 64-bit memory BAR in slots `index` and `index + 1`, initially programmed at
    /// `address` (firmware assignment, which Linux keeps). `size` must be a power of two of at
    /// least 16 bytes and `address` aligned to it.
    pub fn add_memory_bar(
        &mut self,
        index: usize,
        size: u64,
        address: u64,
    ) -> Result<(), PciConfigError> {
        if index + 1 >= NUM_BARS
            || self.bars[index].is_some()
            || self.bars[index + 1].is_some()
            || self.upper_half[index]
            || self.upper_half[index + 1]
        {
            return Err(PciConfigError::BarSlot { index });
        }
        if size < 16 || !size.is_power_of_two() {
            return Err(PciConfigError::BarSize { index, size });
        }
        if !address.is_multiple_of(size) {
            return Err(PciConfigError::BarAlignment {
                index,
                address,
                size,
            });
        }
        let (address_low, address_high) = halves(address);
        let (mask_low, mask_high) = halves(!(size - 1));
        self.registers[REG_BAR0 + index] = address_low | BAR_MEMORY_64BIT;
        self.registers[REG_BAR0 + index + 1] = address_high;
        self.writable[REG_BAR0 + index] = mask_low & !BAR_FLAGS_MASK;
        self.writable[REG_BAR0 + index + 1] = mask_high;
        self.bars[index] = Some(Bar {
            size,
            applied_address: address,
        });
        self.upper_half[index + 1] = true;
        Ok(())
    }

    /// The address BAR `index` is programmed to now, as the driver wrote it.
    fn programmed_address(&self, index: usize) -> u64 {
        let low = self.registers[REG_BAR0 + index] & !BAR_FLAGS_MASK;
        let high = self.registers[REG_BAR0 + index + 1];
        u64::from(high) << 32 | u64::from(low)
    }

    /// Whether the BAR holds the all-ones sizing pattern in either half (a driver is probing
    /// its size, not placing it).
    fn is_probing(&self, index: usize, size: u64) -> bool {
        let (mask_low, mask_high) = halves(!(size - 1));
        let low = self.registers[REG_BAR0 + index] & !BAR_FLAGS_MASK;
        let high = self.registers[REG_BAR0 + index + 1];
        low == mask_low & !BAR_FLAGS_MASK || high == mask_high && high != 0
    }

    /// BARs whose programmed address differs from where the VMM routes them, while memory
    /// decoding is enabled and no sizing probe is in progress. Each move is reported once.
    ///
    /// Linux disables memory decoding while it sizes or rewrites a 64-bit BAR, so the
    /// half-written intermediate addresses are never reported.
    pub fn take_bar_moves(&mut self) -> Vec<BarMove> {
        if self.command() & COMMAND_MEMORY_SPACE == 0 {
            return Vec::new();
        }
        let mut moves = Vec::new();
        for index in 0..NUM_BARS {
            let Some(bar) = self.bars[index] else {
                continue;
            };
            if self.is_probing(index, bar.size) {
                continue;
            }
            let new_address = self.programmed_address(index);
            if new_address != bar.applied_address {
                moves.push(BarMove {
                    index,
                    old_address: bar.applied_address,
                    new_address,
                    size: bar.size,
                });
                self.bars[index] = Some(Bar {
                    applied_address: new_address,
                    ..bar
                });
            }
        }
        moves
    }

    /// The memory BARs at the addresses the VMM routes them to.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(index, bar)| {
                bar.map(|bar| BarInfo {
                    index,
                    address: bar.applied_address,
                    size: bar.size,
                })
            })
            .collect()
    }

    /// Appends a capability to the list and returns its offset in config space.
    ///
    /// `bytes[0]` is the capability ID; `bytes[1]` (the next pointer) is filled in here. The
    /// capability is read-only until [`PciConfiguration::set_writable`] opens bits of it.
    pub fn add_capability(&mut self, bytes: &[u8]) -> Result<usize, PciConfigError> {
        let offset = self.next_capability;
        let end = offset + bytes.len();
        let no_space = PciConfigError::CapabilitySpace {
            len: bytes.len(),
            offset,
        };
        if bytes.len() < 2 || end > CONFIG_SPACE_SIZE {
            return Err(no_space);
        }
        // The next pointers are one byte: config space is CONFIG_SPACE_SIZE (256) bytes.
        let Ok(pointer) = u8::try_from(offset) else {
            return Err(no_space);
        };
        for (i, byte) in bytes.iter().enumerate() {
            let value = if i == 1 { 0 } else { *byte };
            self.set_byte(offset + i, value);
        }
        match self.last_capability {
            Some(previous) => self.set_byte(previous + 1, pointer),
            None => self.set_byte(REG_CAPABILITIES_POINTER * 4, pointer),
        }
        self.registers[REG_COMMAND_STATUS] |= u32::from(STATUS_CAPABILITIES_LIST) << 16;
        self.last_capability = Some(offset);
        // Capabilities are dword aligned.
        self.next_capability = end.div_ceil(4) * 4;
        Ok(offset)
    }

    /// Lets the driver write the bits of `mask` in the dword register `reg` (for capability
    /// fields such as the MSI-X control bits).
    pub fn set_writable(&mut self, reg: usize, mask: u32) {
        if let Some(slot) = self.writable.get_mut(reg) {
            *slot |= mask;
        }
    }

    /// Reads the byte at `offset` in config space (zero beyond it).
    pub fn read_byte(&self, offset: usize) -> u8 {
        self.read_register(offset / 4).to_le_bytes()[offset % 4]
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let reg = &mut self.registers[offset / 4];
        *reg = (*reg & !(0xff << shift)) | (u32::from(value) << shift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision: 1,
            class_code: 0x02_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    fn write32(config: &mut PciConfiguration, reg: usize, value: u32) -> Vec<BarMove> {
        config.write_register(reg, 0, &value.to_le_bytes())
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_register(REG_ID), 0x1041_1af4);
        assert_eq!(c.read_register(REG_CLASS_REVISION), 0x0200_0001);
        assert_eq!(c.read_register(REG_SUBSYSTEM), 0x0040_1af4);
        write32(&mut c, REG_ID, 0);
        write32(&mut c, REG_CLASS_REVISION, 0);
        assert_eq!(c.read_register(REG_ID), 0x1041_1af4);
        assert_eq!(c.read_register(REG_CLASS_REVISION), 0x0200_0001);
        assert_eq!(
            c.read_register(200),
            0,
            "beyond conventional space reads zero"
        );
        write32(&mut c, 200, 1);
    }

    #[test]
    fn command_register_keeps_only_defined_bits() {
        let mut c = PciConfiguration::new(&header());
        c.write_register(REG_COMMAND_STATUS, 0, &[0xff, 0xff]);
        assert_eq!(
            c.command(),
            COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
        c.write_register(REG_COMMAND_STATUS, 2, &[0xff, 0xff]);
        assert_eq!(
            c.read_register(REG_COMMAND_STATUS) >> 16,
            0,
            "status is read-only"
        );
        // Byte write of the low byte leaves bit 10 alone.
        c.write_register(REG_COMMAND_STATUS, 0, &[0]);
        assert_eq!(c.command(), COMMAND_INTX_DISABLE);
        // Crossing the dword: ignored.
        c.write_register(REG_COMMAND_STATUS, 3, &[0xff, 0xff]);
        c.write_register(REG_COMMAND_STATUS, u64::MAX, &[0xff]);
        assert_eq!(c.command(), COMMAND_INTX_DISABLE);
    }

    #[test]
    fn bar_sizing_returns_the_size_mask_and_restoring_reports_no_move() {
        let mut c = PciConfiguration::new(&header());
        c.add_memory_bar(0, 0x8000, 0xc000_8000).unwrap();
        assert_eq!(c.read_register(REG_BAR0), 0xc000_8004, "64-bit memory BAR");
        assert_eq!(c.read_register(REG_BAR0 + 1), 0);
        write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY_SPACE));
        // Linux's sequence, here even with decoding on.
        assert!(write32(&mut c, REG_BAR0, 0xffff_ffff).is_empty());
        assert_eq!(c.read_register(REG_BAR0), 0xffff_8004);
        assert!(write32(&mut c, REG_BAR0, 0xc000_8000).is_empty());
        assert!(write32(&mut c, REG_BAR0 + 1, 0xffff_ffff).is_empty());
        assert_eq!(c.read_register(REG_BAR0 + 1), 0xffff_ffff);
        assert!(write32(&mut c, REG_BAR0 + 1, 0).is_empty());
        assert_eq!(
            c.bars(),
            vec![BarInfo {
                index: 0,
                address: 0xc000_8000,
                size: 0x8000
            }]
        );
    }

    #[test]
    fn reprogramming_is_reported_once_when_decoding_is_enabled() {
        let mut c = PciConfiguration::new(&header());
        c.add_memory_bar(2, 0x1000, 0xc000_0000).unwrap();
        // Decoding off: half-written addresses are not reported.
        assert!(write32(&mut c, REG_BAR0 + 2, 0x2000_0000).is_empty());
        assert!(write32(&mut c, REG_BAR0 + 3, 0x1).is_empty());
        let moves = write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(
            moves,
            vec![BarMove {
                index: 2,
                old_address: 0xc000_0000,
                new_address: 0x1_2000_0000,
                size: 0x1000
            }]
        );
        assert!(c.take_bar_moves().is_empty(), "reported once");
        assert_eq!(c.bars()[0].address, 0x1_2000_0000);
        // Unaligned low bits are masked off.
        let moves = write32(&mut c, REG_BAR0 + 2, 0x3000_0123);
        assert_eq!(moves[0].new_address, 0x1_3000_0000);
    }

    #[test]
    fn bar_registration_is_validated() {
        let mut c = PciConfiguration::new(&header());
        assert!(matches!(
            c.add_memory_bar(5, 0x1000, 0),
            Err(PciConfigError::BarSlot { index: 5 })
        ));
        assert!(matches!(
            c.add_memory_bar(0, 0x1800, 0),
            Err(PciConfigError::BarSize { .. })
        ));
        assert!(matches!(
            c.add_memory_bar(0, 0x1000, 0x800),
            Err(PciConfigError::BarAlignment { .. })
        ));
        c.add_memory_bar(0, 0x1000, 0).unwrap();
        assert!(
            c.add_memory_bar(1, 0x1000, 0).is_err(),
            "upper half is taken"
        );
        assert!(c.add_memory_bar(0, 0x1000, 0).is_err());
        c.add_memory_bar(2, 0x1000, 0).unwrap();
    }

    #[test]
    fn capabilities_chain_from_the_pointer_and_set_the_status_bit() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_register(REG_COMMAND_STATUS) >> 16, 0);
        let first = c.add_capability(&[0x09, 0xaa, 5, 1, 2]).unwrap();
        let second = c.add_capability(&[0x11, 0, 0, 0]).unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x48, "dword aligned after a 5-byte capability");
        assert_ne!(
            (c.read_register(REG_COMMAND_STATUS) >> 16) as u16 & STATUS_CAPABILITIES_LIST,
            0
        );
        // Walk the list as a driver does.
        let mut found = Vec::new();
        let mut at = c.read_byte(REG_CAPABILITIES_POINTER * 4) as usize;
        while at != 0 {
            found.push((at, c.read_byte(at)));
            at = c.read_byte(at + 1) as usize;
        }
        assert_eq!(found, vec![(0x40, 0x09), (0x48, 0x11)]);
        assert_eq!(c.read_byte(0x42), 5);
        // Capabilities are read-only unless opened.
        write32(&mut c, 0x48 / 4, 0xffff_ffff);
        assert_eq!(c.read_register(0x48 / 4), 0x11);
        c.set_writable(0x48 / 4, 0xc000_0000);
        write32(&mut c, 0x48 / 4, 0xffff_ffff);
        assert_eq!(c.read_register(0x48 / 4), 0xc000_0011);
        assert!(matches!(
            c.add_capability(&[0; 200]),
            Err(PciConfigError::CapabilitySpace { .. })
        ));
    }
}
