//! Locking shared state whose holders cannot leave it inconsistent.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking the data over from a holder that panicked: every mutex in this crate
/// guards plain bookkeeping or a device whose own state machine stays valid between calls.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
