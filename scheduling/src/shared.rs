//! Several deciders on one state, with optimistic concurrency.
//!
//! Deciders decide under a shared read lock (in parallel) and commit under a short write lock. A commit
//! whose provider generations (or server group epoch) changed since its decision is refused by
//! [`crate::state::State::commit`] and the decider retries with fresh state, as OpenStack Placement
//! consumers do. The conflict counters measure how often that happens.

use crate::error::CommitError;
use crate::placement::Placement;
use crate::request::PlacementRequest;
use crate::scheduler::{DecideOptions, PlaceError, Scheduler};
use crate::state::State;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How many times a decider retries after a conflict before giving up.
pub const MAX_RETRIES: u32 = 64;

/// A state shared by deciders.
#[derive(Debug)]
pub struct SharedState {
    state: RwLock<State>,
    commits: AtomicU64,
    conflicts: AtomicU64,
}

impl SharedState {
    /// Wraps a state.
    pub fn new(state: State) -> Self {
        SharedState {
            state: RwLock::new(state),
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        }
    }

    /// Read access (a panic in another decider does not make the state unreadable: every mutation
    /// validates before writing, so the state is consistent even then).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access.
    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Unwraps the state.
    pub fn into_inner(self) -> State {
        self.state.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Successful commits so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits refused for a generation or group conflict so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Decides with `scheduler` under the read lock, commits under the write lock, retrying on conflicts.
    pub fn place(
        &self,
        scheduler: &mut Scheduler,
        req: &PlacementRequest,
    ) -> Result<Placement, PlaceError> {
        let compiled = self.read().compile(req)?;
        let mut last = None;
        for attempt in 0..MAX_RETRIES {
            // Deciding and naming the placement take the read lock only, so deciders do both in
            // parallel; the write lock covers the commit alone. (A topology change in between
            // changes generations, so the commit is then refused and decided again.)
            let (decision, placement) = {
                let st = self.read();
                let opts = DecideOptions {
                    attempt,
                    ..Default::default()
                };
                let decision = scheduler
                    .decide(&st, &compiled, &opts)
                    .map_err(|u| PlaceError::Unschedulable(Box::new(u.explain(st.cluster()))))?;
                let placement = decision.claim.placement(st.cluster());
                (decision, placement)
            };
            let mut st = self.write();
            match scheduler.commit(&mut st, decision.claim) {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    return Ok(placement);
                }
                Err(
                    e @ (CommitError::GenerationConflict { .. } | CommitError::GroupChanged(_)),
                ) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PlaceError::Commit(
            last.unwrap_or(CommitError::GroupChanged(String::new())),
        ))
    }
}
