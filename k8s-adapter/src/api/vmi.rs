//! `VirtualMachineInstance`: one running VM, KubeVirt's field names in Keel's group.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::domain::{DomainSpec, Network, Volume};

/// The desired VM.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "keel.dev",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    shortname = "vmi",
    shortname = "vmis",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    category = "keel",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Exit","type":"string","priority":1,"jsonPath":".status.nodeReport.exitReason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// The virtual hardware.
    pub domain: DomainSpec,
    /// Volumes backing the disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Networks the NICs attach to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Node labels the VM's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node affinity and pod (anti-)affinity, as for pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the VM tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// How VMs spread over zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Who places the VM: absent (kube-scheduler places its launcher pod) or `keel` (Keel's
    /// `scheduling` library, with its explanation when nothing fits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Seconds between the ACPI power button and a hard stop when the VM is deleted (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
    /// What a node drain does to the VM (`None`, `LiveMigrate`, `LiveMigrateIfPossible`,
    /// `External`); Keel has no live migration yet, so only `None` and `External` are honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
}

/// What a node drain does to the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EvictionStrategy {
    /// The VM is stopped.
    None,
    /// The VM is migrated (not available in Keel yet).
    LiveMigrate,
    /// Migrated if possible, else stopped.
    LiveMigrateIfPossible,
    /// Someone else decides.
    External,
}

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted, not yet placed.
    #[default]
    Pending,
    /// Being placed.
    Scheduling,
    /// Placed on a node; the VMM is starting.
    Scheduled,
    /// The guest runs.
    Running,
    /// The guest ended on its own (power off, reset).
    Succeeded,
    /// The VM crashed, could not start, or its node or launcher pod was lost.
    Failed,
    /// Its state cannot be known (the node stopped reporting).
    Unknown,
}

impl Phase {
    /// Whether the VM is over (nothing will run it again).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// The phase's name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduling => "Scheduling",
            Phase::Scheduled => "Scheduled",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }
}

/// What the VM is doing, written by the controller (phase, placement, conditions) and the node
/// agent (`nodeReport`, `interfaces`, `guestOSInfo`), each with server-side apply under its own
/// field manager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// The phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The node it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The launcher pod that holds its resources on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pod: Option<String>,
    /// `Ready`, `Synchronized`, `Paused`, `PodScheduled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The guest's NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    /// What is known of the guest OS.
    #[serde(
        rename = "guestOSInfo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub guest_os_info: Option<GuestOsInfo>,
    /// The node agent's last report on the VMM process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_report: Option<NodeReport>,
}

/// A guest NIC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    /// The interface's name in the spec.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its IP address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

/// What is known of the guest OS (Keel has no guest agent: the kernel command line only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestOsInfo {
    /// The kernel command line the guest was booted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
}

/// The VMM process as the node agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VmmState {
    /// The process was started; the VM is being created.
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
    /// The guest ended; `exitReason` says how.
    Exited,
    /// The VMM could not be started or the VM not created; `message` says why.
    Failed,
}

/// The node agent's report on one VMM process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// The VMM's state.
    pub state: VmmState,
    /// The `keel` process id on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How many times this VMI's guest was booted.
    #[serde(default)]
    pub boots: u64,
    /// Why the guest ended: keel's `reset`, `shutdown`, `stopped`, `triple_fault`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    /// A sentence: the exit, or why the VMM failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last lines of the serial console.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console_tail: Vec<String>,
}

impl NodeReport {
    /// Whether the report says the guest ended cleanly (power off or reset).
    pub fn exited_cleanly(&self) -> bool {
        self.state == VmmState::Exited
            && matches!(self.exit_reason.as_deref(), Some("shutdown" | "reset"))
    }
}
