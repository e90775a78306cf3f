//! The running state of a device with one virtqueue (virtio-blk, virtio-rng): what the driver
//! handed over at activation, and the two steps such devices share, taking the queue and telling
//! the driver about used buffers.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::queue_ops::notify_used;
use crate::GuestMemoryMmap;

use super::{ActivateError, VirtioInterrupt};

/// Guest memory, the interrupt line and the one queue of an activated device.
pub(crate) struct SingleQueue {
    /// Guest memory the queue's rings and buffers live in.
    pub mem: GuestMemoryMmap,
    /// Where used-buffer interrupts go.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queue.
    pub queue: Queue,
}

impl SingleQueue {
    /// Takes the one queue the driver set up; `event_idx` when `VIRTIO_RING_F_EVENT_IDX` was
    /// negotiated.
    pub fn activate(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        event_idx: bool,
    ) -> Result<Self, ActivateError> {
        let got = queues.len();
        let Ok([mut queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        queue.set_event_idx(event_idx);
        Ok(SingleQueue {
            mem,
            interrupt,
            queue,
        })
    }

    /// Raises the queue interrupt unless the driver's event index says it needs none. When the
    /// event index cannot be read it interrupts anyway: a spurious interrupt is harmless, a
    /// missing one leaves the driver waiting. `device` names the device in logs.
    pub fn notify_driver(&mut self, device: &str) {
        notify_used(
            &mut self.queue,
            &self.mem,
            self.interrupt.as_ref(),
            0,
            device,
        );
    }
}
