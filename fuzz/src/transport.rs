//! Transport register files: virtio-mmio registers and PCI configuration space (through ports
//! 0xCF8/0xCFC, ECAM and the virtio-pci BAR, including the `VIRTIO_PCI_CAP_PCI_CFG` window). The
//! input is a stream of guest accesses; a driver that does things in any order, at any width,
//! with any value must not crash the VMM. BAR relocations the bus reports must be consistent:
//! each starts where the previous one ended.

use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::pci::bus::{
    BarRelocation, BarRelocationListener, PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow,
};
use devices::pci::msix::{MsiInterruptRoute, MsiMessage};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::pci::VirtioPciDevice;
use devices::virtio::rng::{EntropySource, VirtioRng};
use devices::virtio::SharedVirtioDevice;
use devices::GuestMemoryMmap;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::support::{Input, MEM_SIZE};

/// Entropy that costs nothing, so the fuzzer spends its time in the transports.
struct Zeros;

impl EntropySource for Zeros {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

fn device() -> SharedVirtioDevice {
    Arc::new(Mutex::new(VirtioRng::with_source(Zeros)))
}

fn memory() -> Option<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()
}

/// One access: which target, read or write, width, offset and value.
struct Access {
    write: bool,
    width: usize,
    offset: u64,
    value: u64,
    selector: u8,
}

fn next_access(input: &mut Input, offset_mask: u64) -> Access {
    let op = input.byte();
    Access {
        write: op & 1 != 0,
        width: [1, 2, 4, 8][usize::from((op >> 1) & 3)],
        selector: op >> 3,
        offset: u64::from(input.u32()) & offset_mask,
        value: input.u64(),
    }
}

fn apply(device: &mut dyn BusDevice, access: &Access) {
    let bytes = access.value.to_le_bytes();
    if access.write {
        device.write(access.offset, &bytes[..access.width]);
    } else {
        let mut data = [0u8; 8];
        device.read(access.offset, &mut data[..access.width]);
    }
}

/// Random accesses to a virtio-mmio window in front of a device.
pub fn mmio_registers(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mem) = memory() else {
        return;
    };
    let Ok(line) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(mut transport) = MmioTransport::new(device(), mem, line) else {
        return;
    };
    for _ in 0..256 {
        if input.rest_len() == 0 {
            break;
        }
        // Mostly the register file and the start of config space.
        let access = next_access(&mut input, 0x1ff);
        apply(&mut transport, &access);
    }
}

/// An MSI route that only checks what the transport asks of it.
struct CheckedRoute;

impl MsiInterruptRoute for CheckedRoute {
    fn fire(&self, vector: u16) -> std::io::Result<()> {
        assert!(vector < 2048, "vector {vector} beyond any MSI-X table");
        Ok(())
    }

    fn update(&self, vector: u16, _message: MsiMessage, _masked: bool) -> std::io::Result<()> {
        assert!(vector < 2048, "vector {vector} beyond any MSI-X table");
        Ok(())
    }
}

const BAR: u64 = 0xc000_0000;

/// Follows the BAR through the relocations the bus reports and checks that they chain up.
struct ChainedRelocations {
    decoded_at: Mutex<Option<u64>>,
}

impl BarRelocationListener for ChainedRelocations {
    fn bar_relocated(&self, relocation: &BarRelocation) {
        let mut decoded_at = self
            .decoded_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        assert_eq!(relocation.slot, 1, "only slot 1 has a BAR");
        assert_eq!(relocation.index, 0);
        assert_eq!(
            relocation.old_address, *decoded_at,
            "a relocation must start where the BAR was decoded"
        );
        assert_ne!(relocation.old_address, relocation.new_address);
        if let Some(new) = relocation.new_address {
            assert_eq!(new % relocation.size, 0, "BARs stay aligned");
        }
        *decoded_at = relocation.new_address;
    }
}

/// ECAM offset of slot 1's configuration space.
const SLOT1_ECAM: u64 = 1 << 15;
/// Config space range holding the capabilities (the PCI_CFG window among them).
const CAPABILITIES: std::ops::Range<u64> = 0x40..0xc0;

/// Random accesses through CF8/CFC, ECAM and the BAR window of a virtio-pci device.
pub fn pci_config(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mem) = memory() else {
        return;
    };
    let Ok(virtio) = VirtioPciDevice::new(device(), mem, BAR, Arc::new(CheckedRoute)) else {
        return;
    };
    let mut bus = PciBus::new();
    if bus.add_device("rng", Arc::new(Mutex::new(virtio))).is_err() {
        return;
    }
    bus.add_relocation_listener(Arc::new(ChainedRelocations {
        decoded_at: Mutex::new(Some(BAR)),
    }));
    let bus = Arc::new(Mutex::new(bus));
    let mut ports = PciConfigIo::new(bus.clone());
    let mut ecam = PciConfigMmio::new(bus.clone());
    let mut window = PciMmioWindow::new(bus, BAR);
    for _ in 0..256 {
        if input.rest_len() == 0 {
            break;
        }
        let access = next_access(&mut input, u64::MAX);
        match access.selector % 4 {
            0 => apply(
                &mut ports,
                &Access {
                    offset: access.offset & 7,
                    ..access
                },
            ),
            // Bus 0 plus a little beyond it.
            1 => apply(
                &mut ecam,
                &Access {
                    offset: access.offset & 0x1f_ffff,
                    ..access
                },
            ),
            2 => apply(
                &mut window,
                &Access {
                    offset: access.offset & 0xffff,
                    ..access
                },
            ),
            // The device's capabilities, where the PCI_CFG window is programmed and used.
            _ => apply(
                &mut ecam,
                &Access {
                    offset: SLOT1_ECAM
                        + CAPABILITIES.start
                        + access.offset % (CAPABILITIES.end - CAPABILITIES.start),
                    ..access
                },
            ),
        }
    }
}
