//! A virtio device double for transport tests: it records what the transport tells it
//! (accepted features, activation, notifications, resets) and keeps an 8-byte config space.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::Queue;

use crate::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

/// Records every call a transport makes; two queues of 16, offers VERSION_1 and bit 0.
pub(crate) struct Recorder {
    device_type: u32,
    pub(crate) acked: u64,
    pub(crate) activated_queues: Option<usize>,
    pub(crate) notified: Vec<u16>,
    pub(crate) resets: usize,
    pub(crate) config: [u8; 8],
    /// What [`VirtioDevice::config_generation`] reports (the device's own config changes).
    pub(crate) config_changes: u32,
    pub(crate) interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

impl Recorder {
    /// A double that reports `device_type`.
    pub(crate) fn new(device_type: u32) -> Self {
        Recorder {
            device_type,
            acked: 0,
            activated_queues: None,
            notified: Vec::new(),
            resets: 0,
            config: [0; 8],
            config_changes: 0,
            interrupt: None,
        }
    }
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn config_generation(&self) -> u32 {
        self.config_changes
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *byte;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.activated_queues = Some(queues.len());
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        self.notified.push(index);
    }
    fn reset(&mut self) -> bool {
        self.resets += 1;
        self.activated_queues = None;
        true
    }
}
