//! The Linux x86-64 boot protocol: zero page, identity page tables and entry GDT.
//!
//! See the kernel's `Documentation/arch/x86/boot.rst`. The kernel is entered at its 64-bit
//! entry in long mode, with the first 1 GiB identity-mapped, flat segments and `rsi` pointing
//! at `boot_params`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

use super::{gdt, LoadError};
use crate::layout::{self, MemoryMapEntry};
use crate::narrow::halves;

/// `HdrS`: the setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature in `boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader ID; 0xff tells the kernel no registered loader set it up.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Alignment of a relocatable kernel when the image does not say (16 MiB, as Linux's default).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x0100_0000;

const PAGE_PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

fn write_error(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> LoadError {
    move |err| LoadError::Write {
        what,
        detail: err.to_string(),
    }
}

/// Writes page tables, GDT/IDT and the zero page for the Linux 64-bit entry.
pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    header: Option<&setup_header>,
    cmdline_len: u32,
    initrd: Option<(u64, u64)>,
    acpi_rsdp: Option<u64>,
    map: &[MemoryMapEntry],
) -> Result<(), LoadError> {
    write_page_tables(mem)?;
    write_gdt(mem, &gdt::GDT_LONG_MODE)?;

    let mut params = boot_params::default();
    match header {
        // A bzImage: start from the kernel's own header, as the protocol asks.
        Some(hdr) => params.hdr = *hdr,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
            params.hdr.cmdline_size = cmdline_len;
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    (params.hdr.cmd_line_ptr, params.ext_cmd_line_ptr) = halves(layout::CMDLINE_START);
    if let Some((addr, size)) = initrd {
        (params.hdr.ramdisk_image, params.ext_ramdisk_image) = halves(addr);
        (params.hdr.ramdisk_size, params.ext_ramdisk_size) = halves(size);
    }
    // Boot protocol 2.14+: where the RSDP is, so the kernel need not scan for it.
    params.acpi_rsdp_addr = acpi_rsdp.unwrap_or(0);
    let entries = u8::try_from(map.len())
        .ok()
        .filter(|&entries| usize::from(entries) <= params.e820_table.len());
    let Some(entries) = entries else {
        return Err(LoadError::Write {
            what: "e820 map",
            detail: format!(
                "{} entries, the zero page holds {}",
                map.len(),
                params.e820_table.len()
            ),
        });
    };
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = entries;

    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(|err| LoadError::Write {
        what: "zero page",
        detail: err.to_string(),
    })
}

/// Identity-maps the first 1 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), LoadError> {
    let err = write_error("page tables");
    mem.write_obj(
        layout::PDPTE_START | PAGE_PRESENT_WRITABLE,
        GuestAddress(layout::PML4_START),
    )
    .map_err(&err)?;
    mem.write_obj(
        layout::PDE_START | PAGE_PRESENT_WRITABLE,
        GuestAddress(layout::PDPTE_START),
    )
    .map_err(&err)?;
    let mut directory = [0u8; 4096];
    for (index, slot) in directory.chunks_exact_mut(8).enumerate() {
        let entry = ((index as u64) << 21) | PAGE_SIZE_2M | PAGE_PRESENT_WRITABLE;
        slot.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&directory, GuestAddress(layout::PDE_START))
        .map_err(&err)
}

/// Writes the entry GDT and an empty IDT.
pub(super) fn write_gdt(mem: &GuestMemoryMmap, table: &[u64; 4]) -> Result<(), LoadError> {
    let err = write_error("GDT");
    for (index, entry) in table.iter().enumerate() {
        mem.write_obj(
            *entry,
            GuestAddress(layout::BOOT_GDT_START + 8 * index as u64),
        )
        .map_err(&err)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(&err)
}
