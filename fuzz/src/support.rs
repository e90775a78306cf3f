//! Turning fuzzer bytes into a guest: memory, a split queue and descriptor chains.

use std::sync::Arc;

use devices::virtio::{InterruptKind, VirtioInterrupt};
use devices::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

/// Size of the fuzzed guest's memory.
pub const MEM_SIZE: u64 = 1 << 20;
/// Start of the area buffers point into (the rings sit below it).
pub const DATA: u64 = 0x1_0000;
/// Length of the buffer area.
pub const DATA_LEN: u64 = 0x1_0000;

/// Lengths worth trying besides small ones.
const SPECIAL_LENS: [u32; 8] = [0, 1, 16, 20, 511, 512, 0x1_0000, u32::MAX];
/// Addresses worth trying besides the buffer area.
const SPECIAL_ADDRS: [u64; 6] = [
    0,
    MEM_SIZE - 16,
    MEM_SIZE - 1,
    MEM_SIZE,
    u64::MAX - 15,
    u64::MAX,
];

/// Reads fuzzer bytes; once they run out every read returns zeroes.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Wraps fuzzer bytes.
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// How many bytes are left.
    pub fn rest_len(&self) -> usize {
        self.0.len()
    }

    /// Everything not yet consumed.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// A descriptor whose address and length are usually plausible and sometimes hostile.
    pub fn descriptor(&mut self, queue_size: u16) -> Descriptor {
        let shape = self.byte();
        let addr = if shape & 0x80 == 0 {
            DATA + u64::from(self.u16()) % DATA_LEN
        } else if shape & 0x40 == 0 {
            SPECIAL_ADDRS[usize::from(self.byte()) % SPECIAL_ADDRS.len()]
        } else {
            self.u64()
        };
        let len = if shape & 0x20 == 0 {
            u32::from(self.u16() % 0x2000)
        } else {
            SPECIAL_LENS[usize::from(self.byte()) % SPECIAL_LENS.len()]
        };
        // NEXT, WRITE and INDIRECT from the low bits; the next index mostly inside the table.
        let flags = u16::from(shape & 0x7);
        let next = if shape & 0x10 == 0 {
            u16::from(self.byte()) % queue_size.max(1)
        } else {
            self.u16()
        };
        Descriptor::new(addr, len, flags, next)
    }
}

/// An interrupt that goes nowhere.
pub struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

/// A guest with one queue whose descriptor table, available ring and buffer area all come
/// from the input.
pub struct Guest {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queue, ready for a device (see [`Guest::queue`] for a copy to hand out).
    pub queue: Queue,
    /// The descriptor table as written.
    pub descriptors: Vec<Descriptor>,
}

impl Guest {
    /// Builds the guest; returns `None` only if the host cannot map its memory.
    pub fn from_input(input: &mut Input) -> Option<Guest> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()?;
        let queue_size = 1u16 << (input.byte() % 6);
        let vq = MockSplitQueue::new(&mem, queue_size);
        let descriptors: Vec<Descriptor> = (0..queue_size)
            .map(|_| input.descriptor(queue_size))
            .collect();
        for (index, desc) in descriptors.iter().enumerate() {
            vq.desc_table()
                .store(index as u16, RawDescriptor::from(*desc))
                .ok()?;
        }
        // Available entries: usually a few valid heads, sometimes an index that runs far ahead.
        let avail = vq.avail();
        let count = input.byte();
        let entries = u16::from(count) % (queue_size + 1);
        for slot in 0..entries {
            let head = u16::from(input.byte()) % (queue_size + 2);
            avail.ring().ref_at(usize::from(slot)).ok()?.store(head);
        }
        let idx = if count & 0x80 != 0 {
            input.u16()
        } else {
            entries
        };
        avail.idx().store(idx);
        // used_event for EVENT_IDX.
        let used_event = vq.avail_addr().checked_add(4 + 2 * u64::from(queue_size))?;
        mem.write_obj(input.u16(), used_event).ok()?;
        let queue = vq.create_queue().ok()?;
        // The rest of the input fills the buffer area, repeated.
        let rest = input.rest();
        if !rest.is_empty() {
            let mut area = vec![0u8; DATA_LEN as usize];
            for (dst, src) in area.iter_mut().zip(rest.iter().cycle()) {
                *dst = *src;
            }
            mem.write_slice(&area, GuestAddress(DATA)).ok()?;
        }
        Some(Guest {
            mem,
            queue,
            descriptors,
        })
    }

    /// Writes `bytes` at `addr` if it is inside guest memory.
    pub fn poke(&self, addr: GuestAddress, bytes: &[u8]) {
        if addr.checked_add(bytes.len() as u64).is_some() {
            let _ = self.mem.write_slice(bytes, addr);
        }
    }

    /// A copy of the queue as the driver set it up (a `Queue` is not `Clone`), for one
    /// device activation.
    pub fn queue(&self) -> Option<Queue> {
        Queue::try_from(self.queue.state()).ok()
    }

    /// The interrupt devices get.
    pub fn interrupt() -> Arc<dyn VirtioInterrupt> {
        Arc::new(NoInterrupt)
    }
}

/// Follows `next` links from `head` through the table, at most `limit` steps, as a driver
/// would lay out a chain (no indirect tables).
pub fn follow(descriptors: &[Descriptor], head: u16, limit: usize) -> Vec<Descriptor> {
    let mut chain = Vec::new();
    let mut index = head;
    while let Some(desc) = descriptors.get(usize::from(index)) {
        chain.push(*desc);
        if !desc.has_next() || chain.len() >= limit {
            break;
        }
        index = desc.next();
    }
    chain
}
