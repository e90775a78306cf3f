//! One VMI on this node, from start (or adoption) to the end of its VMM: the task that starts
//! `keel`, creates and boots the VM through its API, watches it, reports it into the VMI's
//! status, honours deletion with the grace period, and removes the agent's finalizer when the
//! VMM is gone.

use std::sync::Arc;
use std::time::Duration;

use keel::api::{ApiVmState, VmInfo};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::console::{Console, Registry};
use super::vmconfig::vm_config;
use super::vmm::{Vmm, VmmError};
use super::{AgentConfig, Launch};
use crate::api::{NodeReport, VirtualMachineInstance, VmmState, AGENT_FINALIZER, AGENT_MANAGER};
use crate::pod::console_socket;

/// Console lines kept in status.
const TAIL_LINES: usize = 10;

/// Everything a supervisor needs.
pub struct Supervisor {
    /// The VMIs API of the VMI's namespace.
    pub api: Api<VirtualMachineInstance>,
    /// The agent's configuration.
    pub config: Arc<AgentConfig>,
    /// Consoles, for the endpoint.
    pub consoles: Registry,
    /// The VMI as last seen (updated by the agent's watch).
    pub vmi: watch::Receiver<Option<Arc<VirtualMachineInstance>>>,
}

fn state_of(info: &VmInfo) -> VmmState {
    match info.state {
        ApiVmState::NotCreated | ApiVmState::Created => VmmState::Starting,
        ApiVmState::Running => VmmState::Running,
        ApiVmState::Paused => VmmState::Paused,
        ApiVmState::Exited => VmmState::Exited,
    }
}

impl Supervisor {
    fn current(&self) -> Option<Arc<VirtualMachineInstance>> {
        self.vmi.borrow().clone()
    }

    fn key(vmi: &VirtualMachineInstance) -> String {
        format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any())
    }

    /// Writes the agent's report into the VMI's status (server-side apply, the agent's fields).
    async fn report(&self, vmi: &VirtualMachineInstance, report: NodeReport) {
        let mut status = json!({ "nodeReport": report });
        if let Some(args) = vmi
            .spec
            .domain
            .firmware
            .as_ref()
            .and_then(|f| f.kernel_boot.as_ref())
            .and_then(|k| k.kernel_args.clone())
        {
            status["guestOSInfo"] = json!({ "kernelArgs": args });
        }
        let patch = json!({
            "apiVersion": VirtualMachineInstance::api_version(&()),
            "kind": VirtualMachineInstance::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(AGENT_MANAGER).force();
        if let Err(err) = self
            .api
            .patch_status(&vmi.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            log::warn!("{}: cannot write the node report: {err}", Self::key(vmi));
        }
    }

    fn node_report(
        &self,
        state: VmmState,
        pid: u32,
        info: Option<&VmInfo>,
        message: Option<String>,
        tail: Vec<String>,
    ) -> NodeReport {
        let exit = info.and_then(|i| i.exit.as_ref());
        NodeReport {
            node: self.config.node.clone(),
            state,
            pid: (pid != 0).then_some(pid),
            boots: info.map(|i| i.boots).unwrap_or(0),
            exit_reason: exit.map(|e| e.reason.clone()),
            message: message.or_else(|| exit.map(|e| e.message.clone())),
            console_tail: tail,
        }
    }

    /// Adds (`true`) or removes the agent's finalizer, touching no one else's.
    async fn finalizer(
        &self,
        vmi: &VirtualMachineInstance,
        present: bool,
    ) -> Result<(), kube::Error> {
        let finalizers: Vec<&str> = if present {
            vec![AGENT_FINALIZER]
        } else {
            Vec::new()
        };
        let patch = json!({
            "apiVersion": VirtualMachineInstance::api_version(&()),
            "kind": VirtualMachineInstance::kind(&()),
            "metadata": { "name": vmi.name_any(), "finalizers": finalizers },
        });
        let params = PatchParams::apply(&format!("{AGENT_MANAGER}-finalizer")).force();
        match self
            .api
            .patch(&vmi.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn has_finalizer(vmi: &VirtualMachineInstance) -> bool {
        vmi.finalizers().iter().any(|f| f == AGENT_FINALIZER)
    }

    /// Whether this VMI should be started here now: placed on this node, not over, and not
    /// already reported as ended here.
    fn should_start(&self, vmi: &VirtualMachineInstance) -> bool {
        let status = vmi.status.as_ref();
        let over = status.and_then(|s| s.phase).is_some_and(|p| p.is_final());
        let ended_here = status
            .and_then(|s| s.node_report.as_ref())
            .is_some_and(|r| {
                r.node == self.config.node && matches!(r.state, VmmState::Exited | VmmState::Failed)
            });
        vmi.meta().deletion_timestamp.is_none() && !over && !ended_here
    }

    /// Runs until the VMI's VMM is gone for good.
    pub async fn run(mut self) {
        let Some(vmi) = self.current() else { return };
        let uid = vmi.uid().unwrap_or_default();
        let mut vmm = match Vmm::adopt(&self.config.run_dir, &uid).await {
            Ok(vmm) => vmm,
            Err(err) => {
                // A keel holds this VMI's lock but does not answer: starting another would
                // run the VM twice.
                let message = err.to_string();
                log::warn!("{}: {message}", Self::key(&vmi));
                let report = self.node_report(VmmState::Failed, 0, None, Some(message), Vec::new());
                self.report(&vmi, report).await;
                return;
            }
        };
        if let Some(v) = &mut vmm {
            log::info!("{}: adopted VMM pid {}", Self::key(&vmi), v.pid);
            if vmi.meta().deletion_timestamp.is_none() {
                if let Err(message) = self.finish_start(&vmi, &uid, v).await {
                    log::warn!("{}: {message}", Self::key(&vmi));
                    v.stop(Duration::ZERO).await;
                    let report =
                        self.node_report(VmmState::Failed, 0, None, Some(message), Vec::new());
                    self.report(&vmi, report).await;
                    let _ = self.finalizer(&vmi, false).await;
                    return;
                }
            }
        }
        if vmm.is_none() {
            if vmi.meta().deletion_timestamp.is_some() || !self.should_start(&vmi) {
                if Self::has_finalizer(&vmi) {
                    let _ = self.finalizer(&vmi, false).await;
                }
                return;
            }
            match self.start(&vmi, &uid).await {
                Ok(started) => vmm = Some(started),
                Err(message) => {
                    log::warn!("{}: {message}", Self::key(&vmi));
                    let report =
                        self.node_report(VmmState::Failed, 0, None, Some(message), Vec::new());
                    self.report(&vmi, report).await;
                    let _ = self.finalizer(&vmi, false).await;
                    return;
                }
            }
        }
        let Some(mut vmm) = vmm else { return };
        self.supervise(&mut vmm).await;
    }

    /// An adopted VMM whose VM an earlier agent had not yet created or booted gets both now.
    async fn finish_start(
        &self,
        vmi: &VirtualMachineInstance,
        uid: &str,
        vmm: &Vmm,
    ) -> Result<(), String> {
        let config = vm_config(&vmi.spec, &console_socket(&self.config.run_dir, uid))
            .map_err(|e| format!("cannot run this VM here: {e}"))?;
        match vmm.finish_start(&config).await {
            Ok(true) => {
                log::info!(
                    "{}: booted the adopted VMM pid {} (its start was cut short)",
                    Self::key(vmi),
                    vmm.pid
                );
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(VmmError::Api(e)) => Err(format!("keel refused the VM: {e}")),
            Err(other) => Err(other.to_string()),
        }
    }

    async fn start(&self, vmi: &VirtualMachineInstance, uid: &str) -> Result<Vmm, String> {
        let config = vm_config(&vmi.spec, &console_socket(&self.config.run_dir, uid))
            .map_err(|e| format!("cannot run this VM here: {e}"))?;
        self.finalizer(vmi, true)
            .await
            .map_err(|e| format!("cannot add the node agent's finalizer: {e}"))?;
        let vmm = match &self.config.launch {
            Launch::Child { keel } => Vmm::spawn(keel, &self.config.run_dir, uid).await,
            Launch::Pod { timeout } => Vmm::wait_started(&self.config.run_dir, uid, *timeout).await,
        }
        .map_err(|e| e.to_string())?;
        let mut vmm = vmm;
        if let Err(err) = vmm.create_and_boot(&config).await {
            let message = match &err {
                VmmError::Api(e) => format!("keel refused the VM: {e}"),
                other => other.to_string(),
            };
            vmm.stop(Duration::ZERO).await;
            return Err(message);
        }
        log::info!("{}: started VMM pid {}", Self::key(vmi), vmm.pid);
        Ok(vmm)
    }

    async fn supervise(&mut self, vmm: &mut Vmm) {
        let Some(first) = self.current() else { return };
        let key = Self::key(&first);
        let console = Console::attach(console_socket(&self.config.run_dir, &vmm.uid));
        self.consoles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), console.clone());
        let mut last: Option<(VmmState, u64)> = None;
        let mut last_tail_at = tokio::time::Instant::now();
        loop {
            let vmi = self.current();
            let deleting = vmi
                .as_ref()
                .is_none_or(|v| v.meta().deletion_timestamp.is_some());
            if deleting {
                let grace = vmi.as_ref().map(|v| v.spec.grace_seconds()).unwrap_or(0);
                log::info!("{key}: deleted; power button, {grace} s grace");
                let info = vmm.stop(Duration::from_secs(grace.unsigned_abs())).await;
                if let Some(vmi) = &vmi {
                    let report = self.node_report(
                        VmmState::Exited,
                        vmm.pid,
                        info.as_ref(),
                        None,
                        console.tail(TAIL_LINES),
                    );
                    self.report(vmi, report).await;
                    let _ = self.finalizer(vmi, false).await;
                }
                break;
            }
            let Some(vmi) = vmi else { break };
            match vmm.info().await {
                Ok(info) => {
                    let state = state_of(&info);
                    let tail_due = last_tail_at.elapsed() >= Duration::from_secs(5);
                    if last != Some((state, info.boots)) || (state == VmmState::Running && tail_due)
                    {
                        let report = self.node_report(
                            state,
                            vmm.pid,
                            Some(&info),
                            None,
                            console.tail(TAIL_LINES),
                        );
                        self.report(&vmi, report).await;
                        last = Some((state, info.boots));
                        last_tail_at = tokio::time::Instant::now();
                    }
                    if state == VmmState::Exited {
                        log::info!(
                            "{key}: guest ended ({:?}); ending its VMM",
                            info.exit.as_ref().map(|e| &e.reason)
                        );
                        // Let the console relay drain the last output, then report it.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let report = self.node_report(
                            state,
                            vmm.pid,
                            Some(&info),
                            None,
                            console.tail(TAIL_LINES),
                        );
                        self.report(&vmi, report).await;
                        vmm.stop(Duration::ZERO).await;
                        let _ = self.finalizer(&vmi, false).await;
                        break;
                    }
                }
                Err(err) => {
                    if !vmm.alive() {
                        let message = format!(
                            "the VMM process (pid {}) ended unexpectedly: {err}",
                            vmm.pid
                        );
                        log::warn!("{key}: {message}");
                        let report = self.node_report(
                            VmmState::Failed,
                            vmm.pid,
                            None,
                            Some(message),
                            console.tail(TAIL_LINES),
                        );
                        self.report(&vmi, report).await;
                        vmm.stop(Duration::ZERO).await;
                        let _ = self.finalizer(&vmi, false).await;
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.vmi.changed() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
        self.consoles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }
}
