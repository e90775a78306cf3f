//! The node agent: one per node, it runs the VMIs placed on its node with the `keel` program.
//!
//! It watches the VMIs labelled with its node (`keel.dev/node`, set by the controller once the
//! launcher pod is bound), and gives each a [`supervisor`] task that starts `keel` (as its own
//! child, or by waiting for the launcher pod's container to open the API socket), creates and
//! boots the VM through the API, reports the VMM's state, exit reason and last console lines into
//! `status.nodeReport`, and stops the VM with the ACPI power button and the grace period when the
//! VMI is deleted. VMMs outlive the agent: a restarted agent re-adopts them by their sockets
//! (`<run dir>/<uid>/api.sock`), and ends those whose VMI no longer exists.
//!
//! What it deliberately does not do: decide phases (the controller does, from this report and
//! the pod), or place anything.

pub mod console;
pub mod supervisor;
pub mod vmconfig;
pub mod vmm;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::api::{VirtualMachineInstance, LABEL_NODE};
use console::Registry;
use supervisor::Supervisor;

/// How VMMs are started.
#[derive(Clone, Debug)]
pub enum Launch {
    /// The agent runs `keel` itself, as its child (tests; nodes without a kubelet).
    Child {
        /// The `keel` binary.
        keel: PathBuf,
    },
    /// The launcher pod's container runs `keel`; the agent waits for its socket.
    Pod {
        /// How long to wait for the socket.
        timeout: Duration,
    },
}

/// The agent's configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name.
    pub node: String,
    /// Where VMM sockets live (shared with launcher pods).
    pub run_dir: PathBuf,
    /// How VMMs are started.
    pub launch: Launch,
    /// Only VMIs of this namespace (all when `None`).
    pub namespace: Option<String>,
    /// The console endpoint's address.
    pub console_listen: SocketAddr,
    /// How often a running VM's state is read.
    pub poll: Duration,
}

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The console endpoint could not listen.
    #[error("cannot listen for consoles on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The run directory could not be created.
    #[error("cannot create the run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

struct Running {
    vmi: watch::Sender<Option<Arc<VirtualMachineInstance>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the agent until the process is stopped; VMMs keep running when it ends.
pub async fn run(client: Client, config: AgentConfig) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.run_dir).map_err(|source| AgentError::RunDir {
        path: config.run_dir.clone(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(config.console_listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.console_listen,
            source,
        })?;
    let consoles: Registry = Arc::default();
    tokio::spawn(console::serve(listener, consoles.clone()));
    let config = Arc::new(config);
    let api: Api<VirtualMachineInstance> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!("{LABEL_NODE}={}", config.node);
    let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen_in_init: HashSet<String> = HashSet::new();
    log::info!(
        "node agent for {} watching VMIs with {selector}",
        config.node
    );
    while let Some(event) = events.next().await {
        running.retain(|_, r| !r.task.is_finished());
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                log::warn!("VMI watch: {err} (retrying)");
                continue;
            }
        };
        match event {
            Event::Init => seen_in_init.clear(),
            Event::InitApply(vmi) => {
                seen_in_init.insert(vmi.uid().unwrap_or_default());
                dispatch(&client, &config, &consoles, &mut running, vmi);
            }
            Event::InitDone => {
                end_orphans(&config, &seen_in_init, &running).await;
            }
            Event::Apply(vmi) => dispatch(&client, &config, &consoles, &mut running, vmi),
            Event::Delete(vmi) => {
                if let Some(r) = running.get(&vmi.uid().unwrap_or_default()) {
                    let _ = r.vmi.send(None);
                }
            }
        }
    }
    Ok(())
}

fn dispatch(
    client: &Client,
    config: &Arc<AgentConfig>,
    consoles: &Registry,
    running: &mut HashMap<String, Running>,
    vmi: VirtualMachineInstance,
) {
    let Some(uid) = vmi.uid() else { return };
    let vmi = Arc::new(vmi);
    if let Some(r) = running.get(&uid) {
        let _ = r.vmi.send(Some(vmi));
        return;
    }
    let (tx, rx) = watch::channel(Some(vmi.clone()));
    let supervisor = Supervisor {
        api: Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default()),
        config: config.clone(),
        consoles: consoles.clone(),
        vmi: rx,
    };
    let task = tokio::spawn(supervisor.run());
    running.insert(uid, Running { vmi: tx, task });
}

/// Ends VMMs in the run directory whose VMI is not on this node any more (deleted while the agent
/// was down, with its finalizer removed by force).
async fn end_orphans(
    config: &AgentConfig,
    known: &HashSet<String>,
    running: &HashMap<String, Running>,
) {
    let Ok(entries) = std::fs::read_dir(&config.run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if known.contains(&uid) || running.contains_key(&uid) {
            continue;
        }
        match vmm::Vmm::adopt(&config.run_dir, &uid).await {
            Ok(Some(mut vmm)) => {
                log::warn!(
                    "ending orphaned VMM {uid} (pid {}): its VMI is gone",
                    vmm.pid
                );
                vmm.stop(Duration::ZERO).await;
            }
            Ok(None) => {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            // Alive but silent: its directory stays, and the next pass looks again.
            Err(err) => log::warn!("orphaned VMM {uid}: {err}"),
        }
    }
}
