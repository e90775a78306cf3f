//! Loading stock Debian cloud kernels (bzImage and the vmlinux inside it) into guest memory and
//! checking every boot structure Keel writes. No KVM needed: booting these kernels needs
//! hardware-style KVM, which the nested lane provides; this checks the loading half anywhere.
//!
//! Kernels come from `scripts/fetch-debian-kernel.sh`. The directories are taken from
//! `KEEL_DEBIAN_KERNELS` (colon-separated) or `~/.cache/keel/debian-*`. Without any, the tests
//! print `KEEL-DEBIAN-SKIP` and return; `.ci/run` fetches the kernels and sets
//! `KEEL_DEBIAN_KERNELS`, which makes missing kernels a failure.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use devices::GuestMemoryMmap;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::boot::{self, EntryProtocol, KernelFormat, LoadError};
use vmm_core::layout;
use vmm_core::{BootProtocol, MemSize, VmConfig};

fn kernel_dirs() -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os("KEEL_DEBIAN_KERNELS") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => {
            let cache = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/keel");
            let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with("debian-"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            found
        }
    };
    let usable: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| d.join("vmlinuz").is_file() && d.join("vmlinux").is_file())
        .collect();
    if usable.is_empty() {
        let reason = "no Debian kernel found (run scripts/fetch-debian-kernel.sh)";
        if std::env::var_os("KEEL_DEBIAN_KERNELS").is_some() {
            panic!("KEEL_DEBIAN_KERNELS is set but {reason}");
        }
        eprintln!("KEEL-DEBIAN-SKIP: {reason}");
    }
    usable
}

fn initrd(bytes: usize) -> PathBuf {
    let path = std::env::temp_dir().join(format!("keel-initrd-{}-{bytes}", std::process::id()));
    let mut data = vec![0u8; bytes];
    let mut state = 0x1234_5678_9abc_def0u64;
    for byte in data.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    File::create(&path).unwrap().write_all(&data).unwrap();
    path
}

fn config(kernel: &Path, protocol: BootProtocol, memory_mib: u64, initrd_path: &Path) -> VmConfig {
    let mut config = VmConfig::new(kernel);
    config.memory = MemSize::mib(memory_mib);
    config.boot_protocol = protocol;
    config.initrd = Some(initrd_path.to_path_buf());
    config.cmdline = "console=ttyS0 reboot=k panic=-1 keel.test=loading".into();
    config.validate().unwrap();
    config
}

fn memory(config: &VmConfig) -> GuestMemoryMmap {
    vmm_core::memory::create_guest_memory(config.memory.as_bytes()).unwrap()
}

fn read_cstring(mem: &GuestMemoryMmap, addr: u64) -> String {
    let mut bytes = Vec::new();
    for offset in 0..4096 {
        let byte: u8 = mem.read_obj(GuestAddress(addr + offset)).unwrap();
        if byte == 0 {
            break;
        }
        bytes.push(byte);
    }
    String::from_utf8(bytes).unwrap()
}

fn assert_initrd_in_memory(mem: &GuestMemoryMmap, path: &Path, addr: u64, size: u64) {
    let mut expected = Vec::new();
    File::open(path)
        .unwrap()
        .read_to_end(&mut expected)
        .unwrap();
    assert_eq!(size, expected.len() as u64);
    let mut actual = vec![0u8; expected.len()];
    mem.read_slice(&mut actual, GuestAddress(addr)).unwrap();
    assert!(actual == expected, "initrd bytes differ in guest memory");
}

/// Independent parse of the ELF header and PT_NOTE segments: (e_entry, PVH entry).
fn elf_entries(path: &Path) -> (u64, Option<u64>) {
    let mut file = File::open(path).unwrap();
    let mut ehdr = [0u8; 64];
    file.read_exact(&mut ehdr).unwrap();
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54) as u64;
    let phnum = u16_at(&ehdr, 56) as u64;
    let mut pvh = None;
    for i in 0..phnum {
        let mut phdr = [0u8; 56];
        file.seek(SeekFrom::Start(phoff + i * phentsize)).unwrap();
        file.read_exact(&mut phdr).unwrap();
        if u32_at(&phdr, 0) != 4 {
            continue; // not PT_NOTE
        }
        let mut notes = vec![0u8; u64_at(&phdr, 32) as usize];
        file.seek(SeekFrom::Start(u64_at(&phdr, 8))).unwrap();
        file.read_exact(&mut notes).unwrap();
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = u32_at(&notes, at) as usize;
            let descsz = u32_at(&notes, at + 4) as usize;
            let kind = u32_at(&notes, at + 8);
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            if kind == 18 && &notes[name_at..name_at + 3] == b"Xen" {
                pvh = Some(if descsz >= 8 {
                    u64_at(&notes, desc_at)
                } else {
                    u64::from(u32_at(&notes, desc_at))
                });
            }
            at = desc_at + descsz.div_ceil(4) * 4;
        }
    }
    (entry, pvh)
}

fn check_e820(params: &boot_params, memory_bytes: u64) {
    let expected = layout::memory_map(memory_bytes);
    assert_eq!(params.e820_entries as usize, expected.len());
    for (entry, want) in params.e820_table.iter().zip(&expected) {
        let (addr, size, kind) = (entry.addr, entry.size, entry.r#type);
        assert_eq!((addr, size, kind), (want.addr, want.size, want.kind));
    }
    let top = expected
        .iter()
        .filter(|e| e.kind == layout::E820_RAM)
        .map(|e| e.addr + e.size)
        .max()
        .unwrap();
    assert_eq!(top, memory_bytes, "RAM ends at the configured size");
}

#[test]
fn bzimage_zero_page_e820_cmdline_and_initrd_are_right() {
    for dir in kernel_dirs() {
        let kernel = dir.join("vmlinuz");
        let initrd_path = initrd(3 << 20);
        let config = config(&kernel, BootProtocol::Auto, 512, &initrd_path);
        let mem = memory(&config);
        let layout_ = boot::load(&mem, &config, Some(layout::ACPI_START)).unwrap();
        let header = boot::read_setup_header(&kernel).unwrap();

        assert_eq!(layout_.format, KernelFormat::BzImage);
        assert_eq!(layout_.entry.protocol, EntryProtocol::Linux64, "{dir:?}");
        assert_eq!(layout_.kernel_start, u64::from(header.code32_start));
        assert_eq!(layout_.entry.rip, layout_.kernel_start + 0x200);
        assert_eq!(layout_.entry.rsi, layout::ZERO_PAGE_START);
        assert!(layout_.kernel_end >= layout_.kernel_start + u64::from(header.init_size));

        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!(
            { hdr.version },
            { header.version },
            "kernel's header copied"
        );
        assert!(
            { hdr.version } >= 0x20c,
            "64-bit entry needs protocol 2.12+"
        );
        assert_ne!({ hdr.loadflags } & 1, 0, "LOADED_HIGH");
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ params.ext_cmd_line_ptr }, 0);
        assert_eq!({ params.acpi_rsdp_addr }, layout::ACPI_START);
        assert_eq!(read_cstring(&mem, layout::CMDLINE_START), config.cmdline);
        check_e820(&params, 512 << 20);

        let (initrd_addr, initrd_size) = layout_.initrd.unwrap();
        assert_eq!(u64::from(hdr.ramdisk_image), initrd_addr);
        assert_eq!(u64::from(hdr.ramdisk_size), initrd_size);
        assert_eq!(initrd_addr % 4096, 0);
        assert!(initrd_addr >= layout_.kernel_end);
        assert!(initrd_addr + initrd_size <= u64::from(hdr.initrd_addr_max) + 1);
        assert_initrd_in_memory(&mem, &initrd_path, initrd_addr, initrd_size);

        // The protected-mode kernel is in memory at code32_start.
        let setup_sects = if header.setup_sects == 0 {
            4
        } else {
            header.setup_sects
        };
        let mut expected = [0u8; 4096];
        let mut file = File::open(&kernel).unwrap();
        file.seek(SeekFrom::Start((u64::from(setup_sects) + 1) * 512))
            .unwrap();
        file.read_exact(&mut expected).unwrap();
        let mut actual = [0u8; 4096];
        mem.read_slice(&mut actual, GuestAddress(layout_.kernel_start))
            .unwrap();
        assert!(actual == expected, "kernel bytes at code32_start");
    }
}

#[test]
fn vmlinux_boots_through_pvh_with_start_info_memmap_and_module() {
    for dir in kernel_dirs() {
        let kernel = dir.join("vmlinux");
        let (_, pvh_entry) = elf_entries(&kernel);
        let pvh_entry = pvh_entry.expect("Debian kernels carry the PVH note");
        let initrd_path = initrd(1 << 20);
        let config = config(&kernel, BootProtocol::Auto, 256, &initrd_path);
        let mem = memory(&config);
        let layout_ = boot::load(&mem, &config, Some(layout::ACPI_START)).unwrap();
        assert_eq!(layout_.format, KernelFormat::Elf);
        assert_eq!(layout_.entry.protocol, EntryProtocol::Pvh);
        assert_eq!(layout_.entry.rip, pvh_entry);
        assert_eq!(layout_.entry.rbx, layout::PVH_INFO_START);

        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.rsdp_paddr, layout::ACPI_START);
        assert_eq!(read_cstring(&mem, info.cmdline_paddr), config.cmdline);
        let expected = layout::memory_map(256 << 20);
        assert_eq!(info.memmap_entries as usize, expected.len());
        for (i, want) in expected.iter().enumerate() {
            let entry: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(info.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!(
                (entry.addr, entry.size, entry.type_),
                (want.addr, want.size, want.kind)
            );
        }
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(Some((module.paddr, module.size)), layout_.initrd);
        assert!(module.paddr >= layout_.kernel_end);
        assert_initrd_in_memory(&mem, &initrd_path, module.paddr, module.size);
    }
}

#[test]
fn vmlinux_through_the_linux_64_bit_protocol_enters_at_e_entry() {
    for dir in kernel_dirs() {
        let kernel = dir.join("vmlinux");
        let (e_entry, _) = elf_entries(&kernel);
        let initrd_path = initrd(1 << 20);
        let config = config(&kernel, BootProtocol::Linux64, 256, &initrd_path);
        let mem = memory(&config);
        let layout_ = boot::load(&mem, &config, None).unwrap();
        assert_eq!(layout_.entry.protocol, EntryProtocol::Linux64);
        assert_eq!(layout_.entry.rip, e_entry);
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        check_e820(&params, 256 << 20);
        let (addr, size) = layout_.initrd.unwrap();
        assert_eq!(
            (
                u64::from(params.hdr.ramdisk_image),
                u64::from(params.hdr.ramdisk_size)
            ),
            (addr, size)
        );
    }
}

#[test]
fn an_initrd_too_large_for_guest_memory_fails_before_boot() {
    for dir in kernel_dirs() {
        let kernel = dir.join("vmlinuz");
        let initrd_path = initrd(100 << 20);
        let config = config(&kernel, BootProtocol::Auto, 128, &initrd_path);
        let mem = memory(&config);
        let err = boot::load(&mem, &config, None).unwrap_err();
        assert!(matches!(err, LoadError::InitrdDoesNotFit { .. }), "{err}");
        assert!(
            err.to_string().contains(&initrd_path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn a_truncated_kernel_image_fails_before_boot() {
    for dir in kernel_dirs() {
        let mut bytes = Vec::new();
        File::open(dir.join("vmlinux"))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes.truncate(bytes.len() / 2);
        let cut = std::env::temp_dir().join(format!("keel-cut-vmlinux-{}", std::process::id()));
        File::create(&cut).unwrap().write_all(&bytes).unwrap();
        let config = VmConfig::new(&cut);
        let mem = memory(&config);
        let err = boot::load(&mem, &config, None).unwrap_err();
        assert!(matches!(err, LoadError::Kernel { .. }), "{err}");
        std::fs::remove_file(&cut).unwrap();
    }
}
