//! Performing parsed requests on a disk: the part of virtio-blk that touches the backend, used
//! on the notifying thread ([`IoMode::Inline`](super::IoMode::Inline)) and by the device's I/O
//! thread for what it does not hand to io_uring.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::GuestMemoryMmap;
use log::debug;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress};

use super::request::{
    Limits, Request, RequestKind, Segment, ID_BYTES, SECTOR_SHIFT, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use super::DiskBackend;
use crate::counters::Counter;
use crate::narrow::len_u32;
use crate::rate_limiter::Throttle;
use crate::virtio::queue_ops::{drain_queue_until, Served};
use crate::virtio::single_queue::SingleQueue;

/// Bytes moved between guest memory and the backend at a time.
const TRANSFER_CHUNK_LEN: usize = 128 * 1024;

/// Counters of what a block device did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockMetrics {
    /// Read requests completed successfully.
    pub read_ops: u64,
    /// Bytes read into the guest.
    pub read_bytes: u64,
    /// Write requests completed successfully.
    pub write_ops: u64,
    /// Bytes written to the disk.
    pub write_bytes: u64,
    /// Flush requests completed successfully.
    pub flushes: u64,
    /// Discard and write-zeroes requests completed successfully.
    pub discards: u64,
    /// Requests that failed with an I/O error (including writes to a read-only disk).
    pub io_errors: u64,
    /// Requests the device or its backend does not support.
    pub unsupported: u64,
    /// Requests refused as malformed before any I/O (bad chain, range or length).
    pub malformed: u64,
}

impl BlockMetrics {
    /// The metrics as named counters (see [`crate::counters`]).
    pub fn counters(&self) -> Vec<Counter> {
        vec![
            Counter::count("read_ops", "read requests completed", self.read_ops),
            Counter::count("read_bytes", "bytes read by the guest", self.read_bytes),
            Counter::count("write_ops", "write requests completed", self.write_ops),
            Counter::count(
                "write_bytes",
                "bytes written by the guest",
                self.write_bytes,
            ),
            Counter::count("flushes", "flush requests completed", self.flushes),
            Counter::count(
                "discards",
                "discard and write-zeroes requests completed",
                self.discards,
            ),
            Counter::count(
                "io_errors",
                "requests failed with an I/O error",
                self.io_errors,
            ),
            Counter::count(
                "unsupported",
                "requests of a kind the device does not support",
                self.unsupported,
            ),
            Counter::count("malformed", "requests refused as malformed", self.malformed),
        ]
    }

    /// Counts a request that reached the disk (or was refused there) with `status`.
    pub(crate) fn record(&mut self, kind: &RequestKind, status: u8) {
        let bytes = |segments: &[Segment]| segments.iter().map(|s| u64::from(s.len)).sum::<u64>();
        let (op, bytes) = match kind {
            RequestKind::In { segments, .. } => (Op::Read, bytes(segments)),
            RequestKind::Out { segments, .. } => (Op::Write, bytes(segments)),
            RequestKind::Flush => (Op::Flush, 0),
            RequestKind::Discard(_) | RequestKind::WriteZeroes(_) => (Op::Discard, 0),
            RequestKind::GetId { .. } => (Op::GetId, 0),
        };
        self.record_op(op, bytes, status);
    }

    /// Counts one operation of `bytes` that ended with `status`.
    pub(crate) fn record_op(&mut self, op: Op, bytes: u64, status: u8) {
        match status {
            VIRTIO_BLK_S_OK => {}
            VIRTIO_BLK_S_UNSUPP => {
                self.unsupported += 1;
                return;
            }
            _ => {
                self.io_errors += 1;
                return;
            }
        }
        match op {
            Op::Read => {
                self.read_ops += 1;
                self.read_bytes += bytes;
            }
            Op::Write => {
                self.write_ops += 1;
                self.write_bytes += bytes;
            }
            Op::Flush => self.flushes += 1,
            Op::Discard => self.discards += 1,
            Op::GetId => {}
        }
    }
}

/// What a request does, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
    Flush,
    /// Discard or write-zeroes.
    Discard,
    GetId,
}

/// A disk, the device facts requests are checked against, and the counters.
pub(crate) struct Executor<D> {
    /// The backend.
    pub(crate) disk: D,
    id: [u8; ID_BYTES],
    read_only: bool,
    limits: Limits,
    buffer: Vec<u8>,
    metrics: Arc<Mutex<BlockMetrics>>,
    /// The rate limiter, shared with the device (which changes the limit and saves budgets).
    throttle: Arc<Mutex<Throttle>>,
}

impl<D: DiskBackend> Executor<D> {
    pub(crate) fn new(
        disk: D,
        id: [u8; ID_BYTES],
        read_only: bool,
        limits: Limits,
        metrics: Arc<Mutex<BlockMetrics>>,
        throttle: Arc<Mutex<Throttle>>,
    ) -> Self {
        Executor {
            disk,
            id,
            read_only,
            limits,
            buffer: vec![0u8; TRANSFER_CHUNK_LEN],
            metrics,
            throttle,
        }
    }

    /// The rate limiter, locked.
    pub(crate) fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rate limiter, to lock while `self` is borrowed otherwise.
    pub(crate) fn shared_throttle(&self) -> Arc<Mutex<Throttle>> {
        self.throttle.clone()
    }

    /// The counters, locked.
    pub(crate) fn metrics(&self) -> std::sync::MutexGuard<'_, BlockMetrics> {
        self.metrics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the disk refuses writes.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Parses `chain` into a request; a malformed one is completed here (status byte written
    /// when it can be found) and `Err` carries the used length to return it with.
    pub(crate) fn parse(
        &self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Request, u32> {
        let head = chain.head_index();
        Request::parse(chain, mem, &self.limits).map_err(|rejected| {
            debug!("virtio-blk: request {head} rejected: {}", rejected.error);
            self.metrics().malformed += 1;
            match rejected.status {
                Some(status) => complete(mem, status, rejected.error.status(), 0),
                None => 0,
            }
        })
    }

    /// Performs `request` on the disk now; returns the used length.
    pub(crate) fn perform(&mut self, mem: &GuestMemoryMmap, request: &Request) -> u32 {
        let (used_len, status) = execute(
            &mut self.disk,
            &mut self.buffer,
            mem,
            &self.id,
            self.read_only,
            request,
        );
        self.metrics().record(&request.kind, status);
        used_len
    }

    /// Processes the available requests on this thread, as many as the rate limit allows;
    /// returns how many chains went back to the driver. A request over the limit stays in the
    /// ring and the limiter's timer is armed for it.
    pub(crate) fn process_queue(&mut self, active: &mut SingleQueue) -> usize {
        let mut completed = 0;
        let mem = &active.mem;
        let throttle = self.shared_throttle();
        let mut throttle = throttle.lock().unwrap_or_else(PoisonError::into_inner);
        drain_queue_until(&mut active.queue, mem, "virtio-blk", |chain| {
            let used_len = match self.parse(chain, mem) {
                Ok(request) if !throttle.admit(request.data_bytes()) => return Served::Stop,
                Ok(request) => self.perform(mem, &request),
                Err(used_len) => used_len,
            };
            completed += 1;
            Served::Used(used_len)
        });
        completed
    }
}

/// Writes the status byte; returns the used length (`written` data bytes plus the status byte),
/// or just `written` if the status byte cannot be written.
pub(crate) fn complete(
    mem: &GuestMemoryMmap,
    status_addr: GuestAddress,
    status: u8,
    written: u32,
) -> u32 {
    match mem.write_obj(status, status_addr) {
        Ok(()) => written.saturating_add(1),
        Err(err) => {
            crate::guest_warn!(
                "virtio-blk: status byte at {:#x} not written: {err}",
                status_addr.raw_value()
            );
            written
        }
    }
}

/// Performs a parsed request; returns the used length for the chain and the status given.
fn execute<D: DiskBackend>(
    disk: &mut D,
    buffer: &mut [u8],
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
    read_only: bool,
    request: &Request,
) -> (u32, u8) {
    let writes_disk = matches!(
        request.kind,
        RequestKind::Out { .. } | RequestKind::Discard(_) | RequestKind::WriteZeroes(_)
    );
    if read_only && writes_disk {
        debug!("virtio-blk: write request on a read-only disk");
        return (
            complete(mem, request.status, VIRTIO_BLK_S_IOERR, 0),
            VIRTIO_BLK_S_IOERR,
        );
    }
    let mut written = 0u32;
    let result = match &request.kind {
        RequestKind::In { sector, segments } => {
            read_into_guest(disk, buffer, mem, *sector, segments, &mut written)
        }
        RequestKind::Out { sector, segments } => {
            write_from_guest(disk, buffer, mem, *sector, segments)
        }
        RequestKind::Flush => disk.flush(),
        RequestKind::GetId { segments } => write_id(mem, id, segments, &mut written),
        RequestKind::Discard(ranges) => ranges
            .iter()
            .try_for_each(|r| disk.discard(r.offset(), r.len())),
        RequestKind::WriteZeroes(ranges) => ranges
            .iter()
            .try_for_each(|r| disk.write_zeroes(r.offset(), r.len(), r.unmap)),
    };
    let status = match result {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(err) if err.kind() == io::ErrorKind::Unsupported => {
            debug!("virtio-blk: request not supported by the backend: {err}");
            VIRTIO_BLK_S_UNSUPP
        }
        Err(err) => {
            crate::guest_warn!("virtio-blk: I/O error: {err}");
            VIRTIO_BLK_S_IOERR
        }
    };
    (complete(mem, request.status, status, written), status)
}

/// IN: disk → guest, chunk by chunk; `written` counts bytes that reached guest buffers.
fn read_into_guest<D: DiskBackend>(
    disk: &mut D,
    buffer: &mut [u8],
    mem: &GuestMemoryMmap,
    sector: u64,
    segments: &[Segment],
    written: &mut u32,
) -> io::Result<()> {
    let mut offset = sector << SECTOR_SHIFT;
    let buffer_len = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
    for segment in segments {
        let mut done = 0u32;
        while done < segment.len {
            let chunk = (segment.len - done).min(buffer_len);
            let buf = &mut buffer[..chunk as usize];
            disk.read_at(offset, buf)?;
            let addr = segment.addr.unchecked_add(u64::from(done));
            mem.write_slice(buf, addr).map_err(io::Error::other)?;
            *written = written.saturating_add(chunk);
            done += chunk;
            offset += u64::from(chunk);
        }
    }
    Ok(())
}

/// OUT: guest → disk, chunk by chunk.
fn write_from_guest<D: DiskBackend>(
    disk: &mut D,
    buffer: &mut [u8],
    mem: &GuestMemoryMmap,
    sector: u64,
    segments: &[Segment],
) -> io::Result<()> {
    let mut offset = sector << SECTOR_SHIFT;
    for segment in segments {
        let mut done = 0usize;
        while done < segment.len as usize {
            let chunk = (segment.len as usize - done).min(buffer.len());
            let buf = &mut buffer[..chunk];
            let addr = segment.addr.unchecked_add(done as u64);
            mem.read_slice(buf, addr).map_err(io::Error::other)?;
            disk.write_at(offset, buf)?;
            done += chunk;
            offset += chunk as u64;
        }
    }
    Ok(())
}

/// GET_ID: the serial number, truncated to the guest's buffers.
fn write_id(
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
    segments: &[Segment],
    written: &mut u32,
) -> io::Result<()> {
    let mut rest: &[u8] = id;
    for segment in segments {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(rest.len().min(segment.len as usize));
        mem.write_slice(head, segment.addr)
            .map_err(io::Error::other)?;
        // At most ID_BYTES (20) in all.
        *written += len_u32(head.len());
        rest = tail;
    }
    Ok(())
}
