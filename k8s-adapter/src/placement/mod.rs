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
    let compiled = state
        .compile(&translated.request)
        .map_err(|e| request_error(e, view.hosts()))?;
    let mut scheduler = Scheduler::new(Arc::new(Profile::for_policy(Policy::Spread)), seed);
    match scheduler.decide(&state, &compiled, &DecideOptions::default()) {
        Ok(decision) => Ok(decision.claim.placement(state.cluster()).host),
        Err(unschedulable) => Err(PlacementError::Unschedulable(explain::kubernetes_summary(
            &unschedulable.explain(state.cluster()),
        ))),
    }
}

/// A request refused before any node is looked at: more than the largest node offers reads as
/// an explanation (every node lacks it), anything else stays an error.
fn request_error(err: scheduling::PlacementRequestError, hosts: usize) -> PlacementError {
    match err {
        scheduling::PlacementRequestError::ExceedsMaxUnit {
            class,
            amount,
            max_unit,
            ..
        } => {
            let (what, unit) = match class.as_str() {
                MEMORY => ("memory", "MiB"),
                VCPU => ("cpu", "× 100m"),
                other => (other, ""),
            };
            PlacementError::Unschedulable(format!(
                "0/{hosts} nodes available: {hosts} insufficient {what} \
                 (asks {amount} {unit}, the largest node has {max_unit} {unit})"
            ))
        }
        other => PlacementError::Request(other),
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
        let hosts = self.state.cluster().hosts().len();
        let compiled = self
            .state
            .compile(&translated.request)
            .map_err(|e| request_error(e, hosts))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::domain::Memory;
    use crate::api::VirtualMachineInstanceSpec;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(name: &str, memory: &str, taint: Option<&str>) -> Node {
        let taints =
            taint.map(|t| serde_json::json!([{"key": t, "value": "x", "effect": "NoSchedule"}]));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "4", "memory": memory}},
        }))
        .unwrap()
    }

    fn vmi(memory: &str) -> VirtualMachineInstance {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.memory = Some(Memory {
            guest: Some(Quantity(memory.into())),
        });
        let mut vmi = VirtualMachineInstance::new("v", spec);
        vmi.metadata.namespace = Some("ns".into());
        vmi.metadata.uid = Some("uid-1".into());
        vmi
    }

    #[test]
    fn nodes_become_hosts_and_the_vmi_lands_where_it_fits() {
        let nodes = [
            node("small", "512Mi", None),
            node("big", "8Gi", None),
            node("tainted", "64Gi", Some("gpu")),
        ];
        assert_eq!(place(&vmi("1Gi"), &nodes, &[], 1).unwrap(), "big");
        let err = place(&vmi("16Gi"), &nodes, &[], 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes available: 2 insufficient memory, 1 untolerated taint gpu=x:NoSchedule"
        );
    }

    #[test]
    fn more_than_any_node_has_reads_as_an_explanation() {
        let nodes = [node("a", "1Gi", None), node("b", "2Gi", None)];
        let err = place(&vmi("64Gi"), &nodes, &[], 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("0/2 nodes available: 2 insufficient memory (asks 65"),
            "{err}"
        );
    }

    #[test]
    fn running_pods_use_their_nodes_capacity() {
        let nodes = [node("a", "2Gi", None), node("b", "2Gi", None)];
        let mut placer = BatchPlacer::new(&nodes, &[], 3).unwrap();
        let mut first = vmi("1Gi");
        first.metadata.uid = Some("u1".into());
        let host = placer.place(&first).unwrap();
        let pod = crate::pod::launcher_pod(&first, &Default::default()).unwrap();
        let mut pod = pod;
        pod.spec.as_mut().unwrap().node_name = Some(host.clone());
        // With the first pod running, a second 1 GiB VMI must go to the other node.
        let mut second = vmi("1Gi");
        second.metadata.uid = Some("u2".into());
        let other = place(&second, &nodes, &[pod], 1).unwrap();
        assert_ne!(other, host);
    }
}
