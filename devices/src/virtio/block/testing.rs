//! Test harness for queue-driven devices: guest memory, a mock driver (virtio-queue's
//! `MockSplitQueue`) and an interrupt that records what it was asked to raise.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::{InterruptKind, VirtioDevice, VirtioInterrupt};

/// Size of the test guest's memory.
pub const MEM_SIZE: usize = 4 << 20;
/// Where tests put data buffers (the queue's rings sit below).
pub const DATA: u64 = 0x10_0000;
/// Descriptor flag: another descriptor follows.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const F_INDIRECT: u16 = 4;

/// Guest memory of [`MEM_SIZE`] bytes at address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test guest memory")
}

/// An interrupt double: records each trigger instead of signalling an eventfd, so tests can
/// count interrupts.
#[derive(Default)]
pub struct RecordingInterrupt {
    /// Every interrupt raised, in order.
    pub raised: Mutex<Vec<InterruptKind>>,
}

impl RecordingInterrupt {
    /// How many interrupts were raised.
    pub fn count(&self) -> usize {
        self.raised.lock().unwrap().len()
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.raised.lock().unwrap().push(kind);
        Ok(())
    }
}

/// One buffer of a chain: address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// The driver side of one split queue.
pub struct Driver<'a> {
    /// The mock rings in guest memory.
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    next_desc: u16,
    size: u16,
}

impl<'a> Driver<'a> {
    /// Rings for a queue of `size` entries at guest address 0.
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Driver {
            vq: MockSplitQueue::new(mem, size),
            mem,
            next_desc: 0,
            size,
        }
    }

    /// A ready `Queue` over the rings, as a transport would hand it to the device.
    pub fn queue(&self) -> Queue {
        self.vq.create_queue().expect("valid mock queue")
    }

    /// Activates `device` on this queue with a recording interrupt.
    pub fn activate(&self, device: &mut dyn VirtioDevice) -> Arc<RecordingInterrupt> {
        let interrupt = Arc::new(RecordingInterrupt::default());
        device
            .activate(self.mem.clone(), interrupt.clone(), vec![self.queue()])
            .expect("activation");
        interrupt
    }

    /// Writes raw descriptors at table index `first` and makes each chain head available.
    pub fn add_raw(&mut self, first: u16, descs: &[Descriptor]) {
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        self.vq
            .add_desc_chains(&raw, first)
            .expect("descriptors fit");
    }

    /// Makes a chain of `bufs` available; returns its head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<Descriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let last = i + 1 == bufs.len();
                let mut flags = if writable { F_WRITE } else { 0 };
                if !last {
                    flags |= F_NEXT;
                }
                let next = (head + i as u16 + 1) % self.size;
                Descriptor::new(addr, len, flags, if last { 0 } else { next })
            })
            .collect();
        self.add_raw(head, &descs);
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Number of chains the device has returned.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(self.vq.used_addr().unchecked_add(2))
            .unwrap()
    }

    /// The `n`th used element: (head index, used length).
    pub fn used(&self, n: u16) -> (u32, u32) {
        let elem = self.vq.used().ring().ref_at(usize::from(n)).unwrap().load();
        (elem.id(), elem.len())
    }

    /// Writes `bytes` into guest memory at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }
}

/// A small deterministic generator (xorshift64*) for seeded property tests.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `bound` (which must not be zero).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}
