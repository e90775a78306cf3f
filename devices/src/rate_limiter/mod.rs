//! Rate limiting for devices a guest drives: two token buckets per limited queue, one for bytes
//! (bandwidth) and one for operations (requests, frames), as Firecracker and Cloud Hypervisor
//! offer them.
//!
//! - [`TokenBucket`]: one bucket, a pure state machine over time the caller passes in;
//! - [`RateLimiter`]: a bandwidth and an ops bucket over a [`Clock`], asked before each
//!   request with [`RateLimiter::try_consume`], which either takes the tokens or says how long
//!   to wait;
//! - [`RateLimit`]: what a limiter is configured with, and [`RateLimiterState`], what a snapshot
//!   keeps of it.
//!
//! A device over its budget stops taking requests from its queue (they stay in the ring, the
//! guest is not told anything, nothing is dropped) and arms a timer for when the budget allows
//! the next one; the thread that serves the device sleeps meanwhile, so a throttled guest costs
//! the host nothing and other devices and VMs are not held up. The devices own that timer;
//! this module has no file descriptors and no threads.
//!
//! Why not a crate: the well-kept Rust rate limiters (`governor`, a GCRA; `ratelimit`, a token
//! bucket) refuse a request larger than their burst for ever (a 1 MiB write through a 64 KiB
//! bucket would never pass), have no one-time burst, and keep their state in atomics with no
//! way to save and restore it for a snapshot. Firecracker's limiter has these, but is not
//! published as a crate. The bucket here is about a hundred lines of integer arithmetic with
//! the time injected, tested without sleeping.

mod bucket;
mod throttle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use bucket::{BucketConfig, BucketConfigError, BucketState, TokenBucket, MAX_REFILL_TIME};
pub(crate) use throttle::Throttle;

/// A monotonic time source; [`MonotonicClock`] in production, a hand-moved one in tests.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock ([`Instant::now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// How a queue is limited: a bucket of bytes, a bucket of operations, either, both or neither
/// (no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes (a request's data, a frame with its virtio-net header, entropy delivered).
    pub bandwidth: Option<BucketConfig>,
    /// Operations (requests, frames).
    pub ops: Option<BucketConfig>,
}

impl RateLimit {
    /// No limit.
    pub const NONE: RateLimit = RateLimit {
        bandwidth: None,
        ops: None,
    };

    /// Whether it limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }
}

/// Why a rate limit cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// A bucket's configuration is invalid.
    #[error("`{bucket}` bucket: {source}")]
    Bucket {
        /// `bandwidth` or `ops`.
        bucket: &'static str,
        /// What is wrong.
        source: BucketConfigError,
    },
    /// The device has no rate limiter of that kind (a receive limit for a disk, any limit for
    /// a device without limiters).
    #[error("the device has no {target} rate limiter")]
    Unsupported {
        /// The limiter asked for.
        target: RateLimitTarget,
    },
    /// The device has no timer to wake it when its budget allows (the descriptor could not be
    /// created), so it cannot be limited.
    #[error("no timer to wake the device when throttled: {0}")]
    Timer(#[source] std::io::Error),
}

/// Which of a device's limiters: a disk or entropy device has one for its requests, a NIC one
/// per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitTarget {
    /// The requests of a single-queue device (virtio-blk, virtio-rng).
    Requests,
    /// Frames the NIC delivers to the guest.
    Receive,
    /// Frames the guest sends.
    Transmit,
}

impl std::fmt::Display for RateLimitTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateLimitTarget::Requests => "request",
            RateLimitTarget::Receive => "receive",
            RateLimitTarget::Transmit => "transmit",
        })
    }
}

/// What a snapshot keeps of a limiter: each bucket's budget and burst left. A bucket that is
/// not configured any more when the state is restored is ignored; one that was not there when
/// it was saved starts full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    /// The bandwidth bucket, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BucketState>,
    /// The ops bucket, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<BucketState>,
}

/// A bandwidth and an ops bucket over a clock.
///
/// ```
/// use std::time::Duration;
/// use devices::rate_limiter::{BucketConfig, RateLimit, RateLimiter};
///
/// // 100 requests per second, no more than 10 at once.
/// let ops = BucketConfig { size: 10, one_time_burst: 0, refill_time: Duration::from_millis(100) };
/// let mut limiter = RateLimiter::new(RateLimit { bandwidth: None, ops: Some(ops) }).unwrap();
/// for _ in 0..10 {
///     assert!(limiter.try_consume(4096, 1).is_ok());
/// }
/// let wait = limiter.try_consume(4096, 1).unwrap_err();
/// assert!(wait > Duration::ZERO && wait <= Duration::from_millis(10));
/// ```
pub struct RateLimiter {
    limit: RateLimit,
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    clock: Arc<dyn Clock>,
    /// Requests that had to wait.
    throttled: u64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("throttled", &self.throttled)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::unlimited()
    }
}

impl RateLimiter {
    /// A limiter that lets everything through.
    pub fn unlimited() -> Self {
        RateLimiter {
            limit: RateLimit::NONE,
            bandwidth: None,
            ops: None,
            clock: Arc::new(MonotonicClock),
            throttled: 0,
        }
    }

    /// A limiter with full buckets, on the system's monotonic clock.
    pub fn new(limit: RateLimit) -> Result<Self, RateLimitError> {
        Self::with_clock(limit, Arc::new(MonotonicClock))
    }

    /// A limiter with full buckets on `clock`.
    pub fn with_clock(limit: RateLimit, clock: Arc<dyn Clock>) -> Result<Self, RateLimitError> {
        let mut limiter = RateLimiter {
            clock,
            ..RateLimiter::unlimited()
        };
        limiter.set_limit(limit)?;
        Ok(limiter)
    }

    /// Replaces the limit. The buckets start full (with their one-time burst), as for a new
    /// device: a new limit is a new contract. On error nothing changes.
    pub fn set_limit(&mut self, limit: RateLimit) -> Result<(), RateLimitError> {
        let now = self.clock.now();
        let bucket = |config: Option<BucketConfig>, name| {
            config
                .map(|config| {
                    TokenBucket::new(config, now).map_err(|source| RateLimitError::Bucket {
                        bucket: name,
                        source,
                    })
                })
                .transpose()
        };
        let bandwidth = bucket(limit.bandwidth, "bandwidth")?;
        let ops = bucket(limit.ops, "ops")?;
        self.limit = limit;
        self.bandwidth = bandwidth;
        self.ops = ops;
        Ok(())
    }

    /// The limit in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whether it limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.limit.is_unlimited()
    }

    /// Takes `bytes` from the bandwidth bucket and `ops` from the ops bucket if both allow it
    /// now; otherwise takes nothing and returns how long to wait before asking again.
    pub fn try_consume(&mut self, bytes: u64, ops: u64) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
        }
        let now = self.clock.now();
        let wait = [(&mut self.bandwidth, bytes), (&mut self.ops, ops)]
            .into_iter()
            .filter_map(|(bucket, tokens)| Some(bucket.as_mut()?.wait_for(tokens, now)))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait > Duration::ZERO {
            self.throttled += 1;
            return Err(wait);
        }
        if let Some(bucket) = self.bandwidth.as_mut() {
            bucket.consume(bytes);
        }
        if let Some(bucket) = self.ops.as_mut() {
            bucket.consume(ops);
        }
        Ok(())
    }

    /// How many times a request had to wait.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// The buckets' budgets now, for a snapshot.
    pub fn state(&mut self) -> RateLimiterState {
        let now = self.clock.now();
        RateLimiterState {
            bandwidth: self.bandwidth.as_mut().map(|bucket| bucket.state(now)),
            ops: self.ops.as_mut().map(|bucket| bucket.state(now)),
        }
    }

    /// Puts saved budgets back into the buckets this limiter has (see [`RateLimiterState`]).
    pub fn restore(&mut self, state: &RateLimiterState) {
        let now = self.clock.now();
        if let (Some(bucket), Some(saved)) = (self.bandwidth.as_mut(), &state.bandwidth) {
            bucket.restore(saved, now);
        }
        if let (Some(bucket), Some(saved)) = (self.ops.as_mut(), &state.ops) {
            bucket.restore(saved, now);
        }
    }
}

/// A clock tests move by hand.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    start: Instant,
    offset: std::sync::Mutex<Duration>,
}

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            start: Instant::now(),
            offset: std::sync::Mutex::new(Duration::ZERO),
        })
    }

    pub(crate) fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(size: u64, refill_ms: u32) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time: MS * refill_ms,
        })
    }

    #[test]
    fn both_buckets_must_allow_and_a_refusal_takes_nothing() {
        let clock = ManualClock::new();
        let limit = RateLimit {
            bandwidth: config(10_000, 1000),
            ops: config(3, 1000),
        };
        let mut limiter = RateLimiter::with_clock(limit, clock.clone()).unwrap();
        // Bandwidth runs out first.
        assert!(limiter.try_consume(6000, 1).is_ok());
        let wait = limiter.try_consume(6000, 1).unwrap_err();
        assert_eq!(wait, MS * 200, "2000 bytes at 10 kB/s");
        // The refused request took no op: two are left.
        assert!(limiter.try_consume(100, 1).is_ok());
        assert!(limiter.try_consume(100, 1).is_ok());
        // Now the ops bucket refuses although bytes are there.
        let wait = limiter.try_consume(1, 1).unwrap_err();
        assert_eq!(wait, Duration::from_nanos(333_333_334));
        assert_eq!(limiter.throttled(), 2);
        clock.advance(wait);
        assert!(limiter.try_consume(1, 1).is_ok());
    }

    #[test]
    fn no_limit_lets_everything_through() {
        let mut limiter = RateLimiter::unlimited();
        for _ in 0..1000 {
            assert!(limiter.try_consume(u64::MAX, u64::MAX).is_ok());
        }
        assert_eq!(limiter.throttled(), 0);
        assert_eq!(limiter.state(), RateLimiterState::default());
    }

    #[test]
    fn a_new_limit_starts_full_and_a_bad_one_changes_nothing() {
        let clock = ManualClock::new();
        let mut limiter = RateLimiter::with_clock(
            RateLimit {
                bandwidth: None,
                ops: config(1, 1000),
            },
            clock.clone(),
        )
        .unwrap();
        assert!(limiter.try_consume(0, 1).is_ok());
        assert!(limiter.try_consume(0, 1).is_err());
        let bad = RateLimit {
            bandwidth: config(0, 1000),
            ops: config(100, 1000),
        };
        let err = limiter.set_limit(bad).unwrap_err();
        assert!(
            err.to_string().contains("`bandwidth` bucket: `size`"),
            "{err}"
        );
        assert!(limiter.try_consume(0, 1).is_err(), "the old limit holds");
        limiter
            .set_limit(RateLimit {
                bandwidth: None,
                ops: config(100, 1000),
            })
            .unwrap();
        for _ in 0..100 {
            assert!(limiter.try_consume(0, 1).is_ok());
        }
        assert!(limiter.try_consume(0, 1).is_err());
        limiter.set_limit(RateLimit::NONE).unwrap();
        assert!(limiter.try_consume(0, 1).is_ok());
    }

    #[test]
    fn state_survives_into_a_new_limiter_and_serializes() {
        let clock = ManualClock::new();
        let limit = RateLimit {
            bandwidth: config(1000, 1000),
            ops: config(10, 1000),
        };
        let mut limiter = RateLimiter::with_clock(limit, clock.clone()).unwrap();
        limiter.try_consume(900, 4).unwrap();
        let json = serde_json::to_string(&limiter.state()).unwrap();
        let state: RateLimiterState = serde_json::from_str(&json).unwrap();
        let mut restored = RateLimiter::with_clock(limit, clock.clone()).unwrap();
        restored.restore(&state);
        assert_eq!(restored.try_consume(101, 1), Err(MS));
        assert!(restored.try_consume(100, 6).is_ok());
        assert!(restored.try_consume(0, 1).is_err());
        // An older snapshot without limiter state leaves the buckets full.
        let empty: RateLimiterState = serde_json::from_str("{}").unwrap();
        let mut fresh = RateLimiter::with_clock(limit, clock).unwrap();
        fresh.restore(&empty);
        assert!(fresh.try_consume(1000, 10).is_ok());
    }
}
