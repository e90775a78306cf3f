//! Devices on virtio-PCI: a slot and a BAR each on bus 0 behind Keel's host bridge, MSI-X
//! vectors delivered through KVM, queue notifications that follow BAR 0.
//!
//! [`VirtioPciDevices::plan`] runs before KVM exists, so the ACPI tables (DSDT host bridge,
//! MCFG) can describe the bus: each device gets a slot and a BAR address pre-assigned from the
//! 32-bit window (then the 64-bit one), which Linux keeps as the firmware assignment.
//! [`VirtioPciDevices::attach`] then puts the bus on the VM's buses: ports 0xCF8..0xCFF, the ECAM
//! window for bus 0, and the two BAR windows (the PCI bus re-routes a BAR the guest moves inside
//! them, so the VMM's MMIO bus never changes after start).
//!
//! Queue notifications: each device's queues get one KVM ioeventfd each, at
//! `BAR 0 + queue_notify_offset(n)` (every queue has an address of its own, so no data match).
//! When the guest moves BAR 0, the PCI bus tells a `BarRelocationListener` of the device's,
//! which unregisters the ioeventfds from the old address and registers them at the new one
//! before the guest's config write completes (or nowhere, if the bus no longer decodes the BAR).
//! The bus keeps decoding a BAR at its last address while memory decoding is off, so the
//! ioeventfds stay with it then too: they always sit where the bus routes the BAR.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::pci::bus::{
    BarRelocation, BarRelocationListener, PciBus, PciBusError, PciConfigIo, PciConfigMmio,
    PciMmioWindow, ECAM_BUS_SIZE, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN,
};
use devices::virtio::mmio::SharedVirtioDevice;
use devices::virtio::pci::{VirtioPciDevice, VirtioPciError, VIRTIO_PCI_BAR_SIZE};
use devices::virtio::NotifyStats;
use kvm_ioctls::VmFd;
use devices::GuestMemoryMmap;

use super::interrupts::{GsiRoutingTable, KvmMsiRoute};
use super::notify::{NotifyLayout, QueueIoeventfds, QueueNotifier};
use super::resources::{PciHostInfo, Resources};
use crate::sync::lock;

/// Errors placing PCI devices.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The BAR windows are full.
    #[error("device `{id}`: no room left in the PCI MMIO windows for its BAR")]
    NoBarSpace {
        /// Device id.
        id: String,
    },
    /// The GSI space for MSI routes is used up.
    #[error("device `{id}`: no GSI left for its {vectors} MSI-X vectors")]
    NoGsi {
        /// Device id.
        id: String,
        /// Vectors it needed.
        vectors: u16,
    },
    /// The virtio-PCI transport refused the device.
    #[error("device `{id}`: {source}")]
    Device {
        /// Device id.
        id: String,
        /// Cause.
        source: VirtioPciError,
    },
    /// The PCI bus refused the device.
    #[error(transparent)]
    Bus(#[from] PciBusError),
    /// The VMM's MMIO or port bus refused a window.
    #[error(transparent)]
    IoBus(#[from] devices::bus::BusError),
    /// Creating an eventfd or registering it with KVM failed.
    #[error("device `{id}`: cannot connect MSI-X vector {vector} (GSI {gsi}): {detail}")]
    Irq {
        /// Device id.
        id: String,
        /// The vector.
        vector: u16,
        /// Its GSI.
        gsi: u32,
        /// Cause.
        detail: String,
    },
    /// The planned slot differs from the one the bus gave (a planning bug).
    #[error("device `{id}`: planned for slot {planned}, placed in slot {placed}")]
    SlotMismatch {
        /// Device id.
        id: String,
        /// Planned slot.
        planned: u8,
        /// Actual slot.
        placed: u8,
    },
}

/// Moves a device's queue ioeventfds along with its BAR 0.
struct NotifyRelocation {
    slot: u8,
    ioeventfds: Mutex<QueueIoeventfds>,
}

impl BarRelocationListener for NotifyRelocation {
    fn bar_relocated(&self, relocation: &BarRelocation) {
        if relocation.slot == self.slot && relocation.index == 0 {
            lock(&self.ioeventfds).relocate(relocation.new_address);
        }
    }
}

/// How many queue notifications a virtio-PCI device received, by the path they took.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg(feature = "testing")]
pub struct VirtioNotifyCount {
    /// Device id from the config.
    pub id: String,
    /// Handled on a vCPU thread after an MMIO exit (KVM had no ioeventfd at the address written,
    /// or the driver went through the `VIRTIO_PCI_CAP_PCI_CFG` window).
    pub vcpu: u64,
    /// Delivered through a KVM ioeventfd and handled on the event loop (wake-ups; KVM may fold
    /// several writes into one).
    pub ioeventfd: u64,
}

/// What [`VirtioPciDevices::attach`] set up.
pub struct PciAttachment {
    /// Event-loop subscribers for the queue ioeventfds (one per device whose ioeventfds KVM
    /// accepted).
    pub notifiers: Vec<QueueNotifier>,
    /// Each device's notification counters, by device id in plan order.
    pub notify_stats: Vec<(String, Arc<NotifyStats>)>,
    /// Each function: device id, slot on bus 0, the transport (for snapshots).
    pub functions: Vec<(String, u8, Arc<Mutex<VirtioPciDevice>>)>,
}

impl PciAttachment {
    /// The current notification counts of every device.
    #[cfg(feature = "testing")]
    pub fn notify_counts(stats: &[(String, Arc<NotifyStats>)]) -> Vec<VirtioNotifyCount> {
        stats
            .iter()
            .map(|(id, stats)| VirtioNotifyCount {
                id: id.clone(),
                vcpu: stats.vcpu(),
                ioeventfd: stats.ioeventfd(),
            })
            .collect()
    }
}

/// Where a virtio-PCI device was placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// Device id from the config.
    pub id: String,
    /// Virtio device type.
    pub device_type: u32,
    /// Device number on bus 0.
    pub slot: u8,
    /// BAR 0 address.
    pub bar_address: u64,
}

/// The virtio-PCI plan: host bridge windows and each device's slot and BAR.
#[derive(Clone, Debug)]
pub struct VirtioPciDevices {
    host: PciHostInfo,
    devices: Vec<PciDeviceInfo>,
}

impl VirtioPciDevices {
    /// Gives each `(id, device type)` a slot (from 1; the host bridge is 0) and a BAR address
    /// from `resources`.
    pub fn plan(devices: &[(String, u32)], resources: &mut Resources) -> Result<Self, PciError> {
        let host = resources.pci_host().clone();
        let mut planned = Vec::new();
        for (index, (id, device_type)) in devices.iter().enumerate() {
            let slot = u8::try_from(index + 1)
                .ok()
                .filter(|&slot| usize::from(slot) < devices::pci::bus::MAX_DEVICES)
                .ok_or_else(|| PciError::Bus(PciBusError::NoFreeSlot { name: id.clone() }))?;
            let bar_address = resources
                .bar(VIRTIO_PCI_BAR_SIZE)
                .ok_or_else(|| PciError::NoBarSpace { id: id.clone() })?;
            planned.push(PciDeviceInfo {
                id: id.clone(),
                device_type: *device_type,
                slot,
                bar_address,
            });
        }
        Ok(VirtioPciDevices {
            host,
            devices: planned,
        })
    }

    /// The host bridge's windows.
    pub fn host(&self) -> &PciHostInfo {
        &self.host
    }

    /// The planned devices.
    #[cfg(any(test, feature = "testing"))]
    pub fn devices(&self) -> &[PciDeviceInfo] {
        &self.devices
    }

    /// Builds the PCI bus with `devices` (in plan order) behind virtio-PCI transports, connects
    /// their MSI-X vectors to KVM, registers one ioeventfd per queue at its notification address
    /// (following BAR 0 when the guest moves it), and registers config access and BAR windows on
    /// `pio`/`mmio`. The returned notifiers belong on the event loop.
    pub fn attach(
        &self,
        vm: &Arc<VmFd>,
        pio: &mut Bus,
        mmio: &mut Bus,
        mem: &GuestMemoryMmap,
        devices: Vec<SharedVirtioDevice>,
        resources: &mut Resources,
    ) -> Result<PciAttachment, PciError> {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let routing = Arc::new(Mutex::new(GsiRoutingTable::new()));
        let mut notifiers = Vec::new();
        let mut functions = Vec::new();
        let mut notify_stats = Vec::new();
        for (info, device) in self.devices.iter().zip(devices) {
            let queues = lock(&device).queue_max_sizes().len();
            let vectors = VirtioPciDevice::msix_vectors(queues);
            let gsis = resources
                .msi_gsis(vectors)
                .ok_or_else(|| PciError::NoGsi {
                    id: info.id.clone(),
                    vectors,
                })?;
            let route = match KvmMsiRoute::new(&info.id, vm.clone(), routing.clone(), gsis.clone())
            {
                Ok(route) => route,
                Err(err) => {
                    // Nothing holds the GSIs now; the VM fails to build either way.
                    let _ = resources.free_msi_gsis(gsis);
                    return Err(err);
                }
            };
            let transport = VirtioPciDevice::new(
                device.clone(),
                mem.clone(),
                info.bar_address,
                Arc::new(route),
            )
            .map_err(|source| PciError::Device {
                id: info.id.clone(),
                source,
            })?;
            let stats = transport.notify_stats();
            let transport = Arc::new(Mutex::new(transport));
            let placed = lock(&bus).add_device(&info.id, transport.clone())?;
            functions.push((info.id.clone(), placed, transport));
            if placed != info.slot {
                return Err(PciError::SlotMismatch {
                    id: info.id.clone(),
                    planned: info.slot,
                    placed,
                });
            }
            if let Some((ioeventfds, notifier)) = QueueIoeventfds::attach(
                &info.id,
                vm,
                NotifyLayout::Pci,
                info.bar_address,
                device,
                stats.clone(),
            ) {
                lock(&bus).add_relocation_listener(Arc::new(NotifyRelocation {
                    slot: placed,
                    ioeventfds: Mutex::new(ioeventfds),
                }));
                notifiers.push(notifier);
            }
            notify_stats.push((info.id.clone(), stats));
        }
        pio.insert(
            "pci-config-io",
            PCI_CONFIG_IO_PORT,
            PCI_CONFIG_IO_PORT_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
        )?;
        mmio.insert(
            "pci-ecam",
            self.host.ecam.start,
            ECAM_BUS_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
        )?;
        for (name, window) in [
            ("pci-mmio32", &self.host.mmio32),
            ("pci-mmio64", &self.host.mmio64),
        ] {
            lock(&bus).add_bar_window(window.clone());
            mmio.insert(
                name,
                window.start,
                window.end - window.start,
                Arc::new(Mutex::new(PciMmioWindow::new(bus.clone(), window.start))),
            )?;
        }
        Ok(PciAttachment {
            notifiers,
            notify_stats,
            functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_place_bars_inside_the_32_bit_window_without_overlap() {
        let mut resources = Resources::new(512 << 20).unwrap();
        let wanted: Vec<(String, u32)> = (0..31).map(|i| (format!("d{i}"), 2)).collect();
        let plan = VirtioPciDevices::plan(&wanted, &mut resources).unwrap();
        let host = plan.host();
        let mut previous_end = 0;
        for (index, device) in plan.devices().iter().enumerate() {
            assert_eq!(usize::from(device.slot), index + 1);
            assert!(host.mmio32.contains(&device.bar_address));
            assert!(device.bar_address >= previous_end);
            assert_eq!(device.bar_address % VIRTIO_PCI_BAR_SIZE, 0);
            previous_end = device.bar_address + VIRTIO_PCI_BAR_SIZE;
        }
        assert!(previous_end <= host.mmio32.end);
        let mut too_many = wanted;
        too_many.push(("extra".into(), 2));
        assert!(matches!(
            VirtioPciDevices::plan(&too_many, &mut Resources::new(512 << 20).unwrap()),
            Err(PciError::Bus(PciBusError::NoFreeSlot { ref name })) if name == "extra"
        ));
    }
}
