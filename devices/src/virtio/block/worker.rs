//! The I/O thread of a virtio-blk device in [`IoMode::Thread`](super::IoMode::Thread).
//!
//! The thread owns the queue and the disk while the device is active. A notification only
//! wakes it (an eventfd), so the thread that delivered it (a vCPU, or the VMM's event loop with
//! the NICs and consoles on it) never waits for the disk. With a file-backed disk and io_uring
//! on the host, the thread keeps up to a queue's worth of requests in flight: reads and writes
//! go straight between the file and guest memory (vectored, no copy), a flush waits for every
//! earlier request (`IOSQE_IO_DRAIN`) and then `fdatasync`s; what io_uring cannot take
//! (unaligned `O_DIRECT` buffers, discard, write-zeroes, GET_ID) runs on the thread itself.
//! Without io_uring (old kernels, `io_uring_disabled`, seccomp) the thread performs requests
//! one after another.
//!
//! Stopping (device reset or drop) lets requests in flight complete, then hands the disk back.
//!
//! A request over the device's rate limit stays in the ring: the thread stops taking requests
//! and sleeps until the limiter's timer fires (io_uring polls it, or `poll(2)` without
//! io_uring), so a throttled guest costs nothing; kicks meanwhile are read and ignored.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::GuestMemoryMmap;
use io_uring::{opcode, squeue, types, IoUring};
use log::debug;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::disk::IoFile;
use super::exec::{complete, Executor, Op};
use super::request::{
    RequestKind, Segment, SECTOR_SHIFT, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use super::{DiskBackend, QUEUE_SIZE};
use crate::virtio::queue_ops::{drain_queue_until, Served};
use crate::virtio::single_queue::SingleQueue;
use crate::virtio::ThreadStart;
use virtio_queue::QueueT;

/// io_uring entries: a queue's worth of requests plus the wake-up read, rounded up.
const RING_ENTRIES: u32 = 2 * QUEUE_SIZE as u32;
/// `user_data` of the wake-up read on the kick eventfd.
const KICK: u64 = u64::MAX;
/// `user_data` of the poll on the rate limiter's timer.
const TIMER: u64 = u64::MAX - 1;

/// A running I/O thread.
pub(crate) struct Worker<D: DiskBackend + 'static> {
    kick: EventFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Executor<D>, SingleQueue)>>,
}

impl<D: DiskBackend + 'static> Worker<D> {
    /// Starts the thread on `active`'s queue; it looks at the queue at once (the driver may
    /// have made requests available before it set DRIVER_OK).
    pub(crate) fn start(
        executor: Executor<D>,
        active: SingleQueue,
        thread_start: Option<ThreadStart>,
    ) -> io::Result<Self> {
        // Blocking: the plain thread sleeps in read(); io_uring reads it asynchronously.
        let kick = EventFd::new(0)?;
        let thread_kick = kick.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keel-blk".into())
            .spawn(move || {
                if let Some(hook) = thread_start {
                    hook();
                }
                run(executor, active, thread_kick, thread_stop)
            })?;
        let worker = Worker {
            kick,
            stop,
            thread: Some(thread),
        };
        worker.kick();
        Ok(worker)
    }

    /// Wakes the thread to look at the queue.
    pub(crate) fn kick(&self) {
        if let Err(err) = self.kick.write(1) {
            crate::guest_warn!("virtio-blk: cannot wake the I/O thread: {err}");
        }
    }

    /// Stops the thread once its requests in flight completed; returns the disk and the queue
    /// (`None` if the thread panicked).
    pub(crate) fn stop(mut self) -> Option<(Executor<D>, SingleQueue)> {
        self.join()
    }

    fn join(&mut self) -> Option<(Executor<D>, SingleQueue)> {
        let thread = self.thread.take()?;
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
        thread.join().ok()
    }
}

impl<D: DiskBackend + 'static> Drop for Worker<D> {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// The thread's body: io_uring when the disk is a file and the host has it, else one request
/// at a time.
fn run<D: DiskBackend>(
    mut executor: Executor<D>,
    mut active: SingleQueue,
    kick: EventFd,
    stop: Arc<AtomicBool>,
) -> (Executor<D>, SingleQueue) {
    if let Some(file) = executor.disk.io_file() {
        match IoUring::new(RING_ENTRIES) {
            Ok(ring) => {
                debug!("virtio-blk: io_uring engine");
                let mut engine = Uring::new(ring, file);
                engine.run(&mut executor, &mut active, &kick, &stop);
                return (executor, active);
            }
            Err(err) => debug!("virtio-blk: no io_uring ({err}); one request at a time"),
        }
    }
    let timer = executor.throttle().timer_fd();
    loop {
        let (kicked, timer_fired) = wait_readable(&kick, timer);
        if kicked {
            // Readable, so this does not block.
            let _ = kick.read();
        }
        if stop.load(Ordering::SeqCst) {
            return (executor, active);
        }
        if timer_fired {
            executor.throttle().timer_fired();
        } else if executor.throttle().is_waiting() {
            // A kick while throttled: the timer says when to look again.
            continue;
        }
        if executor.process_queue(&mut active) > 0 {
            active.notify_driver("virtio-blk");
        }
    }
}

/// Sleeps until the kick eventfd or the rate limiter's timer is readable; says which. An
/// interrupted or failed `poll` (none expected) reports both, so the caller looks anyway.
fn wait_readable(kick: &EventFd, timer: Option<RawFd>) -> (bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: kick.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: timer.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is an array of two initialised pollfd structures, and its length is
    // passed; poll only writes their `revents`. A negative fd is ignored by poll.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    if ready <= 0 {
        return (true, timer.is_some());
    }
    (fds[0].revents != 0, fds[1].revents != 0)
}

/// A request io_uring is carrying out.
struct InFlight {
    head: u16,
    status: GuestAddress,
    op: Op,
    /// Bytes the request moves (what a complete result must say).
    len: u32,
    /// The buffers in guest memory; io_uring reads this array when the request is submitted,
    /// and the slot keeps it alive until the completion anyway.
    iovecs: Vec<libc::iovec>,
}

// SAFETY: only `iovecs` keeps `InFlight` from being `Send`, through the raw `iov_base` pointers
// in `libc::iovec`. Those are plain addresses handed to the kernel: no Rust code dereferences
// them, so no thread-affine or unsynchronised Rust access comes with moving them to another
// thread. They point into guest memory, which is shared with every thread anyway
// (`GuestMemoryMmap` is `Send + Sync`) and stays mapped while the queue holding it lives.
unsafe impl Send for InFlight {}

/// What happened to a request offered to io_uring.
enum Offer {
    /// Submitted; it completes later.
    Submitted,
    /// Not for io_uring: perform it on the thread.
    Inline,
}

struct Uring {
    ring: IoUring,
    file: IoFile,
    slots: Vec<Option<InFlight>>,
    in_flight: usize,
    /// The wake-up read's buffer, alive as long as the ring.
    kick_buf: Box<[u8; 8]>,
    /// A poll on the rate limiter's timer is queued.
    timer_armed: bool,
}

impl Uring {
    fn new(ring: IoUring, file: IoFile) -> Self {
        Uring {
            ring,
            file,
            slots: (0..QUEUE_SIZE).map(|_| None).collect(),
            in_flight: 0,
            kick_buf: Box::new([0; 8]),
            timer_armed: false,
        }
    }

    /// Queues a poll of the rate limiter's timer, which completes when it fires.
    fn arm_timer(&mut self, timer: RawFd) -> io::Result<()> {
        let poll = opcode::PollAdd::new(types::Fd(timer), u32::from(libc::POLLIN.unsigned_abs()))
            .build()
            .user_data(TIMER);
        self.push(&poll)?;
        self.timer_armed = true;
        Ok(())
    }

    /// Queues a read of the kick eventfd, which completes when the thread is woken.
    fn arm_kick(&mut self, kick: &EventFd) -> io::Result<()> {
        let read = opcode::Read::new(
            types::Fd(std::os::fd::AsRawFd::as_raw_fd(kick)),
            self.kick_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(KICK);
        self.push(&read)
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer an entry names (the kick buffer, the iovec arrays and the guest
        // memory they point into) stays alive until its completion is reaped: the kick buffer
        // lives with `self`, iovec arrays in `self.slots`, guest memory with the queue.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            // Full: hand what is queued to the kernel and try once more.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    fn run<D: DiskBackend>(
        &mut self,
        executor: &mut Executor<D>,
        active: &mut SingleQueue,
        kick: &EventFd,
        stop: &AtomicBool,
    ) {
        let timer = executor.throttle().timer_fd();
        let mut stopping = false;
        if let Err(err) = self.arm_kick(kick) {
            crate::guest_warn!("virtio-blk: io_uring: {err}");
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    crate::guest_warn!("virtio-blk: io_uring wait failed: {err}");
                    if stopping && self.in_flight == 0 {
                        return;
                    }
                    continue;
                }
            }
            let reaped: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result()))
                .collect();
            let mut completed = 0usize;
            let mut kicked = false;
            let mut timer_fired = false;
            for (user_data, result) in reaped {
                if user_data == KICK {
                    kicked = true;
                    continue;
                }
                if user_data == TIMER {
                    self.timer_armed = false;
                    timer_fired = true;
                    continue;
                }
                let Some(request) = usize::try_from(user_data)
                    .ok()
                    .and_then(|slot| self.slots.get_mut(slot))
                    .and_then(Option::take)
                else {
                    continue;
                };
                self.in_flight -= 1;
                finish(executor, active, request, result);
                completed += 1;
            }
            if timer_fired {
                executor.throttle().timer_fired();
                // Requests are taken on the kick path only, where no wake-up read or timer
                // poll is queued: a flush drains (IOSQE_IO_DRAIN) everything submitted before
                // it, and must not wait for the next wake-up.
                if let Err(err) = kick.write(1) {
                    crate::guest_warn!("virtio-blk: cannot wake the I/O thread: {err}");
                }
            }
            if kicked && stop.load(Ordering::SeqCst) {
                stopping = true;
            }
            if kicked && !stopping {
                // A kick while throttled is ignored: the timer says when to look again.
                if !executor.throttle().is_waiting() {
                    completed += self.take_requests(executor, active);
                }
                // Re-armed after the requests, for the same reason.
                if let Err(err) = self.arm_kick(kick) {
                    crate::guest_warn!("virtio-blk: io_uring: {err}");
                }
                let waiting = executor.throttle().is_waiting();
                if let (true, false, Some(timer)) = (waiting, self.timer_armed, timer) {
                    if let Err(err) = self.arm_timer(timer) {
                        crate::guest_warn!("virtio-blk: io_uring: {err}");
                    }
                }
            }
            if completed > 0 {
                active.notify_driver("virtio-blk");
            }
            if stopping && self.in_flight == 0 {
                return;
            }
        }
    }

    /// Pops the available requests, as many as the rate limit allows: reads, writes and
    /// flushes go to io_uring, the rest run here. Returns how many completed at once.
    fn take_requests<D: DiskBackend>(
        &mut self,
        executor: &mut Executor<D>,
        active: &mut SingleQueue,
    ) -> usize {
        let mut completed = 0;
        let mem = &active.mem;
        let throttle = executor.shared_throttle();
        let mut throttle = throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drain_queue_until(&mut active.queue, mem, "virtio-blk", |chain| {
            let head = chain.head_index();
            let request = match executor.parse(chain, mem) {
                Ok(request) => request,
                Err(used_len) => {
                    completed += 1;
                    return Served::Used(used_len);
                }
            };
            if !throttle.admit(request.data_bytes()) {
                return Served::Stop;
            }
            match self.offer(executor, mem, head, &request) {
                Ok(Offer::Submitted) => Served::Later,
                Ok(Offer::Inline) | Err(_) => {
                    completed += 1;
                    Served::Used(executor.perform(mem, &request))
                }
            }
        });
        completed
    }

    fn offer<D: DiskBackend>(
        &mut self,
        executor: &Executor<D>,
        mem: &GuestMemoryMmap,
        head: u16,
        request: &super::Request,
    ) -> io::Result<Offer> {
        let slot = usize::from(head);
        if self.slots.get(slot).is_none_or(Option::is_some) {
            // A head the queue should not have handed out twice: let the thread handle it.
            return Ok(Offer::Inline);
        }
        let fd = types::Fd(self.file.fd);
        let (op, entry, len, iovecs) = match &request.kind {
            RequestKind::In { sector, segments } | RequestKind::Out { sector, segments } => {
                let write = matches!(request.kind, RequestKind::Out { .. });
                if write && executor.read_only() {
                    return Ok(Offer::Inline);
                }
                let offset = sector << SECTOR_SHIFT;
                let Some(iovecs) = self.iovecs(mem, offset, segments, !write) else {
                    return Ok(Offer::Inline);
                };
                // Segments may overlap, so their lengths can add up to more than 4 GiB
                // (summing them in u32 wrapped, or panicked with overflow checks on): such a
                // request takes the thread's chunked path, as it does without io_uring. The
                // iovec count is at most the queue size.
                let len = segments
                    .iter()
                    .try_fold(0u32, |total, segment| total.checked_add(segment.len));
                let (Some(len), Ok(count)) = (len, u32::try_from(iovecs.len())) else {
                    return Ok(Offer::Inline);
                };
                let entry = if write {
                    opcode::Writev::new(fd, iovecs.as_ptr(), count)
                        .offset(offset)
                        .build()
                } else {
                    opcode::Readv::new(fd, iovecs.as_ptr(), count)
                        .offset(offset)
                        .build()
                };
                let op = if write { Op::Write } else { Op::Read };
                (op, entry, len, iovecs)
            }
            RequestKind::Flush => (
                Op::Flush,
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    // Only after every request submitted before it has completed.
                    .flags(squeue::Flags::IO_DRAIN),
                0,
                Vec::new(),
            ),
            RequestKind::GetId { .. } | RequestKind::Discard(_) | RequestKind::WriteZeroes(_) => {
                return Ok(Offer::Inline)
            }
        };
        let entry = entry.user_data(slot as u64);
        // Recorded before the push: the iovec array must stay where the entry points.
        self.slots[slot] = Some(InFlight {
            head,
            status: request.status,
            op,
            len,
            iovecs,
        });
        if let Err(err) = self.push(&entry) {
            self.slots[slot] = None;
            return Err(err);
        }
        self.in_flight += 1;
        Ok(Offer::Submitted)
    }

    /// The segments as host buffers, if each lies in one guest memory region and, for
    /// `O_DIRECT`, the buffers, lengths and `offset` are aligned; `None` sends the request to
    /// the thread's copying path instead. With `into_guest` (a read) the buffers are marked
    /// dirty: the kernel writes them behind guest memory's back.
    fn iovecs(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segments: &[Segment],
        into_guest: bool,
    ) -> Option<Vec<libc::iovec>> {
        let align = u64::from(self.file.block_size.max(1));
        if self.file.direct && !offset.is_multiple_of(align) {
            return None;
        }
        segments
            .iter()
            .map(|segment| {
                let region = mem.find_region(segment.addr)?;
                let start = segment.addr.checked_offset_from(region.start_addr())?;
                let end = start.checked_add(u64::from(segment.len))?;
                if end > region.len() {
                    return None;
                }
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(start))
                    .ok()?;
                if self.file.direct
                    && (!(host as u64).is_multiple_of(align)
                        || !u64::from(segment.len).is_multiple_of(align))
                {
                    return None;
                }
                if into_guest {
                    let start = usize::try_from(start).ok()?;
                    vm_memory::bitmap::Bitmap::mark_dirty(
                        &region.bitmap(),
                        start,
                        segment.len as usize,
                    );
                }
                Some(libc::iovec {
                    iov_base: host.cast(),
                    iov_len: segment.len as usize,
                })
            })
            .collect()
    }
}

/// Completes a request io_uring finished with `result` (bytes moved, or `-errno`).
fn finish<D: DiskBackend>(
    executor: &Executor<D>,
    active: &mut SingleQueue,
    request: InFlight,
    result: i32,
) {
    let status = match result {
        error if error < 0 => {
            if -error == libc::EOPNOTSUPP {
                VIRTIO_BLK_S_UNSUPP
            } else {
                crate::guest_warn!(
                    "virtio-blk: I/O error: {}",
                    io::Error::from_raw_os_error(-error)
                );
                VIRTIO_BLK_S_IOERR
            }
        }
        done if request.op != Op::Flush && done as u32 != request.len => {
            crate::guest_warn!(
                "virtio-blk: short transfer: {done} of {} bytes",
                request.len
            );
            VIRTIO_BLK_S_IOERR
        }
        _ => VIRTIO_BLK_S_OK,
    };
    let written = if request.op == Op::Read && status == VIRTIO_BLK_S_OK {
        request.len
    } else {
        0
    };
    executor
        .metrics()
        .record_op(request.op, u64::from(request.len), status);
    let used_len = complete(&active.mem, request.status, status, written);
    if let Err(err) = active.queue.add_used(&active.mem, request.head, used_len) {
        crate::guest_warn!("virtio-blk: cannot return chain {}: {err}", request.head);
    }
    drop(request.iovecs);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::super::request::{
        HEADER_LEN, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use super::super::{BlockConfig, DiskBackend, IoMode, VirtioBlock, QUEUE_SIZE};
    use crate::virtio::testing::{test_memory, DriverQueue, BUFFERS};
    use crate::virtio::VirtioDevice;

    /// Headers and status bytes of request `i` live apart from every other request's, so many
    /// can be in flight at once.
    fn header_addr(i: u64) -> u64 {
        BUFFERS + i * 0x20
    }
    fn status_addr(i: u64) -> u64 {
        BUFFERS + 0x2000 + i
    }
    /// Data of request `i`: 4 KiB.
    fn data_addr(i: u64) -> u64 {
        BUFFERS + 0x1_0000 + i * 0x1000
    }

    fn queue_request(driver: &mut DriverQueue, i: u64, request_type: u32, sector: u64, data: bool) {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        driver.write(header_addr(i), &header);
        driver.write(status_addr(i), &[0xff]);
        let mut bufs = vec![(header_addr(i), HEADER_LEN, false)];
        if data {
            bufs.push((data_addr(i), 4096, request_type == VIRTIO_BLK_T_IN));
        }
        bufs.push((status_addr(i), 1, true));
        driver.add_chain(&bufs);
    }

    fn wait_used(driver: &DriverQueue, count: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.used_count() != count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} used",
                driver.used_count()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn temp_image(name: &str, len: usize) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("keel-blkw-{}-{name}", std::process::id()));
        std::fs::write(&path, vec![0u8; len]).unwrap();
        path
    }

    #[test]
    fn a_queue_of_reads_and_writes_in_flight_completes_on_the_io_thread() {
        let path = temp_image("many.img", 1 << 20);
        let config = BlockConfig {
            path: path.clone(),
            read_only: false,
            direct: false,
            id: "many".into(),
        };
        let mut block = VirtioBlock::new(&config).unwrap();
        block.set_io_mode(IoMode::Thread);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut block);
        assert!(block.disk().is_none(), "the I/O thread holds the disk");
        // 32 writes of 4 KiB, one notification.
        for i in 0..32u64 {
            driver.write(data_addr(i), &[i as u8 + 1; 4096]);
            queue_request(&mut driver, i, VIRTIO_BLK_T_OUT, i * 8, true);
        }
        block.queue_notify(0);
        wait_used(&driver, 32);
        for i in 0..32u64 {
            assert_eq!(driver.read(status_addr(i), 1), [0], "write {i}");
        }
        // A flush after them, then 32 reads of what was written into clean buffers.
        queue_request(&mut driver, 32, VIRTIO_BLK_T_FLUSH, 0, false);
        block.queue_notify(0);
        wait_used(&driver, 33);
        assert_eq!(driver.read(status_addr(32), 1), [0], "flush");
        for i in 0..32u64 {
            driver.write(data_addr(i + 40), &[0; 4096]);
            queue_request(&mut driver, i + 40, VIRTIO_BLK_T_IN, i * 8, true);
        }
        block.queue_notify(0);
        wait_used(&driver, 65);
        for i in 0..32u64 {
            assert_eq!(driver.read(status_addr(i + 40), 1), [0], "read {i}");
            assert_eq!(
                driver.read(data_addr(i + 40), 4096),
                vec![i as u8 + 1; 4096]
            );
        }
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[31 * 4096..32 * 4096], &[32u8; 4096][..]);
        let metrics = block.metrics();
        assert_eq!(
            (metrics.write_ops, metrics.read_ops, metrics.flushes),
            (32, 32, 1)
        );
        assert_eq!(metrics.read_bytes, 32 * 4096);
        assert!(interrupt.count() >= 3, "the driver was interrupted");
        // Reset stops the thread and gives the disk back; a new activation works.
        assert!(block.reset());
        assert!(block.disk().is_some());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_request_of_more_than_4_gib_is_not_given_to_io_uring() {
        use super::super::disk::RawFile;
        use super::super::exec::BlockMetrics;
        use super::super::request::{Limits, Request, RequestKind, Segment};
        use super::{IoUring, Offer, Uring, RING_ENTRIES};
        use crate::GuestMemoryMmap;
        use vm_memory::GuestAddress;

        let Ok(ring) = IoUring::new(RING_ENTRIES) else {
            eprintln!("skipped: no io_uring on this host");
            return;
        };
        let path = temp_image("huge.img", 4096);
        let disk = RawFile::open(&path, false, false).unwrap();
        let mut engine = Uring::new(ring, disk.io_file().unwrap());
        let limits = Limits {
            capacity: 8,
            seg_max: 254,
            max_discard_sectors: 1,
            max_discard_seg: 1,
            max_write_zeroes_sectors: 1,
            max_write_zeroes_seg: 1,
        };
        let executor = super::Executor::new(
            disk,
            [0; 20],
            false,
            limits,
            Arc::new(Mutex::new(BlockMetrics::default())),
            Arc::new(Mutex::new(crate::rate_limiter::Throttle::new())),
        );
        // 64 MiB of guest memory (mapped, never touched) read into 65 times over: 4160 MiB,
        // which a u32 total wraps to 64 MiB.
        const LEN: u32 = 64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LEN as usize)]).unwrap();
        let segment = Segment {
            addr: GuestAddress(0),
            len: LEN,
        };
        let request = Request {
            kind: RequestKind::In {
                sector: 0,
                segments: vec![segment; 65],
            },
            status: GuestAddress(0),
        };
        let offer = engine.offer(&executor, &mem, 0, &request);
        assert!(matches!(offer, Ok(Offer::Inline)), "nothing was submitted");
        assert_eq!(engine.in_flight, 0);
        assert!(engine.slots.iter().all(Option::is_none));
        std::fs::remove_file(path).unwrap();
    }

    /// A disk without a file that records which thread touched it, optionally slowly.
    #[derive(Clone)]
    struct SlowDisk {
        bytes: Arc<Mutex<Vec<u8>>>,
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
        delay: Duration,
    }

    impl DiskBackend for SlowDisk {
        fn size(&self) -> std::io::Result<u64> {
            Ok(self.bytes.lock().unwrap().len() as u64)
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            std::thread::sleep(self.delay);
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            let at = offset as usize;
            buf.copy_from_slice(&self.bytes.lock().unwrap()[at..at + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            std::thread::sleep(self.delay);
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            let at = offset as usize;
            self.bytes.lock().unwrap()[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn slow_disk(delay: Duration) -> SlowDisk {
        SlowDisk {
            bytes: Arc::new(Mutex::new(vec![0; 64 * 1024])),
            threads: Arc::new(Mutex::new(Vec::new())),
            delay,
        }
    }

    #[test]
    fn a_backend_without_a_file_runs_on_the_io_thread_and_notify_returns_at_once() {
        let disk = slow_disk(Duration::from_millis(300));
        let mut block = VirtioBlock::with_backend_id(disk.clone(), "slow", false).unwrap();
        block.set_io_mode(IoMode::Thread);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        driver.write(data_addr(0), &[7; 4096]);
        queue_request(&mut driver, 0, VIRTIO_BLK_T_OUT, 8, true);
        let started = Instant::now();
        block.queue_notify(0);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "the notifying thread did not wait for the disk"
        );
        wait_used(&driver, 1);
        assert_eq!(driver.read(status_addr(0), 1), [0]);
        assert_eq!(disk.bytes.lock().unwrap()[8 * 512], 7);
        let threads = disk.threads.lock().unwrap().clone();
        assert!(threads.iter().all(|id| *id != std::thread::current().id()));
    }

    #[test]
    fn reset_waits_for_the_request_in_progress() {
        let disk = slow_disk(Duration::from_millis(300));
        let mut block = VirtioBlock::with_backend_id(disk, "slow", false).unwrap();
        block.set_io_mode(IoMode::Thread);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        queue_request(&mut driver, 0, VIRTIO_BLK_T_IN, 0, true);
        block.queue_notify(0);
        std::thread::sleep(Duration::from_millis(50));
        assert!(block.reset());
        // After reset returns the device touches guest memory no more: the request it was
        // performing finished first.
        assert_eq!(driver.used_count(), 1);
        assert_eq!(driver.read(status_addr(0), 1), [0]);
    }

    /// The I/O thread sleeps on the limiter's timer: requests over the limit wait in the ring,
    /// and a looser limit set meanwhile wakes it at once. With io_uring (a file) and without
    /// (a backend with no file).
    #[test]
    fn a_throttled_io_thread_waits_for_its_timer_and_a_new_limit_wakes_it() {
        use crate::rate_limiter::{BucketConfig, RateLimit, RateLimitTarget};
        let path = temp_image("throttled.img", 1 << 20);
        let config = BlockConfig {
            path: path.clone(),
            read_only: false,
            direct: false,
            id: "throttled".into(),
        };
        let mut file_block = VirtioBlock::new(&config).unwrap();
        file_block.set_io_mode(IoMode::Thread);
        let mut plain_block =
            VirtioBlock::with_backend_id(slow_disk(Duration::ZERO), "plain", false).unwrap();
        plain_block.set_io_mode(IoMode::Thread);
        let blocks: Vec<Box<dyn VirtioDevice>> = vec![Box::new(file_block), Box::new(plain_block)];
        for (which, mut block) in blocks.into_iter().enumerate() {
            let ops = |size, refill_time| RateLimit {
                bandwidth: None,
                ops: Some(BucketConfig {
                    size,
                    one_time_burst: 0,
                    refill_time,
                }),
            };
            // 100 requests a second, 10 at once: 30 take at least 200 ms.
            block
                .set_rate_limit(
                    RateLimitTarget::Requests,
                    ops(10, Duration::from_millis(100)),
                )
                .unwrap();
            let mem = test_memory();
            let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
            // Activation starts the I/O thread.
            let any: &mut dyn VirtioDevice = block.as_mut();
            driver.activate(any);
            let started = Instant::now();
            // Within the 64 KiB of the smaller disk: a request past its end would be refused
            // as malformed, which no limit holds up.
            for i in 0..30u64 {
                queue_request(&mut driver, i, VIRTIO_BLK_T_OUT, (i % 16) * 8, true);
            }
            any.queue_notify(0);
            wait_used(&driver, 30);
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(190), "{which}: {took:?}");
            // One request an hour: the thread sleeps with two requests in the ring ...
            any.set_rate_limit(RateLimitTarget::Requests, ops(1, Duration::from_secs(3600)))
                .unwrap();
            for i in 30..33u64 {
                queue_request(&mut driver, i, VIRTIO_BLK_T_FLUSH, 0, false);
            }
            any.queue_notify(0);
            wait_used(&driver, 31);
            std::thread::sleep(Duration::from_millis(100));
            any.queue_notify(0);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(driver.used_count(), 31, "{which}: the rest wait");
            // ... until the limit is lifted.
            any.set_rate_limit(RateLimitTarget::Requests, RateLimit::NONE)
                .unwrap();
            wait_used(&driver, 33);
            for i in 0..33u64 {
                assert_eq!(driver.read(status_addr(i), 1), [0], "{which}: request {i}");
            }
            assert!(any.reset());
        }
        std::fs::remove_file(path).unwrap();
    }
}
