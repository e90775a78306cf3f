//! Nodes and the pods bound to them as a `scheduling` cluster and state.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use scheduling::model::{
    ClusterSpec, HostSpec, InventorySpec, ServerGroupSpec, Taint, TaintEffect,
};
use scheduling::{Cluster, PlacedResource, Placement, State};

use super::request::{self, Constraints, ZONE_KEY};
use super::{PlacementError, MEMORY, MILLIS_PER_VCPU_UNIT, VCPU};
use crate::api::{LABEL_VMI_UID, LAUNCHER_COMPONENT};
use crate::quantity;

/// The cluster as placement sees it: hosts with what running pods already use, and the running
/// launcher pods that belong to server groups.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    spec: ClusterSpec,
    placements: Vec<Placement>,
    /// Per host: (memory MB, cpu units) used by the restored placements, for the fallback.
    placed_usage: BTreeMap<String, (i64, i64)>,
}

/// A node as a host, or `None` for a node without allocatable memory or CPU.
pub fn host_for_node(node: &Node) -> Option<HostSpec> {
    let name = node.metadata.name.clone()?;
    let allocatable = node.status.as_ref()?.allocatable.as_ref()?;
    let memory_mb = quantity::bytes(allocatable.get("memory")?).ok()? >> 20;
    let cpu_units = quantity::millis(allocatable.get("cpu")?).ok()? / MILLIS_PER_VCPU_UNIT;
    if memory_mb == 0 || cpu_units == 0 {
        return None;
    }
    let labels = node.labels().clone();
    let mut taints: Vec<Taint> = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter_map(|t| {
            let effect = match t.effect.as_str() {
                "NoSchedule" => TaintEffect::NoSchedule,
                "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                "NoExecute" => TaintEffect::NoExecute,
                _ => return None,
            };
            Some(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect,
            })
        })
        .collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        taints.push(Taint {
            key: "node.kubernetes.io/unschedulable".to_string(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        });
    }
    Some(HostSpec {
        name,
        zone: labels.get(ZONE_KEY).cloned(),
        labels: labels
            .into_iter()
            .chain(std::iter::once((
                request::HOSTNAME_KEY.to_string(),
                node.name_any(),
            )))
            .collect(),
        taints,
        inventories: BTreeMap::from([
            (
                MEMORY.to_string(),
                InventorySpec::new(i64::try_from(memory_mb).ok()?),
            ),
            (
                VCPU.to_string(),
                InventorySpec::new(i64::try_from(cpu_units).ok()?),
            ),
        ]),
        ..Default::default()
    })
}

/// What a pod requests: (memory MB, cpu units of 100m), summed over its containers.
pub fn pod_usage(pod: &Pod) -> (i64, i64) {
    let mut memory = 0u64;
    let mut millis = 0u64;
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        if let Some(q) = requests.and_then(|r| r.get("memory")) {
            memory = memory.saturating_add(quantity::bytes(q).unwrap_or(0));
        }
        if let Some(q) = requests.and_then(|r| r.get("cpu")) {
            millis = millis.saturating_add(quantity::millis(q).unwrap_or(0));
        }
    }
    (
        i64::try_from(memory.div_ceil(1 << 20)).unwrap_or(i64::MAX),
        i64::try_from(millis.div_ceil(MILLIS_PER_VCPU_UNIT)).unwrap_or(i64::MAX),
    )
}

/// Whether a pod holds resources on its node: bound and not finished.
fn is_active(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    (!matches!(phase, Some("Succeeded" | "Failed"))).then_some(node)
}

/// The server-group request of a running launcher pod, from its own constraints.
fn launcher_request(pod: &Pod, consumer: &str, usage: (i64, i64)) -> Option<request::Translated> {
    let spec = pod.spec.as_ref()?;
    let namespace = pod.namespace().unwrap_or_default();
    let empty = BTreeMap::new();
    let translated = request::translate(
        consumer,
        &[(MEMORY, usage.0), (VCPU, usage.1)],
        &Constraints {
            namespace: &namespace,
            labels: pod.labels(),
            node_selector: spec.node_selector.as_ref().unwrap_or(&empty),
            affinity: spec.affinity.as_ref(),
            tolerations: spec.tolerations.as_deref().unwrap_or_default(),
            spread: spec
                .topology_spread_constraints
                .as_deref()
                .unwrap_or_default(),
        },
    )
    .ok()?;
    translated.group.is_some().then_some(translated)
}

impl ClusterView {
    /// The view of `nodes` with `pods` running; the pod of consumer `exclude` (a VMI being
    /// placed again) is left out.
    pub fn build(
        nodes: &[Node],
        pods: &[Pod],
        exclude: Option<&str>,
    ) -> Result<Self, PlacementError> {
        let mut hosts: BTreeMap<String, HostSpec> = nodes
            .iter()
            .filter_map(host_for_node)
            .map(|h| (h.name.clone(), h))
            .collect();
        let mut used: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut view = ClusterView::default();
        let mut groups: BTreeMap<String, ServerGroupSpec> = BTreeMap::new();
        for pod in pods {
            let Some(node) = is_active(pod) else { continue };
            if !hosts.contains_key(node) {
                continue;
            }
            let usage = pod_usage(pod);
            let labels = pod.labels();
            let consumer = labels.get(LABEL_VMI_UID).map(String::as_str);
            if consumer.is_some() && consumer == exclude {
                continue;
            }
            let launcher = labels
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some(LAUNCHER_COMPONENT);
            if let (true, Some(consumer)) = (launcher, consumer) {
                if let Some(t) = launcher_request(pod, consumer, usage) {
                    if let Some(g) = &t.group {
                        groups.entry(g.name.clone()).or_insert_with(|| g.clone());
                    }
                    view.placements.push(Placement {
                        consumer: consumer.to_string(),
                        host: node.to_string(),
                        resources: vec![placed(node, MEMORY, usage.0), placed(node, VCPU, usage.1)],
                        request: Arc::new(t.request),
                        server_group: t.group,
                    });
                    let entry = view.placed_usage.entry(node.to_string()).or_default();
                    entry.0 = entry.0.saturating_add(usage.0);
                    entry.1 = entry.1.saturating_add(usage.1);
                    continue;
                }
            }
            let entry = used.entry(node.to_string()).or_default();
            entry.0 = entry.0.saturating_add(usage.0);
            entry.1 = entry.1.saturating_add(usage.1);
        }
        for (node, (memory, cpu)) in used {
            if let Some(host) = hosts.get_mut(&node) {
                reserve(host, memory, cpu);
            }
        }
        view.spec = ClusterSpec {
            hosts: hosts.into_values().collect(),
            server_groups: groups.into_values().collect(),
            ..Default::default()
        };
        Ok(view)
    }

    /// Declares a server group (the one a new request joins) if it is not known yet.
    pub fn declare_group(&mut self, group: &ServerGroupSpec) {
        if !self.spec.server_groups.iter().any(|g| g.name == group.name) {
            self.spec.server_groups.push(group.clone());
        }
    }

    /// Hosts in the view.
    pub fn hosts(&self) -> usize {
        self.spec.hosts.len()
    }

    /// The scheduling state: the cluster, with launcher pods in server groups restored as
    /// placements. When they cannot be restored (a node holds more than it has, as an
    /// over-committed node can), they count as reserved capacity instead and groups start empty.
    pub fn state(&self) -> Result<State, PlacementError> {
        let cluster = Arc::new(Cluster::from_spec(&self.spec)?);
        match State::restore(cluster, &self.placements) {
            Ok(state) => Ok(state),
            Err(err) => {
                log::warn!("placement: running launcher pods not restored ({err}); counting them as reserved");
                let mut spec = self.spec.clone();
                for host in &mut spec.hosts {
                    if let Some((memory, cpu)) = self.placed_usage.get(&host.name) {
                        reserve(host, *memory, *cpu);
                    }
                }
                Ok(State::new(Arc::new(Cluster::from_spec(&spec)?)))
            }
        }
    }
}

fn placed(node: &str, class: &str, amount: i64) -> PlacedResource {
    PlacedResource {
        provider: node.to_string(),
        class: class.to_string(),
        amount: u64::try_from(amount).unwrap_or(0),
        numa_node: None,
    }
}

fn reserve(host: &mut HostSpec, memory: i64, cpu: i64) {
    for (class, amount) in [(MEMORY, memory), (VCPU, cpu)] {
        if let Some(inventory) = host.inventories.get_mut(class) {
            inventory.reserved = inventory
                .reserved
                .saturating_add(amount)
                .min(inventory.total);
        }
    }
}
