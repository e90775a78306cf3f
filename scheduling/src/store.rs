//! The storage seam: where committed placements live, behind one trait.
//!
//! A manager that places VMs through [`PlacementStore`] does not care whether the truth is this
//! process's memory ([`MemoryStore`], the embedded default: no database, nothing to set up) or a
//! database shared by several decider processes (the `scheduling-postgres` crate's `PgStore`,
//! which keeps an in-memory replica for deciding and commits every claim in a transaction). Both
//! decide with the same [`Scheduler`] on a [`State`], retry commit conflicts, and hand back the
//! [`Placement`] by names.
//!
//! What it deliberately does not cover: the operations that need a `&mut State` (resize, hosts
//! added at run time, gang placement, preemption); those stay on [`State`] and [`SharedState`].
//!
//! ```
//! use scheduling::store::{MemoryStore, PlacementStore};
//! use scheduling::{Cluster, PlacementRequest, Profile, State};
//! use std::sync::Arc;
//!
//! // Generic over the store: the same code runs on memory or on a database.
//! fn place_two<S: PlacementStore>(store: &S) -> Result<(), S::Error> {
//!     store.place(&PlacementRequest::new("vm-1", &[("VCPU", 2)]))?;
//!     store.place(&PlacementRequest::new("vm-2", &[("VCPU", 2)]))?;
//!     store.release("vm-1")?;
//!     Ok(())
//! }
//!
//! let cluster = Cluster::from_json(
//!     r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 4}}}]}"#)?;
//! let store = MemoryStore::new(State::new(Arc::new(cluster)), Profile::default(), 7);
//! place_two(&store)?;
//! assert_eq!(store.read(|s| s.allocations().len()), 1);
//! assert_eq!(store.stats().commits, 3); // two placements and a release
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::MemoryStoreError;
use crate::placement::Placement;
use crate::profile::Profile;
use crate::request::PlacementRequest;
use crate::scheduler::Scheduler;
use crate::shared::SharedState;
use crate::state::State;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Claims committed (placements, moves and releases).
    pub commits: u64,
    /// Commits refused because another decider changed a provider, consumer or server group
    /// since the decision (each followed by a fresh decision).
    pub conflicts: u64,
}

/// Where committed placements live: decide, commit and release through it.
pub trait PlacementStore {
    /// What can go wrong: an invalid request, nothing fitting, a refused commit, and for a
    /// database store its connection.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides where `request` goes and commits it, deciding again after conflicts (a bounded
    /// number of times). Returns the placement by names.
    fn place(&self, request: &PlacementRequest) -> Result<Placement, Self::Error>;

    /// Frees the allocation of `consumer`, returning what it held.
    fn release(&self, consumer: &str) -> Result<Placement, Self::Error>;

    /// Runs `f` on the state decisions are made on (for a database store, this process's
    /// replica: current to within milliseconds).
    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R;

    /// Commits and conflicts so far.
    fn stats(&self) -> StoreStats;
}

/// The in-memory store: a [`SharedState`] and a pool of deciders, one per calling thread at a
/// time. The embedded default.
pub struct MemoryStore {
    shared: SharedState,
    profile: Arc<Profile>,
    seed: AtomicU64,
    idle: Mutex<Vec<Scheduler>>,
    releases: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store over `state`, deciding with `profile`; deciders are seeded from `seed` on.
    pub fn new(state: State, profile: Profile, seed: u64) -> Self {
        MemoryStore {
            shared: SharedState::new(state),
            profile: Arc::new(profile),
            seed: AtomicU64::new(seed),
            idle: Mutex::new(Vec::new()),
            releases: AtomicU64::new(0),
        }
    }

    /// The shared state underneath (for the operations the trait does not cover).
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    fn take_scheduler(&self) -> Scheduler {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        idle.unwrap_or_else(|| {
            let seed = self.seed.fetch_add(1, Ordering::Relaxed);
            Scheduler::new(self.profile.clone(), seed)
        })
    }
}

impl PlacementStore for MemoryStore {
    type Error = MemoryStoreError;

    fn place(&self, request: &PlacementRequest) -> Result<Placement, MemoryStoreError> {
        let mut scheduler = self.take_scheduler();
        let placed = self.shared.place(&mut scheduler, request);
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(scheduler);
        Ok(placed?)
    }

    fn release(&self, consumer: &str) -> Result<Placement, MemoryStoreError> {
        let mut state = self.shared.write();
        let freed = state.release(consumer)?;
        self.releases.fetch_add(1, Ordering::Relaxed);
        Ok(freed.placement(state.cluster()))
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.read())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits() + self.releases.load(Ordering::Relaxed),
            conflicts: self.shared.conflicts(),
        }
    }
}
