//! Keel's controller and node agents as real processes against the test control plane.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{free_port, keel_binary, ControlPlane};

/// A binary of this package: the integration tests get its path from cargo; the example looks
/// next to its own directory (`target/<profile>/`).
fn package_binary(name: &str, from_cargo: Option<&'static str>) -> PathBuf {
    if let Some(path) = from_cargo {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

/// `keel-controller`.
pub fn controller_binary() -> PathBuf {
    package_binary(
        "keel-controller",
        option_env!("CARGO_BIN_EXE_keel-controller"),
    )
}

/// `keel-node-agent`.
pub fn agent_binary() -> PathBuf {
    package_binary(
        "keel-node-agent",
        option_env!("CARGO_BIN_EXE_keel-node-agent"),
    )
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = file.try_clone().expect("clone log");
    Command::new(program)
        .args(args)
        .env(
            "RUST_LOG",
            "info,kube=warn,hyper=warn,tower=warn,rustls=warn",
        )
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()))
}

/// The controller.
pub struct ControllerProcess {
    /// The process.
    pub child: Child,
    /// Its log.
    pub log: PathBuf,
    /// Its Lease identity.
    pub identity: String,
}

impl ControllerProcess {
    /// Starts `keel-controller` with identity `identity` (4 s leases, 2 s resync).
    pub fn start(plane: &ControlPlane, identity: &str) -> ControllerProcess {
        let log = plane.dir.join(format!("controller-{identity}.log"));
        let args = vec![
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            format!("--identity={identity}"),
            "--lease-namespace=default".into(),
            "--lease-seconds=4".into(),
            "--resync-seconds=2".into(),
        ];
        ControllerProcess {
            child: spawn(&controller_binary(), &args, &log),
            log,
            identity: identity.to_string(),
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node agent.
pub struct AgentProcess {
    /// The process.
    pub child: Child,
    /// Its node.
    pub node: String,
    /// Its run directory.
    pub run_dir: PathBuf,
    /// Its console endpoint.
    pub console: std::net::SocketAddr,
    /// Its log.
    pub log: PathBuf,
    args: Vec<String>,
}

impl AgentProcess {
    /// Starts `keel-node-agent` for `node`, running `keel` as its child, VMM sockets in its own
    /// run directory under the control plane's.
    pub fn start(plane: &ControlPlane, node: &str) -> AgentProcess {
        let run_dir = plane.dir.join("nodes").join(node);
        let console: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let args = vec![
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            format!("--node={node}"),
            format!("--run-dir={}", run_dir.display()),
            format!("--spawn-keel={}", keel_binary().display()),
            format!("--console-listen={console}"),
            "--poll-ms=50".into(),
        ];
        let log = plane.dir.join(format!("agent-{node}.log"));
        AgentProcess {
            child: spawn(&agent_binary(), &args, &log),
            node: node.to_string(),
            run_dir,
            console,
            log,
            args,
        }
    }

    /// Kills the agent (SIGKILL; its VMMs keep running).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&agent_binary(), &self.args, &self.log);
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        // VMMs outlive their agent by design; a test that ends (or fails) takes its own with it.
        for pid in keel_processes_under(&self.run_dir) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The controller, one agent per node, and the kubelet stand-in for those nodes.
pub struct Adapter {
    /// The controller.
    pub controller: ControllerProcess,
    /// The agents.
    pub agents: Vec<AgentProcess>,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Adapter {
    /// Starts everything for `nodes` (which must exist).
    pub async fn start(plane: &ControlPlane, nodes: &[&str]) -> Adapter {
        let client = plane.client().await.expect("client");
        let kubelet = tokio::spawn(super::kubelet::run(
            client,
            nodes.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>(),
        ));
        Adapter {
            controller: ControllerProcess::start(plane, "controller-a"),
            agents: nodes
                .iter()
                .map(|n| AgentProcess::start(plane, n))
                .collect(),
            kubelet,
        }
    }

    /// The logs of the controller and agents, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- controller\n{}", tail(&self.controller.log()));
        for agent in &self.agents {
            out.push_str(&format!(
                "\n--- agent {}\n{}",
                agent.node,
                tail(&agent.log())
            ));
        }
        out
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}

impl Drop for Adapter {
    fn drop(&mut self) {
        self.kubelet.abort();
    }
}

/// `keel` processes on this machine whose command line mentions `dir` (orphans, duplicates).
pub fn keel_processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_keel = args.first().is_some_and(|a| a.ends_with("/keel"));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if is_keel && !zombie && args.iter().any(|a| a.contains(&needle)) {
            found.push(pid);
        }
    }
    found
}
