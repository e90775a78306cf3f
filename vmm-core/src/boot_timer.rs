//! Timestamps of a VM's start-up stages, to see where the time from `exec` to the guest's
//! first instruction goes.
//!
//! A [`BootTimer`] given to [`VmBuilder::boot_timer`](crate::VmBuilder::boot_timer) records
//! when each stage of the build ends, when the vCPU threads started and when the boot vCPU
//! first came back from the guest (its first exit: for most guests the first serial byte or
//! port access, so the guest's first instructions ran before it). Without one, nothing is
//! recorded.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// A shared list of `(stage, when)` marks; clones record into the same list.
///
/// ```
/// use vmm_core::BootTimer;
///
/// let timer = BootTimer::new();
/// timer.mark("parsed flags");
/// let stages = timer.stages();
/// assert_eq!(stages[0].0, "parsed flags");
/// ```
#[derive(Clone, Debug, Default)]
pub struct BootTimer(Arc<Mutex<Vec<(&'static str, Instant)>>>);

impl BootTimer {
    /// An empty timer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `stage` ended now.
    pub fn mark(&self, stage: &'static str) {
        let mut stages = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken under the lock, so the list's order is the order of the times.
        stages.push((stage, Instant::now()));
    }

    /// The marks so far, in order.
    pub fn stages(&self) -> Vec<(&'static str, Instant)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Marks `stage` on an optional timer.
pub(crate) fn mark(timer: Option<&BootTimer>, stage: &'static str) {
    if let Some(timer) = timer {
        timer.mark(stage);
    }
}
