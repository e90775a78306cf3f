//! VirtualMachine → VirtualMachineInstance by run strategy.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{is_status, kube_err, ns_name, Context, Error};
use crate::api::condition;
use crate::api::{
    RunStrategy, VirtualMachine, VirtualMachineInstance, CONTROLLER_FINALIZER, CONTROLLER_MANAGER,
    LABEL_VM,
};
use crate::run_strategy::{self, Decision, Instance};

/// Reconciles one VM.
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ns, _) = ns_name(vm.as_ref())?;
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, CONTROLLER_FINALIZER, vm.clone(), |event| async {
        match event {
            Event::Apply(vm) => apply(&vm, &ctx).await,
            Event::Cleanup(vm) => cleanup(&vm, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(vm.as_ref());
    Ok(action)
}

/// Whether `vmi` was made by `vm` (its controller owner reference carries the VM's uid).
fn owned_by(vmi: &VirtualMachineInstance, vm: &VirtualMachine) -> bool {
    let uid = vm.uid();
    vmi.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

fn instance(vmi: &VirtualMachineInstance) -> Instance {
    let status = vmi.status.as_ref();
    Instance {
        phase: status.and_then(|s| s.phase),
        terminating: vmi.meta().deletion_timestamp.is_some(),
        unschedulable: status
            .and_then(|s| condition::find(&s.conditions, condition::POD_SCHEDULED))
            .is_some_and(|c| c.reason.as_deref() == Some("Unschedulable")),
    }
}

/// The VMI a VM runs: the template's spec, the VM's name, labels and owner.
pub fn instance_for(vm: &VirtualMachine) -> Result<VirtualMachineInstance, Error> {
    let (ns, name) = ns_name(vm)?;
    let uid = vm.uid().ok_or(Error::Malformed("uid"))?;
    let template = vm.spec.template.metadata.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(LABEL_VM.to_string(), name.clone());
    let mut vmi = VirtualMachineInstance::new(&name, vm.spec.template.spec.clone());
    vmi.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns),
        labels: Some(labels),
        annotations: (!template.annotations.is_empty()).then_some(template.annotations),
        owner_references: Some(vec![OwnerReference {
            api_version: VirtualMachine::api_version(&()).into_owned(),
            kind: VirtualMachine::kind(&()).into_owned(),
            name,
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    };
    Ok(vmi)
}

async fn apply(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(vm)?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = vmis
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("read VMI {ns}/{name}")))?;
    let strategy = vm.spec.run_strategy.unwrap_or_default();
    let mut status = vm.status.clone().unwrap_or_default();
    let foreign = existing.as_ref().is_some_and(|v| !owned_by(v, vm));
    let mut current = existing.as_ref().filter(|_| !foreign).map(instance);
    let decision = if foreign {
        Decision::Keep
    } else {
        run_strategy::decide(strategy, current, status.ran_once)
    };
    match decision {
        Decision::Create => {
            let desired = instance_for(vm)?;
            match vmis.create(&PostParams::default(), &desired).await {
                Ok(created) => {
                    if status.last_instance_uid.is_some() {
                        status.restarts = status.restarts.saturating_add(1);
                    }
                    status.last_instance_uid = created.uid();
                    status.ran_once = true;
                    current = Some(instance(&created));
                }
                // Another pass (or a previous leader) created it a moment ago.
                Err(e) if is_status(&e, 409) => {
                    return Ok(Action::requeue(std::time::Duration::from_millis(200)))
                }
                Err(e) => return Err(kube_err(format!("create VMI {ns}/{name}"))(e)),
            }
        }
        Decision::Delete => {
            match vmis.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(kube_err(format!("delete VMI {ns}/{name}"))(e)),
            }
            if let Some(c) = current.as_mut() {
                c.terminating = true;
            }
        }
        Decision::Keep => {}
    }
    let ready = existing
        .as_ref()
        .filter(|_| decision == Decision::Keep && !foreign)
        .and_then(|v| v.status.as_ref())
        .and_then(|s| condition::find(&s.conditions, condition::READY))
        .is_some_and(condition::Condition::is_true);
    let mut conditions = Vec::new();
    if foreign {
        conditions.push(condition::Condition::new(
            "Failure",
            true,
            "InstanceNotOwned",
            format!("a VMI named {name} exists that this VM did not create"),
        ));
    }
    let patch = json!({
        "apiVersion": VirtualMachine::api_version(&()),
        "kind": VirtualMachine::kind(&()),
        "status": {
            "printableStatus": run_strategy::printable_status(strategy, current, false),
            "ready": ready,
            "created": current.is_some(),
            "runStrategy": strategy,
            "restarts": status.restarts,
            "lastInstanceUid": status.last_instance_uid,
            "ranOnce": status.ran_once,
            "conditions": conditions,
        }
    });
    let now_status = vm.status.clone().unwrap_or_default();
    let unchanged = now_status.printable_status.as_deref()
        == patch["status"]["printableStatus"].as_str()
        && now_status.ready == ready
        && now_status.created == current.is_some()
        && now_status.run_strategy == Some(strategy)
        && now_status.restarts == status.restarts
        && now_status.last_instance_uid == status.last_instance_uid
        && now_status.ran_once == status.ran_once
        && now_status.conditions.len() == conditions.len();
    if !unchanged {
        Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(CONTROLLER_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(kube_err(format!("write status of VM {ns}/{name}")))?;
    }
    Ok(match (strategy, decision) {
        (_, Decision::Delete | Decision::Create) => {
            Action::requeue(std::time::Duration::from_secs(1))
        }
        (RunStrategy::Halted | RunStrategy::Manual, _) => Action::await_change(),
        _ => Action::requeue(ctx.config.resync),
    })
}

/// Deletes the VM's instance (there may be no garbage collector to do it).
async fn cleanup(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(vm)?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(vmi) = vmis
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("read VMI {ns}/{name}")))?
    {
        if owned_by(&vmi, vm) {
            match vmis.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(kube_err(format!("delete VMI {ns}/{name}"))(e)),
            }
        }
    }
    Ok(Action::await_change())
}
