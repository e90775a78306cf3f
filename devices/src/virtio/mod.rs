//! Virtio devices and their transports.
//!
//! A device ([`VirtioDevice`]) is a state machine over its virtqueues: it offers features,
//! exposes a config space, and once the driver has set it up it is *activated* with guest
//! memory, its queues and an interrupt ([`VirtioInterrupt`]). It then processes a queue whenever
//! the driver notifies it ([`VirtioDevice::queue_notify`]). Devices with host-side event
//! sources (a TAP device, sockets) also implement `event_manager::MutEventSubscriber` so the
//! VMM's event loop can drive them. Nothing here knows KVM: transports raise interrupts through
//! the [`VirtioInterrupt`] trait and tests drive devices with virtio-queue's mock driver.
//!
//! Transports: [`mmio`] (virtio-mmio version 2) and [`pci`] (modern virtio-PCI), with the
//! transport-independent negotiation and queue set-up in [`transport`].

pub mod block;
pub mod chain;
pub mod config_space;
pub mod console;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod queue_ops;
pub mod rng;
mod single_queue;
pub mod snapshot;
#[cfg(test)]
mod testing;
pub mod transport;
pub mod vsock;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::rate_limiter::{RateLimit, RateLimitError, RateLimitTarget};
use crate::GuestMemoryMmap;
use virtio_bindings::{virtio_config, virtio_ids, virtio_ring};
use virtio_queue::Queue;

/// A `virtio-bindings` constant (they are all `u32`) as the byte a register or header field
/// holds; a value that does not fit stops the build.
#[allow(clippy::cast_possible_truncation)] // checked just above the cast
pub(crate) const fn byte(value: u32) -> u8 {
    assert!(value <= u8::MAX as u32);
    value as u8
}

/// A `virtio-bindings` constant as a 16-bit field; a value that does not fit stops the build.
#[allow(clippy::cast_possible_truncation)] // checked just above the cast
pub(crate) const fn half(value: u32) -> u16 {
    assert!(value <= u16::MAX as u32);
    value as u16
}

/// Device ID of a network card.
pub const TYPE_NET: u32 = virtio_ids::VIRTIO_ID_NET;
/// Device ID of a block device.
pub const TYPE_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
/// Device ID of a console.
pub const TYPE_CONSOLE: u32 = virtio_ids::VIRTIO_ID_CONSOLE;
/// Device ID of an entropy source.
pub const TYPE_RNG: u32 = virtio_ids::VIRTIO_ID_RNG;
/// Device ID of a vsock device.
pub const TYPE_VSOCK: u32 = virtio_ids::VIRTIO_ID_VSOCK;

/// Feature bit: the device conforms to virtio 1.x (modern). Keel's transports require it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: descriptors may be indirect tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit: used/available event index suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Device status bits written by the driver (virtio 1.2, 2.1).
pub mod status {
    use super::byte;
    use virtio_bindings::virtio_config;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = byte(virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE);
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = byte(virtio_config::VIRTIO_CONFIG_S_DRIVER);
    /// The driver is set up and ready.
    pub const DRIVER_OK: u8 = byte(virtio_config::VIRTIO_CONFIG_S_DRIVER_OK);
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = byte(virtio_config::VIRTIO_CONFIG_S_FEATURES_OK);
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = byte(virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET);
    /// The driver gave up on the device.
    pub const FAILED: u8 = byte(virtio_config::VIRTIO_CONFIG_S_FAILED);
}

/// What an interrupt signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device put buffers in the used ring of this queue.
    Queue(u16),
    /// The device's configuration space changed.
    Config,
}

/// How a device interrupts the driver; implemented by each transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt for `kind`.
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}

/// How many queue notifications reached a device, by the path they took: trapped on a vCPU
/// thread (an MMIO exit the transport handled) or through a KVM ioeventfd processed on the event
/// loop. Shared between the transport, the VMM's ioeventfd handler and whoever watches them (tests,
/// statistics); counting is lock-free.
#[derive(Debug, Default)]
pub struct NotifyStats {
    vcpu: AtomicU64,
    ioeventfd: AtomicU64,
}

impl NotifyStats {
    /// Counts a notification the transport handled on a vCPU thread.
    pub fn record_vcpu(&self) {
        self.vcpu.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a notification delivered through an ioeventfd.
    pub fn record_ioeventfd(&self) {
        self.ioeventfd.fetch_add(1, Ordering::Relaxed);
    }

    /// Notifications handled on a vCPU thread so far.
    pub fn vcpu(&self) -> u64 {
        self.vcpu.load(Ordering::Relaxed)
    }

    /// Notifications delivered through an ioeventfd so far (each eventfd wake-up counts once,
    /// however many writes KVM folded into it).
    pub fn ioeventfd(&self) -> u64 {
        self.ioeventfd.load(Ordering::Relaxed)
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver gave the device the wrong number of queues.
    #[error("device expects {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// A host-side resource (file, TAP, socket) failed.
    #[error("device backend failed: {0}")]
    Backend(String),
}

/// A virtio device shared between its transport (vCPU threads) and the event loop.
pub type SharedVirtioDevice = std::sync::Arc<std::sync::Mutex<dyn VirtioDevice>>;

/// What a device runs first on each thread of its own it starts (a disk's I/O thread): the
/// VMM installs that thread's seccomp filter with it.
pub type ThreadStart = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Virtio device ID ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;

    /// Largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;

    /// Records the features the driver accepted; the transport passes only offered bits.
    fn set_acked_features(&mut self, features: u64);

    /// Reads device configuration space at `offset`; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Gives the device the hook to run first on each thread it starts from now on. Devices
    /// that start no threads ignore it.
    fn set_thread_start(&mut self, hook: ThreadStart) {
        let _ = hook;
    }

    /// Writes device configuration space; ignored by devices without writable fields.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// A counter the device bumps whenever it changes its own configuration space (not on
    /// driver writes, which the transport counts). Transports add it to the configuration
    /// generation they report, so a driver reading a multi-field configuration notices a
    /// change in the middle and reads again. Devices whose configuration never changes keep
    /// the default, 0.
    fn config_generation(&self) -> u32 {
        0
    }

    /// Starts the device with the queues the driver made ready (index order).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;

    /// Processes queue `index` after the driver notified it. Errors in guest data never panic:
    /// the device completes bad requests with an error status or skips them. May be called
    /// before activation or after a reset (notifications delivered through an ioeventfd bypass
    /// the transport); the device then does nothing.
    fn queue_notify(&mut self, index: u16);

    /// Returns the device to its initial state (driver wrote status 0). Returns `false` when
    /// the device cannot be reset, and then needs to stay marked as needing a reset.
    fn reset(&mut self) -> bool;

    /// Sets the rate limit of one of the device's limited queues (`target`: a disk's or an
    /// entropy device's requests, a NIC's receive or transmit side). The buckets start full;
    /// requests waiting for the old limit are looked at again under the new one. The default
    /// refuses: a device is only limited where it says how.
    fn set_rate_limit(
        &mut self,
        target: RateLimitTarget,
        limit: RateLimit,
    ) -> Result<(), RateLimitError> {
        let _ = limit;
        Err(RateLimitError::Unsupported { target })
    }

    /// The limits in force on the device's limited queues (none for a device without rate
    /// limiters).
    fn rate_limits(&self) -> Vec<(RateLimitTarget, RateLimit)> {
        Vec::new()
    }

    /// What the device has done so far, for the VMM's counters and metrics. Devices without
    /// counters keep the default (none).
    fn counters(&self) -> Vec<crate::counters::Counter> {
        Vec::new()
    }

    /// Saves the device's state for a snapshot, while the VM is paused: negotiated features,
    /// live queues, device-specific state. Requests in flight complete first. The default
    /// refuses, so a device is only ever snapshotted if it says how.
    fn save_state(&mut self) -> Result<snapshot::VirtioDeviceState, snapshot::SnapshotError> {
        Err(snapshot::SnapshotError::Unsupported(self.device_type()))
    }

    /// Puts a freshly built device into a saved state and, if it was running, activates it on
    /// `mem` and `interrupt` with the saved queues, as if the driver had set it up. The default
    /// refuses (see [`VirtioDevice::save_state`]).
    fn restore_state(
        &mut self,
        state: &snapshot::VirtioDeviceState,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), snapshot::SnapshotError> {
        let _ = (state, mem, interrupt);
        Err(snapshot::SnapshotError::Unsupported(self.device_type()))
    }
}
