//! virtio-rng: an entropy source for the guest (virtio 1.2, section 5.4).
//!
//! [`VirtioRng`] fills every device-writable buffer the driver offers with bytes from an
//! [`EntropySource`] — the host's `getrandom(2)` ([`HostRandom`]) in production, a deterministic
//! source in tests. A chain with any device-readable descriptor, or with a buffer outside guest
//! memory, is returned untouched (used length 0). At most [`MAX_BYTES_PER_REQUEST`] bytes are
//! produced per chain, so a guest offering huge buffers cannot make the VMM do unbounded work;
//! the used length tells the driver how much it got.
//!
//! A rate limit ([`VirtioDevice::set_rate_limit`] with [`RateLimitTarget::Requests`]) counts
//! each chain as one operation and the bytes it asks for (up to the cap) as bandwidth; a chain
//! over the limit stays in the ring until the limiter's timer fires. The timer is watched by
//! the device's [`MutEventSubscriber`] side, so a limited device must be on the VMM's event
//! loop.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::GuestMemoryMmap;
use log::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemory, Permissions};

use super::queue_ops::{drain_queue_until, Served};
use super::single_queue::SingleQueue;
use super::snapshot::{
    restore_plain, DeviceExtra, QueueSnapshot, SnapshotError, VirtioDeviceState,
};
use super::{ActivateError, VirtioDevice, VirtioInterrupt, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::counters::Counter;
use crate::narrow::len_u32;
use crate::rate_limiter::{RateLimit, RateLimitError, RateLimitTarget, Throttle};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes of entropy returned for one chain.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// Most descriptors looked at in one chain; longer chains are rejected.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Bytes drawn from the source at a time.
const CHUNK_LEN: usize = 4096;

/// Where random bytes come from.
pub trait EntropySource: Send {
    /// Fills all of `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's random number generator, through `getrandom(2)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostRandom;

impl EntropySource for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the pointer and length describe `rest`, a live, writable byte slice; the
            // kernel writes at most `rest.len()` bytes into it.
            let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            // Short reads happen for large requests and on signals: keep going.
            done += ret as usize;
        }
        Ok(())
    }
}

/// A virtio entropy device.
///
/// ```
/// use devices::virtio::rng::VirtioRng;
/// use devices::virtio::{VirtioDevice, TYPE_RNG};
///
/// let rng = VirtioRng::new();
/// assert_eq!(rng.device_type(), TYPE_RNG);
/// assert_eq!(rng.queue_max_sizes(), &[256]);
/// ```
pub struct VirtioRng<E: EntropySource = HostRandom> {
    source: E,
    queue_sizes: [u16; 1],
    acked_features: u64,
    buffer: Vec<u8>,
    active: Option<SingleQueue>,
    /// Requests served and bytes delivered (for [`VirtioDevice::counters`]).
    requests: u64,
    bytes: u64,
    throttle: Throttle,
}

impl VirtioRng<HostRandom> {
    /// A device backed by the host's `getrandom(2)`.
    pub fn new() -> Self {
        Self::with_source(HostRandom)
    }
}

impl Default for VirtioRng<HostRandom> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a chain is returned without entropy.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ChainError {
    #[error("descriptor {0} is not device-writable")]
    ReadOnly(usize),
    #[error("descriptor {index} ({len} bytes at {addr:#x}) is outside guest memory")]
    OutsideMemory { index: usize, addr: u64, len: u32 },
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors or does not end")]
    TooLong,
}

/// Checks the descriptors of one chain; returns them if all are writable guest memory.
fn writable_buffers<M: GuestMemory>(
    chain: impl IntoIterator<Item = Descriptor>,
    mem: &M,
) -> Result<Vec<Descriptor>, ChainError> {
    let descs: Vec<Descriptor> = chain.into_iter().take(MAX_DESCRIPTORS + 1).collect();
    if descs.len() > MAX_DESCRIPTORS || descs.last().is_some_and(Descriptor::has_next) {
        return Err(ChainError::TooLong);
    }
    for (index, desc) in descs.iter().enumerate() {
        if !desc.is_write_only() {
            return Err(ChainError::ReadOnly(index));
        }
        let len = desc.len();
        if len != 0 && !mem.check_range(desc.addr(), len as usize, Permissions::Write) {
            return Err(ChainError::OutsideMemory {
                index,
                addr: desc.addr().raw_value(),
                len,
            });
        }
    }
    Ok(descs)
}

impl<E: EntropySource> VirtioRng<E> {
    /// A device drawing from `source`.
    pub fn with_source(source: E) -> Self {
        VirtioRng {
            source,
            queue_sizes: [QUEUE_SIZE],
            acked_features: 0,
            buffer: vec![0u8; CHUNK_LEN],
            active: None,
            requests: 0,
            bytes: 0,
            throttle: Throttle::new(),
        }
    }

    /// Fills the chain's buffers, up to the per-request cap; returns the bytes written.
    fn fill_chain(
        source: &mut E,
        buffer: &mut [u8],
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
    ) -> u32 {
        let mut written = 0usize;
        for desc in descs {
            let len = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
            let mut done = 0usize;
            while done < len {
                let chunk = (len - done).min(buffer.len());
                let buf = &mut buffer[..chunk];
                if let Err(err) = source.fill(buf) {
                    crate::guest_warn!("virtio-rng: entropy source failed: {err}");
                    return len_u32(written);
                }
                let addr = desc.addr().unchecked_add(done as u64);
                if let Err(err) = mem.write_slice(buf, addr) {
                    crate::guest_warn!("virtio-rng: write to guest at {:#x} failed: {err}", addr.0);
                    return len_u32(written);
                }
                done += chunk;
                written += chunk;
            }
            if written == MAX_BYTES_PER_REQUEST {
                break;
            }
        }
        // At most MAX_BYTES_PER_REQUEST: fits in u32.
        len_u32(written)
    }

    /// Serves the available chains, as many as the rate limit allows; returns how many went
    /// back to the driver.
    fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        if self.throttle.is_waiting() {
            // A notification while throttled: the timer says when to look again.
            return 0;
        }
        let mem = &active.mem;
        let (source, buffer) = (&mut self.source, &mut self.buffer);
        let (requests, bytes) = (&mut self.requests, &mut self.bytes);
        let throttle = &mut self.throttle;
        drain_queue_until(&mut active.queue, mem, "virtio-rng", |chain| {
            let head = chain.head_index();
            let used_len = match writable_buffers(chain, mem) {
                Ok(descs) => {
                    let asked: u64 = descs.iter().map(|desc| u64::from(desc.len())).sum();
                    if !throttle.admit(asked.min(MAX_BYTES_PER_REQUEST as u64)) {
                        return Served::Stop;
                    }
                    Self::fill_chain(source, buffer, mem, &descs)
                }
                Err(err) => {
                    debug!("virtio-rng: chain {head} rejected: {err}");
                    0
                }
            };
            *requests += 1;
            *bytes += u64::from(used_len);
            Served::Used(used_len)
        })
        .returned
    }

    /// Runs the rate limiter on `clock` (tests move time by hand).
    #[cfg(test)]
    fn set_rate_limit_clock(&mut self, clock: Arc<dyn crate::rate_limiter::Clock>) {
        self.throttle.set_clock(clock);
    }

    /// Serves the queue and interrupts the driver if chains went back.
    fn serve(&mut self) {
        if self.process_queue() == 0 {
            return;
        }
        if let Some(active) = self.active.as_mut() {
            active.notify_driver("virtio-rng");
        }
    }
}

impl<E: EntropySource> VirtioDevice for VirtioRng<E> {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & VIRTIO_F_VERSION_1;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate(mem, interrupt, queues, false)?);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index != 0 {
            debug!("virtio-rng: notify for unknown queue {index}");
            return;
        }
        self.serve();
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        // Nothing waits any more; the budgets stay spent (a reset does not refill them).
        self.throttle.timer_fired();
        true
    }

    fn set_rate_limit(
        &mut self,
        target: RateLimitTarget,
        limit: RateLimit,
    ) -> Result<(), RateLimitError> {
        if target != RateLimitTarget::Requests {
            return Err(RateLimitError::Unsupported { target });
        }
        self.throttle.set_limit(limit)
    }

    fn rate_limits(&self) -> Vec<(RateLimitTarget, RateLimit)> {
        vec![(RateLimitTarget::Requests, self.throttle.limit())]
    }

    fn save_state(&mut self) -> Result<VirtioDeviceState, SnapshotError> {
        Ok(VirtioDeviceState {
            device_type: TYPE_RNG,
            acked_features: self.acked_features,
            activated: self.active.is_some(),
            queues: self
                .active
                .iter()
                .map(|active| QueueSnapshot::of(&active.queue))
                .collect(),
            extra: DeviceExtra::None,
            rate_limiters: vec![(RateLimitTarget::Requests, self.throttle.state())],
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
                self.throttle.restore(saved);
            }
        }
        restore_plain(self, state, mem, interrupt)
    }

    fn counters(&self) -> Vec<Counter> {
        vec![
            Counter::count("requests", "entropy requests served", self.requests),
            Counter::count("bytes", "entropy bytes delivered", self.bytes),
            Counter::count(
                "rate_limited",
                "times a request waited for the rate limiter",
                self.throttle.throttled(),
            ),
        ]
    }
}

/// The rate limiter's timer: when it fires, the queue is served again.
impl<E: EntropySource> MutEventSubscriber for VirtioRng<E> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.throttle.timer_fd() {
            if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("virtio-rng: cannot register the rate limiter's timer: {err:?}");
            }
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.throttle.timer_fired();
        self.serve();
    }
}

#[cfg(test)]
mod tests {
    use crate::virtio::InterruptKind;
    use std::sync::Mutex;

    use super::*;
    use crate::virtio::testing::{
        test_memory, DriverQueue, Rng, BUFFERS, F_INDIRECT, F_NEXT, F_WRITE, MEMORY_SIZE,
    };

    /// A deterministic source: byte `n` of its output is `n as u8 ^ salt`, so tests can tell
    /// exactly which bytes reached the guest. Counts the bytes it produced.
    struct CountingSource {
        produced: Arc<Mutex<usize>>,
        fail: bool,
    }

    impl EntropySource for CountingSource {
        fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("no entropy"));
            }
            let mut produced = self.produced.lock().unwrap();
            for byte in buf.iter_mut() {
                *byte = (*produced as u8) ^ 0x5a;
                *produced += 1;
            }
            Ok(())
        }
    }

    fn counting_rng(fail: bool) -> (VirtioRng<CountingSource>, Arc<Mutex<usize>>) {
        let produced = Arc::new(Mutex::new(0));
        let source = CountingSource {
            produced: produced.clone(),
            fail,
        };
        (VirtioRng::with_source(source), produced)
    }

    fn expected(from: usize, len: usize) -> Vec<u8> {
        (from..from + len).map(|n| n as u8 ^ 0x5a).collect()
    }

    #[test]
    fn fills_writable_buffers() {
        let (mut rng, _) = counting_rng(false);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        let interrupt = driver.activate(&mut rng);
        let head = driver.add_chain(&[(BUFFERS, 100, true), (BUFFERS + 0x1000, 5000, true)]);
        rng.queue_notify(0);
        assert_eq!(driver.used_count(), 1);
        assert_eq!(driver.used(0), (u32::from(head), 5100));
        assert_eq!(driver.read(BUFFERS, 100), expected(0, 100));
        assert_eq!(driver.read(BUFFERS + 0x1000, 5000), expected(100, 5000));
        assert_eq!(interrupt.raised()[..], [InterruptKind::Queue(0)]);
    }

    #[test]
    fn host_random_fills_large_buffers() {
        let mut buf = vec![0u8; 1 << 20];
        HostRandom.fill(&mut buf).unwrap();
        // 1 MiB of zeroes from getrandom would mean the buffer was not filled.
        let zeroes = buf.iter().filter(|&&b| b == 0).count();
        assert!(zeroes < buf.len() / 128, "{zeroes} zero bytes in 1 MiB");
        let mut empty = [];
        HostRandom.fill(&mut empty).unwrap();

        let mut rng = VirtioRng::new();
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut rng);
        driver.add_chain(&[(BUFFERS, 4096, true)]);
        rng.queue_notify(0);
        assert_eq!(driver.used(0).1, 4096);
        assert_ne!(driver.read(BUFFERS, 4096), vec![0u8; 4096]);
    }

    #[test]
    fn rejects_device_readable_and_out_of_memory_descriptors() {
        let (mut rng, produced) = counting_rng(false);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut rng);
        driver.write(BUFFERS, &[0xee; 64]);
        let end = MEMORY_SIZE;
        driver.add_chain(&[(BUFFERS, 64, false)]);
        driver.add_chain(&[(BUFFERS, 32, true), (BUFFERS + 32, 32, false)]);
        driver.add_chain(&[(end - 16, 32, true)]);
        driver.add_chain(&[(u64::MAX - 8, 16, true)]);
        rng.queue_notify(0);
        assert_eq!(driver.used_count(), 4);
        for n in 0..4 {
            assert_eq!(
                driver.used(n).1,
                0,
                "chain {n} returned with nothing written"
            );
        }
        assert_eq!(
            driver.read(BUFFERS, 64),
            vec![0xee; 64],
            "guest memory untouched"
        );
        assert_eq!(*produced.lock().unwrap(), 0);
    }

    #[test]
    fn caps_the_bytes_per_request() {
        let (mut rng, produced) = counting_rng(false);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut rng);
        let huge = (MEMORY_SIZE - BUFFERS) as u32;
        driver.add_chain(&[
            (BUFFERS, 1000, true),
            (BUFFERS + 0x1000, huge - 0x1000, true),
        ]);
        driver.add_chain(&[(BUFFERS, u32::MAX, true)]);
        rng.queue_notify(0);
        assert_eq!(driver.used(0).1 as usize, MAX_BYTES_PER_REQUEST);
        assert_eq!(driver.used(1).1, 0, "4 GiB is outside guest memory");
        assert_eq!(*produced.lock().unwrap(), MAX_BYTES_PER_REQUEST);
        let tail = BUFFERS + 0x1000 + (MAX_BYTES_PER_REQUEST - 1000) as u64;
        assert_eq!(
            driver.read(tail, 16),
            vec![0u8; 16],
            "nothing beyond the cap"
        );
    }

    #[test]
    fn source_failures_and_odd_chains_return_empty() {
        let (mut rng, _) = counting_rng(true);
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, 8);
        driver.activate(&mut rng);
        driver.add_chain(&[(BUFFERS, 64, true)]);
        driver.add_chain(&[(BUFFERS, 0, true)]);
        // A descriptor pointing at itself: the chain never ends.
        driver.add_raw(2, &[Descriptor::new(BUFFERS, 64, F_NEXT | 2, 2)]);
        rng.queue_notify(0);
        assert_eq!(driver.used_count(), 3);
        for n in 0..3 {
            assert_eq!(driver.used(n).1, 0);
        }
        rng.queue_notify(1);
        assert!(rng.reset());
        rng.queue_notify(0);
        let mut config = [0xffu8; 4];
        rng.read_config(0, &mut config);
        assert_eq!(config, [0; 4], "no config space");
        assert_eq!(rng.avail_features(), VIRTIO_F_VERSION_1);
    }

    /// The chain attacks of the hostile-guest catalogue (`docs/hostile-guest.md`), at the
    /// device: each chain comes back empty, no entropy is produced for it, and the next honest
    /// chain is served.
    #[test]
    fn hostile_catalogue_chains_come_back_empty() {
        const W: u16 = F_WRITE;
        const WN: u16 = F_WRITE | F_NEXT;
        let size = 16u16;
        let all_chained: Vec<Descriptor> = (0..size)
            .map(|i| Descriptor::new(BUFFERS, 4, WN, (i + 1) % size))
            .collect();
        let cases: [(&str, Vec<Descriptor>); 7] = [
            (
                "desc_loop",
                vec![
                    Descriptor::new(BUFFERS, 32, WN, 1),
                    Descriptor::new(BUFFERS + 32, 32, WN, 0),
                ],
            ),
            ("chain_too_long", all_chained),
            (
                "next_out_of_range",
                vec![Descriptor::new(BUFFERS, 64, WN, 500)],
            ),
            // The descriptor table is at the queue's base, 0.
            (
                "indirect_self",
                vec![Descriptor::new(0, u32::from(size) * 16, F_INDIRECT, 0)],
            ),
            (
                "addr_beyond_memory",
                vec![Descriptor::new(1 << 40, 64, W, 0)],
            ),
            (
                "addr_overflow",
                vec![Descriptor::new(u64::MAX - 31, 64, W, 0)],
            ),
            (
                "huge_length",
                vec![Descriptor::new(BUFFERS, u32::MAX, W, 0)],
            ),
        ];
        for (name, descs) in cases {
            let (mut rng, produced) = counting_rng(false);
            let mem = test_memory();
            let mut driver = DriverQueue::new(&mem, 0, size);
            driver.activate(&mut rng);
            driver.add_raw(0, &descs);
            rng.queue_notify(0);
            assert_eq!(driver.used_count(), 1, "{name}: returned");
            assert_eq!(driver.used(0), (0, 0), "{name}: returned empty");
            assert_eq!(*produced.lock().unwrap(), 0, "{name}: nothing produced");
            // An honest chain after it (at descriptor `size - 1`, clear of the attack's).
            driver.add_raw(size - 1, &[Descriptor::new(BUFFERS, 8, W, 0)]);
            rng.queue_notify(0);
            assert_eq!(
                driver.used(1),
                (u32::from(size - 1), 8),
                "{name}: served after"
            );
        }
    }

    #[test]
    fn random_chains_never_panic() {
        let (mut rng, produced) = counting_rng(false);
        let mem = test_memory();
        let mut gen = Rng::new(7);
        let addrs = [0, BUFFERS, MEMORY_SIZE - 8, u64::MAX - 4];
        let lens = [0, 1, 512, 70_000, u32::MAX];
        for _ in 0..300 {
            let mut driver = DriverQueue::new(&mem, 0, 16);
            driver.activate(&mut rng);
            let count = 1 + gen.below(16) as u16;
            let descs: Vec<Descriptor> = (0..count)
                .map(|_| {
                    let addr = addrs[gen.below(addrs.len() as u64) as usize];
                    let len = lens[gen.below(lens.len() as u64) as usize];
                    Descriptor::new(addr, len, gen.below(8) as u16, gen.below(20) as u16)
                })
                .collect();
            driver.add_raw(0, &descs);
            let before = *produced.lock().unwrap();
            rng.queue_notify(0);
            // Buffers may overlap the rings (address 0), so the used ring can hold anything the
            // device wrote there; the source's count is what proves the cap.
            let drawn = *produced.lock().unwrap() - before;
            assert!(
                drawn <= usize::from(count) * MAX_BYTES_PER_REQUEST,
                "{drawn} bytes"
            );
            assert!(rng.reset());
        }
    }

    #[test]
    fn requests_over_the_rate_limit_wait_for_the_timer() {
        use crate::rate_limiter::{BucketConfig, ManualClock};
        use std::time::Duration;
        let (mut rng, produced) = counting_rng(false);
        let clock = ManualClock::new();
        let limit = RateLimit {
            bandwidth: Some(BucketConfig {
                size: 64,
                one_time_burst: 0,
                refill_time: Duration::from_secs(1),
            }),
            ops: None,
        };
        rng.set_rate_limit(RateLimitTarget::Requests, limit)
            .unwrap();
        rng.set_rate_limit_clock(clock.clone());
        let mem = test_memory();
        let mut driver = DriverQueue::new(&mem, 0, QUEUE_SIZE);
        driver.activate(&mut rng);
        for i in 0..3 {
            driver.add_chain(&[(BUFFERS + i * 0x100, 64, true)]);
        }
        rng.queue_notify(0);
        assert_eq!(driver.used_count(), 1);
        rng.queue_notify(0);
        assert_eq!(driver.used_count(), 1, "a kick does not refill the bucket");
        clock.advance(Duration::from_secs(1));
        // The timer fires (what the event subscriber does then): one more request.
        rng.throttle.timer_fired();
        rng.serve();
        assert_eq!(driver.used_count(), 2);
        clock.advance(Duration::from_secs(1));
        rng.throttle.timer_fired();
        rng.serve();
        assert_eq!(driver.used_count(), 3);
        assert_eq!(*produced.lock().unwrap(), 192, "every byte asked for, once");
        let limited = rng
            .counters()
            .into_iter()
            .find(|c| c.name == "rate_limited");
        assert!(limited.unwrap().value >= 2);
    }
}
