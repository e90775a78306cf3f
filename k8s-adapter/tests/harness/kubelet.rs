//! THE STAND-IN: the kubelet's part, for Keel's launcher pods only.
//!
//! No kubelet or container runtime can run on this machine. This task does the three things a
//! kubelet would do for a launcher pod on the nodes it is given, from what the node agent reports
//! about the pod's VMM (`status.nodeReport` of the pod's VMI):
//! - the VMM is up (Running or Paused): the pod becomes Running;
//! - the VMM ended: the pod becomes Succeeded (clean guest exit) or Failed;
//! - the pod is being deleted and its VMM is gone (or its VMI is): the deletion is completed
//!   (grace period 0), as a kubelet does once the containers stopped.
//!
//! Every other pod, and everything about VMIs, is left to the real servers and Keel.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_adapter::api::{VirtualMachineInstance, VmmState, LABEL_VMI, LAUNCHER_COMPONENT};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Runs until the task is aborted, checking every 100 ms.
pub async fn run(client: Client, nodes: BTreeSet<String>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("app.kubernetes.io/component={LAUNCHER_COMPONENT}");
    loop {
        if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
            for pod in list.items {
                if let Err(err) = step(&client, &nodes, &pod).await {
                    log::debug!("kubelet stand-in: {}: {err}", pod.name_any());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn step(client: &Client, nodes: &BTreeSet<String>, pod: &Pod) -> Result<(), kube::Error> {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(());
    };
    if !nodes.contains(&node) {
        return Ok(());
    }
    let ns = pod.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let vmi = match pod.labels().get(LABEL_VMI) {
        Some(name) => {
            Api::<VirtualMachineInstance>::namespaced(client.clone(), &ns)
                .get_opt(name)
                .await?
        }
        None => None,
    };
    let report = vmi
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.node_report.clone())
        .filter(|r| r.node == node);
    let vmm_up = report.as_ref().is_some_and(|r| {
        matches!(
            r.state,
            VmmState::Starting | VmmState::Running | VmmState::Paused
        )
    });
    if pod.metadata.deletion_timestamp.is_some() {
        if !vmm_up || vmi.is_none() {
            pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                .await?;
        }
        return Ok(());
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let desired = match report.as_ref().map(|r| (r.state, r.exited_cleanly())) {
        Some((VmmState::Running | VmmState::Paused, _)) => "Running",
        Some((VmmState::Exited, true)) => "Succeeded",
        Some((VmmState::Exited | VmmState::Failed, _)) => "Failed",
        _ => return Ok(()),
    };
    if phase == desired || matches!(phase.as_str(), "Succeeded" | "Failed") {
        return Ok(());
    }
    let ready = desired == "Running";
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {
        "phase": desired,
        "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
        ],
        "startTime": now,
        "message": "status set by the Keel test harness's kubelet stand-in",
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    Ok(())
}
