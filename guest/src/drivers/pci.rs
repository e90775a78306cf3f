//! virtio-pci discovery: bus 0 through configuration mechanism #1 (ports 0xCF8/0xCFC).
//!
//! [`scan`] looks at function 0 of devices 0–31, and for each modern virtio function (vendor
//! 0x1AF4, device 0x1040 + type) reports BAR 0 (where Keel puts every structure; QEMU uses BAR 4),
//! enables memory decoding and bus mastering, finds the virtio structures through the capability
//! list, reads the BARs they name and builds a [`Transport`]. The guest assigns no BARs: it uses
//! the addresses the VMM or firmware programmed, which must lie where it maps device memory;
//! with `keel.pci_move_bar` it first moves BAR 0 up by `PCI_BAR_MOVE`, as Linux does when it
//! reassigns a BAR (memory decoding off, both halves of the 64-bit BAR, decoding back on).

use keel_test_guest::cmdline::PCI_BAR_MOVE;
use keel_test_guest::virtio::pci::{self, Bar, Structure, Structures};

use super::transport::{PciLayout, Transport};
use super::{MMIO_HIGH, MMIO_LOW};
use crate::console::report;
use crate::cpu::{inl, outl, outw};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// Device numbers on a bus.
const DEVICES: u8 = 32;

/// Configuration mechanism #1 address of `reg` of bus 0, `device`, function 0.
fn address(device: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(device) << 11 | u32::from(reg & 0xfc)
}

/// A dword of the configuration space of bus 0, `device`, function 0.
fn read(device: u8, reg: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(device, reg));
    inl(CONFIG_DATA)
}

/// Writes the 16-bit half of a dword at `reg` (which must be 2-aligned).
fn write16(device: u8, reg: u8, value: u16) {
    outl(CONFIG_ADDRESS, address(device, reg));
    outw(CONFIG_DATA + u16::from(reg & 2), value);
}

/// Writes the dword at `reg` (which must be 4-aligned).
fn write32(device: u8, reg: u8, value: u32) {
    outl(CONFIG_ADDRESS, address(device, reg));
    outl(CONFIG_DATA, value);
}

/// Moves the 64-bit memory BAR 0 of `device` from `from` up by [`PCI_BAR_MOVE`], with memory
/// decoding off meanwhile (it stays off: the caller turns it on).
fn move_bar0(device: u8, from: u64) {
    let to = from + PCI_BAR_MOVE;
    if to >= MMIO_HIGH {
        report!("FAIL virtio-pci 00:{device:02x}.0 bar0 {from:#x} cannot move up");
        return;
    }
    let command = read(device, pci::REG_COMMAND) as u16;
    write16(device, pci::REG_COMMAND, command & !pci::COMMAND_MEMORY);
    let flags = read(device, pci::REG_BAR0) & 0xf;
    write32(device, pci::REG_BAR0, to as u32 | flags);
    write32(device, pci::REG_BAR0 + 4, (to >> 32) as u32);
    match pci::bar(|reg| read(device, reg), 0) {
        Bar::Memory(now) if now == to => {
            report!("virtio-pci moved bar0 of 00:{device:02x}.0 from {from:#x} to {now:#x}");
        }
        Bar::Memory(now) => {
            report!(
                "FAIL virtio-pci 00:{device:02x}.0 bar0 reads {now:#x} after moving it to {to:#x}"
            );
        }
        Bar::Unsupported => report!("FAIL virtio-pci 00:{device:02x}.0 bar0 is not a memory BAR"),
    }
}

/// The device number of the first virtio function of `virtio_type` on bus 0.
pub fn find(virtio_type: u32) -> Option<u8> {
    (0..DEVICES).find(|device| pci::virtio_type(read(*device, pci::REG_ID)) == Some(virtio_type))
}

/// BAR 0 of `device`, if it is a memory BAR.
pub fn bar0(device: u8) -> Option<u64> {
    match pci::bar(|reg| read(device, reg), 0) {
        Bar::Memory(address) => Some(address),
        Bar::Unsupported => None,
    }
}

/// Programs the 64-bit BAR 0 of `device` with `to` (memory decoding off meanwhile, then as it
/// was) and returns what it reads afterwards, whatever `to` is (the hostile-guest catalogue).
pub fn set_bar0(device: u8, to: u64) -> Option<u64> {
    let command = read(device, pci::REG_COMMAND) as u16;
    write16(device, pci::REG_COMMAND, command & !pci::COMMAND_MEMORY);
    let flags = read(device, pci::REG_BAR0) & 0xf;
    write32(device, pci::REG_BAR0, to as u32 | flags);
    write32(device, pci::REG_BAR0 + 4, (to >> 32) as u32);
    write16(device, pci::REG_COMMAND, command);
    bar0(device)
}

/// The MSI-X capability of `device`: its offset in the configuration space, the message
/// control register, and the table's and the PBA's BAR offset/BIR dwords.
pub fn msix_capability(device: u8) -> Option<(u8, u16, u32, u32)> {
    let mut pointer = (read(device, pci::REG_CAPABILITIES) & 0xfc) as u8;
    // At most 48 capabilities fit the configuration space: a longer walk is a loop.
    for _ in 0..48 {
        if pointer < 0x40 {
            return None;
        }
        let header = read(device, pointer);
        if header & 0xff == 0x11 {
            return Some((
                pointer,
                (header >> 16) as u16,
                read(device, pointer + 4),
                read(device, pointer + 8),
            ));
        }
        pointer = ((header >> 8) & 0xfc) as u8;
    }
    None
}

/// Writes the MSI-X message control register of the capability at `pointer`.
pub fn set_msix_control(device: u8, pointer: u8, value: u16) {
    write16(device, pointer + 2, value);
}

/// Calls `found(transport, virtio type)` for every usable virtio function on bus 0, after
/// moving its BAR 0 when `move_bar` is set.
pub fn scan(move_bar: bool, mut found: impl FnMut(Transport, u32)) {
    for device in 0..DEVICES {
        let id = read(device, pci::REG_ID);
        let Some(virtio_type) = pci::virtio_type(id) else {
            continue;
        };
        let config = |reg| read(device, reg);
        // BAR 0 as the VMM left it (the raw register if it is no memory BAR).
        let bar0 = match pci::bar(config, 0) {
            Bar::Memory(address) => address,
            Bar::Unsupported => u64::from(read(device, pci::REG_BAR0)),
        };
        report!("virtio-pci 00:{device:02x}.0 device {virtio_type} bar0={bar0:#x}");
        if move_bar && bar0 != 0 && matches!(pci::bar(config, 0), Bar::Memory(_)) {
            move_bar0(device, bar0);
        }
        let command = read(device, pci::REG_COMMAND) as u16;
        write16(
            device,
            pci::REG_COMMAND,
            command | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER,
        );
        let structures = pci::structures(config);
        if let Some(name) = structures.missing() {
            report!("FAIL virtio-pci 00:{device:02x}.0 no {name} capability");
            continue;
        }
        match layout(device, &structures) {
            // SAFETY: every structure lies in the uncached device memory below the xAPIC
            // (checked by `layout`), in a BAR of this function, whose memory decoding is now on;
            // only the drivers, one at a time, use the transport.
            Ok(layout) => found(unsafe { Transport::pci(layout) }, virtio_type),
            Err(Unusable::Unassigned(bar)) => {
                report!("FAIL virtio-pci bar{bar} unassigned 00:{device:02x}.0");
            }
            Err(Unusable::NotMemory(bar)) => {
                report!("FAIL virtio-pci 00:{device:02x}.0 bar{bar} is not a memory BAR");
            }
            Err(Unusable::Outside(name, address)) => report!(
                "FAIL virtio-pci 00:{device:02x}.0 {name} structure at {address:#x} outside \
                 {MMIO_LOW:#x}-{MMIO_HIGH:#x}"
            ),
        }
    }
}

/// Why a function's structures cannot be used.
enum Unusable {
    /// A structure's BAR reads 0: nobody assigned it an address.
    Unassigned(u8),
    /// A structure's BAR is an I/O BAR (or a 64-bit BAR in slot 5).
    NotMemory(u8),
    /// A structure lies where the guest maps no device memory.
    Outside(&'static str, u64),
}

/// The structures' addresses (all four are present: `Structures::missing` was checked).
fn layout(device: u8, structures: &Structures) -> Result<PciLayout, Unusable> {
    let locate = |structure: Option<Structure>, name: &'static str| {
        let structure = structure.unwrap_or(Structure {
            bar: 0,
            offset: 0,
            length: 0,
        });
        let base = match pci::bar(|reg| read(device, reg), structure.bar) {
            Bar::Memory(0) => return Err(Unusable::Unassigned(structure.bar)),
            Bar::Memory(base) => base,
            Bar::Unsupported => return Err(Unusable::NotMemory(structure.bar)),
        };
        let address = base + u64::from(structure.offset);
        let end = address + u64::from(structure.length);
        if address < MMIO_LOW || end > MMIO_HIGH {
            return Err(Unusable::Outside(name, address));
        }
        Ok((address, u64::from(structure.length)))
    };
    let (common, _) = locate(structures.common, "common")?;
    let (notify, notify_len) = locate(structures.notify, "notify")?;
    let (isr, _) = locate(structures.isr, "isr")?;
    let (device_cfg, _) = locate(structures.device, "device")?;
    Ok(PciLayout {
        common,
        notify,
        notify_len,
        notify_multiplier: structures.notify_multiplier,
        isr,
        device: device_cfg,
    })
}
