//! What an embedder persists: a committed allocation by names, with the request it was placed for.
//!
//! A [`Placement`] is returned by every successful placement ([`crate::Placer::place`],
//! [`crate::SharedState::place`], [`crate::ops::place_gang`], ...), can be read back for any live
//! allocation ([`crate::state::Allocation::placement`], [`crate::State::placements`]), and is
//! `Serialize + Deserialize`: a manager stores it next to its VM record and, after a restart,
//! rebuilds the scheduler's state from the cluster and the stored placements with
//! [`crate::State::restore`]. Only names cross that boundary, never dense ids, so a placement
//! stays valid for any cluster description that still has its host and providers.

use crate::model::{Cluster, HostId, ServerGroupPolicy, ServerGroupSpec, SlotAllocation};
use crate::request::{CompiledRequest, PlacementRequest};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One resource of a placement, by name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlacedResource {
    /// Provider name (the host's root, a provider of its tree, or a shared provider).
    pub provider: String,
    /// Resource class name.
    pub class: String,
    /// Amount.
    pub amount: u64,
    /// The host NUMA node the provider is, or lies under (see
    /// [`crate::model::ProviderSpec::numa_node`]): where a VMM pins the vCPUs and memory, or which
    /// node a device is attached to. Informational: restore reads the provider's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
}

/// A committed placement, by name.
///
/// ```
/// use scheduling::{Cluster, Placement, PlacementRequest, Placer, Profile};
/// use std::sync::Arc;
///
/// let cluster = Arc::new(Cluster::from_json(r#"{"hosts": [
///   {"name": "a", "inventories": {"VCPU": {"total": 8}}}]}"#).unwrap());
/// let mut placer = Placer::new(cluster, Profile::default(), 1);
/// let placed = placer.place(&PlacementRequest::new("vm-1", &[("VCPU", 2)])).unwrap();
/// let json = serde_json::to_string(&placed).unwrap();
/// let back: Placement = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, placed);
/// assert_eq!(back.request.resources["VCPU"], 2);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Consumer id (the request's id).
    pub consumer: String,
    /// Host name.
    pub host: String,
    /// What was allocated where: named groups first (in request order, each group's classes in name
    /// order), then the unnamed group's classes in name order.
    pub resources: Vec<PlacedResource>,
    /// The request it was placed for: restoring needs it for the server group, the priority and the
    /// constraints a later move (evacuation, migration, preemption) must keep.
    pub request: Arc<PlacementRequest>,
    /// The definition of the request's server group, so that a state restored from placements
    /// recreates groups made at run time (see [`crate::State::import`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_group: Option<ServerGroupSpec>,
}

impl Placement {
    pub(crate) fn new(
        cluster: &Cluster,
        request: &CompiledRequest,
        host: HostId,
        slots: &[SlotAllocation],
    ) -> Self {
        Placement {
            consumer: request.id().to_string(),
            host: cluster.host(host).name.clone(),
            resources: slots
                .iter()
                .filter_map(|a| {
                    let s = cluster.slot(a.slot())?;
                    let p = cluster.provider(s.provider);
                    Some(PlacedResource {
                        provider: p.name.clone(),
                        class: cluster.class_name(s.class).to_string(),
                        amount: a.amount(),
                        numa_node: p.numa_node,
                    })
                })
                .collect(),
            request: request.source().clone(),
            server_group: request.server_group.map(|g| ServerGroupSpec {
                name: request.server_group_name.clone().unwrap_or_default(),
                policy: g.policy,
                max_per_host: (g.policy == ServerGroupPolicy::AntiAffinity && g.max_per_host != 1)
                    .then_some(g.max_per_host),
            }),
        }
    }
}
