//! The REST API's endpoints and bodies: one table that the server routes by, the client calls
//! through and the OpenAPI document is generated from.
//!
//! One VM per process, as in Firecracker and Cloud Hypervisor. Paths follow Cloud
//! Hypervisor's shape (`/api/v1/vm.pause`): actions are `PUT`, reads are `GET`. Bodies are
//! JSON. Errors are a JSON [`ApiError`] with a 4xx status for the caller's mistakes (404 no such
//! endpoint, 405 wrong method, 400 bad body or config, 409 wrong state, 413 body too large,
//! 415 not JSON) and 500 for the VMM's own failures.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vmm_core::config::RateLimitUpdate;
use vmm_core::{ExitReason, VmConfig, VmState};

/// The largest request body accepted, in bytes (a VM config is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Version of the API (the path prefix's `v1`).
pub const API_PREFIX: &str = "/api/v1";

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Reads.
    Get,
    /// Actions.
    Put,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// What a successful call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 204, no body.
    Empty,
    /// 200 with a [`VmmPing`].
    Ping,
    /// 200 with a [`VmInfo`].
    Info,
    /// 200 with the VM's counters (`vmm_core::VmCounters` as JSON).
    Counters,
    /// 200 with Prometheus text.
    Metrics,
    /// 200 with a [`MigrationStatus`].
    Migration,
}

/// Every endpoint of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Is the VMM up; its version and state.
    Ping,
    /// Stop the VM (if any) and end the VMM process.
    VmmShutdown,
    /// Set the VM's config (validated; the VM is built but not started).
    VmCreate,
    /// Start the created VM (or boot it again after it exited).
    VmBoot,
    /// Pause a running VM.
    VmPause,
    /// Resume a paused VM.
    VmResume,
    /// Stop the VM now (no guest involvement).
    VmShutdown,
    /// Press the ACPI power button: ask the guest to shut down.
    VmPowerButton,
    /// Reset the VM: a fresh VM from the same config, started.
    VmReboot,
    /// Forget the VM and its config (stopping it first).
    VmDelete,
    /// Save the paused VM to a directory.
    VmSnapshot,
    /// Build the VM from a snapshot (instead of `vm.create`).
    VmRestore,
    /// Live-migrate the VM to another keel process.
    VmSendMigration,
    /// Wait for a VM migrating in from another keel process.
    VmReceiveMigration,
    /// How the current or last migration out stands.
    VmMigration,
    /// Change a device's rate limits while the VM runs.
    VmRateLimit,
    /// Config, state and exit reason.
    VmInfo,
    /// The VM's counters as JSON.
    VmCounters,
    /// The VM's counters as Prometheus text.
    Metrics,
}

impl Endpoint {
    /// All endpoints, in documentation order.
    pub const ALL: [Endpoint; 19] = [
        Endpoint::Ping,
        Endpoint::VmmShutdown,
        Endpoint::VmCreate,
        Endpoint::VmBoot,
        Endpoint::VmPause,
        Endpoint::VmResume,
        Endpoint::VmShutdown,
        Endpoint::VmPowerButton,
        Endpoint::VmReboot,
        Endpoint::VmDelete,
        Endpoint::VmSnapshot,
        Endpoint::VmRestore,
        Endpoint::VmSendMigration,
        Endpoint::VmReceiveMigration,
        Endpoint::VmMigration,
        Endpoint::VmRateLimit,
        Endpoint::VmInfo,
        Endpoint::VmCounters,
        Endpoint::Metrics,
    ];

    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Ping => "/api/v1/vmm.ping",
            Endpoint::VmmShutdown => "/api/v1/vmm.shutdown",
            Endpoint::VmCreate => "/api/v1/vm.create",
            Endpoint::VmBoot => "/api/v1/vm.boot",
            Endpoint::VmPause => "/api/v1/vm.pause",
            Endpoint::VmResume => "/api/v1/vm.resume",
            Endpoint::VmShutdown => "/api/v1/vm.shutdown",
            Endpoint::VmPowerButton => "/api/v1/vm.power-button",
            Endpoint::VmReboot => "/api/v1/vm.reboot",
            Endpoint::VmDelete => "/api/v1/vm.delete",
            Endpoint::VmSnapshot => "/api/v1/vm.snapshot",
            Endpoint::VmRestore => "/api/v1/vm.restore",
            Endpoint::VmSendMigration => "/api/v1/vm.send-migration",
            Endpoint::VmReceiveMigration => "/api/v1/vm.receive-migration",
            Endpoint::VmMigration => "/api/v1/vm.migration",
            Endpoint::VmRateLimit => "/api/v1/vm.rate-limit",
            Endpoint::VmInfo => "/api/v1/vm.info",
            Endpoint::VmCounters => "/api/v1/vm.counters",
            Endpoint::Metrics => "/metrics",
        }
    }

    /// The method it answers to.
    pub fn method(self) -> Method {
        match self {
            Endpoint::Ping
            | Endpoint::VmInfo
            | Endpoint::VmCounters
            | Endpoint::Metrics
            | Endpoint::VmMigration => Method::Get,
            _ => Method::Put,
        }
    }

    /// The endpoint's name as the error messages and `keel remote` use it (`vm.pause`).
    pub fn name(self) -> &'static str {
        let path = self.path();
        path.rsplit('/').next().unwrap_or(path)
    }

    /// One line on what it does.
    pub fn summary(self) -> &'static str {
        match self {
            Endpoint::Ping => "Is the VMM up: its version, process id and the VM's state",
            Endpoint::VmmShutdown => "Stop the VM, if any, and end the VMM process",
            Endpoint::VmCreate => {
                "Set the VM's config: validated and built (memory, kernel, devices), not started"
            }
            Endpoint::VmBoot => "Start the created VM, or boot a fresh one after it exited",
            Endpoint::VmPause => "Pause a running VM (every vCPU parked outside the guest)",
            Endpoint::VmResume => "Resume a paused VM",
            Endpoint::VmShutdown => "Stop the VM now, without the guest's involvement",
            Endpoint::VmPowerButton => {
                "Press the ACPI power button: the guest's OS is asked to shut down; returns at once"
            }
            Endpoint::VmReboot => "Reset the VM: a fresh VM from the same config, started",
            Endpoint::VmDelete => "Stop the VM if it runs and forget it and its config",
            Endpoint::VmSnapshot => {
                "Save the paused VM (memory, vCPUs, devices) to a directory; it stays paused"
            }
            Endpoint::VmRestore => {
                "Build the VM from a snapshot directory, with its saved config or a given one of the same shape"
            }
            Endpoint::VmSendMigration => {
                "Live-migrate the VM to a keel waiting in vm.receive-migration; returns at once, vm.migration reports"
            }
            Endpoint::VmReceiveMigration => {
                "Listen for a VM migrating in; returns once listening, the VM runs when it arrived"
            }
            Endpoint::VmMigration => "Progress, report or error of the current or last migration out",
            Endpoint::VmRateLimit => {
                "Replace a disk's, NIC's or the entropy device's rate limiters (full buckets); the config keeps them"
            }
            Endpoint::VmInfo => "The VM's config, state and, once it exited, why",
            Endpoint::VmCounters => {
                "Counters: vCPU exits by kind, serial bytes, each device's own counters"
            }
            Endpoint::Metrics => "The counters in the Prometheus text format",
        }
    }

    /// Whether the request carries a JSON body (`vm.create`: a [`VmConfig`]; `vm.snapshot`: a
    /// [`SnapshotRequest`]; `vm.restore`: a [`RestoreRequest`]; `vm.rate-limit`: a
    /// [`RateLimitUpdate`]).
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Endpoint::VmCreate
                | Endpoint::VmSnapshot
                | Endpoint::VmRestore
                | Endpoint::VmSendMigration
                | Endpoint::VmReceiveMigration
                | Endpoint::VmRateLimit
        )
    }

    /// The schema name of the body it takes.
    pub fn body_schema(self) -> Option<&'static str> {
        match self {
            Endpoint::VmCreate => Some("VmConfig"),
            Endpoint::VmSnapshot => Some("SnapshotRequest"),
            Endpoint::VmRestore => Some("RestoreRequest"),
            Endpoint::VmSendMigration => Some("SendMigrationRequest"),
            Endpoint::VmReceiveMigration => Some("ReceiveMigrationRequest"),
            Endpoint::VmRateLimit => Some("RateLimitUpdate"),
            _ => None,
        }
    }

    /// What a successful call returns.
    pub fn reply(self) -> Reply {
        match self {
            Endpoint::Ping => Reply::Ping,
            Endpoint::VmInfo => Reply::Info,
            Endpoint::VmCounters => Reply::Counters,
            Endpoint::Metrics => Reply::Metrics,
            Endpoint::VmMigration => Reply::Migration,
            _ => Reply::Empty,
        }
    }

    /// The endpoint at `path`, whatever the method.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Self::ALL
            .into_iter()
            .find(|endpoint| endpoint.path() == path)
    }

    /// The endpoint named `name` (`vm.pause`, `vmm.ping`, `metrics`).
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Self::ALL
            .into_iter()
            .find(|endpoint| endpoint.name() == name)
    }
}

/// `PUT /api/v1/vm.snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Directory to write the snapshot to (created if missing): `memory` and `state` in it.
    pub destination: String,
}

/// `PUT /api/v1/vm.restore`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Snapshot directory (from `vm.snapshot`).
    pub source: String,
    /// The config to restore into: the VM's shape must be the snapshot's, its device back ends
    /// may differ (a disk at a new path, a NIC on another TAP). Default: the saved config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VmConfig>,
    /// Start the restored VM at once (default: it waits for `vm.boot`).
    #[serde(default)]
    pub resume: bool,
}

/// `PUT /api/v1/vm.send-migration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMigrationRequest {
    /// Where the receiving keel listens: `unix:PATH` or `tcp:HOST:PORT`.
    pub destination: String,
    /// Downtime budget in milliseconds: pre-copy stops once the rest would take this long
    /// (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Pre-copy rounds at most (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
}

/// `PUT /api/v1/vm.receive-migration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigrationRequest {
    /// Where to listen: `unix:PATH` or `tcp:HOST:PORT`.
    pub listen: String,
    /// The config to run the VM with here (same shape, back ends of this host); default: the
    /// source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VmConfig>,
}

/// `GET /api/v1/vm.migration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationStatus {
    /// A migration out is running.
    pub running: bool,
    /// Its progress (phase, round, pages sent, dirty rate, bandwidth, expected downtime), as
    /// JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub progress: Option<serde_json::Value>,
    /// The last finished migration's report (total and downtime in ms, rounds, pages, bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub report: Option<serde_json::Value>,
    /// Why the last migration (out, or in) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request's parsed body.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestBody {
    /// `vm.create`.
    Config(Box<VmConfig>),
    /// `vm.snapshot`.
    Snapshot(SnapshotRequest),
    /// `vm.restore`.
    Restore(Box<RestoreRequest>),
    /// `vm.send-migration`.
    SendMigration(SendMigrationRequest),
    /// `vm.receive-migration`.
    ReceiveMigration(Box<ReceiveMigrationRequest>),
    /// `vm.rate-limit`.
    RateLimit(RateLimitUpdate),
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What went wrong, in a sentence that names the problem.
    pub error: String,
    /// The config field at fault, for a config that does not validate (`vcpus`,
    /// `disks.path`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The VM's lifecycle state as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiVmState {
    /// No config yet (`vm.create` sets one).
    NotCreated,
    /// Built, not started.
    Created,
    /// Running guest code.
    Running,
    /// Paused.
    Paused,
    /// The VM ended; `exit` in [`VmInfo`] says why.
    Exited,
}

impl From<&VmState> for ApiVmState {
    fn from(state: &VmState) -> Self {
        match state {
            VmState::Created => ApiVmState::Created,
            VmState::Running => ApiVmState::Running,
            VmState::Paused => ApiVmState::Paused,
            VmState::Exited(_) => ApiVmState::Exited,
        }
    }
}

impl std::fmt::Display for ApiVmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiVmState::NotCreated => "not created",
            ApiVmState::Created => "created",
            ApiVmState::Running => "running",
            ApiVmState::Paused => "paused",
            ApiVmState::Exited => "exited",
        })
    }
}

/// Why a VM ended, as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExitInfo {
    /// `reset`, `shutdown`, `stopped`, `triple_fault`, `internal_error`, `entry_failed` or
    /// `failed`.
    pub reason: String,
    /// The same in a sentence (`KVM internal error (suberror 1) on vCPU 0 at RIP 0x1000`).
    pub message: String,
    /// The vCPU concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
}

impl From<&ExitReason> for ExitInfo {
    fn from(reason: &ExitReason) -> Self {
        let (name, vcpu) = match reason {
            ExitReason::Reset => ("reset", None),
            ExitReason::Shutdown => ("shutdown", None),
            ExitReason::Stopped => ("stopped", None),
            ExitReason::TripleFault { vcpu } => ("triple_fault", Some(*vcpu)),
            ExitReason::InternalError { vcpu, .. } => ("internal_error", Some(*vcpu)),
            ExitReason::EntryFailed { vcpu, .. } => ("entry_failed", Some(*vcpu)),
            ExitReason::Failed { vcpu, .. } => ("failed", *vcpu),
        };
        ExitInfo {
            reason: name.into(),
            message: reason.to_string(),
            vcpu,
        }
    }
}

/// `GET /api/v1/vm.info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    /// The lifecycle state.
    pub state: ApiVmState,
    /// The config, once one was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VmConfig>,
    /// Why the VM ended, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// Times the VM was booted by this process (reboots included).
    pub boots: u64,
    /// The console socket clients attach to, when the serial port is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<String>,
    /// The virtio console's socket, when it is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_console_socket: Option<String>,
}

/// `GET /api/v1/vmm.ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmmPing {
    /// The `keel` program's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// The VM's state.
    pub state: ApiVmState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names_are_unique_and_round_trip() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
            assert_eq!(Endpoint::from_name(endpoint.name()), Some(endpoint));
        }
        assert_eq!(Endpoint::VmPause.name(), "vm.pause");
        assert_eq!(Endpoint::Metrics.name(), "metrics");
        assert_eq!(Endpoint::from_path("/api/v1/vm.nope"), None);
    }

    #[test]
    fn exit_reasons_keep_their_vcpu_and_sentence() {
        let info = ExitInfo::from(&ExitReason::TripleFault { vcpu: 3 });
        assert_eq!(info.reason, "triple_fault");
        assert_eq!(info.vcpu, Some(3));
        assert_eq!(info.message, "triple fault on vCPU 3");
    }
}
