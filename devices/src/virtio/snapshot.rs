//! What a virtio device and its transport save in a VM snapshot, and how they come back.
//!
//! A snapshot is taken while the VM is paused. A device hands over its negotiated features, the
//! live state of each of its queues (the ring addresses and the device's own `next_avail` and
//! `next_used`, which only the device knows) and whatever else it must restore (a NIC's receive
//! filter); requests in flight finish first, so nothing the guest was told is done is lost. On
//! restore the device is rebuilt from its configuration (the disk image, the TAP device) and then
//! put back into that state and activated, without the driver noticing.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::VirtioInterrupt;
use crate::rate_limiter::{RateLimitTarget, RateLimiterState};

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The device does not support snapshots (an embedder's device that does not implement
    /// them).
    #[error("device type {0} cannot be saved in a snapshot")]
    Unsupported(u32),
    /// The saved state does not fit this device (another type, other queue sizes, features it
    /// does not offer).
    #[error("saved state does not fit the device: {0}")]
    Mismatch(String),
    /// A saved queue is not valid (size, addresses).
    #[error("saved queue {index} is invalid: {reason}")]
    Queue {
        /// The queue.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The device could not be restarted with the saved queues.
    #[error("device cannot be reactivated: {0}")]
    Activate(String),
}

/// One virtqueue as saved: what the driver configured and where the device had got to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` is in use.
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(state: QueueState) -> Self {
        QueueSnapshot {
            max_size: state.max_size,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx: state.event_idx_enabled,
        }
    }
}

impl QueueSnapshot {
    /// The state of `queue`.
    pub fn of(queue: &Queue) -> Self {
        queue.state().into()
    }

    /// A queue in this state, checked against `mem` when it is ready; `index` names it in errors.
    pub fn to_queue(&self, index: usize, mem: &GuestMemoryMmap) -> Result<Queue, SnapshotError> {
        let state = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        let queue = Queue::try_from(state).map_err(|err| SnapshotError::Queue {
            index,
            reason: err.to_string(),
        })?;
        if queue.ready() && !queue.is_valid(mem) {
            return Err(SnapshotError::Queue {
                index,
                reason: "its rings are not inside guest memory".into(),
            });
        }
        Ok(queue)
    }
}

/// State a device keeps beyond its features and queues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceExtra {
    /// Nothing (block, entropy, console).
    #[default]
    None,
    /// A NIC's MAC address (the driver may have set it) and receive filter.
    Net(super::net::NetSnapshot),
    /// Bytes an embedder's device encoded itself.
    Opaque(Vec<u8>),
}

/// A device's saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// Virtio device type, checked on restore.
    pub device_type: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Whether the device was running (activated by the driver).
    pub activated: bool,
    /// The device's queues while activated, in its order (empty otherwise).
    pub queues: Vec<QueueSnapshot>,
    /// Device-specific state.
    pub extra: DeviceExtra,
    /// The budgets of the device's rate limiters (none without limits). Restored into the
    /// limiters the rebuilt device has; a limiter with no saved budget starts full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limiters: Vec<(RateLimitTarget, RateLimiterState)>,
}

impl VirtioDeviceState {
    /// The queues to activate the device with.
    pub fn queues(&self, mem: &GuestMemoryMmap) -> Result<Vec<Queue>, SnapshotError> {
        self.queues
            .iter()
            .enumerate()
            .map(|(index, queue)| queue.to_queue(index, mem))
            .collect()
    }

    /// Checks that the state was saved from a device of `device_type` offering
    /// `avail_features`.
    pub fn check(&self, device_type: u32, avail_features: u64) -> Result<(), SnapshotError> {
        if self.device_type != device_type {
            return Err(SnapshotError::Mismatch(format!(
                "saved from a device of type {}, restored into type {device_type}",
                self.device_type
            )));
        }
        if self.acked_features & !avail_features != 0 {
            return Err(SnapshotError::Mismatch(format!(
                "the driver accepted features {:#x} this device does not offer ({avail_features:#x})",
                self.acked_features
            )));
        }
        Ok(())
    }
}

/// Restores a device whose only state is its features and queues: records the features and,
/// if it was running, activates it on the saved queues.
pub fn restore_plain(
    device: &mut dyn super::VirtioDevice,
    state: &VirtioDeviceState,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
) -> Result<(), SnapshotError> {
    state.check(device.device_type(), device.avail_features())?;
    device.set_acked_features(state.acked_features);
    if state.activated {
        let queues = state.queues(&mem)?;
        device
            .activate(mem, interrupt, queues)
            .map_err(|err| SnapshotError::Activate(err.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{test_memory, DriverQueue};

    #[test]
    fn queues_round_trip_and_bad_ones_are_refused() {
        let mem = test_memory();
        let driver = DriverQueue::new(&mem, 0, 16);
        let mut queue = driver.device_queue();
        queue.set_next_avail(5);
        queue.set_next_used(3);
        let saved = QueueSnapshot::of(&queue);
        let json = serde_json::to_string(&saved).unwrap();
        let back: QueueSnapshot = serde_json::from_str(&json).unwrap();
        let restored = back.to_queue(0, &mem).unwrap();
        assert_eq!(restored.next_avail(), 5);
        assert_eq!(restored.next_used(), 3);
        assert_eq!(QueueSnapshot::of(&restored), saved);

        let mut outside = saved;
        outside.used_ring = 1 << 40;
        assert!(matches!(
            outside.to_queue(2, &mem),
            Err(SnapshotError::Queue { index: 2, .. })
        ));
        let mut bad_size = saved;
        bad_size.size = 3;
        assert!(bad_size.to_queue(0, &mem).is_err());
    }

    #[test]
    fn a_state_from_another_device_is_refused() {
        let state = VirtioDeviceState {
            device_type: 2,
            acked_features: 1 << 40,
            ..Default::default()
        };
        assert!(state.check(4, u64::MAX).is_err(), "type");
        assert!(state.check(2, 1 << 32).is_err(), "features");
        assert!(state.check(2, 1 << 40).is_ok());
    }
}
