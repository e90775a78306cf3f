//! Test doubles for the device and transport tests, in one place: guest memory, the driver's
//! side of a queue ([`DriverQueue`]), an interrupt that records what it raised, a device that
//! records what a transport told it ([`Recorder`]) and a seeded generator for property tests.

mod driver;
mod recorder;

use std::sync::{Arc, Mutex, PoisonError};

use crate::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::GuestAddress;

use crate::virtio::{InterruptKind, VirtioInterrupt};

pub(crate) use driver::{Buf, DriverQueue};
pub(crate) use recorder::Recorder;

/// Size of test guest memory: queues in the first MiB, buffers from [`BUFFERS`].
pub(crate) const MEMORY_SIZE: u64 = 0x40_0000;
/// Where tests put buffers.
pub(crate) const BUFFERS: u64 = 0x10_0000;
/// Descriptor flag: the chain continues at `next`.
pub(crate) const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub(crate) const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub(crate) const F_INDIRECT: u16 = 4;

/// Guest memory of [`MEMORY_SIZE`] bytes at address 0.
pub(crate) fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)]).unwrap()
}

/// A plain descriptor (no chaining); `write` makes it device-writable.
pub(crate) fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { F_WRITE } else { 0 };
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// Records every interrupt the device raises instead of signalling an eventfd.
#[derive(Default)]
pub(crate) struct RecordingInterrupt(Mutex<Vec<InterruptKind>>);

impl RecordingInterrupt {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Interrupts raised so far, and forget them.
    pub(crate) fn take(&self) -> Vec<InterruptKind> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Interrupts raised so far.
    pub(crate) fn raised(&self) -> Vec<InterruptKind> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many interrupts were raised.
    pub(crate) fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(kind);
        Ok(())
    }
}

/// A small deterministic generator (xorshift64*) for seeded property tests.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `bound` (which must not be zero).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}
