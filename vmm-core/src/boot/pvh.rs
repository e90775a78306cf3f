//! The PVH boot protocol: `hvm_start_info`, its memory map and module list.
//!
//! See <https://xenbits.xen.org/docs/unstable/misc/pvh.html>. The kernel is entered at the
//! address of its `XEN_ELFNOTE_PHYS32_ENTRY` note in 32-bit protected mode, paging off, with
//! `ebx` pointing at `hvm_start_info`.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;
use devices::GuestMemoryMmap;

use super::{gdt, linux::write_gdt, LoadError};
use crate::layout::{self, MemoryMapEntry};

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 adds the memory map.
const START_INFO_VERSION: u32 = 1;

/// Writes `hvm_start_info` (with command line, ACPI RSDP, memory map and initrd module) and the
/// PVH GDT.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    acpi_rsdp: Option<u64>,
    map: &[MemoryMapEntry],
) -> Result<(), LoadError> {
    write_gdt(mem, &gdt::GDT_PVH)?;
    let entries = u32::try_from(map.len())
        .ok()
        .filter(|_| map.len() <= layout::MAX_E820_ENTRIES);
    let Some(memmap_entries) = entries else {
        return Err(LoadError::Write {
            what: "PVH memory map",
            detail: format!(
                "{} entries, at most {}",
                map.len(),
                layout::MAX_E820_ENTRIES
            ),
        });
    };
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: acpi_rsdp.unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            layout::PVH_MODLIST_START
        } else {
            0
        },
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: addr,
                size,
                ..Default::default()
            }],
            GuestAddress(layout::PVH_MODLIST_START),
        );
    }
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        })
        .collect();
    params.set_sections(&entries, GuestAddress(layout::PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|err| LoadError::Write {
        what: "PVH start info",
        detail: err.to_string(),
    })
}
