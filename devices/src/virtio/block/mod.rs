//! virtio-blk: a block device over a [`DiskBackend`] (virtio 1.2, section 5.2).
//!
//! [`VirtioBlock`] is a state machine over one request queue. On each notification it pops the
//! available chains, parses each into a [`Request`] (see [`request`]), performs it on the backend,
//! writes the status byte, and returns the chain with the number of bytes it wrote into guest
//! buffers. Malformed requests complete with `VIRTIO_BLK_S_IOERR` (or `UNSUPP`) when the status
//! byte can be located, and with nothing written otherwise; guest data never panics the VMM.
//!
//! Requests run on the thread that delivers the notification ([`IoMode::Inline`]) or on the
//! device's own I/O thread ([`IoMode::Thread`], io_uring when the host has it); there is no
//! multi-queue and no image format beyond a raw file.
//!
//! A rate limit ([`VirtioDevice::set_rate_limit`] with [`RateLimitTarget::Requests`]) counts
//! each request as one operation and its data (reads and writes) as bandwidth; a request over
//! the limit stays in the ring until the budget allows it. Malformed requests, answered without
//! touching the disk, are not counted. In [`IoMode::Thread`] the I/O thread sleeps on the
//! limiter's timer; in [`IoMode::Inline`] nothing has a timer to sleep on, so a throttled queue
//! is looked at again on the next notification only: use the I/O thread with a limit.

pub mod disk;
mod exec;
pub mod request;
mod worker;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use log::debug;
use virtio_queue::Queue;
use vm_memory::ByteValued;

pub use disk::{DiskBackend, IoFile, RawFile};
pub use exec::BlockMetrics;

use exec::Executor;
pub use request::{Limits, Request, RequestKind, SectorRange, Segment};
use worker::Worker;

use super::single_queue::SingleQueue;
use super::{
    ActivateError, VirtioDevice, VirtioInterrupt, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::counters::Counter;
use crate::rate_limiter::{RateLimit, RateLimitError, RateLimitTarget, Throttle};
use crate::virtio::config_space::{read_config_bytes, BlockConfigSpace};
use crate::virtio::snapshot::{
    restore_plain, DeviceExtra, QueueSnapshot, SnapshotError, VirtioDeviceState,
};
use crate::virtio::ThreadStart;
use request::{ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};
use virtio_bindings::virtio_blk;

/// Feature bit: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << virtio_blk::VIRTIO_BLK_F_RO;
/// Feature bit: `blk_size` in the config space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
/// Feature bit: the device handles FLUSH requests.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_blk::VIRTIO_BLK_F_FLUSH;
/// Feature bit: the device handles DISCARD requests.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << virtio_blk::VIRTIO_BLK_F_DISCARD;
/// Feature bit: the device handles WRITE_ZEROES requests.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES;

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data descriptors per request: a chain of the whole queue less header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors per discard range (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most ranges per discard request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors per write-zeroes range (1 GiB).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 21;
/// Most ranges per write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;

/// How to build a block device from an image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Path of the raw image; its size must be a multiple of 512 bytes.
    pub path: PathBuf,
    /// Open the image read-only and offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Serial number returned by `GET_ID`; at most 20 bytes.
    pub id: String,
}

/// Why a block device could not be built; each variant names the [`BlockConfig`] field.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// `path`: the image cannot be opened.
    #[error("block `path` {path:?} cannot be opened: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `path`: the image's size cannot be read.
    #[error("block `path` {path:?}: size unknown: {source}")]
    Size {
        /// The image path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `path`: the image is not a whole number of sectors.
    #[error("block `path` {path:?} is {size} bytes, not a multiple of 512")]
    PartialSector {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// `direct`: the file system refused `O_DIRECT`.
    #[error("block `direct` I/O on {path:?} is not possible: {source}")]
    Direct {
        /// The image path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `id`: the serial number is longer than 20 bytes.
    #[error("block `id` {id:?} is {len} bytes, at most 20 allowed")]
    IdTooLong {
        /// The serial number given.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// A virtio-blk device over a disk backend.
///
/// ```
/// use devices::virtio::block::{BlockConfig, VirtioBlock};
/// use devices::virtio::{VirtioDevice, TYPE_BLOCK};
///
/// let path = std::env::temp_dir().join(format!("keel-doc-{}.img", std::process::id()));
/// std::fs::write(&path, vec![0u8; 8 * 512]).unwrap();
/// let config = BlockConfig { path: path.clone(), read_only: false, direct: false, id: "disk0".into() };
/// let block = VirtioBlock::new(&config).unwrap();
/// assert_eq!(block.device_type(), TYPE_BLOCK);
/// assert_eq!(block.capacity(), 8);
/// let mut capacity = [0u8; 8];
/// block.read_config(0, &mut capacity);
/// assert_eq!(u64::from_le_bytes(capacity), 8);
/// std::fs::remove_file(path).unwrap();
/// ```
pub struct VirtioBlock<D: DiskBackend + 'static = RawFile> {
    limits: Limits,
    avail_features: u64,
    acked_features: u64,
    config: BlockConfigSpace,
    queue_sizes: [u16; 1],
    mode: IoMode,
    io: Io<D>,
    metrics: Arc<Mutex<BlockMetrics>>,
    /// The rate limiter, shared with the executor (on the I/O thread while active).
    throttle: Arc<Mutex<Throttle>>,
    /// Run first on the I/O thread (the VMM's seccomp filter for it).
    thread_start: Option<ThreadStart>,
}

/// Where a block device performs its requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// On the thread that delivers the queue notification (a vCPU or the VMM's event loop),
    /// one request at a time. Simple and deterministic: what unit tests and fuzzing use.
    #[default]
    Inline,
    /// On an I/O thread of the device's own, so a slow disk never holds up the thread that
    /// notified it (and the other devices that thread serves). With a backend that exposes a
    /// file ([`DiskBackend::io_file`]) and a host with io_uring, many requests are in flight at
    /// once and reads and writes go straight between the file and guest memory; otherwise the
    /// thread performs them one after another.
    Thread,
}

/// The device's I/O side through its lifecycle.
enum Io<D: DiskBackend + 'static> {
    /// Not activated: the executor waits for a queue.
    Idle(Executor<D>),
    /// Activated, requests performed on the notifying thread.
    Inline(Executor<D>, SingleQueue),
    /// Activated, requests performed on the device's I/O thread.
    Thread(Worker<D>),
    /// Transitional (a worker that could not be joined took the disk with it).
    Gone,
}

impl VirtioBlock<RawFile> {
    /// Opens the image named by `config` and builds the device.
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let id = Self::check_id(&config.id)?;
        let path = &config.path;
        let disk = RawFile::open(path, config.read_only, config.direct).map_err(|source| {
            let direct_refused = config.direct
                && matches!(
                    source.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                );
            if direct_refused || source.kind() == io::ErrorKind::Unsupported {
                BlockError::Direct {
                    path: path.clone(),
                    source,
                }
            } else {
                BlockError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        Self::with_backend(disk, path, id, config.read_only)
    }
}

impl<D: DiskBackend + 'static> VirtioBlock<D> {
    fn check_id(id: &str) -> Result<[u8; ID_BYTES], BlockError> {
        if id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong {
                id: id.to_string(),
                len: id.len(),
            });
        }
        let mut bytes = [0u8; ID_BYTES];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Ok(bytes)
    }

    /// Builds the device over an embedder's `disk`, with `id` (at most 20 bytes) as its serial
    /// number and name in errors.
    pub fn with_backend_id(disk: D, id: &str, read_only: bool) -> Result<Self, BlockError> {
        let serial = Self::check_id(id)?;
        Self::with_backend(disk, Path::new(id), serial, read_only)
    }

    /// Builds the device over `disk`; `path` only names the disk in errors. `id` is the
    /// NUL-padded serial number.
    pub fn with_backend(
        disk: D,
        path: &Path,
        id: [u8; ID_BYTES],
        read_only: bool,
    ) -> Result<Self, BlockError> {
        let size = disk.size().map_err(|source| BlockError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::PartialSector {
                path: path.to_path_buf(),
                size,
            });
        }
        let capacity = size >> SECTOR_SHIFT;
        let block_size = disk.block_size();
        let limits = Limits {
            capacity,
            seg_max: SEG_MAX,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS,
            max_write_zeroes_seg: MAX_WRITE_ZEROES_SEG,
        };
        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if read_only {
            avail_features |= VIRTIO_BLK_F_RO;
        } else {
            avail_features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }

        let alignment_sectors = (block_size >> SECTOR_SHIFT).max(1);
        let config = BlockConfigSpace {
            capacity: capacity.into(),
            seg_max: SEG_MAX.into(),
            blk_size: block_size.into(),
            max_discard_sectors: MAX_DISCARD_SECTORS.into(),
            max_discard_seg: MAX_DISCARD_SEG.into(),
            discard_sector_alignment: alignment_sectors.into(),
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS.into(),
            max_write_zeroes_seg: MAX_WRITE_ZEROES_SEG.into(),
            write_zeroes_may_unmap: 1,
            ..Default::default()
        };

        let metrics = Arc::new(Mutex::new(BlockMetrics::default()));
        let throttle = Arc::new(Mutex::new(Throttle::new()));
        let executor = Executor::new(
            disk,
            id,
            read_only,
            limits,
            metrics.clone(),
            throttle.clone(),
        );
        Ok(VirtioBlock {
            limits,
            avail_features,
            acked_features: 0,
            config,
            queue_sizes: [QUEUE_SIZE],
            mode: IoMode::Inline,
            io: Io::Idle(executor),
            metrics,
            throttle,
            thread_start: None,
        })
    }

    /// Chooses where requests run (before the driver activates the device; the default is
    /// [`IoMode::Inline`]).
    pub fn set_io_mode(&mut self, mode: IoMode) {
        self.mode = mode;
    }

    /// Where requests run.
    pub fn io_mode(&self) -> IoMode {
        self.mode
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The disk backend, unless the device's I/O thread holds it (while active in
    /// [`IoMode::Thread`]).
    pub fn disk(&self) -> Option<&D> {
        match &self.io {
            Io::Idle(executor) | Io::Inline(executor, _) => Some(&executor.disk),
            Io::Thread(_) | Io::Gone => None,
        }
    }

    /// What the device has done so far.
    pub fn metrics(&self) -> BlockMetrics {
        self.metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs the rate limiter on `clock` (tests move time by hand).
    #[cfg(test)]
    pub(crate) fn set_rate_limit_clock(&self, clock: Arc<dyn crate::rate_limiter::Clock>) {
        self.throttle().set_clock(clock);
    }

    /// The rate limiter, locked.
    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops the I/O thread (after its requests in flight complete) and takes the disk back.
    fn quiesce(&mut self) {
        self.io = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Inline(executor, _) => Io::Idle(executor),
            Io::Thread(worker) => match worker.stop() {
                Some((executor, _)) => Io::Idle(executor),
                None => Io::Gone,
            },
            other => other,
        };
    }
}

impl<D: DiskBackend + 'static> Drop for VirtioBlock<D> {
    fn drop(&mut self) {
        // Requests in flight on the I/O thread write guest memory: let them finish.
        self.quiesce();
    }
}

impl<D: DiskBackend + 'static> VirtioDevice for VirtioBlock<D> {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.config.as_slice(), offset, data);
    }

    fn set_thread_start(&mut self, hook: ThreadStart) {
        self.thread_start = Some(hook);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let active = SingleQueue::activate(mem, interrupt, queues, event_idx)?;
        self.quiesce();
        let Io::Idle(executor) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err(ActivateError::Backend(
                "the disk was lost with a failed I/O thread".into(),
            ));
        };
        self.io = match self.mode {
            IoMode::Inline => Io::Inline(executor, active),
            IoMode::Thread => Io::Thread(
                Worker::start(executor, active, self.thread_start.clone()).map_err(|err| {
                    ActivateError::Backend(format!("cannot start the I/O thread: {err}"))
                })?,
            ),
        };
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index != 0 {
            debug!("virtio-blk: notify for unknown queue {index}");
            return;
        }
        match &mut self.io {
            Io::Inline(executor, active) => {
                // No timer wakes an inline device: every notification looks again.
                executor.throttle().timer_fired();
                if executor.process_queue(active) > 0 {
                    active.notify_driver("virtio-blk");
                }
            }
            Io::Thread(worker) => worker.kick(),
            Io::Idle(_) | Io::Gone => {}
        }
    }

    fn reset(&mut self) -> bool {
        self.quiesce();
        self.acked_features = 0;
        // Nothing waits any more; the budgets stay spent (a reset does not refill them).
        self.throttle().timer_fired();
        !matches!(self.io, Io::Gone)
    }

    fn set_rate_limit(
        &mut self,
        target: RateLimitTarget,
        limit: RateLimit,
    ) -> Result<(), RateLimitError> {
        if target != RateLimitTarget::Requests {
            return Err(RateLimitError::Unsupported { target });
        }
        self.throttle().set_limit(limit)
    }

    fn rate_limits(&self) -> Vec<(RateLimitTarget, RateLimit)> {
        vec![(RateLimitTarget::Requests, self.throttle().limit())]
    }

    /// Requests in flight on the I/O thread complete first (the thread is stopped and started
    /// again), so the saved queue holds only what the driver has not been told is done.
    fn save_state(&mut self) -> Result<VirtioDeviceState, SnapshotError> {
        let queue = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Inline(executor, active) => {
                let saved = QueueSnapshot::of(&active.queue);
                self.io = Io::Inline(executor, active);
                Some(saved)
            }
            Io::Thread(worker) => {
                let Some((executor, active)) = worker.stop() else {
                    return Err(SnapshotError::Activate(
                        "the I/O thread failed; the disk is lost".into(),
                    ));
                };
                let saved = QueueSnapshot::of(&active.queue);
                self.io = match Worker::start(executor, active, self.thread_start.clone()) {
                    Ok(worker) => Io::Thread(worker),
                    Err(err) => {
                        return Err(SnapshotError::Activate(format!(
                            "cannot restart the I/O thread: {err}"
                        )))
                    }
                };
                Some(saved)
            }
            other => {
                self.io = other;
                None
            }
        };
        Ok(VirtioDeviceState {
            device_type: TYPE_BLOCK,
            acked_features: self.acked_features,
            activated: queue.is_some(),
            queues: queue.into_iter().collect(),
            extra: DeviceExtra::None,
            rate_limiters: vec![(RateLimitTarget::Requests, self.throttle().state())],
        })
    }

    fn restore_state(
        &mut self,
        state: &VirtioDeviceState,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), SnapshotError> {
        for (target, saved) in &state.rate_limiters {
            if *target == RateLimitTarget::Requests {
                self.throttle().restore(saved);
            }
        }
        restore_plain(self, state, mem, interrupt)
    }

    fn counters(&self) -> Vec<Counter> {
        let mut counters = self.metrics().counters();
        counters.push(Counter::count(
            "rate_limited",
            "times a request waited for the rate limiter",
            self.throttle().throttled(),
        ));
        counters
    }
}

#[cfg(test)]
mod tests {
    use crate::virtio::InterruptKind;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::request::{
        HEADER_LEN, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    };
    use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
    use super::*;
    use crate::virtio::testing::{
        test_memory, DriverQueue, Rng, BUFFERS, F_NEXT, F_WRITE, MEMORY_SIZE,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::QueueT;

    const HDR: u64 = BUFFERS;
    const STATUS: u64 = BUFFERS + 0x100;
    const BUF: u64 = BUFFERS + 0x1000;
    const MIB: usize = 1 << 20;

    /// A temporary image file, removed on drop.
    struct TempImage(PathBuf);

    impl TempImage {
        fn new(contents: &[u8]) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "keel-blk-{}-{}.img",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
            TempImage(path)
        }

        fn config(&self, read_only: bool) -> BlockConfig {
            BlockConfig {
                path: self.0.clone(),
                read_only,
                direct: false,
                id: "keel-disk-0".into(),
            }
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Bytes 0..len with a position-dependent pattern, so misplaced sectors show.
    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i / 7) as u8 ^ (i >> 9) as u8 ^ salt)
            .collect()
    }

    fn put_header(driver: &DriverQueue, request_type: u32, sector: u64) {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        driver.write(HDR, &header);
        driver.write(STATUS, &[0xff]);
    }

    /// Queues header + `data` + status, notifies, and returns (status byte, used length).
    fn submit(
        device: &mut dyn VirtioDevice,
        driver: &mut DriverQueue,
        request_type: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> (u8, u32) {
        put_header(driver, request_type, sector);
        let mut bufs = vec![(HDR, HEADER_LEN, false)];
        bufs.extend_from_slice(data);
        bufs.push((STATUS, 1, true));
        let head = driver.add_chain(&bufs);
        let before = driver.used_count();
        device.queue_notify(0);
        assert_eq!(
            driver.used_count(),
            before.wrapping_add(1),
            "one chain returned"
        );
        let (id, len) = driver.used(before % 256);
        assert_eq!(id, u32::from(head));
        (driver.read(STATUS, 1)[0], len)
    }

    fn range_bytes(sector: u64, num_sectors: u32, flags: u32) -> Vec<u8> {
        let mut out = sector.to_le_bytes().to_vec();
        out.extend_from_slice(&num_sectors.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out
    }

    #[test]
    fn reads_and_writes_round_trip_through_the_image_file() {
        let image = TempImage::new(&pattern(MIB, 0));
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut block);

        // OUT: 3 segments (one larger than the transfer chunk) at sector 10.
        let data = pattern(512 + 4096 + 256 * 1024, 0x5a);
        driver.write(BUF, &data);
        let segments = [
            (BUF, 512, false),
            (BUF + 512, 4096, false),
            (BUF + 512 + 4096, 256 * 1024, false),
        ];
        let (status, used) = submit(&mut block, &mut driver, VIRTIO_BLK_T_OUT, 10, &segments);
        assert_eq!(
            (status, used),
            (VIRTIO_BLK_S_OK, 1),
            "a write only writes the status"
        );
        let file = image.contents();
        assert_eq!(&file[10 * 512..10 * 512 + data.len()], &data[..]);
        assert_eq!(
            &file[..10 * 512],
            &pattern(MIB, 0)[..10 * 512],
            "nothing before it changed"
        );
        assert_eq!(file.len(), MIB);

        // IN: read it back elsewhere in guest memory.
        let back = BUF + 0x10_0000;
        driver.write(back, &vec![0u8; data.len()]);
        let segments = [(back, 4096 + 512, true), (back + 4608, 256 * 1024, true)];
        let (status, used) = submit(&mut block, &mut driver, VIRTIO_BLK_T_IN, 10, &segments);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(
            used as usize,
            data.len() + 1,
            "data bytes plus the status byte"
        );
        assert_eq!(driver.read(back, data.len()), data);
        assert_eq!(
            interrupt.count(),
            2,
            "one interrupt per notification that completed work"
        );
        assert_eq!(interrupt.raised()[0], InterruptKind::Queue(0));
    }

    #[test]
    fn direct_io_round_trips_through_an_aligned_bounce_buffer() {
        let image = TempImage::new(&vec![0u8; MIB]);
        let mut config = image.config(false);
        config.direct = true;
        let mut block = match VirtioBlock::new(&config) {
            Ok(block) => block,
            // tmpfs before Linux 6.6 refuses O_DIRECT; say so rather than pass silently.
            Err(BlockError::Direct { source, .. }) => {
                eprintln!(
                    "KEEL-SKIP: O_DIRECT unsupported for {:?}: {source}",
                    image.0
                );
                return;
            }
            Err(err) => panic!("{err}"),
        };
        assert!(block.disk().unwrap().is_direct());
        let block_size = block.disk().unwrap().block_size();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        // Guest buffers at odd (sector-aligned, not page-aligned) addresses.
        let data = pattern(8 * 4096, 3);
        driver.write(BUF + 512, &data);
        let len = data.len() as u32;
        let (status, _) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_OUT,
            8,
            &[(BUF + 512, len, false)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let (status, used) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_IN,
            8,
            &[(BUF + 0x20_0200, len, true)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, len + 1));
        assert_eq!(driver.read(BUF + 0x20_0200, data.len()), data);
        assert_eq!(&image.contents()[8 * 512..8 * 512 + data.len()], &data[..]);
        let mut blk_size = [0u8; 4];
        block.read_config(20, &mut blk_size); // blk_size
        assert_eq!(u32::from_le_bytes(blk_size), block_size);
    }

    /// Records what a disk was asked to do. A double rather than a real file because
    /// `fdatasync` has no effect a test can observe; the double proves the device asks for it.
    #[derive(Clone, Default)]
    struct RecordingDisk {
        data: Arc<Mutex<Vec<u8>>>,
        calls: Arc<Mutex<Vec<&'static str>>>,
        fail_with: Option<io::ErrorKind>,
    }

    impl RecordingDisk {
        fn new(size: usize) -> Self {
            RecordingDisk {
                data: Arc::new(Mutex::new(vec![0u8; size])),
                ..Default::default()
            }
        }

        fn record(&self, call: &'static str) -> io::Result<()> {
            self.calls.lock().unwrap().push(call);
            match self.fail_with {
                Some(kind) => Err(io::Error::from(kind)),
                None => Ok(()),
            }
        }
    }

    impl DiskBackend for RecordingDisk {
        fn size(&self) -> io::Result<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.record("read")?;
            let data = self.data.lock().unwrap();
            buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
            self.record("write")?;
            let mut data = self.data.lock().unwrap();
            data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.record("flush")
        }
        fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
            self.record("discard")
        }
        fn write_zeroes(&mut self, _offset: u64, _len: u64, _may_unmap: bool) -> io::Result<()> {
            self.record("write_zeroes")
        }
    }

    fn recording_block(disk: RecordingDisk, read_only: bool) -> VirtioBlock<RecordingDisk> {
        let mut id = [0u8; ID_BYTES];
        id[..4].copy_from_slice(b"rec0");
        VirtioBlock::with_backend(disk, Path::new("recording"), id, read_only).unwrap()
    }

    fn ops_limit(size: u64, refill: std::time::Duration) -> RateLimit {
        RateLimit {
            bandwidth: None,
            ops: Some(crate::rate_limiter::BucketConfig {
                size,
                one_time_burst: 0,
                refill_time: refill,
            }),
        }
    }

    #[test]
    fn requests_over_the_rate_limit_wait_in_the_ring_and_all_complete_in_order() {
        use std::time::Duration;
        let disk = RecordingDisk::new(64 * 1024);
        let mut block = recording_block(disk.clone(), false);
        let clock = crate::rate_limiter::ManualClock::new();
        // 2 requests per second, and 8 KiB per second.
        let mut limit = ops_limit(2, Duration::from_secs(1));
        limit.bandwidth = Some(crate::rate_limiter::BucketConfig {
            size: 8192,
            one_time_burst: 0,
            refill_time: Duration::from_secs(1),
        });
        block
            .set_rate_limit(RateLimitTarget::Requests, limit)
            .unwrap();
        block.set_rate_limit_clock(clock.clone());
        assert!(block
            .set_rate_limit(RateLimitTarget::Receive, RateLimit::NONE)
            .is_err());
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        // Five flushes (no data: only the ops bucket counts them).
        put_header(&driver, VIRTIO_BLK_T_FLUSH, 0);
        let mut heads: Vec<u16> = (0..5)
            .map(|_| driver.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]))
            .collect();
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 2, "the bucket's two");
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 2, "a kick does not refill it");
        clock.advance(Duration::from_millis(500));
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 3);
        clock.advance(Duration::from_secs(5));
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 5, "none lost");
        assert_eq!(disk.calls.lock().unwrap().len(), 5);
        // Reads: 4 KiB each against 8 KiB per second (the bucket is full again).
        clock.advance(Duration::from_secs(5));
        put_header(&driver, VIRTIO_BLK_T_IN, 0);
        for i in 0..3u64 {
            heads.push(driver.add_chain(&[
                (HDR, 16, false),
                (BUF + i * 0x1000, 4096, true),
                (STATUS, 1, true),
            ]));
        }
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 7, "8 KiB of reads");
        clock.advance(Duration::from_millis(499));
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 7, "4095 bytes are not enough");
        clock.advance(Duration::from_millis(1));
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 8);
        for (i, head) in heads.iter().enumerate() {
            assert_eq!(
                driver.used(i as u16).0,
                u32::from(*head),
                "completed in ring order"
            );
        }
        let limited = block
            .counters()
            .into_iter()
            .find(|counter| counter.name == "rate_limited")
            .unwrap();
        assert!(limited.value >= 3, "{limited:?}");
        assert_eq!(
            block.rate_limits(),
            vec![(RateLimitTarget::Requests, limit)]
        );
    }

    #[test]
    fn rate_limiter_budgets_survive_a_snapshot() {
        use std::time::Duration;
        let mut block = recording_block(RecordingDisk::new(4096), false);
        let clock = crate::rate_limiter::ManualClock::new();
        let limit = ops_limit(3, Duration::from_secs(3600));
        block
            .set_rate_limit(RateLimitTarget::Requests, limit)
            .unwrap();
        block.set_rate_limit_clock(clock.clone());
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut block);
        put_header(&driver, VIRTIO_BLK_T_FLUSH, 0);
        for _ in 0..2 {
            driver.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        }
        block.queue_notify(0);
        let state = block.save_state().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let state: VirtioDeviceState = serde_json::from_str(&json).unwrap();
        let mut restored = recording_block(RecordingDisk::new(4096), false);
        restored
            .set_rate_limit(RateLimitTarget::Requests, limit)
            .unwrap();
        restored.set_rate_limit_clock(clock.clone());
        restored
            .restore_state(&state, mem.clone(), interrupt)
            .unwrap();
        for _ in 0..3 {
            driver.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        }
        restored.queue_notify(0);
        assert_eq!(
            driver.used_count(),
            3,
            "one token was left, not a full bucket"
        );
    }

    #[test]
    fn flush_asks_the_backend_to_sync() {
        let disk = RecordingDisk::new(4096);
        let mut block = recording_block(disk.clone(), false);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        let (status, used) = submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(*disk.calls.lock().unwrap(), ["flush"]);
    }

    #[test]
    fn flush_on_a_real_file_succeeds() {
        let image = TempImage::new(&[0u8; 4096]);
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        let (status, _) = submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn backend_errors_become_ioerr_and_unsupported_becomes_unsupp() {
        let mut disk = RecordingDisk::new(4096);
        disk.fail_with = Some(io::ErrorKind::Other);
        let mut block = recording_block(disk.clone(), false);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        let (status, used) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_IN,
            0,
            &[(BUF, 512, true)],
        );
        assert_eq!(
            (status, used),
            (VIRTIO_BLK_S_IOERR, 1),
            "nothing reached the guest"
        );
        let (status, _) = submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);

        let mut disk = RecordingDisk::new(4096);
        disk.fail_with = Some(io::ErrorKind::Unsupported);
        let mut block = recording_block(disk, false);
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        let (status, _) = submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn get_id_returns_the_configured_serial() {
        let image = TempImage::new(&[0u8; 4096]);
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        driver.write(BUF, &[0xee; 32]);
        let (status, used) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_GET_ID,
            0,
            &[(BUF, 32, true)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 21));
        let mut expected = b"keel-disk-0".to_vec();
        expected.resize(20, 0);
        expected.extend_from_slice(&[0xee; 12]);
        assert_eq!(
            driver.read(BUF, 32),
            expected,
            "20 NUL-padded bytes, nothing more"
        );
        // A short buffer gets a truncated serial.
        let (status, used) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_GET_ID,
            0,
            &[(BUF + 64, 4, true)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 5));
        assert_eq!(driver.read(BUF + 64, 4), b"keel");
    }

    /// Bytes of the file actually allocated on disk.
    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn discard_and_write_zeroes_change_the_file() {
        let image = TempImage::new(&vec![0xabu8; 4 * MIB]);
        std::fs::File::open(&image.0).unwrap().sync_all().unwrap();
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        let before = allocated(&image.0);

        // WRITE_ZEROES without unmap on sectors 8..16, with unmap on the second MiB.
        let mut ranges = range_bytes(8, 8, 0);
        ranges.extend(range_bytes(2048, 2048, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
        driver.write(BUF, &ranges);
        let (status, used) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &[(BUF, 32, false)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
        let file = image.contents();
        assert_eq!(file.len(), 4 * MIB, "size unchanged");
        assert!(file[..8 * 512].iter().all(|&b| b == 0xab));
        assert!(file[8 * 512..16 * 512].iter().all(|&b| b == 0));
        assert!(file[16 * 512..MIB].iter().all(|&b| b == 0xab));
        assert!(file[MIB..2 * MIB].iter().all(|&b| b == 0));
        assert!(file[2 * MIB..].iter().all(|&b| b == 0xab));
        let after_zeroes = allocated(&image.0);
        assert!(
            after_zeroes < before,
            "unmap punched a hole ({after_zeroes} < {before})"
        );

        // DISCARD the third MiB: it is deallocated (ext4/xfs/tmpfs read holes as zeroes).
        driver.write(BUF, &range_bytes(4096, 2048, 0));
        let (status, _) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_DISCARD,
            0,
            &[(BUF, 16, false)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let after_discard = allocated(&image.0);
        assert!(after_discard < after_zeroes, "discard punched a hole");
        let file = image.contents();
        assert_eq!(file.len(), 4 * MIB);
        assert!(file[2 * MIB..3 * MIB].iter().all(|&b| b == 0));
        assert!(
            file[3 * MIB..].iter().all(|&b| b == 0xab),
            "only the range changed"
        );
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let contents = pattern(64 * 1024, 9);
        let image = TempImage::new(&contents);
        let mut block = VirtioBlock::new(&image.config(true)).unwrap();
        let features = block.avail_features();
        assert_ne!(features & VIRTIO_BLK_F_RO, 0);
        assert_eq!(
            features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        driver.write(BUF, &[0u8; 512]);
        let (status, used) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_OUT,
            0,
            &[(BUF, 512, false)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_IOERR, 1));
        driver.write(BUF, &range_bytes(0, 8, 0));
        for request_type in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            let (status, _) = submit(
                &mut block,
                &mut driver,
                request_type,
                0,
                &[(BUF, 16, false)],
            );
            assert_eq!(status, VIRTIO_BLK_S_IOERR);
        }
        assert_eq!(image.contents(), contents, "the image is untouched");
        let (status, _) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_IN,
            0,
            &[(BUF, 512, true)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK, "reads still work");
        assert_eq!(driver.read(BUF, 512), &contents[..512]);
    }

    #[test]
    fn config_space_follows_the_spec_layout() {
        let image = TempImage::new(&vec![0u8; 3 * MIB + 512]);
        let block = VirtioBlock::new(&image.config(false)).unwrap();
        assert_eq!(block.capacity(), (3 * MIB as u64 + 512) / 512);
        let mut config = [0u8; 60];
        block.read_config(0, &mut config);
        let le32 =
            |offset: usize| u32::from_le_bytes(config[offset..offset + 4].try_into().unwrap());
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 6145);
        assert_eq!(le32(12), SEG_MAX, "seg_max");
        assert_eq!(le32(20), 512, "blk_size");
        assert_eq!(le32(36), MAX_DISCARD_SECTORS);
        assert_eq!(le32(40), MAX_DISCARD_SEG);
        assert_eq!(le32(44), 1, "discard_sector_alignment");
        assert_eq!(le32(48), MAX_WRITE_ZEROES_SECTORS);
        assert_eq!(le32(52), MAX_WRITE_ZEROES_SEG);
        assert_eq!(config[56], 1, "write_zeroes_may_unmap");
        // Partial and out-of-range reads.
        let mut two = [0xffu8; 2];
        block.read_config(1, &mut two);
        assert_eq!(two, [0x18, 0]);
        block.read_config(59, &mut two);
        assert_eq!(two, [0, 0]);
        block.read_config(u64::MAX, &mut two);
        assert_eq!(two, [0, 0]);
        assert_eq!(block.device_type(), TYPE_BLOCK);
        assert_eq!(block.queue_max_sizes(), &[QUEUE_SIZE]);
        let features = block.avail_features();
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        ] {
            assert_ne!(features & bit, 0, "feature {bit:#x}");
        }
        assert_eq!(features & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn construction_errors_name_the_field() {
        let missing = BlockConfig {
            path: PathBuf::from("/nonexistent/keel/disk.img"),
            read_only: false,
            direct: false,
            id: String::new(),
        };
        let err = VirtioBlock::new(&missing).err().unwrap();
        assert!(matches!(err, BlockError::Open { .. }), "{err}");
        assert!(err.to_string().contains("`path`"));

        let odd = TempImage::new(&[0u8; 1000]);
        let err = VirtioBlock::new(&odd.config(false)).err().unwrap();
        assert!(
            matches!(err, BlockError::PartialSector { size: 1000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`path`"));

        let image = TempImage::new(&[0u8; 512]);
        let mut config = image.config(false);
        config.id = "x".repeat(21);
        let err = VirtioBlock::new(&config).err().unwrap();
        assert!(
            matches!(err, BlockError::IdTooLong { len: 21, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`id`"));
        config.id = "y".repeat(20);
        assert!(VirtioBlock::new(&config).is_ok(), "20 bytes fit exactly");

        let empty = TempImage::new(&[]);
        assert_eq!(
            VirtioBlock::new(&empty.config(false)).unwrap().capacity(),
            0
        );
    }

    #[test]
    fn malformed_requests_complete_with_an_error_or_are_dropped() {
        let image = TempImage::new(&pattern(64 * 1024, 1));
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let capacity = block.capacity();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        let end = MEMORY_SIZE;

        // Errors the device reports in the status byte (used length 1).
        type Case<'a> = (u32, u64, &'a [crate::virtio::testing::Buf], u8);
        let reported: &[Case] = &[
            (
                VIRTIO_BLK_T_IN,
                capacity,
                &[(BUF, 512, true)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                VIRTIO_BLK_T_IN,
                u64::MAX,
                &[(BUF, 512, true)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                VIRTIO_BLK_T_IN,
                0,
                &[(end - 256, 512, true)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                VIRTIO_BLK_T_IN,
                0,
                &[(u64::MAX - 511, 512, true)],
                VIRTIO_BLK_S_IOERR,
            ),
            (VIRTIO_BLK_T_IN, 0, &[(BUF, 0, true)], VIRTIO_BLK_S_IOERR),
            (
                VIRTIO_BLK_T_IN,
                0,
                &[(BUF, u32::MAX - 511, true)],
                VIRTIO_BLK_S_IOERR,
            ),
            (VIRTIO_BLK_T_IN, 0, &[(BUF, 512, false)], VIRTIO_BLK_S_IOERR),
            (VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, true)], VIRTIO_BLK_S_IOERR),
            (
                VIRTIO_BLK_T_OUT,
                0,
                &[(BUF, 100, false)],
                VIRTIO_BLK_S_IOERR,
            ),
            (7, 0, &[], VIRTIO_BLK_S_UNSUPP),
            (u32::MAX, 0, &[(BUF, 512, true)], VIRTIO_BLK_S_UNSUPP),
        ];
        for &(request_type, sector, data, expected) in reported {
            let (status, used) = submit(&mut block, &mut driver, request_type, sector, data);
            assert_eq!(
                (status, used),
                (expected, 1),
                "type {request_type} sector {sector} {data:?}"
            );
        }

        // Chains whose status byte cannot be trusted are returned with nothing written.
        let dropped: &[&[(u64, u32, bool)]] = &[
            &[(HDR, 16, false), (STATUS, 1, false)],
            &[(HDR, 16, false), (STATUS, 0, true)],
            &[(HDR, 16, false), (STATUS, 2, true)],
            &[(HDR, 16, false), (end, 1, true)],
            &[(HDR, 16, false), (BUF, 512, true), (HDR, 16, false)],
        ];
        for bufs in dropped {
            put_header(&driver, VIRTIO_BLK_T_FLUSH, 0);
            driver.add_chain(bufs);
            let before = driver.used_count();
            block.queue_notify(0);
            assert_eq!(driver.used_count(), before + 1, "{bufs:?}");
            assert_eq!(driver.used(before).1, 0, "{bufs:?}: used length");
            assert_eq!(driver.read(STATUS, 1), [0xff], "{bufs:?}: status untouched");
        }
        // A lone status byte is too short to be a request, but the error can be reported.
        driver.write(STATUS, &[0xff]);
        driver.add_chain(&[(STATUS, 1, true)]);
        let before = driver.used_count();
        block.queue_notify(0);
        assert_eq!(driver.used(before).1, 1);
        assert_eq!(driver.read(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
        assert_eq!(
            image.contents(),
            pattern(64 * 1024, 1),
            "no request reached the disk"
        );

        // The device still works afterwards.
        let (status, _) = submit(
            &mut block,
            &mut driver,
            VIRTIO_BLK_T_IN,
            0,
            &[(BUF, 512, true)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn descriptor_loops_are_returned_without_hanging() {
        let image = TempImage::new(&[0u8; 4096]);
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut block);
        put_header(&driver, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 2 -> 0: the chain never ends.
        driver.add_raw(
            0,
            &[
                Descriptor::new(HDR, 16, F_NEXT, 1),
                Descriptor::new(BUF, 512, F_NEXT | F_WRITE, 2),
                Descriptor::new(STATUS, 1, F_NEXT | F_WRITE, 0),
            ],
        );
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 1);
        assert_eq!(driver.used(0), (0, 0));
        assert_eq!(driver.read(STATUS, 1), [0xff]);
    }

    #[test]
    fn queue_sizes_must_be_powers_of_two() {
        assert!(Queue::new(255).is_err());
        assert!(Queue::new(0).is_err());
        let mem = test_memory();
        let driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let mut queue = driver.device_queue();
        assert!(queue.is_valid(&mem));
        // The queue refuses the size and keeps the one it had.
        assert!(queue.try_set_size(100).is_err());
        assert!(queue.try_set_size(512).is_err(), "above the maximum");
        assert_eq!(queue.size(), QUEUE_SIZE);
        assert!(queue.try_set_size(64).is_ok());
        assert!(queue.is_valid(&mem));
        // A ring outside guest memory is not valid either.
        queue.set_desc_table_address(Some(MEMORY_SIZE as u32), Some(0));
        assert!(
            !queue.is_valid(&mem),
            "a transport refuses to activate this queue"
        );
        let mut block = recording_block(RecordingDisk::new(512), false);
        let err = block.activate(
            mem.clone(),
            crate::virtio::testing::RecordingInterrupt::new(),
            vec![],
        );
        assert!(matches!(
            err,
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        ));
    }

    #[test]
    fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
        let mem = test_memory();
        let mut block = recording_block(RecordingDisk::new(4096), false);
        block.set_acked_features(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut block);
        // used_event = 1: interrupt once the used index moves past 1, i.e. on the second chain.
        driver.set_used_event(1);
        submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(interrupt.count(), 0, "driver asked to be woken later");
        submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(interrupt.count(), 1);
        // The device publishes avail_event so the driver can skip kicks too.
        assert_eq!(driver.avail_event(), 2);

        // Without EVENT_IDX every completion interrupts.
        let mut block = recording_block(RecordingDisk::new(4096), false);
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut block);
        driver.set_used_event(1);
        submit(&mut block, &mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(interrupt.count(), 1);
    }

    #[test]
    fn several_chains_per_notification_and_reset() {
        let disk = RecordingDisk::new(8192);
        let mut block = recording_block(disk.clone(), false);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut block);
        put_header(&driver, VIRTIO_BLK_T_FLUSH, 0);
        for _ in 0..5 {
            driver.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        }
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 5);
        assert_eq!(interrupt.count(), 1, "one interrupt for the batch");
        block.queue_notify(1); // no such queue
        block.queue_notify(0); // nothing new
        assert_eq!(interrupt.count(), 1);
        assert!(block.reset());
        driver.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        block.queue_notify(0);
        assert_eq!(driver.used_count(), 5, "a reset device processes nothing");
        assert_eq!(disk.calls.lock().unwrap().len(), 5);
    }

    #[test]
    fn random_chains_through_the_queue_never_panic() {
        let image = TempImage::new(&[0u8; 64 * 1024]);
        let mut block = VirtioBlock::new(&image.config(false)).unwrap();
        let mem = test_memory();
        let mut rng = Rng::new(42);
        let addrs = [HDR, STATUS, BUF, 0, MEMORY_SIZE - 8, u64::MAX - 4];
        let lens = [0, 1, 16, 20, 32, 512, 4096, u32::MAX];
        for round in 0..300 {
            let mut driver = DriverQueue::new(&mem, 0, 16);
            let interrupt = driver.activate(&mut block);
            put_header(&driver, rng.below(16) as u32, rng.below(160));
            driver.write(
                BUF,
                &range_bytes(rng.below(200), rng.below(4) as u32, rng.below(3) as u32),
            );
            let count = 1 + rng.below(16) as u16;
            let descs: Vec<Descriptor> = (0..count)
                .map(|_| {
                    let addr = addrs[rng.below(addrs.len() as u64) as usize];
                    let len = lens[rng.below(lens.len() as u64) as usize];
                    let flags = rng.below(8) as u16; // NEXT, WRITE, INDIRECT at random
                    Descriptor::new(addr, len, flags, rng.below(20) as u16)
                })
                .collect();
            driver.add_raw(0, &descs);
            block.queue_notify(0);
            let used = driver.used_count();
            assert!(
                used <= count,
                "round {round}: at most one used entry per head"
            );
            // Used lengths are not checked: buffers may overlap the rings at address 0, so the
            // device's own writes can land in the used ring.
            assert!(interrupt.count() <= 1);
            assert!(block.reset());
        }
    }
}
