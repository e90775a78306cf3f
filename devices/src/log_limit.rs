//! Rate-limited logging for what a guest can trigger at will: a hostile guest that makes a
//! device warn on every request must not flood the host's log.
//!
//! [`guest_warn!`](crate::guest_warn) logs at most [`BURST`] messages per [`WINDOW_MS`] per call
//! site; the ones beyond are counted, and the next message that passes says how many were
//! suppressed. The limit is per call site and process-wide (all VMs in one process share it),
//! lock-free, and costs two atomic operations per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Messages a call site may log per window.
pub const BURST: u64 = 10;
/// Length of a window, in milliseconds.
pub const WINDOW_MS: u64 = 5_000;

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // u64 milliseconds last 584 million years; saturate rather than wrap all the same.
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The state of one call site's limit.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// Start of the current window (ms since the first use of any limit) and the messages
    /// logged in it, packed as `window << 16 | count`.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limit that has logged nothing.
    pub const fn new() -> Self {
        LogLimit {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a message may be logged now (`now_ms`: the clock, for tests); if so, how many
    /// were suppressed since the last one that was logged.
    pub fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let window_start = now_ms / WINDOW_MS;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (start, count) = (current >> 16, current & 0xffff);
            let next = if start != window_start {
                window_start << 16 | 1
            } else if count < BURST {
                current + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }

    /// [`LogLimit::allow_at`] on the process's clock.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }
}

/// `log::warn!` for messages a guest can trigger, rate-limited per call site (see
/// [`log_limit`](crate::log_limit)).
///
/// ```
/// for request in 0..1000 {
///     // Logs 10 times, then nothing until the next window says how many were dropped.
///     devices::guest_warn!("virtio-foo: request {request} rejected");
/// }
/// ```
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        match LIMIT.allow() {
            Some(0) => log::warn!($($arg)+),
            Some(suppressed) => log::warn!(
                "{} ({suppressed} similar messages suppressed)",
                format_args!($($arg)+)
            ),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rest_is_counted_until_the_next_window() {
        let limit = LogLimit::new();
        let passed = (0..25).filter(|_| limit.allow_at(1_000).is_some()).count();
        assert_eq!(passed as u64, BURST);
        // Next window: the first message reports the 15 suppressed ones.
        assert_eq!(limit.allow_at(1_000 + WINDOW_MS), Some(15));
        assert_eq!(limit.allow_at(1_000 + WINDOW_MS), Some(0));
    }
}
