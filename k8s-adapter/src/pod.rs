//! The launcher pod: what holds a VM's resources on its node.
//!
//! Its requests and limits are the guest's memory and vCPUs plus Keel's measured overhead
//! ([`crate::overhead`]); its container runs `keel --api-socket <run dir>/<uid>/api.sock
//! --keep-alive`, the VMM the node agent then drives through that socket. It carries the VMI's
//! placement constraints so that kube-scheduler (or Keel's placement) honours them, and is owned
//! by its VMI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Pod, PodSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::{
    VirtualMachineInstance, KEEL_SCHEDULER, LABEL_VMI, LABEL_VMI_UID, LAUNCHER_COMPONENT,
};
use crate::overhead;
use crate::quantity::{self, QuantityError};

/// The container that runs `keel`.
pub const COMPUTE_CONTAINER: &str = "compute";
/// Where the node agent and launcher pods share VMM sockets, by VMI uid.
pub const DEFAULT_RUN_DIR: &str = "/var/run/keel/vmis";
/// The launcher image (holds the `keel` binary).
pub const DEFAULT_LAUNCHER_IMAGE: &str = "ghcr.io/keel-vmm/keel-launcher:0.1.0";

/// How launcher pods are made.
#[derive(Clone, Debug)]
pub struct LauncherOptions {
    /// The image with `keel` in it.
    pub image: String,
    /// The node directory for VMM sockets (shared with the node agent).
    pub run_dir: PathBuf,
}

impl Default for LauncherOptions {
    fn default() -> Self {
        LauncherOptions {
            image: DEFAULT_LAUNCHER_IMAGE.to_string(),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
        }
    }
}

/// A VMI that cannot be turned into a pod.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The object has no uid or name yet (it was never stored).
    #[error("the VMI has no {0} (it was not read from the API server)")]
    Unstored(&'static str),
    /// The guest memory is not a quantity.
    #[error("spec.domain.memory.guest: {0}")]
    Memory(#[source] QuantityError),
}

/// The launcher pod's name for a VMI: its name and the start of its uid, so that a restarted
/// VMI of the same name never collides with its predecessor's pod.
pub fn pod_name(vmi_name: &str, uid: &str) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(5).collect();
    let mut base = format!("keel-launcher-{vmi_name}");
    // Pod names are at most 253 characters, labels 63; keep well under both.
    base.truncate(56);
    format!("{base}-{short}")
}

/// The VMM's API socket for a VMI (a path on the node).
pub fn api_socket(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join(uid).join("api.sock")
}

/// The VMM's serial console socket for a VMI (a path on the node).
pub fn console_socket(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join(uid).join("console.sock")
}

/// The command the launcher container runs (the node agent runs the same one itself when it
/// starts VMMs as its own children, as in the tests).
pub fn vmm_command(keel: &str, run_dir: &Path, uid: &str) -> Vec<String> {
    vec![
        keel.to_string(),
        "--api-socket".to_string(),
        api_socket(run_dir, uid).display().to_string(),
        "--keep-alive".to_string(),
        "--log-level".to_string(),
        "warn".to_string(),
    ]
}

/// The launcher pod for `vmi`.
pub fn launcher_pod(
    vmi: &VirtualMachineInstance,
    opts: &LauncherOptions,
) -> Result<Pod, RenderError> {
    let uid = vmi.uid().ok_or(RenderError::Unstored("uid"))?;
    let name = vmi
        .meta()
        .name
        .clone()
        .ok_or(RenderError::Unstored("name"))?;
    let spec = &vmi.spec;
    let vcpus = spec.vcpus();
    let guest = spec.guest_memory_bytes().map_err(RenderError::Memory)?;
    let memory = quantity::from_bytes(overhead::pod_memory_bytes(vcpus, guest));
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                quantity::from_millis(overhead::pod_cpu_request_millis(vcpus)),
            ),
            ("memory".to_string(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                quantity::from_millis(overhead::pod_cpu_limit_millis(vcpus)),
            ),
            ("memory".to_string(), memory),
        ])),
        ..Default::default()
    };
    // The VMI's own labels too, so that pod (anti-)affinity between VMs selects launcher pods.
    let mut labels = vmi.labels().clone();
    labels.extend([
        (LABEL_VMI.to_string(), name.clone()),
        (LABEL_VMI_UID.to_string(), uid.clone()),
        (
            "app.kubernetes.io/component".to_string(),
            LAUNCHER_COMPONENT.to_string(),
        ),
    ]);
    let owner = OwnerReference {
        api_version: VirtualMachineInstance::api_version(&()).into_owned(),
        kind: VirtualMachineInstance::kind(&()).into_owned(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let run_dir = opts.run_dir.display().to_string();
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, &uid)),
            namespace: vmi.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            scheduler_name: spec.keel_placed().then(|| KEEL_SCHEDULER.to_string()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            affinity: spec.affinity.clone(),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
                .then(|| spec.topology_spread_constraints.clone()),
            restart_policy: Some("Never".to_string()),
            // The VMM needs the guest's grace period plus time to stop.
            termination_grace_period_seconds: Some(spec.grace_seconds().saturating_add(15)),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: COMPUTE_CONTAINER.to_string(),
                image: Some(opts.image.clone()),
                command: Some(vmm_command("keel", &opts.run_dir, &uid)),
                resources: Some(resources),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "run".to_string(),
                        mount_path: run_dir.clone(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "kvm".to_string(),
                        mount_path: "/dev/kvm".to_string(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            volumes: Some(vec![
                host_path("run", &run_dir, "DirectoryOrCreate"),
                host_path("kvm", "/dev/kvm", "CharDevice"),
            ]),
            ..Default::default()
        }),
        status: None,
    })
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(kind.to_string()),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::domain::{Cpu, Memory};
    use crate::api::VirtualMachineInstanceSpec;
    use k8s_openapi::api::core::v1::Toleration;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn vmi(scheduler: Option<&str>) -> VirtualMachineInstance {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.cpu = Some(Cpu {
            cores: Some(2),
            sockets: Some(1),
            threads: Some(1),
        });
        spec.domain.memory = Some(Memory {
            guest: Some(Quantity("256Mi".into())),
        });
        spec.node_selector.insert("zone".into(), "a".into());
        spec.tolerations.push(Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        });
        spec.scheduler_name = scheduler.map(str::to_string);
        let mut vmi = VirtualMachineInstance::new("web", spec);
        vmi.metadata.namespace = Some("ns".into());
        vmi.metadata.uid = Some("0a1b2c3d-0000-0000-0000-000000000000".into());
        vmi
    }

    #[test]
    fn the_pod_requests_guest_memory_plus_overhead_and_carries_the_constraints() {
        let pod = launcher_pod(&vmi(None), &LauncherOptions::default()).unwrap();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("keel-launcher-web-0a1b2")
        );
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.api_version.as_str()),
            ("VirtualMachineInstance", "keel.dev/v1alpha1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.scheduler_name, None, "kube-scheduler places it");
        assert_eq!(spec.node_selector.unwrap()["zone"], "a");
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(45));
        let container = &spec.containers[0];
        let resources = container.resources.as_ref().unwrap();
        let requests = resources.requests.as_ref().unwrap();
        // 256 MiB + 8 + 2 + 0.5 MiB, rounded up: 267 MiB.
        assert_eq!(requests["memory"], Quantity("267Mi".into()));
        assert_eq!(requests["cpu"], Quantity("210m".into()));
        let limits = resources.limits.as_ref().unwrap();
        assert_eq!(limits["memory"], Quantity("267Mi".into()));
        assert_eq!(limits["cpu"], Quantity("2010m".into()));
        let command = container.command.as_ref().unwrap();
        assert_eq!(
            command[..3],
            [
                "keel",
                "--api-socket",
                "/var/run/keel/vmis/0a1b2c3d-0000-0000-0000-000000000000/api.sock"
            ]
        );
        assert!(command.contains(&"--keep-alive".to_string()));
    }

    #[test]
    fn a_keel_placed_vmi_gets_a_pod_that_kube_scheduler_leaves_alone() {
        let pod = launcher_pod(&vmi(Some("keel")), &LauncherOptions::default()).unwrap();
        assert_eq!(pod.spec.unwrap().scheduler_name.as_deref(), Some("keel"));
    }

    #[test]
    fn an_unstored_vmi_or_bad_memory_is_refused_by_name() {
        let mut v = vmi(None);
        v.metadata.uid = None;
        assert!(matches!(
            launcher_pod(&v, &LauncherOptions::default()),
            Err(RenderError::Unstored("uid"))
        ));
        let mut v = vmi(None);
        v.spec.domain.memory = Some(Memory {
            guest: Some(Quantity("lots".into())),
        });
        let err = launcher_pod(&v, &LauncherOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.domain.memory.guest: `lots`"),
            "{err}"
        );
    }

    #[test]
    fn long_names_still_make_valid_pod_names() {
        let name = pod_name(&"x".repeat(300), "abcdef");
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-abcde"));
    }
}
