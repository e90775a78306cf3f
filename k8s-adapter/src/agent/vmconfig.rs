//! A VMI's spec as the `VmConfig` the node agent sends to `keel` (`vm.create`).
//!
//! What this node cannot provide is refused with the field named (the VMI then fails with that
//! message), never dropped: container disks and PVCs need the launcher pod's volumes, which
//! the agent does not mount yet; pod-network NICs need a TAP in the pod's network namespace.

use std::path::{Path, PathBuf};

use serde_json::json;

use vmm_core::config::{DiskConfig, RngConfig};
use vmm_core::{MemSize, SerialConfig, SerialInput, SerialOutput, VmConfig};

use crate::api::VirtualMachineInstanceSpec;

/// A spec the node cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why}")]
pub struct UnrunnableSpec {
    /// The field.
    pub field: String,
    /// Why.
    pub why: String,
}

fn unrunnable(field: impl Into<String>, why: impl Into<String>) -> UnrunnableSpec {
    UnrunnableSpec {
        field: field.into(),
        why: why.into(),
    }
}

/// A device section from its serialized form, the one keel's API takes: fields vmm-core adds
/// with defaults (rate limiters, ...) keep their defaults without a change here.
fn device<T: serde::de::DeserializeOwned>(
    field: &str,
    value: serde_json::Value,
) -> Result<T, UnrunnableSpec> {
    serde_json::from_value(value).map_err(|e| unrunnable(field, format!("not a valid device: {e}")))
}

/// The VM config for `spec`, with its serial console on `console`.
pub fn vm_config(
    spec: &VirtualMachineInstanceSpec,
    console: &Path,
) -> Result<VmConfig, UnrunnableSpec> {
    let kernel_boot = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .ok_or_else(|| {
            unrunnable(
                "spec.domain.firmware.kernelBoot",
                "Keel boots a kernel directly; none is given",
            )
        })?;
    let container = kernel_boot.container.as_ref().ok_or_else(|| {
        unrunnable(
            "spec.domain.firmware.kernelBoot.container",
            "no kernel image is given",
        )
    })?;
    let mut config = VmConfig::new(PathBuf::from(&container.kernel_path));
    config.initrd = container.initrd_path.as_ref().map(PathBuf::from);
    if let Some(args) = &kernel_boot.kernel_args {
        config.cmdline = args.clone();
    }
    config.vcpus = spec.vcpus();
    let memory = spec
        .guest_memory_bytes()
        .map_err(|e| unrunnable("spec.domain.memory.guest", e.to_string()))?;
    config.memory = MemSize::bytes(memory);
    config.serial = SerialConfig {
        output: SerialOutput::Socket(console.to_path_buf()),
        input: SerialInput::default(),
    };
    if spec.domain.devices.rng.is_some() {
        config.rng = Some(device::<RngConfig>(
            "spec.domain.devices.rng",
            json!({"id": "rng0"}),
        )?);
    }
    for (i, disk) in spec.domain.devices.disks.iter().enumerate() {
        let field = format!("spec.domain.devices.disks[{i}]");
        let volume = spec
            .volumes
            .iter()
            .find(|v| v.name == disk.name)
            .ok_or_else(|| unrunnable(&field, format!("no volume named {}", disk.name)))?;
        let Some(host_disk) = &volume.host_disk else {
            let kind = if volume.container_disk.is_some() {
                "containerDisk"
            } else if volume.persistent_volume_claim.is_some() {
                "persistentVolumeClaim"
            } else if volume.cloud_init_no_cloud.is_some() {
                "cloudInitNoCloud"
            } else {
                "an empty volume"
            };
            return Err(unrunnable(
                format!("spec.volumes[{}]", volume.name),
                format!("{kind} volumes are not provided by the node agent yet (hostDisk is)"),
            ));
        };
        let read_only = disk
            .disk
            .as_ref()
            .and_then(|d| d.read_only)
            .unwrap_or(false);
        config.disks.push(device::<DiskConfig>(
            &field,
            json!({"id": disk.name, "path": host_disk.path, "read_only": read_only}),
        )?);
    }
    if let Some(interface) = spec.domain.devices.interfaces.first() {
        return Err(unrunnable(
            format!("spec.domain.devices.interfaces[{}]", interface.name),
            "pod-network NICs are not provided by the node agent yet",
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::domain::{
        ContainerDiskSource, Disk, Firmware, HostDiskSource, KernelBoot, KernelBootContainer,
        Memory, Rng, Volume,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn spec() -> VirtualMachineInstanceSpec {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.firmware = Some(Firmware {
            kernel_boot: Some(KernelBoot {
                kernel_args: Some("keel.ticks=0".into()),
                container: Some(KernelBootContainer {
                    image: "local".into(),
                    kernel_path: "/k/guest".into(),
                    ..Default::default()
                }),
            }),
        });
        spec.domain.memory = Some(Memory {
            guest: Some(Quantity("64Mi".into())),
        });
        spec.domain.devices.rng = Some(Rng {});
        spec
    }

    #[test]
    fn kernel_memory_console_rng_and_host_disks_become_the_vm_config() {
        let mut s = spec();
        s.domain.devices.disks.push(Disk {
            name: "root".into(),
            ..Default::default()
        });
        s.volumes.push(Volume {
            name: "root".into(),
            host_disk: Some(HostDiskSource {
                path: "/images/root.img".into(),
                disk_type: "Disk".into(),
                capacity: None,
            }),
            ..Default::default()
        });
        let config = vm_config(&s, Path::new("/run/c.sock")).unwrap();
        assert_eq!(config.kernel, PathBuf::from("/k/guest"));
        assert_eq!(config.cmdline, "keel.ticks=0");
        assert_eq!(config.memory, MemSize::mib(64));
        assert_eq!(
            config.serial.output,
            SerialOutput::Socket("/run/c.sock".into())
        );
        assert!(config.rng.is_some());
        assert_eq!(config.disks[0].path, PathBuf::from("/images/root.img"));
    }

    #[test]
    fn what_the_node_cannot_provide_is_named() {
        let mut s = spec();
        s.domain.devices.disks.push(Disk {
            name: "os".into(),
            ..Default::default()
        });
        s.volumes.push(Volume {
            name: "os".into(),
            container_disk: Some(ContainerDiskSource {
                image: "quay.io/x".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = vm_config(&s, Path::new("/c")).unwrap_err();
        assert_eq!(err.field, "spec.volumes[os]");
        assert!(err.why.starts_with("containerDisk volumes"), "{err}");
        let mut s = spec();
        s.domain.firmware = None;
        assert_eq!(
            vm_config(&s, Path::new("/c")).unwrap_err().field,
            "spec.domain.firmware.kernelBoot"
        );
    }
}
