//! The ACPI tables Keel writes are found by following the RSDP the way a guest does, have valid
//! checksums, and disassemble cleanly with ACPICA's `iasl -d` (Debian `acpica-tools`) into what
//! Keel meant: one local APIC per vCPU, the IOAPIC, a hardware-reduced FADT with Keel's sleep and
//! reset registers, and a DSDT with COM1, the RTC, a virtio-mmio device, the power button with its
//! Generic Event Device and `\_S5`.
//!
//! Without `iasl` the disassembly test prints `KEEL-IASL-SKIP` and returns, unless
//! `KEEL_REQUIRE_TOOLS=1` (set by `.ci/run`), which makes it fail.

use devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::device_manager::MmioDeviceInfo;
use vmm_core::{acpi, layout};

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

/// Reads a table at `addr` whole (its length is at offset 4), checking its checksum.
fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let header = read(mem, addr, 36);
    let bytes = read(mem, addr, u32_at(&header, 4) as usize);
    assert!(checksum_ok(&bytes), "bad checksum for {:?}", &bytes[..4]);
    bytes
}

/// Follows RSDP -> XSDT -> FADT (-> DSDT) and MADT, like a guest; returns (signature, bytes).
fn tables_from_rsdp(mem: &GuestMemoryMmap, rsdp_addr: u64) -> Vec<([u8; 4], Vec<u8>)> {
    let rsdp = read(mem, rsdp_addr, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert!(checksum_ok(&rsdp[..20]), "RSDP v1 checksum");
    assert!(checksum_ok(&rsdp), "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
    let xsdt = table(mem, u64_at(&rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let mut found = vec![(*b"XSDT", xsdt.clone())];
    for entry in xsdt[36..].chunks_exact(8) {
        let bytes = table(mem, u64::from_le_bytes(entry.try_into().unwrap()));
        let signature: [u8; 4] = bytes[..4].try_into().unwrap();
        if &signature == b"FACP" {
            // X_DSDT at offset 140.
            let dsdt = table(mem, u64_at(&bytes, 140));
            found.push((dsdt[..4].try_into().unwrap(), dsdt));
        }
        found.push((signature, bytes));
    }
    found
}

fn written(vcpus: u32) -> (GuestMemoryMmap, acpi::AcpiLayout) {
    let mem = vmm_core::memory::create_guest_memory(64 << 20).unwrap();
    let virtio = [MmioDeviceInfo {
        id: "disk0".into(),
        device_type: 2,
        base: 0xd000_0000,
        size: 0x1000,
        irq: 5,
    }];
    let layout = acpi::write_tables(&mem, vcpus, &virtio).unwrap();
    (mem, layout)
}

#[test]
fn a_guest_finds_every_table_from_the_rsdp_with_valid_checksums() {
    let (mem, acpi_layout) = written(4);
    assert_eq!(acpi_layout.rsdp, layout::ACPI_START);
    assert!(acpi_layout.end <= layout::ACPI_END);
    let tables = tables_from_rsdp(&mem, acpi_layout.rsdp);
    let names: Vec<&[u8; 4]> = tables.iter().map(|(s, _)| s).collect();
    for want in [b"XSDT", b"FACP", b"DSDT", b"APIC"] {
        assert!(names.contains(&want), "{names:?} lacks {want:?}");
    }
    // The tables sit in memory the e820 map does not offer as RAM.
    for entry in layout::memory_map(64 << 20) {
        if entry.kind == layout::E820_RAM {
            assert!(
                acpi_layout.end <= entry.addr || entry.addr + entry.size <= acpi_layout.rsdp,
                "ACPI tables overlap RAM {entry:?}"
            );
        }
    }
}

#[test]
fn madt_lists_one_enabled_local_apic_per_vcpu_and_the_ioapic() {
    for vcpus in [1u32, 2, 4, 254] {
        let (mem, acpi_layout) = written(vcpus);
        let madt = table(&mem, acpi_layout.madt);
        assert_eq!(u32_at(&madt, 36), layout::LAPIC_START as u32);
        assert_eq!(
            u32_at(&madt, 40) & 1,
            1,
            "PCAT_COMPAT: the in-kernel 8259s exist"
        );
        let mut apic_ids = Vec::new();
        let mut ioapics = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(u32_at(&madt, at + 4) & 1, 1, "enabled");
                    apic_ids.push(madt[at + 3]);
                }
                1 => ioapics.push((madt[at + 2], u32_at(&madt, at + 4), u32_at(&madt, at + 8))),
                other => panic!("unexpected MADT structure {other}"),
            }
            at += len;
        }
        assert_eq!(apic_ids, (0..vcpus).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(ioapics, vec![(vcpus as u8, layout::IOAPIC_START as u32, 0)]);
    }
}

#[test]
fn iasl_disassembles_every_table_into_what_keel_meant() {
    if !testkit::iasl::available() {
        return;
    }
    let (mem, acpi_layout) = written(4);
    let dir = std::env::temp_dir().join(format!("keel-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut seen = 0;
    for (signature, bytes) in tables_from_rsdp(&mem, acpi_layout.rsdp) {
        let name = String::from_utf8_lossy(&signature).to_string();
        let dsl = testkit::iasl::disassemble(&dir, &name, &bytes);
        assert!(!dsl.contains("Invalid"), "{name}:\n{dsl}");
        match &signature {
            b"APIC" => {
                assert_eq!(dsl.matches("Processor Local APIC").count(), 4, "{dsl}");
                assert!(dsl.contains("I/O APIC"), "{dsl}");
                assert!(dsl.contains("FEC00000"), "{dsl}");
            }
            b"FACP" => {
                assert!(dsl.contains("Hardware Reduced (V5) : 1"), "{dsl}");
                assert!(dsl.contains("Reset Register Supported (V2) : 1"), "{dsl}");
                assert!(
                    dsl.contains("0000000000000600"),
                    "sleep control at 0x600:\n{dsl}"
                );
                assert!(
                    dsl.contains("0000000000000602"),
                    "reset register at 0x602:\n{dsl}"
                );
            }
            b"DSDT" => {
                assert!(dsl.contains("PNP0501"), "{dsl}");
                assert!(dsl.contains("PNP0B00"), "{dsl}");
                assert!(dsl.contains("_S5_"), "{dsl}");
                assert!(dsl.contains("0x03F8"), "{dsl}");
                assert!(dsl.contains("\"LNRO0005\""), "virtio-mmio device:\n{dsl}");
                assert!(dsl.contains("0xD0000000"), "virtio-mmio window:\n{dsl}");
                // The power button and the Generic Event Device that signals it.
                assert!(dsl.contains("PNP0C0C"), "power button:\n{dsl}");
                assert!(dsl.contains("\"ACPI0013\""), "GED:\n{dsl}");
                assert!(
                    dsl.contains("SystemIO, 0x0610"),
                    "GED event register:\n{dsl}"
                );
                assert!(dsl.contains("Method (_EVT, 1, Serialized)"), "{dsl}");
                assert!(dsl.contains("Notify (\\_SB.PWRB, 0x80)"), "{dsl}");
                assert!(dsl.contains("0x00000017"), "GED interrupt 23:\n{dsl}");
            }
            _ => {}
        }
        seen += 1;
    }
    assert_eq!(seen, 4);
    std::fs::remove_dir_all(&dir).unwrap();
}
