//! Descriptor chains as lists of guest-memory segments, validated once.
//!
//! A device reads a driver's buffer (the chain's device-readable part) or fills one (the
//! device-writable part). [`ChainBuffers`] records the segments of one direction after
//! checking that the chain has no descriptor of the other direction, that every segment lies
//! in guest memory and that the total stays under a limit; copying in and out is then
//! infallible except for guest memory changing under us. Shared by virtio-net, virtio-vsock and
//! virtio-console, and there for an embedder's own devices.

use crate::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Why a descriptor chain is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-writable descriptor in a chain the device only reads, or the reverse.
    #[error("descriptor {index} at {addr:#x} has the wrong direction (expected {expected})")]
    Direction {
        /// Position in the chain.
        index: usize,
        /// Guest address of the descriptor's buffer.
        addr: u64,
        /// Which direction was expected.
        expected: &'static str,
    },
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor buffer {addr:#x}+{len} is outside guest memory")]
    OutOfRange {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The buffers add up to more than the device accepts.
    #[error("descriptor chain exceeds {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// Guest memory access failed while copying.
    #[error("guest memory access at {0:#x} failed")]
    Access(u64),
    /// The chain does not end: a loop, or more descriptors than the queue has (virtio-queue
    /// stops walking after the queue size, leaving the last descriptor's `next` flag set).
    #[error("descriptor chain does not end (a loop, or longer than the queue)")]
    Unterminated,
}

/// The checked segments of one descriptor chain.
#[derive(Clone, Debug)]
pub struct ChainBuffers {
    head: u16,
    segments: Vec<(GuestAddress, u32)>,
    len: usize,
}

/// Which part of a chain the device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads (driver-to-device buffers, e.g. transmit).
    DeviceReads,
    /// The device writes (device-to-driver buffers, e.g. receive).
    DeviceWrites,
}

impl ChainBuffers {
    /// Walks `chain`, requiring every descriptor to go in `direction` and the total length to
    /// be at most `limit`.
    pub fn new(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        direction: Direction,
        limit: usize,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut segments = Vec::new();
        let mut len = 0usize;
        let mut continues = false;
        for (index, desc) in chain.enumerate() {
            continues = desc.has_next();
            let writable = desc.is_write_only();
            if writable != (direction == Direction::DeviceWrites) {
                return Err(ChainError::Direction {
                    index,
                    addr: desc.addr().raw_value(),
                    expected: match direction {
                        Direction::DeviceReads => "device-readable",
                        Direction::DeviceWrites => "device-writable",
                    },
                });
            }
            len = len
                .checked_add(desc.len() as usize)
                .filter(|&total| total <= limit)
                .ok_or(ChainError::TooLong { limit })?;
            let access = match direction {
                Direction::DeviceReads => Permissions::Read,
                Direction::DeviceWrites => Permissions::Write,
            };
            if !GuestMemory::check_range(mem, desc.addr(), desc.len() as usize, access) {
                return Err(ChainError::OutOfRange {
                    addr: desc.addr().raw_value(),
                    len: desc.len(),
                });
            }
            if desc.len() > 0 {
                segments.push((desc.addr(), desc.len()));
            }
        }
        if continues {
            return Err(ChainError::Unterminated);
        }
        Ok(ChainBuffers {
            head,
            segments,
            len,
        })
    }

    /// Index of the chain's head descriptor (what goes in the used ring).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Total bytes in the chain.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chain has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(guest address, offset into the copy, length)` for each piece of the
    /// `count` bytes starting `offset` bytes into the chain.
    fn for_each_piece(
        &self,
        offset: usize,
        count: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        let mut skip = offset;
        let mut done = 0usize;
        for &(addr, seg_len) in &self.segments {
            if done == count {
                break;
            }
            let seg_len = seg_len as usize;
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let piece = (seg_len - skip).min(count - done);
            f(addr.unchecked_add(skip as u64), done, piece)?;
            done += piece;
            skip = 0;
        }
        Ok(())
    }

    /// Copies chain bytes from `offset` into `out`, as many as fit in both; returns the count.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        out: &mut [u8],
    ) -> Result<usize, ChainError> {
        let count = out.len().min(self.len.saturating_sub(offset));
        self.for_each_piece(offset, count, |addr, at, len| {
            mem.read_slice(&mut out[at..at + len], addr)
                .map_err(|_| ChainError::Access(addr.raw_value()))
        })?;
        Ok(count)
    }

    /// Copies `data` into the chain starting `offset` bytes in, as much as fits; returns the
    /// count.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        data: &[u8],
    ) -> Result<usize, ChainError> {
        let count = data.len().min(self.len.saturating_sub(offset));
        self.for_each_piece(offset, count, |addr, at, len| {
            mem.write_slice(&data[at..at + len], addr)
                .map_err(|_| ChainError::Access(addr.raw_value()))
        })?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{desc, test_memory};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::QueueOwnedT;

    fn buffers(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        direction: Direction,
        limit: usize,
    ) -> Result<ChainBuffers, ChainError> {
        let vq = virtio_queue::mock::MockSplitQueue::new(mem, 16);
        let mut queue: virtio_queue::Queue = vq.create_queue().unwrap();
        vq.build_desc_chain(descs).unwrap();
        let chain = queue.iter(mem).unwrap().next().unwrap();
        ChainBuffers::new(mem, chain, direction, limit)
    }
    #[test]
    fn reads_and_writes_cross_segments() {
        let mem = test_memory();
        mem.write_slice(b"hello", GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b" world", GuestAddress(0x10_1000)).unwrap();
        let chain = buffers(
            &mem,
            &[desc(0x10_0000, 5, false), desc(0x10_1000, 6, false)],
            Direction::DeviceReads,
            64,
        )
        .unwrap();
        assert_eq!(chain.len(), 11);
        let mut out = [0u8; 16];
        assert_eq!(chain.read_at(&mem, 0, &mut out).unwrap(), 11);
        assert_eq!(&out[..11], b"hello world");
        assert_eq!(chain.read_at(&mem, 3, &mut out[..4]).unwrap(), 4);
        assert_eq!(&out[..4], b"lo w");

        let chain = buffers(
            &mem,
            &[desc(0x10_2000, 3, true), desc(0x10_3000, 3, true)],
            Direction::DeviceWrites,
            64,
        )
        .unwrap();
        assert_eq!(chain.write_at(&mem, 1, b"abcdefg").unwrap(), 5);
        let mut out = [0u8; 3];
        mem.read_slice(&mut out, GuestAddress(0x10_3000)).unwrap();
        assert_eq!(&out, b"cde");
    }

    #[test]
    fn bad_chains_are_rejected() {
        let mem = test_memory();
        let err = buffers(
            &mem,
            &[desc(0x10_0000, 5, false), desc(0x10_1000, 6, true)],
            Direction::DeviceReads,
            64,
        )
        .unwrap_err();
        assert!(matches!(err, ChainError::Direction { index: 1, .. }));
        let err = buffers(
            &mem,
            &[desc(0x10_0000, 5, false)],
            Direction::DeviceWrites,
            64,
        )
        .unwrap_err();
        assert!(matches!(err, ChainError::Direction { index: 0, .. }));
        let err = buffers(
            &mem,
            &[desc(0x3f_ff00, 0x200, true)],
            Direction::DeviceWrites,
            0x1000,
        )
        .unwrap_err();
        assert!(matches!(err, ChainError::OutOfRange { .. }));
        let err = buffers(
            &mem,
            &[desc(0x10_0000, 40, false), desc(0x10_1000, 40, false)],
            Direction::DeviceReads,
            64,
        )
        .unwrap_err();
        assert_eq!(err, ChainError::TooLong { limit: 64 });
        let err = buffers(
            &mem,
            &[
                desc(0x10_0000, u32::MAX, false),
                desc(0x10_1000, u32::MAX, false),
            ],
            Direction::DeviceReads,
            usize::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, ChainError::OutOfRange { .. }));
    }

    #[test]
    fn a_chain_that_does_not_end_is_rejected() {
        use virtio_queue::desc::split::Descriptor;
        let mem = test_memory();
        let vq = virtio_queue::mock::MockSplitQueue::new(&mem, 16);
        let mut queue: virtio_queue::Queue = vq.create_queue().unwrap();
        // 0 -> 1 -> 0 -> ...: virtio-queue walks 16 descriptors, then stops.
        let looped = [
            RawDescriptor::from(Descriptor::new(0x10_0000, 8, 1, 1)),
            RawDescriptor::from(Descriptor::new(0x10_1000, 8, 1, 0)),
        ];
        vq.add_desc_chains(&looped, 0).unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        let err = ChainBuffers::new(&mem, chain, Direction::DeviceReads, 1 << 20).unwrap_err();
        assert_eq!(err, ChainError::Unterminated);
    }
}
