//! The controller: VirtualMachine → VirtualMachineInstance by run strategy ([`vm`]), VMI →
//! launcher pod, placement and status ([`vmi`]), as two kube-rs runtime `Controller`s behind a
//! Lease ([`leader`]).
//!
//! Each reconcile reads the world (the object, its pod, its node), computes what should be, and
//! applies the difference with server-side apply under the field manager `keel-controller`, so
//! running it twice changes nothing. Both kinds carry the controller's finalizer: there may be no
//! garbage collector (there is none in the test cluster), so deleting a VM deletes its VMI, and
//! deleting a VMI deletes its launcher pod, explicitly.

pub mod leader;
pub mod vm;
pub mod vmi;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::api::{VirtualMachine, VirtualMachineInstance, LAUNCHER_COMPONENT};
use crate::pod::{LauncherOptions, RenderError};
use leader::LeaseLock;

/// Errors of one reconcile (retried with backoff by [`error_policy`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object is not namespaced or has no name.
    #[error("the object has no {0}")]
    Malformed(&'static str),
    /// The launcher pod could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// JSON conversion failed.
    #[error("cannot encode: {0}")]
    Json(#[from] serde_json::Error),
}

/// `map_err` helper: an API error with what was being done.
pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Whether an API error is `status`.
pub(crate) fn is_status(err: &kube::Error, status: u16) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == status)
}

/// The controller's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Only this namespace (all when `None`).
    pub namespace: Option<String>,
    /// Launcher pods.
    pub launcher: LauncherOptions,
    /// This replica's identity (for the Lease and events).
    pub identity: String,
    /// Where the Lease lives.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// The lease duration.
    pub lease_duration: Duration,
    /// How often running VMIs are re-read even without events (node loss is noticed by it).
    pub resync: Duration,
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The configuration.
    pub config: Config,
    /// Events.
    pub recorder: Recorder,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Keel-mode placement decides one VMI at a time, so two decisions never book the same
    /// capacity.
    pub placement: tokio::sync::Mutex<u64>,
}

impl Context {
    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        ObjectRef::from_obj(obj).to_string()
    }

    /// Forgets an object's failures (after a successful reconcile).
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&Self::key(obj));
    }

    /// Counts a failure; returns the delay before the next attempt: 0.5 s doubling to 60 s.
    pub fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(Self::key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }
}

/// The delay after `n` consecutive failures: 0.5 s, 1 s, 2 s, ... at most 60 s.
pub fn backoff(n: u32) -> Duration {
    let millis = 500u64.saturating_mul(1u64 << n.saturating_sub(1).min(20));
    Duration::from_millis(millis.min(60_000))
}

/// The error policy of both controllers: log, then retry with exponential backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let delay = ctx.failed(obj.as_ref());
    log::warn!(
        "reconcile {} failed (retry in {delay:?}): {err}",
        ObjectRef::from_obj(obj.as_ref())
    );
    Action::requeue(delay)
}

/// Errors that end the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another replica took the Lease.
    #[error("lost leadership of lease {0}")]
    LostLease(String),
}

/// Runs the controller: waits for the Lease, then reconciles until leadership is lost (an
/// error: the process should exit and be restarted as a candidate) or `shutdown` resolves (the
/// Lease is released).
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let lock = LeaseLock::new(
        client.clone(),
        &config.lease_namespace,
        &config.lease_name,
        &config.identity,
        config.lease_duration,
    );
    tokio::pin!(shutdown);
    tokio::select! {
        _ = lock.acquire() => {}
        _ = &mut shutdown => return Ok(()),
    }
    log::info!(
        "{} leads (lease {}/{})",
        config.identity,
        config.lease_namespace,
        config.lease_name
    );
    let reporter = Reporter {
        controller: crate::api::CONTROLLER_MANAGER.to_string(),
        instance: Some(config.identity.clone()),
    };
    let (vms, vmis, pods): (Api<VirtualMachine>, Api<VirtualMachineInstance>, Api<Pod>) =
        match &config.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        config,
        failures: Mutex::default(),
        placement: tokio::sync::Mutex::new(0),
    });
    let launchers = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/component={LAUNCHER_COMPONENT}"));
    let vmi_controller = Controller::new(vmis.clone(), watcher::Config::default())
        .owns(pods, launchers)
        .run(vmi::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let vm_controller = Controller::new(vms, watcher::Config::default())
        .owns(vmis, watcher::Config::default())
        .run(vm::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let lease = ctx.config.lease_name.clone();
    tokio::select! {
        _ = futures::future::join(vmi_controller, vm_controller) => Ok(()),
        _ = lock.hold() => Err(RunError::LostLease(lease)),
        _ = &mut shutdown => {
            lock.release().await;
            Ok(())
        }
    }
}

/// The namespace and name of a namespaced object.
pub(crate) fn ns_name<K: ResourceExt>(obj: &K) -> Result<(String, String), Error> {
    let ns = obj.namespace().ok_or(Error::Malformed("namespace"))?;
    let name = obj.meta().name.clone().ok_or(Error::Malformed("name"))?;
    Ok((ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }
}
