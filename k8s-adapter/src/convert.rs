//! KubeVirt `VirtualMachine` / `VirtualMachineInstance` manifests (`kubevirt.io/v1`) to Keel's
//! (`keel.dev/v1alpha1`).
//!
//! Field names are the same, so conversion is a check against the subset Keel supports (the
//! [`VMI_SPEC`] and [`VM_SPEC`] tables) and a change of `apiVersion`. Every field outside the
//! subset is named in the error, all of them at once; fields the API server sets (`status`, `metadata.uid`,
//! `resourceVersion`, ...) are dropped and listed in [`Converted::dropped`]. `spec.running`
//! (KubeVirt's older switch) becomes the equivalent `runStrategy`.

use serde_json::{Map, Value};

use crate::api::{VirtualMachine, VirtualMachineInstance};

/// Errors converting a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The text is not YAML (or JSON).
    #[error("not a YAML document: {0}")]
    Parse(#[source] serde_saphyr::Error),
    /// Not a KubeVirt VM or VMI.
    #[error("not a KubeVirt VirtualMachine or VirtualMachineInstance: apiVersion {api_version:?}, kind {kind:?}")]
    NotKubeVirt {
        /// The document's apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
    /// Fields Keel does not support, each with its path.
    #[error("fields Keel does not support: {}", .0.join(", "))]
    Unsupported(Vec<String>),
    /// The result did not parse as Keel's type (a value of the wrong type).
    #[error("invalid {kind}: {source}")]
    Invalid {
        /// The kind.
        kind: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The result could not be written as YAML.
    #[error("cannot write YAML: {0}")]
    Yaml(#[source] serde_saphyr::SerializeError),
}

/// A converted manifest.
#[derive(Clone, Debug)]
pub enum Converted {
    /// A VirtualMachine.
    Vm(Box<VirtualMachine>, Vec<String>),
    /// A VirtualMachineInstance.
    Vmi(Box<VirtualMachineInstance>, Vec<String>),
}

impl Converted {
    /// Server-set fields that were dropped, by path.
    pub fn dropped(&self) -> &[String] {
        match self {
            Converted::Vm(_, d) | Converted::Vmi(_, d) => d,
        }
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> Result<String, ConvertError> {
        match self {
            Converted::Vm(vm, _) => serde_saphyr::to_string(vm.as_ref()),
            Converted::Vmi(vmi, _) => serde_saphyr::to_string(vmi.as_ref()),
        }
        .map_err(ConvertError::Yaml)
    }
}

/// The shape of the supported subset.
#[derive(Debug)]
pub enum Shape {
    /// Any value (Kubernetes types Keel passes through whole: affinity, tolerations, ...).
    Any,
    /// A scalar.
    Leaf,
    /// An object with these fields only.
    Object(&'static [(&'static str, Shape)]),
    /// An object with any keys and scalar values (labels, resource lists).
    Dict,
    /// A list of elements of this shape.
    List(&'static Shape),
}

use Shape::{Any, Dict, Leaf, List, Object};

const METADATA: Shape = Object(&[
    ("name", Leaf),
    ("namespace", Leaf),
    ("labels", Dict),
    ("annotations", Dict),
    ("generateName", Leaf),
]);
const TEMPLATE_METADATA: Shape = Object(&[("labels", Dict), ("annotations", Dict)]);
const EMPTY: Shape = Object(&[]);

/// A VMI's spec.
pub const VMI_SPEC: Shape = Object(&[
    (
        "domain",
        Object(&[
            (
                "cpu",
                Object(&[("cores", Leaf), ("sockets", Leaf), ("threads", Leaf)]),
            ),
            ("memory", Object(&[("guest", Leaf)])),
            ("resources", Object(&[("requests", Dict), ("limits", Dict)])),
            (
                "firmware",
                Object(&[(
                    "kernelBoot",
                    Object(&[
                        ("kernelArgs", Leaf),
                        (
                            "container",
                            Object(&[
                                ("image", Leaf),
                                ("kernelPath", Leaf),
                                ("initrdPath", Leaf),
                                ("imagePullPolicy", Leaf),
                            ]),
                        ),
                    ]),
                )]),
            ),
            (
                "devices",
                Object(&[
                    (
                        "disks",
                        List(&Object(&[
                            ("name", Leaf),
                            ("disk", Object(&[("bus", Leaf), ("readonly", Leaf)])),
                            ("bootOrder", Leaf),
                        ])),
                    ),
                    (
                        "interfaces",
                        List(&Object(&[
                            ("name", Leaf),
                            ("masquerade", EMPTY),
                            ("bridge", EMPTY),
                            ("macAddress", Leaf),
                            ("model", Leaf),
                        ])),
                    ),
                    ("rng", EMPTY),
                    ("autoattachSerialConsole", Leaf),
                ]),
            ),
        ]),
    ),
    (
        "volumes",
        List(&Object(&[
            ("name", Leaf),
            (
                "containerDisk",
                Object(&[("image", Leaf), ("path", Leaf), ("imagePullPolicy", Leaf)]),
            ),
            (
                "persistentVolumeClaim",
                Object(&[("claimName", Leaf), ("readOnly", Leaf)]),
            ),
            (
                "hostDisk",
                Object(&[("path", Leaf), ("type", Leaf), ("capacity", Leaf)]),
            ),
            (
                "cloudInitNoCloud",
                Object(&[
                    ("userData", Leaf),
                    ("userDataBase64", Leaf),
                    ("networkData", Leaf),
                ]),
            ),
        ])),
    ),
    (
        "networks",
        List(&Object(&[
            ("name", Leaf),
            ("pod", Object(&[("vmNetworkCIDR", Leaf)])),
        ])),
    ),
    ("nodeSelector", Dict),
    ("affinity", Any),
    ("tolerations", Any),
    ("topologySpreadConstraints", Any),
    ("schedulerName", Leaf),
    ("terminationGracePeriodSeconds", Leaf),
    ("evictionStrategy", Leaf),
]);

/// A VM's spec (`running` is rewritten to `runStrategy` before the check).
pub const VM_SPEC: Shape = Object(&[
    ("runStrategy", Leaf),
    (
        "template",
        Object(&[("metadata", TEMPLATE_METADATA), ("spec", VMI_SPEC)]),
    ),
]);

/// Metadata fields the API server sets; dropped with a note.
const SERVER_SET: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
];

/// Collects the paths of fields of `value` outside `shape`.
pub fn check(path: &str, value: &Value, shape: &Shape, out: &mut Vec<String>) {
    match (shape, value) {
        (Any, _) | (_, Value::Null) => {}
        (Leaf, Value::Object(_) | Value::Array(_)) => {
            out.push(format!("{path} (expected a scalar)"))
        }
        (Leaf, _) => {}
        (Dict, Value::Object(map)) => {
            for (k, v) in map {
                if v.is_object() || v.is_array() {
                    out.push(format!("{path}.{k} (expected a scalar)"));
                }
            }
        }
        (Object(fields), Value::Object(map)) => {
            for (k, v) in map {
                match fields.iter().find(|(name, _)| name == k) {
                    Some((_, inner)) => check(&format!("{path}.{k}"), v, inner, out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (List(inner), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check(&format!("{path}[{i}]"), item, inner, out);
            }
        }
        (Dict | Object(_), _) => out.push(format!("{path} (expected an object)")),
        (List(_), _) => out.push(format!("{path} (expected a list)")),
    }
}

/// Converts one KubeVirt manifest.
pub fn convert(text: &str) -> Result<Converted, ConvertError> {
    let mut doc: Value = serde_saphyr::from_str(text).map_err(ConvertError::Parse)?;
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let is_vm = match (api_version.split('/').next(), kind.as_str()) {
        (Some("kubevirt.io"), "VirtualMachine") => true,
        (Some("kubevirt.io"), "VirtualMachineInstance") => false,
        _ => return Err(ConvertError::NotKubeVirt { api_version, kind }),
    };
    let Some(root) = doc.as_object_mut() else {
        return Err(ConvertError::NotKubeVirt { api_version, kind });
    };
    let mut dropped = Vec::new();
    if root.remove("status").is_some() {
        dropped.push("status".to_string());
    }
    if let Some(Value::Object(meta)) = root.get_mut("metadata") {
        for field in SERVER_SET {
            if meta.remove(*field).is_some() {
                dropped.push(format!("metadata.{field}"));
            }
        }
    }
    if is_vm {
        if let Some(Value::Object(spec)) = root.get_mut("spec") {
            rewrite_running(spec);
        }
    }
    let mut unsupported = Vec::new();
    for (k, v) in root.iter() {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => check("metadata", v, &METADATA, &mut unsupported),
            "spec" => check(
                "spec",
                v,
                if is_vm { &VM_SPEC } else { &VMI_SPEC },
                &mut unsupported,
            ),
            other => unsupported.push(other.to_string()),
        }
    }
    if !unsupported.is_empty() {
        unsupported.sort();
        return Err(ConvertError::Unsupported(unsupported));
    }
    root.insert(
        "apiVersion".into(),
        Value::String(format!("{}/{}", crate::api::GROUP, crate::api::VERSION)),
    );
    if is_vm {
        let vm = serde_json::from_value(doc).map_err(|source| ConvertError::Invalid {
            kind: "VirtualMachine",
            source,
        })?;
        Ok(Converted::Vm(Box::new(vm), dropped))
    } else {
        let vmi = serde_json::from_value(doc).map_err(|source| ConvertError::Invalid {
            kind: "VirtualMachineInstance",
            source,
        })?;
        Ok(Converted::Vmi(Box::new(vmi), dropped))
    }
}

/// `running: true|false` → `runStrategy: Always|Halted` (when no runStrategy is given).
fn rewrite_running(spec: &mut Map<String, Value>) {
    if let Some(running) = spec.remove("running") {
        if !spec.contains_key("runStrategy") {
            let strategy = if running.as_bool() == Some(true) {
                "Always"
            } else {
                "Halted"
            };
            spec.insert("runStrategy".into(), Value::String(strategy.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RunStrategy;

    const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  uid: 1234
  labels: {app: web}
spec:
  running: true
  template:
    metadata:
      labels: {kubevirt.io/size: small}
    spec:
      domain:
        cpu: {cores: 2}
        memory: {guest: 128Mi}
        devices:
          disks:
          - name: rootdisk
            disk: {bus: virtio}
          rng: {}
      nodeSelector: {kubernetes.io/arch: amd64}
      tolerations:
      - {key: dedicated, operator: Exists, effect: NoSchedule}
      terminationGracePeriodSeconds: 0
      volumes:
      - name: rootdisk
        containerDisk: {image: quay.io/containerdisks/fedora:40}
status:
  printableStatus: Running
"#;

    #[test]
    fn a_kubevirt_vm_becomes_keels_with_the_same_fields() {
        let converted = convert(VM).unwrap();
        assert_eq!(converted.dropped(), ["status", "metadata.uid"]);
        let Converted::Vm(vm, _) = &converted else {
            panic!("not a VM")
        };
        assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Always));
        let spec = &vm.spec.template.spec;
        assert_eq!(spec.vcpus(), 2);
        assert_eq!(spec.guest_memory_bytes().unwrap(), 128 << 20);
        assert_eq!(
            spec.volumes[0].container_disk.as_ref().unwrap().image,
            "quay.io/containerdisks/fedora:40"
        );
        assert_eq!(spec.tolerations[0].key.as_deref(), Some("dedicated"));
        let yaml = converted.to_yaml().unwrap();
        assert!(yaml.contains("apiVersion: keel.dev/v1alpha1"), "{yaml}");
        // And the YAML reads back as the same VM.
        let back: VirtualMachine = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back.spec, vm.spec);
        assert_eq!(back.metadata.labels, vm.metadata.labels);
    }

    #[test]
    fn every_unsupported_field_is_named_at_once() {
        let text = VM
            .replace(
                "cpu: {cores: 2}",
                "cpu: {cores: 2, model: host-passthrough}\n        machine: {type: q35}",
            )
            .replace(
                "rng: {}",
                "rng: {}\n          gpus: [{name: g, deviceName: nvidia}]",
            );
        let err = convert(&text).unwrap_err();
        let ConvertError::Unsupported(fields) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            fields,
            &[
                "spec.template.spec.domain.cpu.model",
                "spec.template.spec.domain.devices.gpus",
                "spec.template.spec.domain.machine",
            ]
        );
        assert!(err
            .to_string()
            .starts_with("fields Keel does not support: spec.template"));
    }

    #[test]
    fn a_vmi_converts_and_other_kinds_are_refused() {
        let vmi = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: v}\nspec:\n  domain:\n    resources: {requests: {memory: 64Mi}}\n";
        let Converted::Vmi(vmi, _) = convert(vmi).unwrap() else {
            panic!("not a VMI")
        };
        assert_eq!(vmi.spec.guest_memory_bytes().unwrap(), 64 << 20);
        let err = convert("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap_err();
        assert!(matches!(err, ConvertError::NotKubeVirt { .. }), "{err}");
    }
}
