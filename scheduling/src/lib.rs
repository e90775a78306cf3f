//! # Keel scheduling: where should this VM run?
//!
//! A placement library for VM managers (an oVirt-style engine, an OpenStack-style cloud, the Kubernetes
//! adapter). It has no KVM or Kubernetes dependency: it models hosts as trees of resource providers with
//! inventories, and decides, explains and books placements.
//!
//! - [`model`]: resource classes, inventories (total, reserved, min/max unit, step, exact allocation ratio),
//!   nested providers (host → NUMA node → GPU), shared providers, traits, aggregates, zones, racks, labels,
//!   taints. Loaded from serde types ([`model::ClusterSpec`]).
//! - [`request`]: what a VM asks for: resources (optionally in named groups served by one provider each),
//!   traits, selectors, affinity, tolerations, server groups, topology spread, priority.
//! - [`framework`], [`plugins`], [`profile`]: a kube-scheduler-shaped pipeline of small plugins at named
//!   extension points, and policies (spread, pack, balanced, power saving, even VM count, stranded-aware).
//! - [`scheduler`]: the decider (indexes, equivalence caches, bounded sampling with a rotating start).
//! - [`state`]: allocations with optimistic concurrency (generations), a free-capacity index, hosts added
//!   or retired at run time; [`shared`] for several deciders.
//! - [`explain`]: why nothing fits (`0/5000 hosts available: ...`) and score breakdowns.
//! - [`ops`]: gang placement, preemption, evacuation, rebalancing, HA reservation check.
//! - [`generator`]: seeded synthetic clusters and workloads; [`report`]: utilisation summary, packing
//!   lower bounds and SVG; [`load`]: clusters and request streams from JSON or YAML.
//!
//! What it deliberately does not do: talk to hypervisors, persist state, or run a service.
//!
//! ```
//! use scheduling::{Cluster, Placer, PlacementRequest, Profile, Policy};
//! use std::sync::Arc;
//!
//! let cluster = Cluster::from_json(r#"{
//!   "hosts": [
//!     {"name": "a", "zone": "z1", "traits": ["HW_CPU_X86_AVX2"],
//!      "inventories": {"VCPU": {"total": 16, "allocation_ratio": 4.0}, "MEMORY_MB": {"total": 65536}}},
//!     {"name": "b", "zone": "z1",
//!      "inventories": {"VCPU": {"total": 16}, "MEMORY_MB": {"total": 32768}}}
//!   ]}"#).unwrap();
//! let mut placer = Placer::new(Arc::new(cluster), Profile::for_policy(Policy::Pack), 42);
//!
//! let mut vm = PlacementRequest::new("vm-1", &[("VCPU", 8), ("MEMORY_MB", 8192)]);
//! vm.required_traits.push("HW_CPU_X86_AVX2".into());
//! let placed = placer.place(&vm).unwrap();
//! assert_eq!(placed.host, "a");
//!
//! // Nothing has 1 TiB of memory: the error explains, host by reason.
//! let err = placer.place(&PlacementRequest::new("vm-2", &[("MEMORY_MB", 1_000_000)])).unwrap_err();
//! assert!(err.to_string().starts_with("request `vm-2`: 1000000 MEMORY_MB exceeds"));
//! let err = placer.place(&PlacementRequest::new("vm-3", &[("MEMORY_MB", 60000)])).unwrap_err();
//! assert_eq!(err.to_string(), "0/2 hosts available: 2 insufficient MEMORY_MB");
//! assert!(placer.state().check_consistency().is_empty());
//! ```

#![deny(missing_docs)]

pub mod error;
pub mod explain;
pub mod fasthash;
pub mod fit;
pub mod framework;
pub mod generator;
pub mod hostset;
pub mod index;
pub mod load;
pub mod model;
pub mod ops;
pub mod plugins;
pub mod profile;
pub mod report;
pub mod request;
pub mod rng;
pub mod scheduler;
pub mod shared;
pub mod state;

pub use error::{CommitError, ModelError, RequestError, StateError};
pub use explain::{Diagnosis, Explanation, HostScore, Reason};
pub use model::{Cluster, ClusterSpec, HostId};
pub use profile::{Policy, Profile, Sampling, ScanOrder};
pub use request::PlacementRequest;
pub use scheduler::{
    DecideOptions, Decision, PlaceError, Placement, Placer, Scheduler, Unschedulable,
};
pub use shared::SharedState;
pub use state::{Claim, State};
