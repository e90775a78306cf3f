//! One token bucket: a budget that refills at a steady rate up to a size, plus a one-time burst.
//!
//! The bucket is a pure state machine: every call that depends on time takes `now` from the
//! caller, so tests move time by hand and nothing sleeps. It never reads a clock itself.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest refill time accepted: one day. It bounds the arithmetic (size × refill time in
/// nanoseconds stays far inside an `i128`) and no sensible limit refills more slowly.
pub const MAX_REFILL_TIME: Duration = Duration::from_secs(24 * 60 * 60);

/// How a bucket is sized: it holds at most `size` tokens and refills completely in
/// `refill_time` (a steady rate of `size / refill_time`); `one_time_burst` tokens come on top,
/// once, and are spent before the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Most tokens the bucket holds (bytes, or operations); at least 1.
    pub size: u64,
    /// Extra tokens available once, at the start, never refilled.
    pub one_time_burst: u64,
    /// Time to refill an empty bucket; at least 1 ms, at most [`MAX_REFILL_TIME`].
    pub refill_time: Duration,
}

/// Why a [`BucketConfig`] cannot be used; each names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BucketConfigError {
    /// `size` is 0: nothing could ever pass.
    #[error("`size` is 0: at least 1 token is needed")]
    ZeroSize,
    /// `refill_time` is below 1 ms or above [`MAX_REFILL_TIME`].
    #[error("`refill_time` is {0:?}: it must be from 1 ms to 24 h")]
    RefillTime(Duration),
}

impl BucketConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), BucketConfigError> {
        if self.size == 0 {
            return Err(BucketConfigError::ZeroSize);
        }
        if self.refill_time < Duration::from_millis(1) || self.refill_time > MAX_REFILL_TIME {
            return Err(BucketConfigError::RefillTime(self.refill_time));
        }
        Ok(())
    }

    /// Tokens per second the bucket sustains.
    pub fn rate_per_second(&self) -> f64 {
        self.size as f64 / self.refill_time.as_secs_f64()
    }
}

/// What a snapshot keeps of a bucket: its budget (negative after a request larger than the
/// bucket, which is paid back as the bucket refills) and what is left of the one-time burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    /// Whole tokens in the budget.
    pub budget: i64,
    /// One-time burst tokens not spent yet.
    pub one_time_burst: u64,
}

/// A token bucket.
///
/// The budget is kept in units of `1 / refill_time_ns` tokens, so refilling is exact integer
/// arithmetic: each nanosecond adds `size` units, each token costs `refill_time_ns` units.
///
/// A request may take more tokens than the bucket holds (a 1 MiB write through a 64 KiB
/// bucket): it passes once the bucket is full and leaves the budget negative, so the next
/// requests wait until the debt is refilled. The long-run rate is the configured one whatever
/// the request sizes, and no request is refused forever.
///
/// ```
/// use std::time::{Duration, Instant};
/// use devices::rate_limiter::{BucketConfig, TokenBucket};
///
/// let config = BucketConfig { size: 1000, one_time_burst: 0, refill_time: Duration::from_secs(1) };
/// let start = Instant::now();
/// let mut bucket = TokenBucket::new(config, start).unwrap();
/// assert_eq!(bucket.wait_for(1000, start), Duration::ZERO); // a full bucket
/// bucket.consume(1000);
/// // Empty: 500 tokens take half a second to come back.
/// assert_eq!(bucket.wait_for(500, start), Duration::from_millis(500));
/// assert_eq!(bucket.wait_for(500, start + Duration::from_millis(500)), Duration::ZERO);
/// ```
#[derive(Clone, Debug)]
pub struct TokenBucket {
    config: BucketConfig,
    /// `refill_time` in nanoseconds (at least 1_000_000, at most a day's).
    refill_ns: i128,
    /// The budget in units of 1 / `refill_ns` tokens; at most `size × refill_ns`.
    units: i128,
    /// One-time burst tokens left.
    burst: u64,
    /// When the budget was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (and its whole one-time burst) at `now`.
    pub fn new(config: BucketConfig, now: Instant) -> Result<Self, BucketConfigError> {
        config.validate()?;
        let refill_ns = i128::try_from(config.refill_time.as_nanos()).unwrap_or(i128::MAX);
        let mut bucket = TokenBucket {
            config,
            refill_ns,
            units: 0,
            burst: config.one_time_burst,
            last: now,
        };
        bucket.units = bucket.capacity();
        Ok(bucket)
    }

    /// The configuration.
    pub fn config(&self) -> &BucketConfig {
        &self.config
    }

    fn capacity(&self) -> i128 {
        i128::from(self.config.size).saturating_mul(self.refill_ns)
    }

    /// Adds what the time since the last update refilled, up to the bucket's size. A clock that
    /// goes backwards adds nothing.
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        self.last = now;
        let elapsed = i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX);
        let added = elapsed.saturating_mul(i128::from(self.config.size));
        self.units = self.units.saturating_add(added).min(self.capacity());
    }

    /// How long from `now` until `tokens` can be taken: zero when they can be now. Tokens
    /// beyond the bucket's size only need a full bucket (see the type's documentation).
    pub fn wait_for(&mut self, tokens: u64, now: Instant) -> Duration {
        self.refill(now);
        let from_budget = tokens.saturating_sub(self.burst).min(self.config.size);
        let needed = i128::from(from_budget).saturating_mul(self.refill_ns);
        if self.units >= needed {
            return Duration::ZERO;
        }
        let missing = needed - self.units;
        let size = i128::from(self.config.size);
        // Rounded up: a timer that fires on time finds the tokens there.
        let nanos = (missing + size - 1) / size;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `tokens`, from the one-time burst first; call it after [`TokenBucket::wait_for`]
    /// returned zero for them. The budget may go negative.
    pub fn consume(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = i128::from(tokens - from_burst);
        self.units = self
            .units
            .saturating_sub(rest.saturating_mul(self.refill_ns));
    }

    /// Whole tokens in the budget at `now` (negative while a large request is paid back).
    pub fn budget(&mut self, now: Instant) -> i64 {
        self.refill(now);
        let tokens = self.units / self.refill_ns;
        i64::try_from(tokens).unwrap_or(if tokens > 0 { i64::MAX } else { i64::MIN })
    }

    /// One-time burst tokens left.
    pub fn one_time_burst(&self) -> u64 {
        self.burst
    }

    /// What a snapshot keeps, at `now`.
    pub fn state(&mut self, now: Instant) -> BucketState {
        BucketState {
            budget: self.budget(now),
            one_time_burst: self.burst,
        }
    }

    /// Puts a saved budget and burst back, at `now`; both are clamped to what this bucket's
    /// configuration allows (a snapshot restored with a smaller bucket gets a full one), and a
    /// debt to at most 65536 bucket sizes (a damaged or hostile state file cannot stall the
    /// device for ever).
    pub fn restore(&mut self, state: &BucketState, now: Instant) {
        self.last = now;
        self.units = i128::from(state.budget)
            .saturating_mul(self.refill_ns)
            .min(self.capacity())
            .max(-self.capacity().saturating_mul(1 << 16));
        self.burst = state.one_time_burst.min(self.config.one_time_burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, burst: u64, refill_ms: u64, now: Instant) -> TokenBucket {
        TokenBucket::new(
            BucketConfig {
                size,
                one_time_burst: burst,
                refill_time: MS * refill_ms as u32,
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_full_bucket_refills_at_its_rate_and_never_beyond_its_size() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 0, 1000, t0);
        assert_eq!(b.budget(t0), 1000);
        assert_eq!(b.wait_for(1000, t0), Duration::ZERO);
        b.consume(1000);
        assert_eq!(b.budget(t0), 0);
        // 1000 tokens per second: 1 per ms.
        assert_eq!(b.wait_for(1, t0), MS);
        assert_eq!(b.budget(t0 + MS * 250), 250);
        assert_eq!(b.wait_for(250, t0 + MS * 250), Duration::ZERO);
        assert_eq!(b.wait_for(251, t0 + MS * 250), MS);
        // An hour idle still holds only the size.
        assert_eq!(b.budget(t0 + Duration::from_secs(3600)), 1000);
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_never_comes_back() {
        let t0 = Instant::now();
        let mut b = bucket(100, 500, 1000, t0);
        assert_eq!(b.wait_for(600, t0), Duration::ZERO);
        b.consume(550);
        assert_eq!((b.one_time_burst(), b.budget(t0)), (0, 50));
        // Long after, the budget is full again but the burst is gone.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((b.one_time_burst(), b.budget(later)), (0, 100));
        b.consume(100);
        assert_ne!(b.wait_for(1, later), Duration::ZERO);
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        // 64 KiB per 100 ms.
        let mut b = bucket(65536, 0, 100, t0);
        assert_eq!(b.wait_for(1 << 20, t0), Duration::ZERO, "a full bucket");
        b.consume(1 << 20);
        assert_eq!(b.budget(t0), 65536 - (1 << 20));
        // The debt (15 buckets) and a full bucket for the next big request: 1.6 s.
        let wait = b.wait_for(1 << 20, t0);
        assert!(
            wait >= MS * 1599 && wait <= MS * 1600,
            "{wait:?}: 16 buckets of 100 ms"
        );
        // A small one needs only the debt paid and its own tokens.
        let small = b.wait_for(4096, t0);
        assert!(small > MS * 1500 && small < wait, "{small:?}");
    }

    #[test]
    fn the_long_run_rate_is_the_configured_one_whatever_the_request_size() {
        // 10 MiB/s in 1 MiB buckets refilled every 100 ms; requests of 3 KiB and 5 MiB mixed,
        // sent as soon as the bucket allows, for 60 simulated seconds.
        let t0 = Instant::now();
        let mut b = bucket(1 << 20, 0, 100, t0);
        let mut now = t0;
        let mut sent = 0u64;
        for i in 0u64.. {
            let size = if i % 7 == 0 { 5 << 20 } else { 3 << 10 };
            now += b.wait_for(size, now);
            if now > t0 + Duration::from_secs(60) {
                break;
            }
            b.consume(size);
            sent += size;
        }
        let rate = sent as f64 / 60.0;
        let expected = 10.0 * (1 << 20) as f64;
        // The first full bucket comes on top of 60 s at the rate.
        assert!(
            (rate - expected).abs() / expected < 0.02,
            "{rate} B/s, expected {expected}"
        );
    }

    #[test]
    fn waits_round_up_so_a_timer_never_fires_early() {
        let t0 = Instant::now();
        // 3 tokens per 1 ms: a token every 333.33 µs.
        let mut b = bucket(3, 0, 1, t0);
        b.consume(3);
        let wait = b.wait_for(1, t0);
        assert_eq!(wait, Duration::from_nanos(333_334));
        assert_ne!(
            b.wait_for(1, t0 + wait - Duration::from_nanos(1)),
            Duration::ZERO
        );
        assert_eq!(b.wait_for(1, t0 + wait), Duration::ZERO);
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = bucket(10, 0, 1000, t0);
        b.consume(10);
        assert_eq!(b.budget(t0 - Duration::from_secs(1)), 0);
        assert_eq!(b.budget(t0 + MS * 500), 5);
    }

    #[test]
    fn bad_configurations_name_their_field() {
        let t0 = Instant::now();
        let config = |size, refill_time| BucketConfig {
            size,
            one_time_burst: 0,
            refill_time,
        };
        let err = TokenBucket::new(config(0, MS), t0).unwrap_err();
        assert_eq!(err, BucketConfigError::ZeroSize);
        assert!(err.to_string().contains("`size`"), "{err}");
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            MAX_REFILL_TIME + MS,
        ] {
            let err = TokenBucket::new(config(1, bad), t0).unwrap_err();
            assert!(err.to_string().contains("`refill_time`"), "{err}");
        }
        // The extremes that are allowed do not overflow.
        let mut huge = TokenBucket::new(config(u64::MAX, MAX_REFILL_TIME), t0).unwrap();
        assert_eq!(huge.budget(t0), i64::MAX, "a budget beyond i64 saturates");
        assert_eq!(huge.wait_for(u64::MAX, t0), Duration::ZERO);
        huge.consume(u64::MAX);
        assert_ne!(huge.wait_for(u64::MAX, t0), Duration::ZERO);
        assert_eq!(huge.budget(t0 + MAX_REFILL_TIME), i64::MAX);
    }

    #[test]
    fn state_round_trips_and_is_clamped_to_the_configuration() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 300, 1000, t0);
        b.consume(500);
        let state = b.state(t0);
        assert_eq!(
            state,
            BucketState {
                budget: 800,
                one_time_burst: 0
            }
        );
        let mut again = bucket(1000, 300, 1000, t0);
        again.restore(&state, t0);
        assert_eq!((again.budget(t0), again.one_time_burst()), (800, 0));
        // Restored into a smaller bucket: no more than it holds.
        let mut small = bucket(100, 0, 1000, t0);
        small.restore(
            &BucketState {
                budget: 800,
                one_time_burst: 999,
            },
            t0,
        );
        assert_eq!((small.budget(t0), small.one_time_burst()), (100, 0));
        // A hostile state file cannot bury the bucket in debt forever.
        small.restore(
            &BucketState {
                budget: i64::MIN,
                one_time_burst: 0,
            },
            t0,
        );
        assert!(small.budget(t0) >= -(100 << 16));
    }
}
