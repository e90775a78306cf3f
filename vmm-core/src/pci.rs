//! Virtio devices on PCI: the host bridge's address windows, BAR placement, and MSI-X delivered
//! through KVM (one irqfd and one GSI route per vector).
//!
//! [`VirtioPciDevices::plan`] runs before KVM exists, so the ACPI tables (DSDT host bridge, MCFG)
//! can describe the bus: each device gets a slot and a BAR address pre-assigned from the 32-bit
//! window (then the 64-bit one), which Linux keeps as the firmware assignment.
//! [`VirtioPciDevices::attach`] then puts the bus on the VM's buses: ports 0xCF8..0xCFF, the ECAM
//! window for bus 0, and the two BAR windows (the PCI bus re-routes a BAR the guest moves inside
//! them, so the VMM's MMIO bus never changes after start).
//!
//! MSI-X: `KVM_SET_GSI_ROUTING` replaces the whole routing table, so [`GsiRoutingTable`] keeps
//! the routes KVM installs by default (GSI 0-15 to both PICs and the IOAPIC, 16-23 to the
//! IOAPIC; virtio-mmio and the serial port rely on them) plus one MSI route per programmed
//! vector, and re-installs it whole when a vector's message changes.
//!
//! Queue notifications: each device's queues get one KVM ioeventfd each, at
//! `BAR 0 + queue_notify_offset(n)` (every queue has an address of its own, so no data match),
//! processed by a [`QueueNotifier`] on the event loop as for virtio-mmio. When the guest moves
//! BAR 0, the PCI bus tells a [`BarRelocationListener`] of the device's, which unregisters the
//! ioeventfds from the old address and registers them at the new one before the guest's config
//! write completes (or nowhere, if the bus no longer decodes the BAR). The bus keeps decoding a
//! BAR at its last address while memory decoding is off, so the ioeventfds stay with it then too:
//! they always sit where the bus routes the BAR. Where KVM refuses an ioeventfd, the driver's
//! write exits to the VMM and the transport notifies the device on the vCPU thread.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::bus::Bus;
use devices::pci::bus::{
    BarRelocation, BarRelocationListener, PciBus, PciBusError, PciConfigIo, PciConfigMmio,
    PciMmioWindow, ECAM_BUS_SIZE, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN,
};
use devices::pci::msix::{MsiInterruptRoute, MsiMessage};
use devices::virtio::mmio::SharedVirtioDevice;
use devices::virtio::pci::{VirtioPciDevice, VirtioPciError, VIRTIO_PCI_BAR_SIZE};
use devices::virtio::NotifyStats;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use log::debug;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device_manager::{NotifyLayout, QueueIoeventfds, QueueNotifier};
use crate::layout;

/// GSIs 0..24 are the IOAPIC's pins; MSI routes start after them.
pub const MSI_GSI_START: u32 = 24;
/// Most GSI routes KVM accepts.
pub const MAX_GSI_ROUTES: u32 = 4096;
/// IOAPIC pins KVM routes by default.
const IOAPIC_PINS: u32 = 24;
/// Legacy PIC lines (two cascaded 8259s) KVM routes by default.
const PIC_PINS: u32 = 16;

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

/// Where a GSI is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsiRoute {
    /// A pin of an in-kernel interrupt controller (`KVM_IRQCHIP_*`).
    Irqchip {
        /// `KVM_IRQCHIP_PIC_MASTER`, `KVM_IRQCHIP_PIC_SLAVE` or `KVM_IRQCHIP_IOAPIC`.
        chip: u32,
        /// Pin on that controller.
        pin: u32,
    },
    /// An MSI message.
    Msi(MsiMessage),
}

/// The VM's full GSI routing table, as `KVM_SET_GSI_ROUTING` wants it.
#[derive(Debug, Clone)]
pub struct GsiRoutingTable {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

impl Default for GsiRoutingTable {
    fn default() -> Self {
        Self::new()
    }
}

impl GsiRoutingTable {
    /// KVM's default routes only, no MSI routes.
    pub fn new() -> Self {
        GsiRoutingTable {
            msi: BTreeMap::new(),
            next_gsi: MSI_GSI_START,
        }
    }

    /// Reserves `count` consecutive GSIs for MSI routes.
    pub fn allocate(&mut self, count: u16) -> Option<Range<u32>> {
        let start = self.next_gsi;
        let end = start.checked_add(u32::from(count))?;
        if end > MAX_GSI_ROUTES {
            return None;
        }
        self.next_gsi = end;
        Some(start..end)
    }

    /// Routes `gsi` to `message`; returns whether the table changed.
    pub fn set_msi(&mut self, gsi: u32, message: MsiMessage) -> bool {
        self.msi.insert(gsi, message) != Some(message)
    }

    /// Every route: KVM's defaults (GSI 0-15 to the IOAPIC and the PICs, 16-23 to the IOAPIC)
    /// then the MSI routes, by GSI.
    pub fn routes(&self) -> Vec<(u32, GsiRoute)> {
        let mut routes = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            routes.push((
                gsi,
                GsiRoute::Irqchip {
                    chip: KVM_IRQCHIP_IOAPIC,
                    pin: gsi,
                },
            ));
            if gsi < PIC_PINS {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                routes.push((gsi, GsiRoute::Irqchip { chip, pin: gsi % 8 }));
            }
        }
        routes.extend(self.msi.iter().map(|(gsi, m)| (*gsi, GsiRoute::Msi(*m))));
        routes
    }

    /// The table in KVM's format.
    pub fn to_kvm(&self) -> Result<KvmIrqRouting, vmm_sys_util::fam::Error> {
        let entries: Vec<kvm_irq_routing_entry> = self
            .routes()
            .into_iter()
            .map(|(gsi, route)| {
                let mut entry = kvm_irq_routing_entry {
                    gsi,
                    ..Default::default()
                };
                match route {
                    GsiRoute::Irqchip { chip, pin } => {
                        entry.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                        entry.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
                    }
                    GsiRoute::Msi(message) => {
                        entry.type_ = KVM_IRQ_ROUTING_MSI;
                        entry.u.msi = kvm_irq_routing_msi {
                            address_lo: message.address as u32,
                            address_hi: (message.address >> 32) as u32,
                            data: message.data,
                            ..Default::default()
                        };
                    }
                }
                entry
            })
            .collect();
        KvmIrqRouting::from_entries(&entries)
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// MSI-X delivery for one device: vector *n* is an irqfd on GSI `first_gsi + n`, whose route
/// follows the message the guest programs.
pub struct KvmMsiRoute {
    vm: Arc<VmFd>,
    routing: Arc<Mutex<GsiRoutingTable>>,
    gsis: Range<u32>,
    irqfds: Vec<EventFd>,
}

impl KvmMsiRoute {
    /// Creates and registers one irqfd per GSI in `gsis`.
    fn new(
        id: &str,
        vm: Arc<VmFd>,
        routing: Arc<Mutex<GsiRoutingTable>>,
        gsis: Range<u32>,
    ) -> Result<Self, PciError> {
        let mut irqfds = Vec::new();
        for (vector, gsi) in gsis.clone().enumerate() {
            let irq_error = |detail: String| PciError::Irq {
                id: id.to_string(),
                vector: vector as u16,
                gsi,
                detail,
            };
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|err| irq_error(err.to_string()))?;
            vm.register_irqfd(&fd, gsi)
                .map_err(|err| irq_error(err.to_string()))?;
            irqfds.push(fd);
        }
        Ok(KvmMsiRoute {
            vm,
            routing,
            gsis,
            irqfds,
        })
    }
}

impl MsiInterruptRoute for KvmMsiRoute {
    fn fire(&self, vector: u16) -> std::io::Result<()> {
        match self.irqfds.get(usize::from(vector)) {
            Some(fd) => fd.write(1),
            None => Err(std::io::Error::other(format!(
                "no irqfd for vector {vector}"
            ))),
        }
    }

    fn update(&self, vector: u16, message: MsiMessage, masked: bool) -> std::io::Result<()> {
        // Masking is handled by the MSI-X table (it does not fire masked vectors), so the route
        // only follows the message.
        let _ = masked;
        let gsi = self.gsis.start + u32::from(vector);
        if !self.gsis.contains(&gsi) || message.address == 0 {
            return Ok(());
        }
        let mut routing = lock(&self.routing);
        if routing.set_msi(gsi, message) {
            debug!(
                "pci: GSI {gsi} -> MSI {:#x}/{:#x}",
                message.address, message.data
            );
            let table = routing
                .to_kvm()
                .map_err(|err| std::io::Error::other(format!("{err:?}")))?;
            self.vm
                .set_gsi_routing(&table)
                .map_err(|err| std::io::Error::other(err.to_string()))?;
        }
        Ok(())
    }
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

/// Hands out naturally aligned BAR addresses from the 32-bit window, then the 64-bit one.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    windows: Vec<Range<u64>>,
    next: Vec<u64>,
}

impl BarAllocator {
    /// Allocates from `windows` in order.
    pub fn new(windows: &[Range<u64>]) -> Self {
        BarAllocator {
            windows: windows.to_vec(),
            next: windows.iter().map(|w| w.start).collect(),
        }
    }

    /// A `size`-aligned range of `size` bytes (a power of two), or `None` when full.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        for (window, next) in self.windows.iter().zip(self.next.iter_mut()) {
            let Some(address) = next.checked_next_multiple_of(size) else {
                continue;
            };
            let Some(end) = address.checked_add(size) else {
                continue;
            };
            if end <= window.end {
                *next = end;
                return Some(address);
            }
        }
        None
    }
}

/// The host bridge's resources, for the ACPI tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHostInfo {
    /// ECAM window for bus 0.
    pub ecam: Range<u64>,
    /// 32-bit BAR window.
    pub mmio32: Range<u64>,
    /// 64-bit BAR window.
    pub mmio64: Range<u64>,
}

impl PciHostInfo {
    /// Keel's windows for a VM with `memory_bytes` of RAM.
    pub fn for_memory(memory_bytes: u64) -> Self {
        PciHostInfo {
            ecam: layout::PCI_ECAM_START..layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE,
            mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE,
            mmio64: layout::pci_mmio64_window(memory_bytes),
        }
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
    /// Gives each `(id, device type)` a slot (from 1; the host bridge is 0) and a BAR address.
    pub fn plan(devices: &[(String, u32)], memory_bytes: u64) -> Result<Self, PciError> {
        let host = PciHostInfo::for_memory(memory_bytes);
        let mut allocator = BarAllocator::new(&[host.mmio32.clone(), host.mmio64.clone()]);
        let mut planned = Vec::new();
        for (index, (id, device_type)) in devices.iter().enumerate() {
            let slot = index + 1;
            if slot >= devices::pci::bus::MAX_DEVICES {
                return Err(PciError::Bus(PciBusError::NoFreeSlot { name: id.clone() }));
            }
            let bar_address = allocator
                .allocate(VIRTIO_PCI_BAR_SIZE)
                .ok_or_else(|| PciError::NoBarSpace { id: id.clone() })?;
            planned.push(PciDeviceInfo {
                id: id.clone(),
                device_type: *device_type,
                slot: slot as u8,
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
    ) -> Result<PciAttachment, PciError> {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let routing = Arc::new(Mutex::new(GsiRoutingTable::new()));
        let mut notifiers = Vec::new();
        let mut notify_stats = Vec::new();
        for (info, device) in self.devices.iter().zip(devices) {
            let queues = lock(&device).queue_max_sizes().len();
            let vectors = VirtioPciDevice::msix_vectors(queues);
            let gsis = lock(&routing)
                .allocate(vectors)
                .ok_or_else(|| PciError::NoGsi {
                    id: info.id.clone(),
                    vectors,
                })?;
            let route = KvmMsiRoute::new(&info.id, vm.clone(), routing.clone(), gsis)?;
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
            let placed = lock(&bus).add_device(&info.id, Arc::new(Mutex::new(transport)))?;
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table_keeps_kvm_defaults_and_adds_one_msi_route_per_vector() {
        let mut table = GsiRoutingTable::new();
        let routes = table.routes();
        assert_eq!(routes.len(), 24 + 16, "IOAPIC pins plus PIC pins");
        assert!(routes.contains(&(
            4,
            GsiRoute::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: 4
            }
        )));
        assert!(routes.contains(&(
            4,
            GsiRoute::Irqchip {
                chip: KVM_IRQCHIP_PIC_MASTER,
                pin: 4
            }
        )));
        assert!(routes.contains(&(
            10,
            GsiRoute::Irqchip {
                chip: KVM_IRQCHIP_PIC_SLAVE,
                pin: 2
            }
        )));
        assert!(!routes.iter().any(|(gsi, route)| *gsi >= 16
            && matches!(route, GsiRoute::Irqchip { chip, .. } if *chip != KVM_IRQCHIP_IOAPIC)));

        let first = table.allocate(3).unwrap();
        let second = table.allocate(2).unwrap();
        assert_eq!((first.clone(), second), (24..27, 27..29));
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x31,
        };
        assert!(table.set_msi(25, message));
        assert!(!table.set_msi(25, message), "unchanged");
        assert!(table.set_msi(26, message));
        let routes = table.routes();
        assert_eq!(routes.len(), 42);
        assert_eq!(routes.last(), Some(&(26, GsiRoute::Msi(message))));
        let kvm = table.to_kvm().unwrap();
        let entries = kvm.as_slice();
        assert_eq!(entries.len(), 42);
        assert_eq!(entries[40].gsi, 25);
        assert_eq!(entries[40].type_, KVM_IRQ_ROUTING_MSI);
        assert_eq!(entries[0].type_, KVM_IRQ_ROUTING_IRQCHIP);
        assert!(table.allocate(5000).is_none());
    }

    #[test]
    fn bars_are_aligned_and_spill_into_the_64_bit_window() {
        let mut allocator = BarAllocator::new(&[0x1000..0x10000, 0x1_0000_0000..0x2_0000_0000]);
        assert_eq!(allocator.allocate(0x8000), Some(0x8000), "aligned up");
        assert_eq!(
            allocator.allocate(0x1000),
            Some(0x1_0000_0000),
            "low window full"
        );
        assert_eq!(allocator.allocate(0x8000), Some(0x1_0000_8000));
        assert_eq!(allocator.allocate(0x3000), None, "not a power of two");
        assert_eq!(allocator.allocate(0x1_0000_0000), None, "too big");
    }

    #[test]
    fn plans_place_bars_inside_the_32_bit_window_without_overlap() {
        let wanted: Vec<(String, u32)> = (0..31).map(|i| (format!("d{i}"), 2)).collect();
        let plan = VirtioPciDevices::plan(&wanted, 512 << 20).unwrap();
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
            VirtioPciDevices::plan(&too_many, 512 << 20),
            Err(PciError::Bus(PciBusError::NoFreeSlot { ref name })) if name == "extra"
        ));
    }

    #[test]
    fn windows_avoid_ram_the_ioapic_and_virtio_mmio() {
        for memory in [128u64 << 20, 3 << 30, 8 << 30] {
            let host = PciHostInfo::for_memory(memory);
            let ram_end = layout::ram_regions(memory)
                .iter()
                .map(|(start, size)| start.0 + size)
                .max()
                .unwrap();
            assert!(host.mmio64.start >= ram_end.max(layout::MMIO_GAP_END));
            assert!(host.mmio32.start >= layout::MMIO_GAP_START);
            assert!(host.mmio32.end <= crate::device_manager::MMIO_DEVICES_START);
            assert!(host.ecam.start >= crate::device_manager::MMIO_DEVICES_START + 0x10_0000);
            assert!(host.ecam.end <= layout::IOAPIC_START);
        }
    }
}
