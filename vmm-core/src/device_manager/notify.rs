//! Queue notifications through KVM ioeventfds, for both transports: [`QueueIoeventfds`] holds a
//! device's eventfds and their registration (which follows a moved virtio-PCI BAR), and
//! [`QueueNotifier`] is the event-loop subscriber that runs the device when one of them fires.
//! Where KVM refuses an ioeventfd, the driver's write exits to the VMM and the transport
//! notifies the device on the vCPU thread.

use std::io::ErrorKind;
use std::sync::Arc;

use devices::virtio::mmio::{SharedVirtioDevice, QUEUE_NOTIFY_OFFSET};
use devices::virtio::pci::queue_notify_offset;
use devices::virtio::NotifyStats;
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use log::{debug, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sync::lock;

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
        // Queue indexes are u16 (a device has at most virtio-pci's MAX_QUEUES queues).
        for (fd, index) in self.fds.iter().zip(0u16..) {
            if let Err(err) = self.layout.ioctl(&self.vm, fd, base, index, true) {
                for (done, fd) in (0u16..index).zip(&self.fds) {
                    let _ = self.layout.ioctl(&self.vm, fd, base, done, false);
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
        for (fd, index) in self.fds.iter().zip(0u16..) {
            if let Err(err) = self.layout.ioctl(&self.vm, fd, base, index, false) {
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
        let queues = lock(&device).queue_max_sizes().len();
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
        for (fd, index) in self.queues.iter().zip(0u16..) {
            let data = u32::from(index);
            if let Err(err) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                warn!("device `{}`: cannot watch queue {index}: {err:?}", self.id);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // The data is the queue index `init` registered, a u16.
        let Ok(index) = u16::try_from(events.data()) else {
            return;
        };
        if let Some(fd) = self.queues.get(usize::from(index)) {
            // The count of notifications does not matter: one pass drains the queue.
            let _ = fd.read();
            self.stats.record_ioeventfd();
            lock(&self.device).queue_notify(index);
        }
    }
}

