//! Keel's own placement of VMIs (`schedulerName: keel`): the cluster built from Nodes and the pods
//! bound to them, a request from the VMI, a decision by the `scheduling` library, and its
//! explanation in Kubernetes words when nothing fits.
//!
//! Translation, in [`cluster`] and [`request`]:
//! - a Node is a host: `allocatable.memory` → `MEMORY_MB`, `allocatable.cpu` → `VCPU` in units of
//!   100m (one vCPU at KubeVirt's 10:1 ratio, what a launcher pod requests per vCPU), its labels,
//!   `topology.kubernetes.io/zone` as zone, its taints (and `spec.unschedulable` as the taint
//!   `node.kubernetes.io/unschedulable:NoSchedule`, as Kubernetes does);
//! - every pod bound to a node and not finished uses its requests there (launcher pods that
//!   belong to a server group are restored as placements, so that (anti-)affinity counts them);
//! - a VMI asks for its launcher pod's requests, its nodeSelector, required node affinity (one
//!   term), preferred node affinity, tolerations, pod (anti-)affinity on the node that selects
//!   its own VMI's labels (a server group), and zone topology spread.
//!
//! What it deliberately does not do: persist anything (the API server is the record), or
//! translate constraints `scheduling` cannot express; those are refused with the field named.

pub mod cluster;
pub mod explain;
pub mod request;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use scheduling::{DecideOptions, Policy, Profile, Scheduler, State};

use crate::api::VirtualMachineInstance;

pub use cluster::ClusterView;
pub use request::UnsupportedConstraint;

/// Memory resource class.
pub const MEMORY: &str = "MEMORY_MB";
/// CPU resource class, in units of 100m.
pub const VCPU: &str = "VCPU";
/// Thousandths of a CPU per `VCPU` unit.
pub const MILLIS_PER_VCPU_UNIT: u64 = 100;

/// Why a VMI could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// Nothing fits: the explanation, in Kubernetes words (`0/5 nodes available: ...`).
    #[error("{0}")]
    Unschedulable(String),
    /// The VMI asks for something Keel's placement cannot express.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedConstraint),
    /// The nodes could not be turned into a cluster.
    #[error("cannot model the nodes for placement: {0}")]
    Model(#[from] scheduling::ModelError),
    /// The request was refused by the library.
    #[error("cannot place the VMI: {0}")]
    Request(#[from] scheduling::PlacementRequestError),
}

/// Places `vmi` on one of `nodes`, given every pod in the cluster; returns the node's name.
/// The VMI's own launcher pod, if already in `pods`, is not counted against it.
pub fn place(
    vmi: &VirtualMachineInstance,
    nodes: &[Node],
    pods: &[Pod],
    seed: u64,
) -> Result<String, PlacementError> {
    let translated = request::for_vmi(vmi)?;
    let mut view = ClusterView::build(nodes, pods, Some(&translated.request.id))?;
    if let Some(group) = &translated.group {
        view.declare_group(group);
    }
    let state = view.state()?;
    let compiled = state.compile(&translated.request)?;
    let mut scheduler = Scheduler::new(Arc::new(Profile::for_policy(Policy::Spread)), seed);
    match scheduler.decide(&state, &compiled, &DecideOptions::default()) {
        Ok(decision) => Ok(decision.claim.placement(state.cluster()).host),
        Err(unschedulable) => Err(PlacementError::Unschedulable(explain::kubernetes_summary(
            &unschedulable.explain(state.cluster()),
        ))),
    }
}

/// A placer that keeps its state across decisions, for placing many VMIs in a row against one
/// snapshot of the nodes (the controller's bursts, and the benchmark).
pub struct BatchPlacer {
    state: State,
    scheduler: Scheduler,
}

impl BatchPlacer {
    /// A placer over `nodes` with `pods` already running (VMIs placed by it may not use
    /// server groups that are not already in use: those need [`place`]).
    pub fn new(nodes: &[Node], pods: &[Pod], seed: u64) -> Result<Self, PlacementError> {
        let view = ClusterView::build(nodes, pods, None)?;
        Ok(BatchPlacer {
            state: view.state()?,
            scheduler: Scheduler::new(Arc::new(Profile::for_policy(Policy::Spread)), seed),
        })
    }

    /// Places `vmi` and books its resources; returns the node's name.
    pub fn place(&mut self, vmi: &VirtualMachineInstance) -> Result<String, PlacementError> {
        let translated = request::for_vmi(vmi)?;
        let compiled = self.state.compile(&translated.request)?;
        match self
            .scheduler
            .decide(&self.state, &compiled, &DecideOptions::default())
        {
            Ok(decision) => {
                let host = decision.claim.placement(self.state.cluster()).host;
                self.scheduler
                    .commit(&mut self.state, decision.claim)
                    .map_err(|e| PlacementError::Unschedulable(format!("commit refused: {e}")))?;
                Ok(host)
            }
            Err(unschedulable) => Err(PlacementError::Unschedulable(explain::kubernetes_summary(
                &unschedulable.explain(self.state.cluster()),
            ))),
        }
    }
}
