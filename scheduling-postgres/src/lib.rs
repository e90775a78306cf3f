//! # Keel placement on PostgreSQL: several deciders, one truth
//!
//! [`PgStore`] is a [`scheduling::store::PlacementStore`] whose truth is a PostgreSQL database, so
//! that several decider processes (API or scheduler replicas of a VM manager, on one machine or
//! many) place VMs on one cluster without ever taking the same last slot twice, and survive a
//! crash of any of them or of the database.
//!
//! - **Deciding stays in memory.** Each store keeps a replica of the database in scheduling's
//!   [`scheduling::State`] and decides there, at scheduling's speed. It follows the other
//!   deciders' commits through a change table (see the `feed` notes below), within milliseconds.
//! - **Committing is a transaction.** Claims are committed by a function in the database, many
//!   to a transaction (what makes durable commits cheap: one WAL flush for the batch). Each
//!   claim commits only if every generation owner it touches (a host's provider tree, a shared
//!   provider), its server group and the consumer still have the generation the decision saw,
//!   and its project's and user's quotas hold, all checked under row locks: OpenStack
//!   Placement's protocol. Inventories carry their usage under a `CHECK (used <= capacity)` as
//!   well, so even a wrong replica cannot over-allocate. A refused claim is decided again on the
//!   refreshed replica, with bounded retries and jitter; [`PgStoreStats::conflicts`] counts them.
//! - **Crash-safe.** Every claim is wholly in or wholly out. A decider killed mid-commit loses
//!   nothing committed; a decider whose database restarts reconnects, reloads its replica and
//!   asks the database how the interrupted commit ended.
//! - **Versioned schema.** [`schema::migrate`] (or `keel-placement init`) creates and upgrades
//!   it; a database at another version is refused, naming both.
//!
//! The in-memory [`scheduling::store::MemoryStore`] remains the default for a single process;
//! this crate is for when the truth must be shared.
//!
//! ```no_run
//! use scheduling::model::ClusterSpec;
//! use scheduling::PlacementRequest;
//! use scheduling_postgres::{load_cluster, init, PgStore, StoreConfig};
//!
//! let db = "host=/run/postgresql dbname=keel";
//! init(db)?; // creates (or upgrades) the schema
//! let spec: ClusterSpec = serde_json::from_str(r#"{"hosts": [
//!   {"name": "a", "inventories": {"VCPU": {"total": 16}, "MEMORY_MB": {"total": 65536}}}]}"#)?;
//! load_cluster(db, &spec, false)?; // once, by whoever owns the inventory
//!
//! // In each decider process:
//! let store = PgStore::connect(StoreConfig::new(db))?;
//! let placed = store.place(&PlacementRequest::new("vm-1", &[("VCPU", 2), ("MEMORY_MB", 4096)]))?;
//! assert_eq!(placed.host, "a");
//! store.release("vm-1")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The `keel-placement` command does the same from a shell: `init`, `load`, `place`, `release`,
//! `usage`, `explain`, `quota`.
//!
//! What it deliberately does not do: change the cluster's topology at run time (load a new
//! cluster instead), or compact the change table (rows are small; delete old ones at leisure:
//! deciders only read rows of transactions that were in flight at their previous read).

#![deny(missing_docs)]

mod commit;
mod db;
pub mod error;
mod feed;
mod replica;
pub mod schema;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use db::{init, load_cluster};
pub use error::PgStoreError;
pub use store::{PgStore, StoreConfig};

/// Counters of a [`PgStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PgStoreStats {
    /// Claims committed by this store (placements, releases, moves).
    pub commits: u64,
    /// Claims refused for a conflict and decided again.
    pub conflicts: u64,
    /// Transactions of the commit function.
    pub transactions: u64,
    /// Times the replica was rebuilt from the database (after reconnecting, or after one claim
    /// conflicted 8 times in a row or a change waited too long for an earlier one).
    pub reloads: u64,
    /// Change rows read from the feed.
    pub changes_read: u64,
}
