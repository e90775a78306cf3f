//! The CRDs: generated from the types, committed, structural, and accepted by the real
//! kube-apiserver through the real kubectl; printer columns in `kubectl get`; the deployment
//! manifests accepted by the server (dry run).

#[macro_use]
mod harness;

use std::path::PathBuf;

use harness::{scratch, workspace_root, ControlPlane};
use serde_json::Value;

fn deploy() -> PathBuf {
    workspace_root().join("k8s-adapter/deploy")
}

#[test]
fn the_committed_crds_are_what_the_types_generate() {
    let generated = k8s_adapter::crd::crds_yaml().unwrap();
    let path = deploy().join("crds.yaml");
    if std::env::var_os("KEEL_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} drifted from the API types; regenerate it with \
         `cargo run -p k8s-adapter --bin keel-crdgen > k8s-adapter/deploy/crds.yaml` \
         (or KEEL_BLESS=1 cargo test -p k8s-adapter --test crds)",
        path.display()
    );
}

/// Every schema node says what it is: a type, int-or-string, or preserve-unknown-fields (no
/// empty `{}` schemas, which a structural schema forbids).
fn check_structural(path: &str, schema: &Value, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    for forbidden in ["$ref", "definitions", "$defs"] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: {forbidden}"));
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            check_structural(&format!("{path}.{k}"), v, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(Value::Object(_)) = obj.get("additionalProperties") {
        check_structural(
            &format!("{path}{{}}"),
            &obj["additionalProperties"],
            problems,
        );
    }
}

#[test]
fn the_crd_schemas_are_structural_with_printer_columns() {
    for crd in k8s_adapter::crd::crds() {
        let crd = serde_json::to_value(&crd).unwrap();
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        let version = &crd["spec"]["versions"][0];
        let mut problems = Vec::new();
        check_structural(&name, &version["schema"]["openAPIV3Schema"], &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            columns.contains(&"Age") && columns.len() >= 3,
            "{name}: {columns:?}"
        );
        assert_eq!(
            version["subresources"]["status"],
            serde_json::json!({}),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_installs_the_crds_and_the_server_validates_vmis_with_them() {
    require_k8s!();
    let plane = ControlPlane::start(&scratch("crds"), false).unwrap();
    let crds = deploy().join("crds.yaml");
    let out = plane
        .kubectl_ok(&["apply", "-f", crds.to_str().unwrap()])
        .unwrap();
    assert!(
        out.contains("virtualmachineinstances.keel.dev created"),
        "{out}"
    );
    assert!(out.contains("virtualmachines.keel.dev created"), "{out}");
    plane
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualmachineinstances.keel.dev",
            "crd/virtualmachines.keel.dev",
        ])
        .unwrap();
    // A KubeVirt-style manifest in Keel's group is accepted.
    let vmi = "apiVersion: keel.dev/v1alpha1\nkind: VirtualMachineInstance\nmetadata: {name: accepted}\nspec:\n  domain:\n    cpu: {cores: 2}\n    memory: {guest: 128Mi}\n    devices: {rng: {}}\n  tolerations: [{key: dedicated, operator: Exists}]\n";
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], vmi);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server's structural schema refuses a value out of range and a field of the wrong
    // type, and strict field validation names an unknown field.
    let bad_cores = vmi
        .replace("cores: 2", "cores: 0")
        .replace("accepted", "bad-cores");
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &bad_cores);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.domain.cpu.cores"),
        "{err}"
    );
    let bad_type = vmi
        .replace("cores: 2", "cores: two")
        .replace("accepted", "bad-type");
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &bad_type);
    assert!(!out.status.success(), "a string for cores was accepted");
    let unknown = vmi
        .replace("cores: 2", "cores: 2, model: host")
        .replace("accepted", "unknown-field");
    let out = plane.kubectl_stdin(&["apply", "--validate=strict", "-f", "-"], &unknown);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field \"spec.domain.cpu.model\""),
        "{err}"
    );
    // Printer columns.
    let table = plane.kubectl_ok(&["get", "vmi"]).unwrap();
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "AGE", "PHASE", "NODE", "READY"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("accepted"), "{table}");
    let wide = plane.kubectl_ok(&["get", "vmi", "-o", "wide"]).unwrap();
    assert!(
        wide.lines().next().unwrap_or_default().contains("EXIT"),
        "{wide}"
    );
    // Short names and the category work.
    assert!(plane
        .kubectl_ok(&["get", "keel"])
        .unwrap()
        .contains("accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_manifests_are_accepted_by_the_server() {
    require_k8s!();
    let plane = ControlPlane::start(&scratch("manifests"), false).unwrap();
    plane
        .kubectl_ok(&["apply", "-f", deploy().join("crds.yaml").to_str().unwrap()])
        .unwrap();
    plane
        .kubectl_ok(&["create", "namespace", "keel-system"])
        .unwrap();
    for manifest in ["rbac.yaml", "controller.yaml", "node-agent.yaml"] {
        let path = deploy().join(manifest);
        let out = plane.kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{manifest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
