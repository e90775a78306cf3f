//! A limiter with the timer that wakes its device: what a device holds per limited queue.
//!
//! When [`Throttle::admit`] refuses a request it arms a timerfd for when the budget allows it;
//! the thread serving the device (the VMM's event loop, a disk's I/O thread) polls the timer's
//! descriptor and looks at the queue again when it fires. Until then the device takes nothing
//! from the queue and nothing spins.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::{RateLimit, RateLimitError, RateLimiter, RateLimiterState};

/// How soon a throttled device looks again after its limit changed.
const RECHECK: Duration = Duration::from_micros(1);

/// A rate limiter and its wake-up timer.
pub(crate) struct Throttle {
    limiter: RateLimiter,
    /// The timer (non-blocking), or the errno that kept it from being created: a device
    /// without a timer cannot be limited (nothing would wake it).
    timer: Result<TimerFd, i32>,
    /// A request was refused and the timer is armed for it.
    waiting: bool,
}

impl Throttle {
    /// An unlimited throttle with its timer (created now; if that fails, setting a limit
    /// fails later).
    pub(crate) fn new() -> Self {
        let timer = TimerFd::new().map_err(|err| err.errno()).and_then(|timer| {
            set_nonblocking(timer.as_raw_fd())
                .map(|()| timer)
                .map_err(|err| err.raw_os_error().unwrap_or(libc::EIO))
        });
        if let Err(errno) = &timer {
            log::warn!(
                "rate limiter: no timer ({}); the device cannot be rate-limited",
                io::Error::from_raw_os_error(*errno)
            );
        }
        Throttle {
            limiter: RateLimiter::unlimited(),
            timer,
            waiting: false,
        }
    }

    /// Takes the tokens for a request of `bytes` (one operation), or arms the timer for when
    /// they are there and returns `false`.
    pub(crate) fn admit(&mut self, bytes: u64) -> bool {
        match self.limiter.try_consume(bytes, 1) {
            Ok(()) => true,
            Err(wait) => {
                self.arm(wait);
                false
            }
        }
    }

    fn arm(&mut self, wait: Duration) {
        self.waiting = true;
        // A zero duration would disarm the timer.
        let wait = wait.max(Duration::from_nanos(1));
        match self.timer.as_mut() {
            Ok(timer) => {
                if let Err(err) = timer.reset(wait, None) {
                    log::error!("rate limiter: cannot arm the timer: {err}");
                }
            }
            Err(_) => log::error!("rate limiter: throttled without a timer"),
        }
    }

    /// Whether a request waits for the timer.
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// The timer's descriptor, to poll for readability.
    pub(crate) fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().ok().map(AsRawFd::as_raw_fd)
    }

    /// The timer fired (or the thread looks anyway): clears it; the device then takes
    /// requests again.
    pub(crate) fn timer_fired(&mut self) {
        if let Ok(timer) = self.timer.as_mut() {
            // Non-blocking: EAGAIN when it had not expired, which is fine.
            let _ = timer.wait();
        }
        self.waiting = false;
    }

    /// Replaces the limit (buckets start full). A device that waits looks again at once, under
    /// the new limit.
    pub(crate) fn set_limit(&mut self, limit: RateLimit) -> Result<(), RateLimitError> {
        if let (false, Err(errno)) = (limit.is_unlimited(), &self.timer) {
            return Err(RateLimitError::Timer(io::Error::from_raw_os_error(*errno)));
        }
        self.limiter.set_limit(limit)?;
        if self.waiting {
            self.arm(RECHECK);
        }
        Ok(())
    }

    /// The limit in force.
    pub(crate) fn limit(&self) -> RateLimit {
        self.limiter.limit()
    }

    /// How many requests had to wait.
    pub(crate) fn throttled(&self) -> u64 {
        self.limiter.throttled()
    }

    /// The budgets, for a snapshot.
    pub(crate) fn state(&mut self) -> RateLimiterState {
        self.limiter.state()
    }

    /// Puts saved budgets back.
    pub(crate) fn restore(&mut self, state: &RateLimiterState) {
        self.limiter.restore(state);
    }

    /// Runs the limiter on `clock` (tests move time by hand).
    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, clock: std::sync::Arc<dyn super::Clock>) {
        let limit = self.limiter.limit();
        if let Ok(limiter) = RateLimiter::with_clock(limit, clock) {
            self.limiter = limiter;
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL take and return plain integers; `fd` is a descriptor this
    // process owns (the timer just created). No memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{BucketConfig, ManualClock};
    use super::*;
    use std::time::Instant;

    fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its count, a timeout.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
    }

    #[test]
    fn a_refusal_arms_the_timer_and_a_new_limit_rechecks_at_once() {
        let mut throttle = Throttle::new();
        let clock = ManualClock::new();
        throttle
            .set_limit(RateLimit {
                bandwidth: None,
                ops: Some(BucketConfig {
                    size: 1,
                    one_time_burst: 0,
                    refill_time: Duration::from_secs(3600),
                }),
            })
            .unwrap();
        throttle.set_clock(clock.clone());
        let fd = throttle.timer_fd().unwrap();
        assert!(throttle.admit(100));
        assert!(!throttle.admit(100));
        assert!(throttle.is_waiting());
        assert!(!poll_readable(fd, 20), "an hour to go");
        // A looser limit: the device is woken to look again.
        let started = Instant::now();
        throttle.set_limit(RateLimit::NONE).unwrap();
        assert!(poll_readable(fd, 1000));
        assert!(started.elapsed() < Duration::from_millis(500));
        throttle.timer_fired();
        assert!(!throttle.is_waiting());
        assert!(!poll_readable(fd, 0), "cleared");
        assert!(throttle.admit(u64::MAX));
        // Clearing a timer that never fired does not block.
        throttle.timer_fired();
        assert_eq!(throttle.throttled(), 1);
    }
}
