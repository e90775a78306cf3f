//! # Keel scheduling: where should this VM run?
//!
//! A placement library for VM managers (an oVirt-style engine, an OpenStack-style cloud, the Kubernetes
//! adapter). It has no KVM or Kubernetes dependency: it models hosts as trees of resource providers with
//! inventories, and decides, explains and books placements.
//!
//! ## The common path
//!
//! Load the cluster, compile each request against the [`State`], let a [`Scheduler`] decide, commit
//! the [`Claim`] it returns, and persist the [`Placement`] (by names, `Serialize + Deserialize`).
//! When nothing fits, the rejection explains itself, host by reason. After a restart,
//! [`State::restore`] rebuilds the state from the cluster and the persisted placements.
//!
//! ```
//! use scheduling::{
//!     Cluster, DecideOptions, Placement, PlacementRequest, Policy, Profile, Scheduler, State,
//! };
//! use std::sync::Arc;
//!
//! // 1. The cluster: hosts as provider trees with inventories (JSON here; YAML too, see `load`).
//! let cluster = Arc::new(Cluster::from_json(r#"{
//!   "hosts": [
//!     {"name": "a", "zone": "z1", "traits": ["HW_CPU_X86_AVX2"],
//!      "inventories": {"VCPU": {"total": 16, "allocation_ratio": 4.0}, "MEMORY_MB": {"total": 65536}}},
//!     {"name": "b", "zone": "z1",
//!      "inventories": {"VCPU": {"total": 16}, "MEMORY_MB": {"total": 32768}}}
//!   ]}"#)?);
//! let mut state = State::new(cluster.clone());
//! let mut scheduler = Scheduler::new(Arc::new(Profile::for_policy(Policy::Pack)), 42);
//!
//! // 2. Compile a request: names are resolved and amounts checked once, here.
//! let mut vm = PlacementRequest::new("vm-1", &[("VCPU", 8), ("MEMORY_MB", 8192)]);
//! vm.required_traits.push("HW_CPU_X86_AVX2".into());
//! let request = state.compile(&vm)?;
//!
//! // 3. Place it: the decision does not change the state; its claim says where and how much.
//! let decision = match scheduler.decide(&state, &request, &DecideOptions::default()) {
//!     Ok(decision) => decision,
//!     Err(unschedulable) => panic!("{}", unschedulable.explain(&cluster).summary),
//! };
//! let placement: Placement = decision.claim.placement(&cluster);
//! assert_eq!(placement.host, "a");
//!
//! // 4. Commit the claim (refused, with the state unchanged, if another decider got there first),
//! //    then persist the placement next to the VM's record.
//! scheduler.commit(&mut state, decision.claim)?;
//! let stored = serde_json::to_string(&[&placement])?;
//!
//! // 5. A rejection explains itself: nothing has 60 GB of memory left.
//! let big = state.compile(&PlacementRequest::new("vm-2", &[("MEMORY_MB", 60_000)]))?;
//! let why = scheduler
//!     .decide(&state, &big, &DecideOptions::default())
//!     .unwrap_err()
//!     .explain(&cluster);
//! assert_eq!(why.summary, "0/2 hosts available: 2 insufficient MEMORY_MB");
//!
//! // Asking for more than any inventory holds is refused at compile time, naming the class.
//! let err = state.compile(&PlacementRequest::new("vm-3", &[("MEMORY_MB", 1_000_000)])).unwrap_err();
//! assert!(err.to_string().starts_with("request `vm-3`: 1000000 MEMORY_MB exceeds"));
//!
//! // 6. After a restart: the same state, rebuilt from the cluster and what was persisted.
//! let placements: Vec<Placement> = serde_json::from_str(&stored)?;
//! let restored = State::restore(cluster.clone(), &placements)?;
//! assert_eq!(restored.placements(), state.placements());
//! assert!(restored.check_consistency().is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Placer`] bundles a state and one scheduler for single-threaded callers
//! (`placer.place(&request)` compiles, decides and commits); [`SharedState`] lets several
//! schedulers decide concurrently and commit with optimistic concurrency.
//!
//! ## Modules
//!
//! - [`model`]: resource classes, inventories (total, reserved, min/max unit, step, exact allocation ratio),
//!   nested providers (host → NUMA node → GPU), shared providers, traits, aggregates, zones, racks, labels,
//!   taints (also as kubectl's `key=value:Effect`). Loaded from serde types ([`model::ClusterSpec`]).
//!   Every quantity is at most [`model::MAX_QUANTITY`] (2^53), which keeps all arithmetic from
//!   wrapping; larger ones are refused naming the provider and field. Dense ids ([`HostId`],
//!   [`model::SlotId`], ...) are `Copy` newtypes handed out by the cluster; only names are persisted.
//! - [`request`]: what a VM asks for: resources (optionally in named groups served by one provider each),
//!   traits, selectors, affinity, tolerations, server groups, topology spread, priority.
//! - [`state`]: allocations with optimistic concurrency (generations), a free-capacity index, hosts added
//!   or retired at run time, restore from persisted placements (server groups made at run time
//!   included), quotas per project and user checked with each claim; [`shared`] for several deciders.
//! - [`scheduler`]: the decider (indexes, equivalence caches, bounded sampling with a rotating start).
//! - [`profile`], [`framework`], [`plugins`]: policies (spread, pack, balanced, power saving, even VM
//!   count, stranded-aware) as profiles of small plugins at kube-scheduler's extension points; embedders
//!   may write their own pre-filter, filter, score, reserve and permit plugins against [`framework`].
//! - [`store`]: the storage seam, [`store::PlacementStore`]: the in-memory
//!   [`store::MemoryStore`] (the default) or a database shared by several decider processes
//!   (the `scheduling-postgres` crate).
//! - [`explain`]: why nothing fits (`0/5000 hosts available: ...`), each reason also structured
//!   ([`RejectionReason`], serialisable), and score breakdowns.
//! - [`ops`]: gang placement, preemption, evacuation, rebalancing, HA reservation check.
//! - [`load`]: clusters and request streams from JSON or YAML (YAML behind the default `yaml` feature),
//!   of any size up to documented [`load::Limits`]; errors name the document, line and column.
//! - [`error`]: every error type, each with a name distinct from Keel's other crates.
//!
//! Behind cargo features, for benchmarks, tests and demos rather than embedders: `generator` (seeded
//! synthetic clusters and workloads) and `report` (utilisation summaries, packing lower bounds, SVG).
//!
//! What it deliberately does not do: talk to hypervisors, persist state (that is a
//! [`store::PlacementStore`]'s job, outside this crate for a database), or run a service.

#![deny(missing_docs)]

pub mod error;
pub mod explain;
mod fasthash;
mod fit;
pub mod framework;
#[cfg(feature = "generator")]
pub mod generator;
mod hostset;
mod index;
pub mod load;
pub mod model;
pub mod ops;
mod placement;
pub mod plugins;
pub mod profile;
#[cfg(feature = "report")]
pub mod report;
pub mod request;
mod rng;
pub mod scheduler;
mod shapes;
pub mod shared;
pub mod state;
pub mod store;

pub use error::{
    CommitError, MemoryStoreError, ModelError, ParseError, ParseTextError, PlacementRequestError,
    PlacementStateError, RestoreError,
};
pub use explain::{Diagnosis, Explanation, HostScore, Reason, RejectionReason};
pub use model::{Cluster, ClusterSpec, HostId};
pub use placement::{PlacedResource, Placement};
pub use profile::{Policy, Profile, Sampling, ScanOrder};
pub use request::PlacementRequest;
pub use scheduler::{DecideOptions, Decision, PlaceError, Placer, Scheduler, Unschedulable};
pub use shared::SharedState;
pub use state::{Allocation, Claim, State};
