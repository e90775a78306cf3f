//! Split virtqueues (virtio 1.2, section 2.7) and the memory they and their buffers live in.
//!
//! All DMA memory comes from one static, page-aligned arena inside the image ([`DMA_ARENA_SIZE`]
//! bytes; the image is identity-mapped, so addresses are guest-physical). The drivers run one device
//! at a time: [`DmaArena::take`] hands the whole arena to a driver, which carves it with a bump
//! allocator and resets its device before the next driver takes the arena again.
//!
//! A queue occupies one 4 KiB page: descriptor table at 0, available ring at 0x400, used ring at
//! 0x800, which holds up to [`MAX_QUEUE_SIZE`] entries. The driver publishes descriptor chains in
//! the available ring and polls the used ring; it never waits for interrupts.

use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use super::transport::{DriverError, Transport};
use crate::cpu::rdtsc;

/// Bytes of DMA memory: room for the largest driver (three queue pages and its buffers).
pub const DMA_ARENA_SIZE: usize = 32 * 1024;

/// The queue size the device tests set up.
pub const MAX_QUEUE_SIZE: u16 = 16;

/// The largest queue that fits the page layout (the descriptor table fills 0x000-0x3ff); the
/// benchmarks use it.
pub const LARGEST_QUEUE_SIZE: u16 = 64;

/// TSC ticks between repeated notifications of a queue the driver waits on (about 20 ms).
pub const RENOTIFY_TICKS: u64 = 50_000_000;

const PAGE_SIZE: usize = 4096;
const AVAIL_OFFSET: usize = 0x400;
const USED_OFFSET: usize = 0x800;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (otherwise it reads it).
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (never negotiated by these drivers;
/// the hostile-guest catalogue sets it anyway).
pub const DESC_F_INDIRECT: u16 = 4;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; DMA_ARENA_SIZE]>);

// SAFETY: only the BSP runs drivers, and `DmaArena::take` hands the memory to one driver at a time.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; DMA_ARENA_SIZE]));

#[repr(C, align(4096))]
struct SmallArena(UnsafeCell<[u8; BACKGROUND_ARENA_SIZE]>);

// SAFETY: only the BSP runs drivers, and `DmaArena::take_background` hands the memory to one
// driver at a time.
unsafe impl Sync for SmallArena {}

/// Size of the second arena, for a request left in flight while other drivers run.
pub const BACKGROUND_ARENA_SIZE: usize = 16 * 1024;

static BACKGROUND_ARENA: SmallArena = SmallArena(UnsafeCell::new([0; BACKGROUND_ARENA_SIZE]));

/// A bump allocator over a DMA arena, owned by one driver at a time.
pub struct DmaArena {
    base: *mut u8,
    size: usize,
    used: usize,
}

impl DmaArena {
    /// The whole arena, for one device's driver.
    ///
    /// # Safety
    ///
    /// Every device set up with memory from an earlier `take` must have been reset (so it no longer
    /// touches the arena), and no buffer from an earlier `take` may still be in use.
    pub unsafe fn take() -> Self {
        Self {
            base: ARENA.0.get().cast::<u8>(),
            size: DMA_ARENA_SIZE,
            used: 0,
        }
    }

    /// The second, smaller arena: for one device whose driver stays active while other drivers
    /// use [`DmaArena::take`] (`keel.blk_background`).
    ///
    /// # Safety
    ///
    /// As for [`DmaArena::take`], for the devices set up from this arena.
    pub unsafe fn take_background() -> Self {
        Self {
            base: BACKGROUND_ARENA.0.get().cast::<u8>(),
            size: BACKGROUND_ARENA_SIZE,
            used: 0,
        }
    }

    /// `len` bytes aligned to `align` (a power of two up to 4096), zeroed.
    pub fn alloc(&mut self, len: usize, align: usize) -> Result<DmaBuffer, DriverError> {
        let start = self.used.next_multiple_of(align);
        let end = start.checked_add(len).ok_or(DriverError::OutOfDmaMemory)?;
        if end > self.size {
            return Err(DriverError::OutOfDmaMemory);
        }
        self.used = end;
        // SAFETY: the range lies inside the arena and was handed out to nobody else since `take`.
        let ptr = unsafe { self.base.add(start) };
        let buffer = DmaBuffer { ptr, len };
        buffer.with_bytes(|bytes| bytes.fill(0));
        Ok(buffer)
    }
}

/// A piece of the DMA arena: an address to hand to a device and the bytes behind it.
#[derive(Clone, Copy, Debug)]
pub struct DmaBuffer {
    ptr: *mut u8,
    len: usize,
}

impl DmaBuffer {
    /// Memory outside the arena, e.g. the benchmarks' data area.
    ///
    /// # Safety
    ///
    /// `[addr, addr + len)` must be identity-mapped RAM that nothing but the driver holding the
    /// buffer uses.
    pub unsafe fn from_physical(addr: u64, len: usize) -> Self {
        Self {
            ptr: addr as *mut u8,
            len,
        }
    }

    /// The guest-physical address (the arena is identity-mapped).
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Runs `f` on the bytes, to read what the device wrote or write what it will read. Callers do
    /// this only while the buffer is not on a queue, and never nest calls on overlapping buffers;
    /// the fences in [`Virtqueue`] order these accesses against the device's.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: the range belongs to this buffer's piece of the arena (see `DmaArena::alloc`);
        // the slice lives only during `f`, the drivers do not nest these calls on overlapping
        // buffers, and the device does not access the buffer while it is off the queues.
        f(unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) })
    }

    /// A part of this buffer (`offset..offset + len`, clamped to the buffer).
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        let offset = offset.min(self.len);
        Self {
            // SAFETY: `offset` is at most `self.len`, so the pointer stays inside the buffer.
            ptr: unsafe { self.ptr.add(offset) },
            len: len.min(self.len - offset),
        }
    }
}

/// One element of a descriptor chain.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// The memory.
    pub buffer: DmaBuffer,
    /// Whether the device writes it (otherwise it reads it).
    pub device_writes: bool,
}

impl Segment {
    /// A buffer the device reads.
    pub fn readable(buffer: DmaBuffer) -> Self {
        Self {
            buffer,
            device_writes: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(buffer: DmaBuffer) -> Self {
        Self {
            buffer,
            device_writes: true,
        }
    }
}

/// A split virtqueue in one page of the DMA arena.
pub struct Virtqueue {
    index: u16,
    size: u16,
    page: DmaBuffer,
    /// Head of the free descriptor list (linked through `next`).
    free_head: u16,
    free_count: u16,
    /// The driver's copy of the available ring's `idx`.
    avail_idx: u16,
    /// Used ring entries consumed so far.
    last_used: u16,
}

impl Virtqueue {
    /// Sets up queue `index` of `transport` with `MAX_QUEUE_SIZE` entries or fewer if the device
    /// supports fewer, and hands it to the device.
    pub fn new(
        transport: &Transport,
        index: u16,
        arena: &mut DmaArena,
    ) -> Result<Self, DriverError> {
        Self::with_size(transport, index, arena, MAX_QUEUE_SIZE)
    }

    /// Like [`new`](Self::new) with up to `wanted` entries (a power of two, at most
    /// [`LARGEST_QUEUE_SIZE`]).
    pub fn with_size(
        transport: &Transport,
        index: u16,
        arena: &mut DmaArena,
        wanted: u16,
    ) -> Result<Self, DriverError> {
        let max = transport.queue_num_max(index);
        if max == 0 {
            return Err(DriverError::QueueUnavailable(index));
        }
        // Sizes are powers of two; a device with a smaller maximum gets the largest that fits.
        let mut size = wanted.min(LARGEST_QUEUE_SIZE);
        while size > max {
            size /= 2;
        }
        let page = arena.alloc(PAGE_SIZE, PAGE_SIZE)?;
        let mut queue = Self {
            index,
            size,
            page,
            free_head: 0,
            free_count: size,
            avail_idx: 0,
            last_used: 0,
        };
        for descriptor in 0..size {
            queue.write_desc(descriptor, 0, 0, 0, descriptor.wrapping_add(1));
        }
        transport.enable_queue(&queue)?;
        Ok(queue)
    }

    /// A queue of [`MAX_QUEUE_SIZE`] entries in a page of `arena`, not handed to any device
    /// (the hostile-guest catalogue enables it with a size of its own).
    pub fn new_unready(index: u16, arena: &mut DmaArena) -> Result<Self, DriverError> {
        let page = arena.alloc(PAGE_SIZE, PAGE_SIZE)?;
        Ok(Self {
            index,
            size: MAX_QUEUE_SIZE,
            page,
            free_head: 0,
            free_count: MAX_QUEUE_SIZE,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// The queue's index on its device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        let base = self.page.addr();
        (base, base + AVAIL_OFFSET as u64, base + USED_OFFSET as u64)
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        // SAFETY: callers pass offsets of ring fields, all inside the queue's page (the rings of
        // up to LARGEST_QUEUE_SIZE entries fit in their 0x400-byte slots).
        unsafe { self.page.ptr.add(offset).cast() }
    }

    fn write_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let offset = usize::from(index) * 16;
        // SAFETY: descriptor `index` < size lies in the page; the device reads descriptors only
        // after they are published through the available ring (ordered by the fence in `submit`).
        unsafe {
            write_volatile(self.at::<u64>(offset), addr);
            write_volatile(self.at::<u32>(offset + 8), len);
            write_volatile(self.at::<u16>(offset + 12), flags);
            write_volatile(self.at::<u16>(offset + 14), next);
        }
    }

    fn desc_flags_next(&self, index: u16) -> (u16, u16) {
        let offset = usize::from(index) * 16;
        // SAFETY: as for `write_desc`; the device does not write descriptors.
        unsafe {
            (
                read_volatile(self.at::<u16>(offset + 12)),
                read_volatile(self.at::<u16>(offset + 14)),
            )
        }
    }

    /// Writes descriptor `index` as given, valid or not (the hostile-guest catalogue). Indexes
    /// past the page's table (64 entries) are ignored.
    pub fn write_raw_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        if index < LARGEST_QUEUE_SIZE {
            self.write_desc(index, addr, len, flags, next);
        }
    }

    /// Puts `head` in the available ring's next slot and sets the ring's index to `idx`,
    /// whatever they are (the hostile-guest catalogue).
    pub fn publish_raw(&mut self, head: u16, idx: u16) {
        let slot = 4 + 2 * usize::from(self.avail_idx % self.size);
        fence(Ordering::SeqCst);
        // SAFETY: the ring slot and `idx` lie in the available ring, which only the driver writes.
        unsafe { write_volatile(self.at::<u16>(AVAIL_OFFSET + slot), head) };
        fence(Ordering::SeqCst);
        self.avail_idx = idx;
        // SAFETY: as above.
        unsafe { write_volatile(self.at::<u16>(AVAIL_OFFSET + 2), idx) };
        fence(Ordering::SeqCst);
    }

    /// The available ring's index as the driver last set it.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used ring's index and the length in its newest entry.
    pub fn used_raw(&self) -> (u16, u32) {
        // SAFETY: `idx` and the element lie in the used ring, inside the page; the device writes
        // them, hence volatile.
        unsafe {
            let idx = read_volatile(self.at::<u16>(USED_OFFSET + 2));
            let newest = 4 + 8 * usize::from(idx.wrapping_sub(1) % self.size);
            (idx, read_volatile(self.at::<u32>(USED_OFFSET + newest + 4)))
        }
    }

    /// The head descriptor the next [`submit`](Self::submit) will use (if descriptors are free).
    pub fn next_head(&self) -> u16 {
        self.free_head
    }

    /// Free descriptors.
    pub fn free(&self) -> u16 {
        self.free_count
    }

    /// Puts a chain of `segments` on the available ring (without notifying the device) and returns
    /// its head descriptor.
    pub fn submit(&mut self, segments: &[Segment]) -> Result<u16, DriverError> {
        let count = segments.len() as u16;
        if count == 0 || count > self.free_count {
            return Err(DriverError::QueueFull(self.index));
        }
        let head = self.free_head;
        let mut descriptor = head;
        for (position, segment) in segments.iter().enumerate() {
            let (_, next) = self.desc_flags_next(descriptor);
            let last = position + 1 == segments.len();
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if segment.device_writes {
                flags |= DESC_F_WRITE;
            }
            let link = if last { 0 } else { next };
            self.write_desc(
                descriptor,
                segment.buffer.addr(),
                segment.buffer.len() as u32,
                flags,
                link,
            );
            if last {
                self.free_head = next;
            }
            descriptor = next;
        }
        self.free_count -= count;
        let slot = 4 + 2 * usize::from(self.avail_idx % self.size);
        // Buffer contents and descriptors before the ring entry, the ring entry before the index.
        fence(Ordering::SeqCst);
        // SAFETY: the ring slot and `idx` lie in the available ring, which only the driver writes.
        unsafe { write_volatile(self.at::<u16>(AVAIL_OFFSET + slot), head) };
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: as above.
        unsafe { write_volatile(self.at::<u16>(AVAIL_OFFSET + 2), self.avail_idx) };
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// The next chain the device has returned, as (head descriptor, bytes written), freeing its
    /// descriptors; `None` if there is none yet.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: `idx` of the used ring, inside the page; the device writes it, hence volatile.
        let used_idx = unsafe { read_volatile(self.at::<u16>(USED_OFFSET + 2)) };
        if used_idx == self.last_used {
            return None;
        }
        // The element and the buffer contents only after the index that publishes them.
        fence(Ordering::SeqCst);
        let slot = 4 + 8 * usize::from(self.last_used % self.size);
        // SAFETY: the element lies in the used ring; the device finished writing it before `idx`.
        let (id, len) = unsafe {
            (
                read_volatile(self.at::<u32>(USED_OFFSET + slot)),
                read_volatile(self.at::<u32>(USED_OFFSET + slot + 4)),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        let head = (id % u32::from(self.size)) as u16;
        // Return the chain to the free list: walk to its tail, link the tail to the old free head.
        let mut tail = head;
        let mut count = 1;
        loop {
            let (flags, next) = self.desc_flags_next(tail);
            if flags & DESC_F_NEXT == 0 || count >= self.size {
                break;
            }
            tail = next % self.size;
            count += 1;
        }
        let offset = usize::from(tail) * 16;
        // SAFETY: descriptor `tail` is in the table and off the rings now.
        unsafe {
            write_volatile(self.at::<u16>(offset + 12), 0);
            write_volatile(self.at::<u16>(offset + 14), self.free_head);
        }
        self.free_head = head;
        self.free_count = (self.free_count + count).min(self.size);
        Some((head, len))
    }

    /// Waits until the device returns a chain (`Some`) or the TSC passes `deadline` (`None`).
    ///
    /// While waiting, the queue is notified again every [`RENOTIFY_TICKS`]: spurious notifications
    /// are harmless, and a device may miss the first one (vhost-user back ends drop kicks that
    /// arrive before the VMM has enabled the ring, which a fast driver can outrun).
    pub fn poll_used(
        &mut self,
        transport: &Transport,
        deadline: u64,
    ) -> Result<Option<(u16, u32)>, DriverError> {
        let mut next_notify = rdtsc().saturating_add(RENOTIFY_TICKS);
        loop {
            if let Some(used) = self.pop_used() {
                return Ok(Some(used));
            }
            let now = rdtsc();
            if now > deadline {
                transport.check()?;
                return Ok(None);
            }
            if now > next_notify {
                transport.notify(self.index);
                next_notify = now.saturating_add(RENOTIFY_TICKS);
            }
            core::hint::spin_loop();
        }
    }

    /// Like [`poll_used`](Self::poll_used), but a timeout is an error naming `what` was awaited.
    pub fn wait_used(
        &mut self,
        transport: &Transport,
        deadline: u64,
        what: &'static str,
    ) -> Result<(u16, u32), DriverError> {
        self.poll_used(transport, deadline)?
            .ok_or(DriverError::Timeout(what))
    }
}
