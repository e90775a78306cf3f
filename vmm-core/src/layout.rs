//! The x86-64 guest physical address map Keel builds.
//!
//! ```text
//! 0x0000_0500  GDT used at entry              0x0000_6000  PVH hvm_start_info, modlist, memmap
//! 0x0000_0520  IDT used at entry (empty)      0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  boot stack top                 0x0000_9000  PML4, PDPT (0xa000), PD (0xb000)
//! 0x0001_0000  reserved for guest AP startup  0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA (not RAM)                 0x000e_0000  ACPI tables (not RAM)
//! 0x0010_0000  kernel (1 MiB)
//! 0xc000_0000  32-bit device hole up to 4 GiB: PCI BARs 0xc000_0000, virtio-mmio 0xd000_0000,
//!              PCI ECAM 0xe000_0000 (1 MiB, ACPI-reserved), IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! above RAM    64-bit PCI BAR window (16 GiB, 1 GiB aligned)
//! 0x1_0000_0000  RAM above the hole, when the VM has more than 3 GiB
//! ```
//!
//! The page at 0x10000 is left untouched so guests (Keel's test guest, for one) can place their
//! real-mode AP trampoline there.

use vm_memory::GuestAddress;

/// GDT loaded at entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT loaded at entry (limit 0: the kernel installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Most memory-map entries Keel writes (PVH area and zero page both hold this many).
pub const MAX_E820_ENTRIES: usize = 128;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the Linux 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the Linux 64-bit entry: PML4.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (maps the first 1 GiB with 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Page left free for the guest's AP startup trampoline.
#[cfg(test)]
pub const AP_TRAMPOLINE_START: u64 = 0x10000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// ACPI tables (RSDP first), in the BIOS area Linux scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// End of the area for ACPI tables.
pub const ACPI_END: u64 = 0x100000;
/// Start of the Extended BIOS Data Area: RAM below it is usable, the rest of the first MiB is not.
pub const EBDA_START: u64 = 0x9fc00;
/// Where kernels are loaded and where "high" memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit device hole.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit device hole (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
// --- PCI (virtio-pci transport) ---
/// 32-bit window PCI BARs are assigned from (below the virtio-mmio windows).
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x1000_0000;
/// ECAM (PCI Express enhanced configuration) window; bus 0 only, so 1 MiB. Reserved for Linux
/// through an ACPI motherboard resource (`PNP0C02`) in the DSDT, not in e820: the e820 map is
/// built without knowing the transport (see [`crate::acpi`]).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window (one bus).
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// Size of the 64-bit PCI BAR window placed above RAM.
pub const PCI_MMIO64_SIZE: u64 = 16 << 30;

/// The 64-bit PCI BAR window for a VM with `memory_bytes` of RAM: from the first 1 GiB
/// boundary at or above both 4 GiB and the end of RAM.
pub fn pci_mmio64_window(memory_bytes: u64) -> std::ops::Range<u64> {
    let ram_end = ram_regions(memory_bytes)
        .iter()
        .map(|(start, size)| start.0 + size)
        .max()
        .unwrap_or(0);
    let start = ram_end.max(MMIO_GAP_END).next_multiple_of(1 << 30);
    start..start + PCI_MMIO64_SIZE
}
// --- end PCI ---
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) for real-mode emulation on Intel, placed in the device hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (one page below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Largest guest RAM supported (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// An entry of the physical memory map given to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The RAM regions backing `memory_bytes` of guest memory: below the device hole, and the rest
/// above 4 GiB.
pub fn ram_regions(memory_bytes: u64) -> Vec<(GuestAddress, u64)> {
    if memory_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), memory_bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), memory_bytes - MMIO_GAP_START),
        ]
    }
}

/// The memory map the guest sees (e820 / PVH memmap) for `memory_bytes` of RAM.
pub fn memory_map(memory_bytes: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_regions(memory_bytes) {
        let (start, size) = if start.0 == 0 {
            (HIMEM_START, size - HIMEM_START)
        } else {
            (start.0, size)
        };
        map.push(MemoryMapEntry {
            addr: start,
            size,
            kind: E820_RAM,
        });
    }
    // Linux uses an MCFG (ECAM) window only if the firmware reserves it; the DSDT's motherboard
    // resource does too, but the e820 entry avoids the "not reserved" detour at boot.
    map.push(MemoryMapEntry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|entry| entry.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vms_have_one_region_and_a_low_and_high_ram_entry() {
        let regions = ram_regions(128 << 20);
        assert_eq!(regions, vec![(GuestAddress(0), 128 << 20)]);
        let map = memory_map(128 << 20);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (128 << 20) - (HIMEM_START - EBDA_START));
        let last_ram = map.iter().rfind(|e| e.kind == E820_RAM);
        assert_eq!(last_ram.map(|e| e.addr + e.size), Some(128 << 20));
        assert!(
            map.iter()
                .any(|e| e.addr == PCI_ECAM_START && e.kind == E820_RESERVED),
            "the ECAM window is reserved"
        );
        assert!(map.windows(2).all(|w| w[0].addr < w[1].addr), "sorted");
    }

    #[test]
    fn large_vms_skip_the_device_hole() {
        let memory = 6u64 << 30;
        let regions = ram_regions(memory);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(regions[1], (GuestAddress(1 << 32), memory - MMIO_GAP_START));
        let map = memory_map(memory);
        for entry in map.iter().filter(|e| e.kind == E820_RAM) {
            let end = entry.addr + entry.size;
            assert!(
                end <= MMIO_GAP_START || entry.addr >= MMIO_GAP_END,
                "{entry:?} overlaps the device hole"
            );
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, memory - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x40),
            (PVH_MEMMAP_START, 24 * MAX_E820_ENTRIES as u64),
            (ZERO_PAGE_START, 0x1000),
            (BOOT_STACK_POINTER - 0x100, 0x100),
            (PML4_START, 0x3000),
            (AP_TRAMPOLINE_START, 0x1000),
            (CMDLINE_START, crate::config::MAX_CMDLINE_LEN as u64),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        const { assert!(CMDLINE_START + 2048 <= EBDA_START) };
    }
}
