//! Placement of virtio-mmio devices: MMIO windows, interrupt lines, KVM irqfds, and how the
//! guest learns about them (DSDT entries, optional `virtio_mmio.device=` command-line entries).
//!
//! Queue notifications of both transports go through KVM ioeventfds when KVM accepts them:
//! [`QueueIoeventfds`] holds a device's eventfds and their registration (which follows a moved
//! virtio-pci BAR, see [`crate::pci`]), and [`QueueNotifier`] is the event-loop subscriber that
//! runs the device when one of them fires.

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{BlockConfig, IoMode, VirtioBlock};
use devices::virtio::net::{Net, NetConfig as NetDeviceConfig, TapSource};
use devices::virtio::rng::VirtioRng;
use devices::virtio::vsock::{Vsock, VsockConfig as VsockDeviceConfig};
use event_manager::{EventOps, Events, MutEventSubscriber};

use devices::bus::Bus;
use devices::virtio::mmio::{
    MmioTransport, SharedVirtioDevice, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use devices::virtio::pci::queue_notify_offset;
use devices::virtio::NotifyStats;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use log::{debug, warn};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{parse_mac, VmConfig};

/// First virtio-mmio window, in the 32-bit device hole below the IOAPIC.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// ISA/IOAPIC lines free for virtio-mmio devices (0 timer, 1 keyboard, 2 cascade, 3-4 serial,
/// 8 RTC and [`GED_IRQ`] are taken).
const FREE_IRQS: [u32; 17] = [
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
];
/// Interrupt line of the ACPI Generic Event Device (the power button), edge-triggered.
pub const GED_IRQ: u32 = 23;

/// Where a virtio-mmio device lives, as the guest must be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Device id from the config.
    pub id: String,
    /// Virtio device type.
    pub device_type: u32,
    /// Window base address.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Interrupt line (GSI), edge-triggered.
    pub irq: u32,
}

impl MmioDeviceInfo {
    /// The Linux command-line entry describing this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size / 1024,
            self.base,
            self.irq
        )
    }
}

/// Errors placing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// No interrupt line is left.
    #[error("device `{0}`: no free interrupt line left for another virtio-mmio device")]
    NoIrq(String),
    /// Creating the interrupt eventfd or registering it with KVM failed.
    #[error("device `{id}`: cannot connect its interrupt line {irq}: {detail}")]
    Irq {
        /// Device id.
        id: String,
        /// The line.
        irq: u32,
        /// Cause.
        detail: String,
    },
    /// The transport refused the device.
    #[error("device `{id}`: {source}")]
    Transport {
        /// Device id.
        id: String,
        /// Cause.
        source: devices::virtio::mmio::TransportError,
    },
    /// The MMIO bus refused the window.
    #[error(transparent)]
    Bus(#[from] devices::bus::BusError),
    /// A device could not be created from its config (file, TAP or socket problems).
    #[error("device `{id}`: {detail}")]
    Create {
        /// Device id.
        id: String,
        /// What went wrong, naming the config field.
        detail: String,
    },
}

/// Where a transport puts its queues' notification addresses, and how KVM tells queues apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyLayout {
    /// virtio-mmio: every queue writes its index (32 bits) to `QueueNotify`; KVM matches the
    /// value.
    Mmio,
    /// virtio-pci: queue `n` has an address of its own in BAR 0
    /// ([`devices::virtio::pci::queue_notify_offset`]); KVM matches the address alone, any width
    /// and value (Linux writes the queue index as 16 bits).
    Pci,
}

impl NotifyLayout {
    /// The address queue `index` notifies at when the transport's window or BAR is at `base`.
    fn address(self, base: u64, index: u16) -> Option<IoEventAddress> {
        let offset = match self {
            NotifyLayout::Mmio => QUEUE_NOTIFY_OFFSET,
            NotifyLayout::Pci => queue_notify_offset(index),
        };
        base.checked_add(offset).map(IoEventAddress::Mmio)
    }

    /// Registers (`assign`) or removes the ioeventfd `fd` of queue `index`.
    fn ioctl(
        self,
        vm: &VmFd,
        fd: &EventFd,
        base: u64,
        index: u16,
        assign: bool,
    ) -> std::io::Result<()> {
        let address = self
            .address(base, index)
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "address beyond 2^64"))?;
        let result = match (self, assign) {
            (NotifyLayout::Mmio, true) => vm.register_ioevent(fd, &address, u32::from(index)),
            (NotifyLayout::Mmio, false) => vm.unregister_ioevent(fd, &address, u32::from(index)),
            (NotifyLayout::Pci, true) => vm.register_ioevent(fd, &address, NoDatamatch),
            (NotifyLayout::Pci, false) => vm.unregister_ioevent(fd, &address, NoDatamatch),
        };
        result.map_err(|err| std::io::Error::from_raw_os_error(err.errno()))
    }
}

/// One eventfd per queue of a device, and where KVM has them registered as ioeventfds.
///
/// The eventfds live as long as the device and the event loop keeps watching them; only their
/// KVM registration moves ([`QueueIoeventfds::relocate`], when the guest moves a virtio-pci BAR).
/// Dropping this leaves the registrations in place (they end with the VM).
pub struct QueueIoeventfds {
    id: String,
    vm: Arc<VmFd>,
    layout: NotifyLayout,
    fds: Vec<EventFd>,
    base: Option<u64>,
}

impl QueueIoeventfds {
    /// Creates `queues` eventfds for device `id`, registered nowhere yet.
    pub fn new(
        id: &str,
        vm: Arc<VmFd>,
        layout: NotifyLayout,
        queues: usize,
    ) -> std::io::Result<Self> {
        let fds = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(QueueIoeventfds {
            id: id.to_string(),
            vm,
            layout,
            fds,
            base: None,
        })
    }

    /// The window or BAR base address the eventfds are registered for, if any.
    #[cfg(any(test, feature = "testing"))]
    pub fn base(&self) -> Option<u64> {
        self.base
    }

    /// Registers every queue's eventfd at its address for a window or BAR at `base` (moving
    /// them from wherever they were). All or nothing: on failure the ones registered are removed
    /// again, nothing stays registered, and the error is returned.
    pub fn register(&mut self, base: u64) -> std::io::Result<()> {
        self.unregister();
        for (index, fd) in self.fds.iter().enumerate() {
            let index = index as u16;
            if let Err(err) = self.layout.ioctl(&self.vm, fd, base, index, true) {
                for (done, fd) in self.fds.iter().enumerate().take(usize::from(index)) {
                    let _ = self.layout.ioctl(&self.vm, fd, base, done as u16, false);
                }
                return Err(err);
            }
        }
        self.base = Some(base);
        Ok(())
    }

    /// Removes every registration.
    pub fn unregister(&mut self) {
        let Some(base) = self.base.take() else {
            return;
        };
        for (index, fd) in self.fds.iter().enumerate() {
            if let Err(err) = self.layout.ioctl(&self.vm, fd, base, index as u16, false) {
                devices::guest_warn!(
                    "device `{}`: cannot remove the ioeventfd of queue {index} at base {base:#x}: {err}",
                    self.id
                );
            }
        }
    }

    /// Follows the transport to `base` (`None`: the guest can no longer reach it): the old
    /// registrations go first, so KVM never signals a queue for an address the device has left.
    /// Returns whether the eventfds are registered at `base`; when KVM refuses them, the
    /// driver's notifications exit to the VMM and the transport handles them on the vCPU thread.
    pub fn relocate(&mut self, base: Option<u64>) -> bool {
        self.unregister();
        let Some(base) = base else {
            debug!("device `{}`: queue ioeventfds removed", self.id);
            return false;
        };
        match self.register(base) {
            Ok(()) => {
                debug!("device `{}`: queue ioeventfds at base {base:#x}", self.id);
                true
            }
            Err(err) => {
                devices::guest_warn!(
                    "device `{}`: no queue ioeventfds at base {base:#x} ({err}); notifications stay on the vCPU thread",
                    self.id
                );
                false
            }
        }
    }

    /// The event-loop subscriber that runs `device` when one of these eventfds fires, counting
    /// each wake-up in `stats`.
    pub fn notifier(
        &self,
        device: SharedVirtioDevice,
        stats: Arc<NotifyStats>,
    ) -> std::io::Result<QueueNotifier> {
        Ok(QueueNotifier {
            id: self.id.clone(),
            device,
            queues: self
                .fds
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?,
            stats,
        })
    }

    /// Creates and registers the eventfds of `device` (device `id`, its transport at `base`)
    /// and returns them with their event-loop subscriber; `None` (after a warning) when an
    /// eventfd cannot be created or KVM refuses one: the transport then handles notifications
    /// on the vCPU thread.
    pub fn attach(
        id: &str,
        vm: &Arc<VmFd>,
        layout: NotifyLayout,
        base: u64,
        device: SharedVirtioDevice,
        stats: Arc<NotifyStats>,
    ) -> Option<(Self, QueueNotifier)> {
        let queues = match device.lock() {
            Ok(device) => device.queue_max_sizes().len(),
            Err(poisoned) => poisoned.into_inner().queue_max_sizes().len(),
        };
        let attached = Self::new(id, vm.clone(), layout, queues).and_then(|mut ioeventfds| {
            ioeventfds.register(base)?;
            let notifier = ioeventfds.notifier(device, stats)?;
            Ok((ioeventfds, notifier))
        });
        match attached {
            Ok(attached) => Some(attached),
            Err(err) => {
                warn!(
                    "device `{id}`: no queue ioeventfds ({err}); notifications stay on the vCPU thread"
                );
                None
            }
        }
    }
}

/// Processes a device's queues when the driver notifies them through a KVM ioeventfd: the
/// driver's write to the notification address completes in the kernel without an exit to the
/// VMM, and this event-loop subscriber runs the device while the vCPU goes on.
pub struct QueueNotifier {
    id: String,
    device: SharedVirtioDevice,
    queues: Vec<EventFd>,
    stats: Arc<NotifyStats>,
}

impl MutEventSubscriber for QueueNotifier {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, fd) in self.queues.iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(fd, index as u32, EventSet::IN)) {
                warn!("device `{}`: cannot watch queue {index}: {err:?}", self.id);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data();
        if let Some(fd) = self.queues.get(index as usize) {
            // The count of notifications does not matter: one pass drains the queue.
            let _ = fd.read();
            self.stats.record_ioeventfd();
            match self.device.lock() {
                Ok(mut device) => device.queue_notify(index as u16),
                Err(poisoned) => poisoned.into_inner().queue_notify(index as u16),
            }
        }
    }
}

/// A virtio device created from the config, before it is placed.
pub struct VirtioDeviceEntry {
    /// Device id from the config.
    pub id: String,
    /// The device.
    pub device: SharedVirtioDevice,
    /// Host-side event handling for the event loop, for devices that have any.
    pub subscriber: Option<Box<dyn MutEventSubscriber + Send>>,
    /// The typed device when it is a NIC (for announcements after a migration).
    pub(crate) net: Option<Arc<Mutex<Net>>>,
}

impl VirtioDeviceEntry {
    pub(crate) fn new<D: devices::virtio::VirtioDevice + 'static>(id: &str, device: D) -> Self {
        VirtioDeviceEntry {
            id: id.to_string(),
            device: Arc::new(Mutex::new(device)),
            subscriber: None,
            net: None,
        }
    }

    /// A NIC: a device with host-side events whose typed handle is kept.
    pub(crate) fn nic(id: &str, net: Net) -> Self {
        let shared = Arc::new(Mutex::new(net));
        VirtioDeviceEntry {
            id: id.to_string(),
            device: shared.clone(),
            subscriber: Some(Box::new(shared.clone())),
            net: Some(shared),
        }
    }

    /// A device the caller already shares (and keeps a typed handle to).
    pub(crate) fn shared<D: devices::virtio::VirtioDevice + 'static>(
        id: &str,
        device: Arc<Mutex<D>>,
    ) -> Self {
        VirtioDeviceEntry {
            id: id.to_string(),
            device,
            subscriber: None,
            net: None,
        }
    }

    /// A device that also handles host-side events in the event loop.
    pub(crate) fn with_events<D>(id: &str, device: D) -> Self
    where
        D: devices::virtio::VirtioDevice + MutEventSubscriber + 'static,
    {
        let shared = Arc::new(Mutex::new(device));
        VirtioDeviceEntry {
            id: id.to_string(),
            device: shared.clone(),
            subscriber: Some(Box::new(shared)),
            net: None,
        }
    }

    /// The device's virtio type.
    pub fn device_type(&self) -> u32 {
        match self.device.lock() {
            Ok(device) => device.device_type(),
            Err(poisoned) => poisoned.into_inner().device_type(),
        }
    }
}

/// Creates every virtio device the config asks for, in a fixed order (disks, network cards,
/// vsock, rng), opening their host-side resources. Runs before KVM is touched, so a missing
/// image or a bad TAP name fails early. `tap_fds` are TAP descriptors the builder was given,
/// by NIC id: each is taken by the NIC of that id, which must have no TAP name.
pub fn create_virtio_devices(
    config: &VmConfig,
    tap_fds: &mut Vec<(String, std::os::fd::OwnedFd)>,
) -> Result<Vec<VirtioDeviceEntry>, DeviceManagerError> {
    if let Some((id, _)) = tap_fds
        .iter()
        .find(|(id, _)| !config.nets.iter().any(|nic| &nic.id == id))
    {
        return Err(DeviceManagerError::Create {
            id: id.clone(),
            detail: "a TAP descriptor was given for it, but the config has no NIC with that id"
                .into(),
        });
    }
    let mut entries = Vec::new();
    for disk in &config.disks {
        let block = VirtioBlock::new(&BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            direct: disk.direct,
            id: disk.id.clone(),
        })
        .map_err(|err| DeviceManagerError::Create {
            id: disk.id.clone(),
            detail: err.to_string(),
        })?;
        // Requests on the disk's own I/O thread (io_uring when the host has it): a slow disk
        // never holds up the event loop the NICs and consoles share.
        let mut block = block;
        block.set_io_mode(IoMode::Thread);
        entries.push(VirtioDeviceEntry::new(&disk.id, block));
    }
    for nic in &config.nets {
        let mac = nic
            .mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|reason| DeviceManagerError::Create {
                id: nic.id.clone(),
                detail: format!("field `mac`: {reason}"),
            })?;
        let given = tap_fds
            .iter()
            .position(|(id, _)| id == &nic.id)
            .map(|at| tap_fds.remove(at).1);
        let (tap, what) = match (given, nic.tap.is_empty()) {
            (Some(fd), true) => (TapSource::Fd(fd), "the TAP descriptor given".to_string()),
            (None, false) => (
                TapSource::Name(nic.tap.clone()),
                format!("field `tap` ({})", nic.tap),
            ),
            (Some(_), false) => {
                return Err(DeviceManagerError::Create {
                    id: nic.id.clone(),
                    detail: format!(
                        "field `tap` names {} and a TAP descriptor was given too: one or the other",
                        nic.tap
                    ),
                })
            }
            (None, true) => {
                return Err(DeviceManagerError::Create {
                    id: nic.id.clone(),
                    detail: "field `tap` is empty and no TAP descriptor was given \
                             (VmBuilder::tap_fd)"
                        .into(),
                })
            }
        };
        let net = Net::new(NetDeviceConfig {
            id: nic.id.clone(),
            tap,
            mac,
        })
        .map_err(|err| DeviceManagerError::Create {
            id: nic.id.clone(),
            detail: format!("{what}: {err}"),
        })?;
        entries.push(VirtioDeviceEntry::nic(&nic.id, net));
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(VsockDeviceConfig {
            id: vsock.id.clone(),
            guest_cid: vsock.guest_cid,
            uds_path: vsock.uds_path.clone(),
        })
        .map_err(|err| DeviceManagerError::Create {
            id: vsock.id.clone(),
            detail: err.to_string(),
        })?;
        entries.push(VirtioDeviceEntry::with_events(&vsock.id, device));
    }
    if let Some(rng) = &config.rng {
        entries.push(VirtioDeviceEntry::new(&rng.id, VirtioRng::new()));
    }
    Ok(entries)
}

/// Plans where each virtio-mmio device goes (before KVM exists, so the command line and ACPI
/// tables can be written first), then attaches the devices to the VM.
#[derive(Debug, Default)]
pub struct VirtioMmioDevices {
    devices: Vec<MmioDeviceInfo>,
}

impl VirtioMmioDevices {
    /// Gives each `(id, device type)` a window and an interrupt line, in order.
    pub fn plan(devices: &[(String, u32)]) -> Result<Self, DeviceManagerError> {
        let devices = devices
            .iter()
            .enumerate()
            .map(|(index, (id, device_type))| {
                let irq = *FREE_IRQS
                    .get(index)
                    .ok_or_else(|| DeviceManagerError::NoIrq(id.clone()))?;
                Ok(MmioDeviceInfo {
                    id: id.clone(),
                    device_type: *device_type,
                    base: MMIO_DEVICES_START + index as u64 * MMIO_WINDOW_SIZE,
                    size: MMIO_WINDOW_SIZE,
                    irq,
                })
            })
            .collect::<Result<Vec<_>, DeviceManagerError>>()?;
        Ok(VirtioMmioDevices { devices })
    }

    /// Puts `device` (planned as `info`) on `bus` behind an MMIO transport, connects its
    /// interrupt line through a KVM irqfd, and its queue notifications through KVM ioeventfds.
    /// Returns the event-loop subscriber that processes the notified queues (`None` if KVM
    /// refused the ioeventfds: the transport then handles notifications on the vCPU thread).
    pub fn attach(
        info: &MmioDeviceInfo,
        vm: &Arc<VmFd>,
        bus: &mut Bus,
        mem: &GuestMemoryMmap,
        device: SharedVirtioDevice,
    ) -> Result<Option<QueueNotifier>, DeviceManagerError> {
        let irq_error = |detail: String| DeviceManagerError::Irq {
            id: info.id.clone(),
            irq: info.irq,
            detail,
        };
        let line = EventFd::new(EFD_NONBLOCK).map_err(|err| irq_error(err.to_string()))?;
        vm.register_irqfd(&line, info.irq)
            .map_err(|err| irq_error(err.to_string()))?;
        let transport =
            MmioTransport::new(device.clone(), mem.clone(), line).map_err(|source| {
                DeviceManagerError::Transport {
                    id: info.id.clone(),
                    source,
                }
            })?;
        bus.insert(
            &info.id,
            info.base,
            info.size,
            Arc::new(Mutex::new(transport)),
        )?;
        // Registrations on a virtio-mmio window never move: only the subscriber is kept.
        Ok(QueueIoeventfds::attach(
            &info.id,
            vm,
            NotifyLayout::Mmio,
            info.base,
            device,
            Arc::new(NotifyStats::default()),
        )
        .map(|(_, notifier)| notifier))
    }

    /// The planned devices.
    pub fn devices(&self) -> &[MmioDeviceInfo] {
        &self.devices
    }

    /// The `virtio_mmio.device=` entries for every device, space-separated.
    pub fn cmdline_entries(&self) -> String {
        self.devices
            .iter()
            .map(MmioDeviceInfo::cmdline_entry)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entries_use_linux_syntax() {
        let info = MmioDeviceInfo {
            id: "d".into(),
            device_type: 2,
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
        };
        assert_eq!(info.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:6");
    }

    #[test]
    fn plans_give_distinct_windows_and_lines_until_lines_run_out() {
        let wanted: Vec<(String, u32)> =
            (0..FREE_IRQS.len()).map(|i| (format!("d{i}"), 2)).collect();
        let plan = VirtioMmioDevices::plan(&wanted).unwrap();
        let mut bases: Vec<u64> = plan.devices().iter().map(|d| d.base).collect();
        let mut irqs: Vec<u32> = plan.devices().iter().map(|d| d.irq).collect();
        bases.dedup();
        irqs.sort();
        irqs.dedup();
        assert_eq!((bases.len(), irqs.len()), (wanted.len(), wanted.len()));
        assert!(
            !irqs.contains(&4) && !irqs.contains(&8),
            "serial and RTC lines stay free"
        );
        let mut too_many = wanted.clone();
        too_many.push(("extra".into(), 2));
        assert!(matches!(
            VirtioMmioDevices::plan(&too_many),
            Err(DeviceManagerError::NoIrq(id)) if id == "extra"
        ));
    }

    #[test]
    fn windows_stay_below_the_ioapic() {
        let last = MMIO_DEVICES_START + FREE_IRQS.len() as u64 * MMIO_WINDOW_SIZE;
        assert!(last <= crate::layout::IOAPIC_START);
        const { assert!(MMIO_DEVICES_START >= crate::layout::MMIO_GAP_START) };
    }
}
