//! A spin lock that serialises work between vCPUs without owning data.
//!
//! The guest's only shared resource is the UART, which has no memory state of its own: the lock
//! exists so that output lines of different vCPUs do not interleave. Because it guards no data, a
//! caller that cannot get it in time (a panic on a vCPU that already holds it) may go on without it
//! and cost nothing but tidy output. It does not park waiters or queue them fairly.

use core::sync::atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set spin lock that guards no data (see the module documentation).
#[derive(Debug)]
pub struct SpinLock {
    locked: AtomicBool,
}

/// Proof of holding a [`SpinLock`]; releases it when dropped.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a> {
    lock: &'a SpinLock,
}

impl SpinLock {
    /// A lock that nobody holds.
    pub const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock if it is free right now.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinLockGuard { lock: self })
    }

    /// Spins (with `pause`) until the lock is free, then takes it.
    pub fn lock(&self) -> SpinLockGuard<'_> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Like [`lock`](Self::lock), but gives up after `max_spins` rounds of waiting.
    pub fn lock_with_limit(&self, max_spins: u64) -> Option<SpinLockGuard<'_>> {
        let mut spins = 0u64;
        loop {
            if let Some(guard) = self.try_lock() {
                return Some(guard);
            }
            while self.locked.load(Ordering::Relaxed) {
                if spins >= max_spins {
                    return None;
                }
                spins += 1;
                core::hint::spin_loop();
            }
        }
    }
}

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SpinLockGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_until_the_guard_drops() {
        let lock = SpinLock::new();
        let guard = lock.lock();
        assert!(lock.try_lock().is_none());
        assert!(lock.lock_with_limit(100).is_none());
        drop(guard);
        assert!(lock.try_lock().is_some());
    }

    #[test]
    fn counts_from_many_threads_do_not_get_lost() {
        use std::sync::atomic::AtomicU64;
        static LOCK: SpinLock = SpinLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..10_000 {
                        let _guard = LOCK.lock();
                        // A non-atomic read-modify-write, made safe only by the lock.
                        let value = COUNTER.load(Ordering::Relaxed);
                        COUNTER.store(value + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(COUNTER.load(Ordering::Relaxed), 40_000);
    }
}
