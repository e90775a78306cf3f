//! Loading a kernel, its initrd and command line into guest memory for one of the two x86-64
//! entry protocols.
//!
//! [`load`] works on a plain [`GuestMemoryMmap`] and needs no KVM, so the zero page, memory map
//! and initrd placement are testable (and tested against real Debian kernels) without a VM.
//! It returns an [`EntryState`]: what the boot vCPU's registers must hold.
//!
//! - Linux 64-bit protocol ([`linux`]): ELF vmlinux or bzImage; Keel writes identity page
//!   tables, a GDT and the zero page, and enters the kernel in long mode with `rsi` = zero page.
//! - PVH ([`pvh`]): ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note; entered in 32-bit protected
//!   mode with `ebx` = `hvm_start_info`.

pub mod gdt;
pub mod linux;
pub mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
#[cfg(any(test, feature = "testing"))]
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use devices::GuestMemoryMmap;

use crate::config::{BootProtocol, VmConfig, MAX_CMDLINE_LEN};
use crate::layout;

/// Highest address the initrd may end at when the kernel does not say (`initrd_addr_max`
/// default of the Linux boot protocol before version 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 4096;

/// Kernel image formats Keel loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable (Linux vmlinux or any ELF kernel).
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// The protocol a VM is entered through, once the kernel has been looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryProtocol {
    /// 64-bit entry with a zero page.
    Linux64,
    /// 32-bit PVH entry with `hvm_start_info`.
    Pvh,
}

/// Register state for the boot vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// Entry protocol (decides the CPU mode).
    pub protocol: EntryProtocol,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer (0 for PVH, which sets up its own).
    pub rsp: u64,
    /// `rsi`: the zero page for Linux64.
    pub rsi: u64,
    /// `rbx`: `hvm_start_info` for PVH.
    pub rbx: u64,
}

/// Where things were placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// Format of the kernel file.
    pub format: KernelFormat,
    /// First byte of the loaded kernel.
    pub kernel_start: u64,
    /// End of the memory the kernel claims (for a bzImage, including room to decompress).
    pub kernel_end: u64,
    /// Initrd address and size.
    pub initrd: Option<(u64, u64)>,
    /// Register state to enter with.
    pub entry: EntryState,
}

/// Errors from loading the kernel and initrd, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Io {
        /// "kernel" or "initrd".
        what: &'static str,
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The kernel is neither an ELF nor a bzImage.
    #[error("kernel {0} is neither an ELF image nor a bzImage (no ELF magic, no `HdrS` header)")]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("kernel {path} ({format:?}) cannot be loaded: {source}")]
    Kernel {
        /// File path.
        path: PathBuf,
        /// Detected format.
        format: KernelFormat,
        /// Cause.
        source: linux_loader::loader::Error,
    },
    /// PVH was requested for a kernel without the PVH note.
    #[error("kernel {0} has no PVH entry note, so it cannot boot with boot_protocol \"pvh\"")]
    NoPvhEntry(PathBuf),
    /// PVH was requested for a bzImage.
    #[error("kernel {0} is a bzImage; PVH needs an ELF kernel (use boot_protocol \"linux64\")")]
    PvhNeedsElf(PathBuf),
    /// The kernel needs more memory than the VM has.
    #[error("kernel {path} needs memory up to {needed:#x} but guest RAM below 3 GiB ends at {available:#x}")]
    KernelTooLarge {
        /// File path.
        path: PathBuf,
        /// End address the kernel needs.
        needed: u64,
        /// End of low RAM.
        available: u64,
    },
    /// The initrd does not fit between the kernel and the highest address it may use.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdDoesNotFit {
        /// File path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest end address allowed.
        limit: u64,
    },
    /// The command line was refused.
    #[error("kernel command line cannot be written: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing a boot structure failed.
    #[error("cannot write {what} to guest memory: {detail}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Cause.
        detail: String,
    },
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LoadError + 'a {
    move |source| LoadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the first bytes of `file` to tell an ELF from a bzImage.
fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, LoadError> {
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    while filled < head.len() {
        let n = file
            .read(&mut head[filled..])
            .map_err(io_error("kernel", path))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("kernel", path))?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(LoadError::UnknownFormat(path.to_path_buf()))
    }
}

/// End of guest RAM below the 32-bit device hole.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|region| {
            use vm_memory::GuestMemoryRegion;
            region.start_addr().0 + region.len()
        })
        .filter(|end| *end <= layout::MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

/// Loads the kernel, initrd and command line of `config` into `mem` and writes the boot
/// structures of the chosen protocol, pointing the guest at the ACPI RSDP when there is one.
/// `config` must have been validated.
pub fn load(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    acpi_rsdp: Option<u64>,
) -> Result<BootLayout, LoadError> {
    let path = config.kernel.as_path();
    let mut kernel = File::open(path).map_err(io_error("kernel", path))?;
    let format = detect_format(&mut kernel, path)?;
    if config.boot_protocol == BootProtocol::Pvh && format == KernelFormat::BzImage {
        return Err(LoadError::PvhNeedsElf(path.to_path_buf()));
    }
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, himem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut kernel, himem),
    }
    .map_err(|source| LoadError::Kernel {
        path: path.to_path_buf(),
        format,
        source,
    })?;

    let pvh_entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    let protocol = match (config.boot_protocol, format, pvh_entry) {
        (BootProtocol::Pvh, _, None) => return Err(LoadError::NoPvhEntry(path.to_path_buf())),
        (BootProtocol::Pvh, _, Some(_)) | (BootProtocol::Auto, KernelFormat::Elf, Some(_)) => {
            EntryProtocol::Pvh
        }
        _ => EntryProtocol::Linux64,
    };

    let header = loaded.setup_header;
    let kernel_start = loaded.kernel_load.0;
    // A bzImage decompresses in place and needs `init_size` bytes from its load address.
    let kernel_end = match header {
        Some(hdr) => loaded
            .kernel_end
            .max(kernel_start + u64::from(hdr.init_size)),
        None => loaded.kernel_end,
    };
    let low_end = low_ram_end(mem);
    if kernel_end > low_end {
        return Err(LoadError::KernelTooLarge {
            path: path.to_path_buf(),
            needed: kernel_end,
            available: low_end,
        });
    }

    let cmdline =
        Cmdline::try_from(&config.cmdline, MAX_CMDLINE_LEN).map_err(LoadError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(|err| LoadError::Write {
            what: "kernel command line",
            detail: err.to_string(),
        })?;

    let initrd = match &config.initrd {
        Some(initrd_path) => {
            let limit = match header {
                Some(hdr) if hdr.version >= 0x203 => u64::from(hdr.initrd_addr_max) + 1,
                Some(_) => DEFAULT_INITRD_ADDR_MAX + 1,
                // ELF kernels (vmlinux, PVH) take the initrd anywhere in 32-bit RAM.
                None => layout::MMIO_GAP_START,
            };
            Some(load_initrd(
                mem,
                initrd_path,
                kernel_end,
                low_end.min(limit),
            )?)
        }
        None => None,
    };

    let map = layout::memory_map(crate::memory::total_ram(mem));
    // With its NUL; the config caps the command line at MAX_CMDLINE_LEN bytes.
    let cmdline_len = u32::try_from(config.cmdline.len() + 1).map_err(|_| LoadError::Write {
        what: "kernel command line",
        detail: format!("{} bytes", config.cmdline.len()),
    })?;
    let entry = match protocol {
        EntryProtocol::Linux64 => {
            linux::write_boot_structures(
                mem,
                header.as_ref(),
                cmdline_len,
                initrd,
                acpi_rsdp,
                &map,
            )?;
            let rip = match format {
                // startup_64 sits 0x200 bytes into the protected-mode part of a bzImage.
                KernelFormat::BzImage => kernel_start + 0x200,
                KernelFormat::Elf => kernel_start,
            };
            EntryState {
                protocol,
                rip,
                rsp: layout::BOOT_STACK_POINTER,
                rsi: layout::ZERO_PAGE_START,
                rbx: 0,
            }
        }
        EntryProtocol::Pvh => {
            pvh::write_start_info(mem, initrd, acpi_rsdp, &map)?;
            EntryState {
                protocol,
                rip: pvh_entry.unwrap_or(kernel_start),
                rsp: 0,
                rsi: 0,
                rbx: layout::PVH_INFO_START,
            }
        }
    };
    Ok(BootLayout {
        format,
        kernel_start,
        kernel_end,
        initrd,
        entry,
    })
}

/// Places the initrd as high as possible below `limit`, page-aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), LoadError> {
    let mut file = File::open(path).map_err(io_error("initrd", path))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(io_error("initrd", path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("initrd", path))?;
    let kernel_end_aligned = kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let too_big = || LoadError::InitrdDoesNotFit {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if start < kernel_end_aligned {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(|err| LoadError::Write {
            what: "initrd",
            detail: err.to_string(),
        })?;
    Ok((start, size))
}

/// The bzImage setup header, for callers that want to inspect a kernel without loading it.
#[cfg(any(test, feature = "testing"))]
pub fn read_setup_header(path: &Path) -> Result<setup_header, LoadError> {
    use vm_memory::ByteValued;
    let mut file = File::open(path).map_err(io_error("kernel", path))?;
    if detect_format(&mut file, path)? != KernelFormat::BzImage {
        return Err(LoadError::UnknownFormat(path.to_path_buf()));
    }
    let mut header = setup_header::default();
    file.seek(SeekFrom::Start(0x1f1))
        .map_err(io_error("kernel", path))?;
    file.read_exact(header.as_mut_slice())
        .map_err(io_error("kernel", path))?;
    Ok(header)
}
