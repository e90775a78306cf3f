//! virtio-blk (virtio 1.2, section 5.2): identify the disk, write a pattern, flush, read it back.
//!
//! Every request is one chain: a 16-byte header the device reads, an optional data buffer, and a
//! status byte the device writes. Data moves in chunks of up to [`CHUNK_SECTORS`] sectors.
//!
//! The benchmarks (`keel.blk_bench`) keep several requests in flight on one disk, or with
//! `randread2` on two disks at once, both set up from the one DMA arena.

use keel_test_guest::cmdline::{BlkBench, VirtioOptions};
use keel_test_guest::virtio::bench::{
    disk_share, read_buffer_offset, write_chunk, write_count, RandomBlocks, BENCH_DISKS,
    BENCH_QUEUE_SIZE, READ_SIZE, WRITE_CHUNK,
};
use keel_test_guest::virtio::blk::{
    check_pattern, fill_pattern, request_header, F_FLUSH, F_RO, HEADER_LEN, ID_LEN, SECTOR_SIZE,
    S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT,
};
use keel_test_guest::virtio::{byte_sum, Printable};

use super::deadline;
use super::queue::{DmaArena, DmaBuffer, Segment, Virtqueue, MAX_QUEUE_SIZE, RENOTIFY_TICKS};
use super::transport::{DriverError, Transport};
use crate::console::report;
use crate::cpu::rdtsc;

/// Sectors per data request.
const CHUNK_SECTORS: usize = 8;

/// Runs the block test on device number `number` (counted among block devices from 0).
pub fn test(transport: &Transport, number: usize, options: &VirtioOptions) {
    let result = Disk::open(transport, options, MAX_QUEUE_SIZE)
        .and_then(|mut disk| disk.run(number, options));
    report_failure(number, result);
    transport.reset();
}

/// Runs block benchmark `bench`: `randread2` on the first two block devices, `first` and
/// `second`, the others on `first`. Data buffers are in `memory` (at least one [`WRITE_CHUNK`] per
/// descriptor of a [`BENCH_QUEUE_SIZE`] queue).
pub fn bench(
    first: Option<&Transport>,
    second: Option<&Transport>,
    options: &VirtioOptions,
    bench: BlkBench,
    memory: DmaBuffer,
) {
    let Some(first) = first else {
        report!("FAIL virtio-blk no device");
        return;
    };
    match (bench, second) {
        (BlkBench::RandRead2, Some(second)) => {
            if let Err((number, failure)) = bench_two([first, second], options, memory) {
                report_failure(number, Err(failure));
            }
            first.reset();
            second.reset();
        }
        (BlkBench::RandRead2, None) => {
            report!("FAIL virtio-blk randread2 needs two devices, found 1");
        }
        (BlkBench::RandRead | BlkBench::SeqWrite, _) => {
            let result = Disk::open(first, options, BENCH_QUEUE_SIZE)
                .and_then(|mut disk| disk.bench(0, options, bench, memory));
            report_failure(0, result);
            first.reset();
        }
    }
}

/// The two-disk benchmark (`randread2`): `keel.bench_ops` 4 KiB random reads shared between the
/// two disks, each with its own queue and up to `keel.bench_depth` requests in flight. Each round
/// tops up both queues (one notification per disk that got new requests), then polls both used
/// rings until either returns something, and takes every completion from both. On failure, says
/// which disk (0 or 1) failed.
fn bench_two(
    transports: [&Transport; 2],
    options: &VirtioOptions,
    memory: DmaBuffer,
) -> Result<(), (usize, Failure)> {
    const NAME: &str = "randread2";
    // SAFETY: the previous driver reset its device before returning; both disks of this
    // benchmark share this one `take`.
    let mut arena = unsafe { DmaArena::take() };
    let mut open = |number: usize| -> Result<Lane<'_>, (usize, Failure)> {
        let transport = transports[number];
        let disk = Disk::open_in(transport, options, BENCH_QUEUE_SIZE, &mut arena)
            .map_err(|failure| (number, failure))?;
        let capacity = transport.config_u64(0);
        let blocks = capacity / (READ_SIZE / SECTOR_SIZE as u64);
        if blocks == 0 {
            let end = READ_SIZE / SECTOR_SIZE as u64;
            return Err((number, Failure::Range { end, capacity }));
        }
        let index = number as u64;
        Ok(Lane {
            // Three descriptors per request.
            depth: options.bench_depth.min(disk.queue.size() / 3).max(1),
            disk,
            number,
            capacity,
            random: RandomBlocks::for_disk(blocks, index),
            count: disk_share(options.bench_ops, BENCH_DISKS, index),
            submitted: 0,
            done: 0,
            in_flight: 0,
        })
    };
    let mut lanes = [open(0)?, open(1)?];
    let ops = options.bench_ops;
    report!(
        "bench {NAME} dev=0,1 capacity={},{} ops={ops} size={READ_SIZE} depth={},{}",
        lanes[0].capacity,
        lanes[1].capacity,
        lanes[0].depth,
        lanes[1].depth
    );
    report!("bench {NAME} start");
    while lanes.iter().any(|lane| lane.done < lane.count) {
        for lane in lanes.iter_mut() {
            lane.top_up(memory)
                .map_err(|error| (lane.number, error.into()))?;
        }
        let until = deadline(options.wait_tsc);
        let mut next_notify = rdtsc().saturating_add(RENOTIFY_TICKS);
        loop {
            let mut completed = false;
            for lane in lanes.iter_mut() {
                completed |= lane.reap().map_err(|failure| (lane.number, failure))?;
            }
            if completed {
                break;
            }
            let now = rdtsc();
            if now > until {
                for lane in &lanes {
                    lane.disk
                        .transport
                        .check()
                        .map_err(|error| (lane.number, error.into()))?;
                }
                let waiting = lanes.iter().find(|lane| lane.in_flight > 0);
                let number = waiting.map_or(0, |lane| lane.number);
                return Err((number, DriverError::Timeout("a block request").into()));
            }
            if now > next_notify {
                // As `Virtqueue::poll_used` does: a device may have missed a notification.
                for lane in lanes.iter().filter(|lane| lane.in_flight > 0) {
                    lane.disk.transport.notify(lane.disk.queue.index());
                }
                next_notify = now.saturating_add(RENOTIFY_TICKS);
            }
            core::hint::spin_loop();
        }
    }
    report!("bench {NAME} end ops={ops} bytes={}", ops * READ_SIZE);
    Ok(())
}

/// One disk of the two-disk benchmark and where its share of the reads stands.
struct Lane<'a> {
    disk: Disk<'a>,
    /// 0 or 1: picks the disk's part of the benchmark memory and its random sequence.
    number: usize,
    capacity: u64,
    depth: u16,
    random: RandomBlocks,
    /// Reads this disk does.
    count: u64,
    submitted: u64,
    done: u64,
    in_flight: u16,
}

impl Lane<'_> {
    /// Submits reads until `depth` are in flight (or all are submitted), then notifies the device
    /// once if any were added.
    fn top_up(&mut self, memory: DmaBuffer) -> Result<(), DriverError> {
        let mut added = false;
        while self.in_flight < self.depth
            && self.submitted < self.count
            && self.disk.queue.free() >= 3
        {
            let head = self.disk.queue.next_head();
            let offset = read_buffer_offset(self.number as u64, head) as usize;
            let data = Segment::writable(memory.slice(offset, READ_SIZE as usize));
            self.disk
                .enqueue(head, T_IN, self.random.next_sector(), data)?;
            self.submitted += 1;
            self.in_flight += 1;
            added = true;
        }
        if added {
            self.disk.transport.notify(self.disk.queue.index());
        }
        Ok(())
    }

    /// Takes every completed read off the used ring, checking each status; whether there was any.
    fn reap(&mut self) -> Result<bool, Failure> {
        let mut any = false;
        while let Some((head, _)) = self.disk.queue.pop_used() {
            let status = self.disk.status_of(head);
            if status != S_OK {
                return Err(Failure::Status {
                    what: "read",
                    status,
                });
            }
            self.done += 1;
            self.in_flight = self.in_flight.saturating_sub(1);
            any = true;
        }
        Ok(any)
    }
}

/// A read left in flight on the first disk while the other tests run (`keel.blk_background`):
/// with a slow disk it shows whether the VMM keeps serving the other devices meanwhile.
pub struct Background {
    transport: Transport,
    queue: Virtqueue,
    status: DmaBuffer,
    started: u64,
}

/// Submits a 4 KiB read of sector 0 and returns without waiting for it.
pub fn start_background(transport: &Transport) -> Option<Background> {
    let started = rdtsc();
    let submit = || -> Result<Background, DriverError> {
        transport.negotiate(0, 0)?;
        // SAFETY: no other device uses the background arena.
        let mut arena = unsafe { DmaArena::take_background() };
        let mut queue = Virtqueue::new(transport, 0, &mut arena)?;
        let header = arena.alloc(HEADER_LEN, 16)?;
        let status = arena.alloc(1, 1)?;
        let data = arena.alloc(8 * SECTOR_SIZE, 4096)?;
        transport.driver_ok()?;
        header.with_bytes(|bytes| bytes.copy_from_slice(&request_header(T_IN, 0)));
        status.with_bytes(|bytes| bytes[0] = 0xff);
        queue.submit(&[
            Segment::readable(header),
            Segment::writable(data),
            Segment::writable(status),
        ])?;
        transport.notify(queue.index());
        Ok(Background {
            transport: *transport,
            queue,
            status,
            started,
        })
    };
    match submit() {
        Ok(background) => {
            report!("virtio-blk background read submitted");
            Some(background)
        }
        Err(error) => {
            report!("FAIL virtio-blk background {error}");
            transport.reset();
            None
        }
    }
}

/// Waits for the background read; prints `virtio-blk background read status=<s>`.
pub fn finish_background(mut background: Background, options: &VirtioOptions) {
    match background.queue.wait_used(
        &background.transport,
        deadline(options.wait_tsc),
        "the background read",
    ) {
        Ok(_) => report!(
            "virtio-blk background read status={} tsc={}",
            background.status.with_bytes(|bytes| bytes[0]),
            rdtsc().wrapping_sub(background.started)
        ),
        Err(error) => report!("FAIL virtio-blk background {error}"),
    }
    background.transport.reset();
}

fn report_failure(number: usize, result: Result<(), Failure>) {
    match result {
        Ok(()) => {}
        Err(Failure::Driver(error)) => report!("FAIL virtio-blk dev={number} {error}"),
        Err(Failure::Status { what, status }) => {
            report!("FAIL virtio-blk dev={number} {what} status={status}")
        }
        Err(Failure::Range { end, capacity }) => {
            report!("FAIL virtio-blk dev={number} sectors up to {end} beyond capacity {capacity}")
        }
        Err(Failure::Mismatch { sector, offset }) => report!(
            "FAIL virtio-blk dev={number} read back differs at sector {sector} offset {offset}"
        ),
    }
}

enum Failure {
    Driver(DriverError),
    /// The device answered a request with a status other than OK.
    Status {
        what: &'static str,
        status: u8,
    },
    /// The test's sectors do not fit on the disk.
    Range {
        end: u64,
        capacity: u64,
    },
    /// What was read back is not what was written.
    Mismatch {
        sector: u64,
        offset: usize,
    },
}

impl From<DriverError> for Failure {
    fn from(error: DriverError) -> Self {
        Self::Driver(error)
    }
}

struct Disk<'a> {
    transport: &'a Transport,
    queue: Virtqueue,
    features: u64,
    header: DmaBuffer,
    status: DmaBuffer,
    data: DmaBuffer,
    /// One request header per descriptor (the benchmarks index them by head descriptor).
    headers: DmaBuffer,
    /// One status byte per descriptor.
    statuses: DmaBuffer,
    wait: u64,
}

impl<'a> Disk<'a> {
    fn open(
        transport: &'a Transport,
        options: &VirtioOptions,
        queue_size: u16,
    ) -> Result<Self, Failure> {
        // SAFETY: the previous driver reset its device before returning.
        let mut arena = unsafe { DmaArena::take() };
        Self::open_in(transport, options, queue_size, &mut arena)
    }

    /// Like [`open`](Self::open), with the queue and buffers from `arena` (about 13 KiB).
    fn open_in(
        transport: &'a Transport,
        options: &VirtioOptions,
        queue_size: u16,
        arena: &mut DmaArena,
    ) -> Result<Self, Failure> {
        let features = transport.negotiate(0, 1 << F_RO | 1 << F_FLUSH)?;
        let queue = Virtqueue::with_size(transport, 0, arena, queue_size)?;
        let header = arena.alloc(HEADER_LEN, 16)?;
        let status = arena.alloc(1, 1)?;
        let data = arena.alloc(CHUNK_SECTORS * SECTOR_SIZE, 4096)?;
        let headers = arena.alloc(HEADER_LEN * usize::from(queue.size()), 16)?;
        let statuses = arena.alloc(usize::from(queue.size()), 1)?;
        transport.driver_ok()?;
        Ok(Self {
            transport,
            queue,
            features,
            header,
            status,
            data,
            headers,
            statuses,
            wait: options.wait_tsc,
        })
    }

    /// The benchmark: prints its setup, `bench <name> start`, runs the requests, prints
    /// `bench <name> end ops=<n> bytes=<b>`.
    fn bench(
        &mut self,
        number: usize,
        options: &VirtioOptions,
        bench: BlkBench,
        memory: DmaBuffer,
    ) -> Result<(), Failure> {
        let capacity = self.transport.config_u64(0);
        let name = bench.name();
        // Three descriptors per request.
        let depth = options.bench_depth.min(self.queue.size() / 3).max(1);
        let flush = self.features & 1 << F_FLUSH != 0;
        match bench {
            // Two disks: `bench_two`, never here.
            BlkBench::RandRead2 => {}
            BlkBench::RandRead => {
                let blocks = capacity / (READ_SIZE / SECTOR_SIZE as u64);
                if blocks == 0 {
                    return Err(Failure::Range {
                        end: READ_SIZE / SECTOR_SIZE as u64,
                        capacity,
                    });
                }
                let ops = options.bench_ops;
                report!(
                    "bench {name} dev={number} capacity={capacity} ops={ops} size={READ_SIZE} depth={depth}"
                );
                let mut random = RandomBlocks::new(blocks);
                report!("bench {name} start");
                self.pipeline(ops, depth, "read", |head, _| {
                    let data =
                        memory.slice(usize::from(head) * READ_SIZE as usize, READ_SIZE as usize);
                    (T_IN, random.next_sector(), Segment::writable(data))
                })?;
                report!("bench {name} end ops={ops} bytes={}", ops * READ_SIZE);
            }
            BlkBench::SeqWrite => {
                let total = options.bench_bytes;
                let end = total.div_ceil(SECTOR_SIZE as u64);
                if end > capacity {
                    return Err(Failure::Range { end, capacity });
                }
                let ops = write_count(total);
                report!(
                    "bench {name} dev={number} capacity={capacity} ops={ops} size={WRITE_CHUNK} depth={depth} flush={flush}"
                );
                report!("bench {name} start");
                self.pipeline(ops, depth, "write", |head, index| {
                    let (sector, len) = write_chunk(index, total);
                    let data = memory.slice(usize::from(head) * WRITE_CHUNK as usize, len as usize);
                    (T_OUT, sector, Segment::readable(data))
                })?;
                if flush {
                    self.request(T_FLUSH, 0, None, "flush")?;
                }
                report!("bench {name} end ops={ops} bytes={total}");
            }
        }
        Ok(())
    }

    /// Runs `count` requests, keeping up to `depth` in flight: `next(head, index)` gives request
    /// `index`'s type, sector and data buffer. Notifies once per batch of new requests and fails on
    /// the first status other than OK.
    fn pipeline(
        &mut self,
        count: u64,
        depth: u16,
        what: &'static str,
        mut next: impl FnMut(u16, u64) -> (u32, u64, Segment),
    ) -> Result<(), Failure> {
        let mut submitted = 0u64;
        let mut done = 0u64;
        let mut in_flight = 0u16;
        while done < count {
            let mut added = false;
            while in_flight < depth && submitted < count && self.queue.free() >= 3 {
                let head = self.queue.next_head();
                let (request_type, sector, data) = next(head, submitted);
                self.enqueue(head, request_type, sector, data)?;
                submitted += 1;
                in_flight += 1;
                added = true;
            }
            if added {
                self.transport.notify(self.queue.index());
            }
            let mut used = Some(self.queue.wait_used(
                self.transport,
                deadline(self.wait),
                "a block request",
            )?);
            while let Some((head, _)) = used {
                let status = self.status_of(head);
                if status != S_OK {
                    return Err(Failure::Status { what, status });
                }
                done += 1;
                in_flight = in_flight.saturating_sub(1);
                used = self.queue.pop_used();
            }
        }
        Ok(())
    }

    /// Puts a request on the queue without notifying: its header and status byte are those of
    /// `head`, which must be the queue's [`next_head`](Virtqueue::next_head).
    fn enqueue(
        &mut self,
        head: u16,
        request_type: u32,
        sector: u64,
        data: Segment,
    ) -> Result<(), DriverError> {
        let header = self
            .headers
            .slice(usize::from(head) * HEADER_LEN, HEADER_LEN);
        header.with_bytes(|bytes| bytes.copy_from_slice(&request_header(request_type, sector)));
        let status = self.statuses.slice(usize::from(head), 1);
        status.with_bytes(|bytes| bytes[0] = 0xff);
        self.queue
            .submit(&[Segment::readable(header), data, Segment::writable(status)])?;
        Ok(())
    }

    /// The status byte of the request whose chain starts at `head`.
    fn status_of(&self, head: u16) -> u8 {
        self.statuses
            .slice(usize::from(head), 1)
            .with_bytes(|bytes| bytes[0])
    }

    fn run(&mut self, number: usize, options: &VirtioOptions) -> Result<(), Failure> {
        let capacity = self.transport.config_u64(0);
        let id = self.data.slice(0, ID_LEN);
        self.request(T_GET_ID, 0, Some(Segment::writable(id)), "get-id")?;
        id.with_bytes(|bytes| {
            report!(
                "virtio-blk dev={number} capacity={capacity} id={}",
                Printable {
                    bytes,
                    limit: ID_LEN
                }
            )
        });

        if self.features & 1 << F_RO != 0 {
            let sum = self.sector0_sum()?;
            report!("virtio-blk dev={number} read-only sector0_sum={sum}");
            let sector = self.data.slice(0, SECTOR_SIZE);
            sector.with_bytes(|bytes| fill_pattern(bytes, options.blk_start));
            let status = self.submit(T_OUT, options.blk_start, Some(Segment::readable(sector)))?;
            report!("virtio-blk dev={number} write-refused status={status}");
            if status == S_OK {
                report!("FAIL virtio-blk dev={number} write to a read-only device succeeded");
            }
            return Ok(());
        }

        let start = options.blk_start;
        let end = start + options.blk_sectors;
        if end > capacity {
            return Err(Failure::Range { end, capacity });
        }
        let mut sector = start;
        while sector < end {
            let chunk = self.chunk(sector, end);
            chunk.with_bytes(|bytes| fill_pattern(bytes, sector));
            self.request(T_OUT, sector, Some(Segment::readable(chunk)), "write")?;
            sector += (chunk.len() / SECTOR_SIZE) as u64;
        }
        let flushed = if self.features & 1 << F_FLUSH != 0 {
            self.request(T_FLUSH, 0, None, "flush")?;
            "flushed"
        } else {
            "unflushed"
        };
        let mut sector = start;
        while sector < end {
            let chunk = self.chunk(sector, end);
            chunk.with_bytes(|bytes| bytes.fill(0));
            self.request(T_IN, sector, Some(Segment::writable(chunk)), "read")?;
            if let Some((sector, offset)) = chunk.with_bytes(|bytes| check_pattern(bytes, sector)) {
                return Err(Failure::Mismatch { sector, offset });
            }
            sector += (chunk.len() / SECTOR_SIZE) as u64;
        }
        let sum = self.sector0_sum()?;
        report!(
            "virtio-blk dev={number} wrote={} start={start} {flushed} verified sector0_sum={sum}",
            options.blk_sectors
        );
        Ok(())
    }

    /// The part of the data buffer for the sectors from `sector` up to at most `end`.
    fn chunk(&self, sector: u64, end: u64) -> DmaBuffer {
        let sectors = (end - sector).min(CHUNK_SECTORS as u64) as usize;
        self.data.slice(0, sectors * SECTOR_SIZE)
    }

    fn sector0_sum(&mut self) -> Result<u32, Failure> {
        let sector = self.data.slice(0, SECTOR_SIZE);
        self.request(T_IN, 0, Some(Segment::writable(sector)), "read sector 0")?;
        Ok(sector.with_bytes(|bytes| byte_sum(bytes)))
    }

    /// Runs one request and fails unless its status is OK.
    fn request(
        &mut self,
        request_type: u32,
        sector: u64,
        data: Option<Segment>,
        what: &'static str,
    ) -> Result<(), Failure> {
        match self.submit(request_type, sector, data)? {
            S_OK => Ok(()),
            status => Err(Failure::Status { what, status }),
        }
    }

    /// Runs one request and returns its status byte.
    fn submit(
        &mut self,
        request_type: u32,
        sector: u64,
        data: Option<Segment>,
    ) -> Result<u8, DriverError> {
        self.header
            .with_bytes(|bytes| bytes.copy_from_slice(&request_header(request_type, sector)));
        // A value no device writes, so a request completed without a status shows.
        self.status.with_bytes(|bytes| bytes[0] = 0xff);
        let header = Segment::readable(self.header);
        let status = Segment::writable(self.status);
        match data {
            Some(data) => self.queue.submit(&[header, data, status])?,
            None => self.queue.submit(&[header, status])?,
        };
        self.transport.notify(self.queue.index());
        self.queue
            .wait_used(self.transport, deadline(self.wait), "a block request")?;
        Ok(self.status.with_bytes(|bytes| bytes[0]))
    }
}
