//! `VirtualMachine`: a VMI template and a run strategy that says when an instance of it runs.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::vmi::VirtualMachineInstanceSpec;

/// The desired VM.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "keel.dev",
    version = "v1alpha1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    shortname = "vm",
    shortname = "vms",
    namespaced,
    status = "VirtualMachineStatus",
    category = "keel",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.printableStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","priority":1,"jsonPath":".status.restarts"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// When an instance runs (default `Halted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The instance to run.
    pub template: VirtualMachineInstanceTemplateSpec,
}

/// The instance a VirtualMachine runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    /// Labels and annotations given to each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The instance's spec.
    pub spec: VirtualMachineInstanceSpec,
}

/// Labels and annotations of a template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// When a VirtualMachine's instance runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RunStrategy {
    /// Always one instance; a new one whenever it ends.
    Always,
    /// A new instance when one fails; none after a clean exit.
    RerunOnFailure,
    /// The user starts and stops instances (`virtctl`-style); the controller creates none.
    Manual,
    /// No instance; a running one is stopped.
    #[default]
    Halted,
    /// One instance, once; never again after it ends.
    Once,
}

/// What a VirtualMachine is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// One word for people: `Stopped`, `Provisioning`/`Starting`, `Running`, `Stopping`,
    /// `Succeeded`, `CrashLoopBackOff`, `ErrorUnschedulable`, `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    /// Whether its instance runs.
    #[serde(default)]
    pub ready: bool,
    /// Whether an instance exists.
    #[serde(default)]
    pub created: bool,
    /// The run strategy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// Instances started after the first (restarts by the run strategy).
    #[serde(default)]
    pub restarts: u32,
    /// The uid of the last instance this VM started, so that a restart is counted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_instance_uid: Option<String>,
    /// Whether a `Once` VM has run its instance.
    #[serde(default)]
    pub ran_once: bool,
    /// `Ready`, and `Failure` with the reason the instance cannot run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
