//! VMI → launcher pod, placement (in keel mode), phase and conditions.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{is_status, kube_err, ns_name, Context, Error};
use crate::api::condition::{self, Condition};
use crate::api::{
    Phase, VirtualMachineInstance, VirtualMachineInstanceStatus, CONTROLLER_FINALIZER,
    CONTROLLER_MANAGER, LABEL_NODE,
};
use crate::phase::{self, Observed, PodView};
use crate::placement::{self, PlacementError};
use crate::pod;

/// How soon an unplaceable VMI is tried again.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(3);

/// Reconciles one VMI.
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (ns, _) = ns_name(vmi.as_ref())?;
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, CONTROLLER_FINALIZER, vmi.clone(), |event| async {
        match event {
            Event::Apply(vmi) => apply(&vmi, &ctx).await,
            Event::Cleanup(vmi) => cleanup(&vmi, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(vmi.as_ref());
    Ok(action)
}

fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.as_ref();
    let unschedulable = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
        .and_then(|c| c.message.clone());
    PodView {
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_string()),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        unschedulable,
    }
}

async fn apply(vmi: &VirtualMachineInstance, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(vmi)?;
    let uid = vmi.uid().ok_or(Error::Malformed("uid"))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let status = vmi.status.clone().unwrap_or_default();
    let previous = status.phase;
    let is_final = previous.is_some_and(Phase::is_final);
    let was_placed = matches!(
        previous,
        Some(Phase::Scheduled | Phase::Running | Phase::Unknown)
    );
    let pod_name = pod::pod_name(&name, &uid);
    let mut pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(kube_err(format!("read pod {ns}/{pod_name}")))?;
    let mut create_failure = None;
    if pod.is_none() && !is_final && !was_placed {
        match pod::launcher_pod(vmi, &ctx.config.launcher) {
            Ok(desired) => {
                let params = PatchParams::apply(CONTROLLER_MANAGER).force();
                let created = pods
                    .patch(&pod_name, &params, &Patch::Apply(&desired))
                    .await
                    .map_err(kube_err(format!("apply pod {ns}/{pod_name}")))?;
                publish(
                    ctx,
                    vmi,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("created launcher pod {pod_name}"),
                )
                .await;
                pod = Some(created);
            }
            Err(err) => create_failure = Some(err.to_string()),
        }
    }
    let mut placement_failure = None;
    if let Some(p) = &pod {
        let unbound = p.spec.as_ref().is_some_and(|s| s.node_name.is_none());
        if unbound && vmi.spec.keel_placed() && !is_final && p.metadata.deletion_timestamp.is_none()
        {
            match place_and_bind(ctx, vmi, &pods, &pod_name).await {
                Ok(bound) => pod = Some(bound),
                Err(PlacementError::Unschedulable(why)) => placement_failure = Some(why),
                Err(other) => placement_failure = Some(other.to_string()),
            }
        }
    }
    let view = pod.as_ref().map(pod_view);
    let node = view.as_ref().and_then(|v| v.node_name.clone());
    let node_lost = match &node {
        Some(node) if !is_final => Api::<Node>::all(ctx.client.clone())
            .get_opt(node)
            .await
            .map_err(kube_err(format!("read node {node}")))?
            .is_none(),
        _ => false,
    };
    let report = status
        .node_report
        .as_ref()
        .filter(|r| node.as_deref() == Some(r.node.as_str()));
    let computed = phase::compute(&Observed {
        previous,
        pod: view,
        pod_was_created: status.launcher_pod.is_some(),
        report,
        node_lost,
        placement_failure: placement_failure.clone(),
        create_failure,
    });
    write_status(
        ctx,
        vmi,
        &status,
        computed.phase,
        computed.conditions.clone(),
        node.clone(),
        pod.as_ref().map(|_| pod_name.clone()),
    )
    .await?;
    if let Some(node) = &node {
        if vmi.labels().get(LABEL_NODE) != Some(node) {
            let patch = json!({
                "apiVersion": VirtualMachineInstance::api_version(&()),
                "kind": VirtualMachineInstance::kind(&()),
                "metadata": { "name": name, "labels": { LABEL_NODE: node } },
            });
            Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns)
                .patch(
                    &name,
                    &PatchParams::apply(CONTROLLER_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map_err(kube_err(format!("label VMI {ns}/{name}")))?;
        }
    }
    if previous != Some(computed.phase) {
        let kind = if computed.phase == Phase::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = condition::find(
            &computed_conditions_or(&status, &computed.conditions),
            condition::READY,
        )
        .and_then(|c| c.message.clone())
        .unwrap_or_else(|| format!("phase {}", computed.phase.as_str()));
        publish(ctx, vmi, kind, computed.phase.as_str(), note).await;
    }
    Ok(if computed.phase.is_final() {
        Action::await_change()
    } else if placement_failure.is_some() {
        Action::requeue(UNSCHEDULABLE_RETRY)
    } else {
        Action::requeue(ctx.config.resync)
    })
}

fn computed_conditions_or(
    status: &VirtualMachineInstanceStatus,
    computed: &[Condition],
) -> Vec<Condition> {
    if computed.is_empty() {
        status.conditions.clone()
    } else {
        computed.to_vec()
    }
}

/// Writes phase, node, pod and conditions when they differ from what is stored.
async fn write_status(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    status: &VirtualMachineInstanceStatus,
    phase: Phase,
    conditions: Vec<Condition>,
    node: Option<String>,
    launcher_pod: Option<String>,
) -> Result<(), Error> {
    let (ns, name) = ns_name(vmi)?;
    // A final phase with nothing new keeps its conditions as they are.
    let conditions = computed_conditions_or(status, &conditions);
    let node = node.or_else(|| status.node_name.clone());
    let launcher_pod = launcher_pod.or_else(|| status.launcher_pod.clone());
    let strip = |c: &[Condition]| -> Vec<Condition> {
        c.iter()
            .cloned()
            .map(|mut c| {
                c.last_transition_time = None;
                c
            })
            .collect()
    };
    if status.phase == Some(phase)
        && strip(&status.conditions) == strip(&conditions)
        && status.node_name == node
        && status.launcher_pod == launcher_pod
    {
        return Ok(());
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = condition::with_transition_times(conditions, &status.conditions, &now);
    let patch = json!({
        "apiVersion": VirtualMachineInstance::api_version(&()),
        "kind": VirtualMachineInstance::kind(&()),
        "status": {
            "phase": phase,
            "nodeName": node,
            "launcherPod": launcher_pod,
            "conditions": conditions,
        }
    });
    Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_err(format!("write status of VMI {ns}/{name}")))?;
    Ok(())
}

/// Places the VMI with Keel's scheduler and binds its pod (`pods/binding`); returns the bound pod.
async fn place_and_bind(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    pods: &Api<Pod>,
    pod_name: &str,
) -> Result<Pod, PlacementError> {
    let mut seed = ctx.placement.lock().await;
    *seed = seed.wrapping_add(1);
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| PlacementError::Unschedulable(format!("cannot list nodes: {e}")))?;
    let all_pods = Api::<Pod>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| PlacementError::Unschedulable(format!("cannot list pods: {e}")))?;
    let node = placement::place(vmi, &nodes.items, &all_pods.items, *seed)?;
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod_name.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Node".to_string()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    pods.create_subresource::<Binding, serde_json::Value>(
        "binding",
        pod_name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map_err(|e| PlacementError::Unschedulable(format!("binding to {node} failed: {e}")))?;
    publish(
        ctx,
        vmi,
        EventType::Normal,
        "Scheduled",
        format!("placed on {node} by keel"),
    )
    .await;
    pods.get(pod_name)
        .await
        .map_err(|e| PlacementError::Unschedulable(format!("cannot read the bound pod: {e}")))
}

/// Deletes the launcher pod; the node agent's finalizer (if any) holds the VMI until its VMM
/// is stopped.
async fn cleanup(vmi: &VirtualMachineInstance, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(vmi)?;
    let uid = vmi.uid().ok_or(Error::Malformed("uid"))?;
    let pod_name = pod::pod_name(&name, &uid);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match pods.delete(&pod_name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(kube_err(format!("delete pod {ns}/{pod_name}"))(e)),
    }
    Ok(Action::await_change())
}

async fn publish(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &vmi.object_ref(&())).await {
        log::debug!("event {reason} not recorded: {err}");
    }
}
