//! Test support shared by the virtio-net and virtio-vsock tests: guest memory, a mock driver
//! queue that tracks its own descriptor indices, and an interrupt that records what it raised.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::{InterruptKind, VirtioInterrupt};

/// Descriptor flag: the chain continues at `next`.
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Size of test guest memory: queues in the first MiB, buffers from [`BUFFERS`].
pub(crate) const MEMORY_SIZE: u64 = 0x40_0000;
/// Where tests put buffers.
pub(crate) const BUFFERS: u64 = 0x10_0000;

pub(crate) fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)]).unwrap()
}

/// A plain descriptor (no chaining); `write` makes it device-writable.
pub(crate) fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// The driver's side of one queue.
///
/// Descriptors and the available ring are written by virtio-queue's `MockSplitQueue`. The used
/// ring lives at `base + 0x2000` instead of where the 0.18 mock puts it, which overlaps the
/// second half of the available ring (the mock measures that ring in entries, not bytes). The
/// mock never wraps the available ring, so a test posts fewer than `size` chains in all.
pub(crate) struct DriverQueue<'m> {
    mem: &'m GuestMemoryMmap,
    mock: MockSplitQueue<'m, GuestMemoryMmap>,
    next_desc: u16,
    posted: u16,
    size: u16,
    used_ring: GuestAddress,
}

impl<'m> DriverQueue<'m> {
    /// A queue of `size` entries whose rings start at `base`.
    pub(crate) fn new(mem: &'m GuestMemoryMmap, base: u64, size: u16) -> Self {
        assert!(size <= 256, "rings of at most 256 entries fit the layout");
        DriverQueue {
            used_ring: GuestAddress(base + 0x2000),
            mem,
            mock: MockSplitQueue::create(mem, GuestAddress(base), size),
            next_desc: 0,
            posted: 0,
            size,
        }
    }

    /// The device's copy of the queue, as the transport would hand it over.
    pub(crate) fn device_queue(&self) -> Queue {
        let mut queue: Queue = self.mock.create_queue().unwrap();
        queue.try_set_used_ring_address(self.used_ring).unwrap();
        queue
    }

    /// Makes `buffers` (address, length, device-writable) available as one chain; returns the
    /// head index.
    pub(crate) fn add_chain(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        assert!(self.posted < self.size, "the mock driver queue is full");
        self.posted += 1;
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = buffers
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
                let mut next = 0;
                if i + 1 < buffers.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                    next = (head + i as u16 + 1) % self.size;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.mock.add_desc_chains(&descs, head).unwrap();
        self.next_desc = (head + buffers.len() as u16) % self.size;
        head
    }

    /// Sets `used_event` (event-index mode: interrupt me once the used index passes it).
    pub(crate) fn set_used_event(&self, value: u16) {
        let addr = self
            .mock
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(value, addr).unwrap();
    }

    /// `avail_event` as the device published it (event-index mode).
    pub(crate) fn avail_event(&self) -> u16 {
        let addr = self.used_ring.unchecked_add(4 + 8 * u64::from(self.size));
        self.mem.read_obj(addr).unwrap()
    }

    /// How many used entries the device has published.
    pub(crate) fn used_count(&self) -> u16 {
        self.mem.read_obj(self.used_ring.unchecked_add(2)).unwrap()
    }

    /// Used entry `index`: (head id, length written).
    pub(crate) fn used(&self, index: u16) -> (u32, u32) {
        let elem = self
            .used_ring
            .unchecked_add(4 + 8 * u64::from(index % self.size));
        let id = self.mem.read_obj(elem).unwrap();
        let len = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        (id, len)
    }
}

/// Records every interrupt the device raises.
#[derive(Default)]
pub(crate) struct RecordingInterrupt(Mutex<Vec<InterruptKind>>);

impl RecordingInterrupt {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Interrupts raised so far, and forget them.
    pub(crate) fn take(&self) -> Vec<InterruptKind> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}
