//! The driver's side of a split virtqueue, for device tests.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{RecordingInterrupt, F_NEXT, F_WRITE};
use crate::virtio::VirtioDevice;

/// One buffer of a chain: address, length, device-writable.
pub(crate) type Buf = (u64, u32, bool);

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
        // A queue set up again at the same place starts from an empty used ring.
        let used_ring_len = 6 + 8 * usize::from(size);
        mem.write_slice(&vec![0; used_ring_len], GuestAddress(base + 0x2000))
            .unwrap();
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

    /// Activates `device` on this one queue with a recording interrupt.
    pub(crate) fn activate(&self, device: &mut dyn VirtioDevice) -> Arc<RecordingInterrupt> {
        let interrupt = RecordingInterrupt::new();
        device
            .activate(
                self.mem.clone(),
                interrupt.clone(),
                vec![self.device_queue()],
            )
            .unwrap();
        interrupt
    }

    /// Writes raw descriptors at table index `first` and makes each chain head available.
    pub(crate) fn add_raw(&mut self, first: u16, descs: &[Descriptor]) {
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        self.mock.add_desc_chains(&raw, first).unwrap();
    }

    /// Makes `buffers` (address, length, device-writable) available as one chain; returns the
    /// head index.
    pub(crate) fn add_chain(&mut self, buffers: &[Buf]) -> u16 {
        assert!(self.posted < self.size, "the mock driver queue is full");
        self.posted += 1;
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = buffers
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { F_WRITE } else { 0 };
                let mut next = 0;
                if i + 1 < buffers.len() {
                    flags |= F_NEXT;
                    next = (head + i as u16 + 1) % self.size;
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
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

    /// Writes `bytes` into guest memory at `addr`.
    pub(crate) fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub(crate) fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }
}
