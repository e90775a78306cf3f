//! The API types: `VirtualMachineInstance` and `VirtualMachine` in the group `keel.dev/v1alpha1`,
//! with KubeVirt's field names, and the names (labels, finalizers, field managers) the controller
//! and node agent share.
//!
//! The CRDs are generated from these types (`crate::crd`, the `keel-crdgen` binary) and committed
//! under `k8s-adapter/deploy/crds.yaml`.

pub mod condition;
pub mod domain;
pub mod vm;
pub mod vmi;

pub use condition::Condition;
pub use domain::DomainSpec;
pub use vm::{RunStrategy, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};
pub use vmi::{
    NodeReport, Phase, VirtualMachineInstance, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus, VmmState,
};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{self, QuantityError};

/// The API group.
pub const GROUP: &str = "keel.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";

/// `schedulerName` that makes Keel's controller place the VMI with the `scheduling` library.
pub const KEEL_SCHEDULER: &str = "keel";

/// Label on a launcher pod naming its VMI.
pub const LABEL_VMI: &str = "keel.dev/vmi";
/// Label on a launcher pod and its VMI carrying the VMI's uid.
pub const LABEL_VMI_UID: &str = "keel.dev/vmi-uid";
/// Label on a VMI naming the node it was placed on (the node agent watches by it).
pub const LABEL_NODE: &str = "keel.dev/node";
/// Label on a VMI naming the VirtualMachine that created it.
pub const LABEL_VM: &str = "keel.dev/vm";
/// Label value of `app.kubernetes.io/component` on launcher pods.
pub const LAUNCHER_COMPONENT: &str = "keel-launcher";

/// The controller's finalizer on VMs and VMIs (it deletes what it created first).
pub const CONTROLLER_FINALIZER: &str = "keel.dev/controller";
/// The node agent's finalizer on VMIs it runs (it stops the VMM first).
pub const AGENT_FINALIZER: &str = "keel.dev/node-agent";

/// The controller's field manager for server-side apply.
pub const CONTROLLER_MANAGER: &str = "keel-controller";
/// The node agent's field manager for server-side apply.
pub const AGENT_MANAGER: &str = "keel-node-agent";

/// Default seconds between the ACPI power button and a hard stop.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

impl VirtualMachineInstanceSpec {
    /// vCPUs: cores × sockets × threads (each 1 when absent).
    pub fn vcpus(&self) -> u32 {
        let cpu = self.domain.cpu.clone().unwrap_or_default();
        cpu.cores
            .unwrap_or(1)
            .saturating_mul(cpu.sockets.unwrap_or(1))
            .saturating_mul(cpu.threads.unwrap_or(1))
            .max(1)
    }

    /// Guest memory in bytes: `domain.memory.guest`, else `domain.resources.requests.memory`,
    /// else 128 MiB (Keel's default).
    pub fn guest_memory_bytes(&self) -> Result<u64, QuantityError> {
        let from_resources = || {
            self.domain
                .resources
                .as_ref()
                .and_then(|r| r.requests.get("memory"))
        };
        let guest: Option<&Quantity> = self
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.as_ref())
            .or_else(from_resources);
        match guest {
            Some(q) => quantity::bytes(q),
            None => Ok(128 << 20),
        }
    }

    /// Whether the Keel scheduler places this VMI.
    pub fn keel_placed(&self) -> bool {
        self.scheduler_name.as_deref() == Some(KEEL_SCHEDULER)
    }

    /// Seconds between the power button and a hard stop.
    pub fn grace_seconds(&self) -> i64 {
        self.termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS)
            .max(0)
    }
}
