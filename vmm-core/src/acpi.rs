//! ACPI tables for distribution kernels: RSDP, XSDT, FADT, MADT and DSDT, plus MCFG when
//! virtio devices sit on PCI.
//!
//! Debian's cloud kernels are built without MP-table parsing, so they find application
//! processors only through the MADT, and they power off through ACPI. Keel describes a
//! hardware-reduced ACPI platform (as Cloud Hypervisor and Firecracker do): no SCI, no PM timer,
//! no fixed-feature buttons; sleep control/status and reset registers in I/O space
//! ([`devices::legacy::AcpiPm`]); a DSDT that names the serial port, the RTC, each virtio-mmio
//! device (`LNRO0005`, what Linux's virtio-mmio ACPI driver matches) and the `\_S5` sleep type.
//! With the PCI transport the DSDT also has the PCI host bridge (`PNP0A08`, bus 0, ports
//! 0xCF8..0xCFF, the 32- and 64-bit BAR windows) and a motherboard resource (`PNP0C02`)
//! reserving the ECAM window that the MCFG table points Linux at. The tables are built with the `acpi_tables` crate and placed in the BIOS area
//! at [`layout::ACPI_START`], which the e820 map marks reserved.
//!
//! The MADT carries no interrupt source overrides on purpose: KVM's default GSI routing sends
//! ISA IRQ *n* to IOAPIC pin *n*, which is exactly what ACPI assumes when no override is given.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use devices::legacy::{
    ACPI_PM_PORT_BASE, COM1_IRQ, COM1_PORT_BASE, GED_EVENT_POWER_BUTTON, GED_PORT_BASE,
    GED_PORT_LEN, RESET_OFFSET, RESET_VALUE, RTC_PORT_BASE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use devices::pci::bus::{PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN};
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

use crate::layout;
use crate::device_manager::{MmioDeviceInfo, PciHostInfo, GED_IRQ};

const OEM_ID: [u8; 6] = *b"KEEL  ";
const OEM_REVISION: u32 = 1;
/// DSDT revision 2 and later use 64-bit integers.
const DSDT_REVISION: u8 = 6;
/// FADT IA-PC boot flags: no VGA, no CMOS RTC probing restrictions, no 8042 advertised (the
/// i8042 model is only a reset line, so drivers should not probe it).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// CMOS index of the century register, which the FADT advertises.
const RTC_CENTURY_INDEX: u8 = 0x32;
/// "KEELKVM" hypervisor vendor identity in the FADT.
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"KEELKVM\0");

/// A device model's I/O port (a u64 bus address) as the 16-bit number ACPI resources take.
/// Only called for constants, so the check runs when the crate is compiled.
#[allow(clippy::cast_possible_truncation)] // checked by the assertion
const fn io_port(port: u64) -> u16 {
    assert!(port <= 0xffff, "I/O ports are 16 bits");
    port as u16
}

/// The length of a device model's port range as the byte ACPI resources take (constants only).
#[allow(clippy::cast_possible_truncation)] // checked by the assertion
const fn io_len(len: u64) -> u8 {
    assert!(len <= 0xff, "port range too long for an ACPI descriptor");
    len as u8
}

/// A fixed layout address below 4 GiB as a 32-bit ACPI field (constants only).
#[allow(clippy::cast_possible_truncation)] // checked by the assertion
const fn address32(address: u64) -> u32 {
    assert!(address <= 0xffff_ffff, "not a 32-bit address");
    address as u32
}

const PCI_CONFIG_PORT: u16 = io_port(PCI_CONFIG_IO_PORT);
const PCI_CONFIG_PORTS: u8 = io_len(PCI_CONFIG_IO_PORT_LEN);
const COM1_PORT: u16 = io_port(COM1_PORT_BASE);
const RTC_PORT: u16 = io_port(RTC_PORT_BASE);
const GED_PORT: u16 = io_port(GED_PORT_BASE);
const GED_PORTS: u8 = io_len(GED_PORT_LEN);
const LAPIC_ADDRESS: u32 = address32(layout::LAPIC_START);
const IOAPIC_ADDRESS: u32 = address32(layout::IOAPIC_START);

/// `value` as a 32-bit ACPI field, or why it does not fit (`what` names it).
fn field32(value: u64, what: impl std::fmt::Display) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("{what} {value:#x} does not fit a 32-bit field"))
}

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the BIOS area.
    #[error("ACPI tables need {needed} bytes; the area at {start:#x} holds {available}")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Area start.
        start: u64,
        /// Bytes available.
        available: u64,
    },
    /// Guest memory rejected a write.
    #[error("cannot write ACPI table {table} at {addr:#x}: {detail}")]
    Write {
        /// Table signature.
        table: &'static str,
        /// Guest address.
        addr: u64,
        /// Cause.
        detail: String,
    },
}

/// Where each table went, for tests and debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiLayout {
    /// RSDP (what the guest is told through the zero page or PVH start info).
    pub rsdp: u64,
    /// XSDT.
    pub xsdt: u64,
    /// FADT.
    pub fadt: u64,
    /// MADT.
    pub madt: u64,
    /// DSDT.
    pub dsdt: u64,
    /// MCFG, present with the PCI transport.
    pub mcfg: Option<u64>,
    /// First byte after the tables.
    pub end: u64,
}

fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// One virtio-mmio device as Linux's ACPI driver for it (`LNRO0005`) expects it.
struct MmioDeviceAml {
    name: String,
    uid: u32,
    base: u32,
    size: u32,
    irq: u32,
}

impl MmioDeviceAml {
    /// The `index`th device; its window must lie below 4 GiB (a 32-bit memory descriptor).
    fn new(index: usize, device: &MmioDeviceInfo) -> Result<Self, String> {
        let name = format!("VR{index:02X}");
        let uid = u32::try_from(index).map_err(|_| format!("{name}: too many devices"))?;
        let base = field32(device.base, format_args!("{name} base"))?;
        let end = device.base.saturating_add(device.size);
        field32(end.saturating_sub(1), format_args!("{name} last byte"))?;
        Ok(MmioDeviceAml {
            size: field32(device.size, format_args!("{name} size"))?,
            name,
            uid,
            base,
            irq: device.irq,
        })
    }
}

impl Aml for MmioDeviceAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let window = aml::Memory32Fixed::new(true, self.base, self.size);
        let irq = aml::Interrupt::new(true, true, false, false, self.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid = aml::Name::new("_UID".into(), &self.uid);
        let crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new(self.name.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

/// The PCI host bridge of segment 0, bus 0 (`PNP0A08`, compatible with `PNP0A03`), with the
/// 32-bit window and the ECAM area checked to be 32-bit (their descriptors are).
struct PciHostBridgeAml<'a> {
    host: &'a PciHostInfo,
    mmio32_first: u32,
    mmio32_last: u32,
    ecam_start: u32,
    ecam_len: u32,
}

impl<'a> PciHostBridgeAml<'a> {
    fn new(host: &'a PciHostInfo) -> Result<Self, String> {
        let last = |range: &std::ops::Range<u64>| range.end.saturating_sub(1);
        Ok(PciHostBridgeAml {
            host,
            mmio32_first: field32(host.mmio32.start, "the 32-bit PCI window's start")?,
            mmio32_last: field32(last(&host.mmio32), "the 32-bit PCI window's end")?,
            ecam_start: field32(host.ecam.start, "the ECAM window's start")?,
            ecam_len: field32(
                host.ecam.end.saturating_sub(host.ecam.start),
                "the ECAM window's size",
            )?,
        })
    }
}

impl Aml for PciHostBridgeAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let host = self.host;
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
        let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
        let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
        let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
        let buses = aml::AddressSpace::new_bus_number(0u16, 0u16);
        let config_ports = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS);
        let mmio32 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            self.mmio32_first,
            self.mmio32_last,
            None,
        );
        let mmio64 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            host.mmio64.start,
            host.mmio64.end - 1,
            None,
        );
        let crs = aml::ResourceTemplate::new(vec![&buses, &config_ports, &mmio32, &mmio64]);
        let crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new(
            "PCI0".into(),
            vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
        )
        .to_aml_bytes(sink);

        // Linux uses the MCFG area only if a motherboard resource reserves it.
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let ecam = aml::Memory32Fixed::new(false, self.ecam_start, self.ecam_len);
        let crs = aml::ResourceTemplate::new(vec![&ecam]);
        let crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new("MBRD".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

/// The MCFG: where ECAM for segment 0, bus 0 is.
fn mcfg(host: &PciHostInfo) -> MCFG {
    let mut table = MCFG::new(OEM_ID, *b"KEELMCFG", OEM_REVISION);
    table.add_ecam(host.ecam.start, 0, 0, 0);
    table
}

/// The DSDT: COM1, the RTC, virtio-mmio devices, the PCI host bridge and the S5 sleep type.
/// The power button (`PNP0C0C`, a control-method button) and the Generic Event Device
/// (`ACPI0013`) that signals it: on the GED's interrupt the guest runs `_EVT`, which reads the
/// pending events from [`GED_PORT_BASE`] (the read clears them) and notifies the button.
struct PowerButtonAml;

impl Aml for PowerButtonAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        aml::Device::new("PWRB".into(), vec![&hid, &uid]).to_aml_bytes(sink);

        let hid = aml::Name::new("_HID".into(), &"ACPI0013");
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
        let crs = aml::ResourceTemplate::new(vec![&irq]);
        let crs = aml::Name::new("_CRS".into(), &crs);
        let region = aml::OpRegion::new(
            "GDST".into(),
            aml::OpRegionSpace::SystemIO,
            &GED_PORT,
            &GED_PORTS,
        );
        let field = aml::Field::new(
            "GDST".into(),
            aml::FieldAccessType::DWord,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::WriteAsZeroes,
            vec![aml::FieldEntry::Named(*b"GDAT", 32)],
        );
        let gdat = aml::Path::new("GDAT");
        let read_events = aml::Store::new(&aml::Local(0), &gdat);
        let button_bit = aml::And::new(&aml::Local(1), &aml::Local(0), &GED_EVENT_POWER_BUTTON);
        let pressed = aml::Equal::new(&button_bit, &GED_EVENT_POWER_BUTTON);
        let button = aml::Path::new("\\_SB_.PWRB");
        let notify = aml::Notify::new(&button, &0x80u8);
        let on_press = aml::If::new(&pressed, vec![&notify]);
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read_events, &on_press]);
        aml::Device::new("GED_".into(), vec![&hid, &uid, &crs, &region, &field, &evt])
            .to_aml_bytes(sink);
    }
}

/// The DSDT, or why a device's resources cannot be described.
fn dsdt(mmio_devices: &[MmioDeviceInfo], pci: Option<&PciHostInfo>) -> Result<Sdt, String> {
    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"KEELDSDT",
        OEM_REVISION,
    );

    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);

    let rtc_io = aml::IO::new(RTC_PORT, RTC_PORT, 1, 2);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io]);
    let rtc_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00"));
    let rtc_crs = aml::Name::new("_CRS".into(), &rtc_crs);
    let rtc = aml::Device::new("RTC_".into(), vec![&rtc_hid, &rtc_crs]);

    let virtio = mmio_devices
        .iter()
        .enumerate()
        .map(|(index, device)| MmioDeviceAml::new(index, device))
        .collect::<Result<Vec<_>, _>>()?;
    let mut children: Vec<&dyn Aml> = vec![&com1, &rtc, &PowerButtonAml];
    children.extend(virtio.iter().map(|device| device as &dyn Aml));
    let pci_host = pci.map(PciHostBridgeAml::new).transpose()?;
    if let Some(host) = &pci_host {
        children.push(host);
    }
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut table);
    // \_S5: the SLP_TYP value the guest writes to enter soft-off.
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut table);
    Ok(table)
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut builder = FADTBuilder::new(OEM_ID, *b"KEELFACP", OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton) // no fixed-feature power button
        .flag(Flags::SlpButton) // no fixed-feature sleep button
        .flag(Flags::ResetRegSup)
        .preferred_pm_profile(PmProfile::EnterpriseServer);
    builder.century = RTC_CENTURY_INDEX;
    builder.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    builder.reset_reg = io_register(ACPI_PM_PORT_BASE + RESET_OFFSET);
    builder.reset_value = RESET_VALUE;
    builder.sleep_control_reg = io_register(ACPI_PM_PORT_BASE + SLEEP_CONTROL_OFFSET);
    builder.sleep_status_reg = io_register(ACPI_PM_PORT_BASE + SLEEP_STATUS_OFFSET);
    builder.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    builder.finalize()
}

/// The MADT, or why `vcpus` vCPUs cannot be described: APIC IDs are bytes, and the IOAPIC's
/// comes after the vCPUs' (the config allows at most 254 vCPUs).
fn madt(vcpus: u32) -> Result<MADT, String> {
    let ioapic_id =
        u8::try_from(vcpus).map_err(|_| format!("{vcpus} vCPUs need APIC IDs beyond 255"))?;
    let mut madt = MADT::new(
        OEM_ID,
        *b"KEELMADT",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDRESS),
    );
    // vCPU index = ACPI processor UID = APIC ID (see vcpu::cpuid).
    for id in 0..ioapic_id {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the local APIC IDs so the two never collide.
    madt.add_structure(IoApic::new(ioapic_id, IOAPIC_ADDRESS, 0));
    Ok(madt)
}

/// MADT flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does). Without it
/// Linux reserves no legacy IRQs and numbers ISA interrupts dynamically (COM1 as IRQ 24).
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the MADT's flags field (after the 36-byte header and the LAPIC address).
const MADT_FLAGS_OFFSET: usize = 40;
/// Offset of the checksum byte in every ACPI table header.
const TABLE_CHECKSUM_OFFSET: usize = 9;

/// The MADT with its flags set. acpi_tables 0.2 always writes flags 0, so they are patched into
/// the serialized table and its checksum fixed.
fn madt_bytes(vcpus: u32) -> Result<Vec<u8>, String> {
    let mut bytes = bytes_of(&madt(vcpus)?);
    if let Some(flags) = bytes.get_mut(MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4) {
        flags.copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    }
    if bytes.len() > TABLE_CHECKSUM_OFFSET {
        bytes[TABLE_CHECKSUM_OFFSET] = 0;
        let sum = bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
        bytes[TABLE_CHECKSUM_OFFSET] = 0u8.wrapping_sub(sum);
    }
    Ok(bytes)
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Writes the tables for `vcpus` vCPUs and the given virtio-mmio devices at
/// [`layout::ACPI_START`] and returns where they went.
#[cfg(any(test, feature = "testing"))]
pub fn write_tables(
    mem: &GuestMemoryMmap,
    vcpus: u32,
    mmio_devices: &[MmioDeviceInfo],
) -> Result<AcpiLayout, AcpiError> {
    write_tables_with_pci(mem, vcpus, mmio_devices, None)
}

/// [`write_tables`], plus the PCI host bridge and an MCFG table when `pci` is given.
pub fn write_tables_with_pci(
    mem: &GuestMemoryMmap,
    vcpus: u32,
    mmio_devices: &[MmioDeviceInfo],
    pci: Option<&PciHostInfo>,
) -> Result<AcpiLayout, AcpiError> {
    let align = |addr: u64| addr.div_ceil(16) * 16;
    // The RSDP goes first, in the area Linux scans, at a 16-byte boundary.
    let rsdp_addr = layout::ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // A table whose contents cannot be encoded is reported as a failed write of it.
    let unwritable = |table, addr| {
        move |detail| AcpiError::Write {
            table,
            addr,
            detail,
        }
    };
    let dsdt = bytes_of(&dsdt(mmio_devices, pci).map_err(unwritable("DSDT", dsdt_addr))?);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = bytes_of(&fadt(dsdt_addr));
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt_bytes(vcpus).map_err(unwritable("APIC", madt_addr))?;
    let mcfg_addr = align(madt_addr + madt.len() as u64);
    let mcfg = pci.map(|host| bytes_of(&mcfg(host))).unwrap_or_default();
    let xsdt_addr = align(mcfg_addr + mcfg.len() as u64);
    let mut xsdt_table = XSDT::new(OEM_ID, *b"KEELXSDT", OEM_REVISION);
    xsdt_table.add_entry(fadt_addr);
    xsdt_table.add_entry(madt_addr);
    if pci.is_some() {
        xsdt_table.add_entry(mcfg_addr);
    }
    let xsdt = bytes_of(&xsdt_table);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooLarge {
            needed: end - layout::ACPI_START,
            start: layout::ACPI_START,
            available: layout::ACPI_END - layout::ACPI_START,
        });
    }
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    for (table, addr, bytes) in [
        ("RSDP", rsdp_addr, &rsdp),
        ("DSDT", dsdt_addr, &dsdt),
        ("FACP", fadt_addr, &fadt),
        ("APIC", madt_addr, &madt),
        ("MCFG", mcfg_addr, &mcfg),
        ("XSDT", xsdt_addr, &xsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|err| AcpiError::Write {
                table,
                addr,
                detail: err.to_string(),
            })?;
    }
    Ok(AcpiLayout {
        rsdp: rsdp_addr,
        xsdt: xsdt_addr,
        fadt: fadt_addr,
        madt: madt_addr,
        dsdt: dsdt_addr,
        mcfg: pci.map(|_| mcfg_addr),
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        crate::memory::create_guest_memory(64 << 20).unwrap()
    }

    #[test]
    fn a_device_window_above_4_gib_is_refused_not_described_at_its_low_half() {
        let device = MmioDeviceInfo {
            id: "disk0".into(),
            device_type: 2,
            base: 0x1_d000_0000,
            size: 0x1000,
            irq: 5,
        };
        match write_tables(&memory(), 1, &[device]) {
            Err(AcpiError::Write {
                table: "DSDT",
                detail,
                ..
            }) => assert!(detail.contains("VR00 base"), "{detail}"),
            other => panic!("a 32-bit descriptor for a 64-bit window: {other:?}"),
        }
    }

    #[test]
    fn more_vcpus_than_apic_ids_is_refused_not_wrapped() {
        // 255 vCPUs take APIC IDs 0..=254 and leave 255 for the IOAPIC.
        assert!(write_tables(&memory(), 255, &[]).is_ok());
        match write_tables(&memory(), 256, &[]) {
            Err(AcpiError::Write { table: "APIC", .. }) => {}
            other => panic!("APIC IDs wrapped around: {other:?}"),
        }
    }
}
