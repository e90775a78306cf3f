//! The test harness: a REAL Kubernetes control plane on this machine.
//!
//! `etcd`, `kube-apiserver`, `kube-scheduler` and `kubectl` are the upstream programs, built
//! from their published Go modules by `k8s-adapter/testenv/build.sh` (cached under
//! `~/.cache/keel/`). The harness starts etcd and kube-apiserver on 127.0.0.1 with generated
//! certificates and a static token, kube-scheduler against it, writes a kubeconfig, and creates
//! Node objects.
//!
//! No kubelet or container runtime can run here, so [`kubelet`] plays the kubelet's part, and
//! only for Keel's launcher pods: it marks a launcher pod Running once the node agent reports its
//! `keel` process up, Succeeded or Failed when it ends, and completes the graceful deletion of a
//! launcher pod once its VMM is gone. That is the only stand-in; the controller and the node
//! agent run as real processes against the real API server, and the agent runs `keel` itself
//! (the launcher container's command) on this machine's KVM.
//!
//! Deviations from a production control plane, all flags of the real servers: the
//! `ServiceAccount` admission plugin is off (no controller-manager creates the `default`
//! service accounts), so is `TaintNodesByCondition` (no node lifecycle controller would lift the
//! `not-ready` taint it puts on new Nodes), etcd runs without fsync, and there is no kube-controller-manager (so no
//! garbage collector: Keel's finalizers delete what its objects own).
#![allow(dead_code)] // each test binary uses what it needs

pub mod certs;
pub mod control_plane;
pub mod kubelet;
pub mod processes;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use control_plane::{ControlPlane, NodeSpec};
#[allow(unused_imports)]
pub use processes::{Adapter, AgentProcess, ControllerProcess};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Certs(String),
    /// A server did not start.
    #[error("{what} did not become ready: {log}")]
    NotReady {
        /// The server.
        what: String,
        /// Its log's end.
        log: String,
    },
    /// The control plane's binaries are not available.
    #[error("the Kubernetes test servers are not available: {0}")]
    Unavailable(String),
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
    /// An API call failed.
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

impl HarnessError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HarnessError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    testkit::workspace_root()
}

/// The directory with `etcd`, `kube-apiserver`, `kube-scheduler` and `kubectl`:
/// `KEEL_K8S_BIN`, else what `k8s-adapter/testenv/build.sh` prints (it builds them the first
/// time, which takes minutes, and needs Go).
pub fn server_binaries() -> Result<PathBuf, HarnessError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KEEL_K8S_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = workspace_root().join("k8s-adapter/testenv/build.sh");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    })
    .clone()
    .map_err(HarnessError::Unavailable)
}

/// Skips the test (with `KEEL-K8S-SKIP`) when the control plane cannot be built here, unless
/// `KEEL_REQUIRE_K8S=1` (CI), which turns the skip into a failure.
#[macro_export]
macro_rules! require_k8s {
    () => {
        if let Err(err) = $crate::harness::server_binaries() {
            if std::env::var_os("KEEL_REQUIRE_K8S").is_some_and(|v| v == "1") {
                panic!("KEEL_REQUIRE_K8S=1 but {err}");
            }
            eprintln!("KEEL-K8S-SKIP: {}: {err}", module_path!());
            return;
        }
    };
}

/// The `keel` program for the node agent to run: `KEEL_BIN`, else built (debug) into
/// `target/k8s-keel` by a nested cargo (its own target directory, so this works while the
/// calling cargo holds the workspace's).
pub fn keel_binary() -> PathBuf {
    static KEEL: OnceLock<PathBuf> = OnceLock::new();
    KEEL.get_or_init(|| {
        if let Some(path) = std::env::var_os("KEEL_BIN") {
            return PathBuf::from(path);
        }
        let root = workspace_root();
        let target = root.join("target/k8s-keel");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&root)
            .args([
                "build",
                "--quiet",
                "-p",
                "keel",
                "--bin",
                "keel",
                "--target-dir",
            ])
            .arg(&target);
        for var in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "RUSTC_WRAPPER",
            "CARGO_MAKEFLAGS",
            "MAKEFLAGS",
        ] {
            cmd.env_remove(var);
        }
        let output = cmd.output().expect("run cargo to build keel");
        assert!(
            output.status.success(),
            "building keel failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        target.join("debug/keel")
    })
    .clone()
}

/// Keel's test guest (built once per test binary).
pub fn test_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| testkit::build_test_guest().unwrap_or_else(|err| panic!("{err}")))
        .clone()
}

/// A scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-k8s-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Serialises the tests of one test binary (each starts its own control plane; one at a time
/// keeps their timings honest on a 2-core machine).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The test guest runs until the ACPI power button, ticking.
pub const RUN_UNTIL_POWER_BUTTON: &str =
    "keel.cpus=1 keel.ticks=0 keel.tick_tsc=2000000 keel.power_button";
/// The test guest prints a few ticks, then powers off (S5): exit reason `shutdown`.
pub const POWER_OFF_SOON: &str = "keel.cpus=1 keel.ticks=10 keel.tick_tsc=20000000 keel.exit=s5";

/// Applies the committed CRDs with kubectl and waits until they are established.
pub fn install_crds(plane: &ControlPlane) {
    let crds = workspace_root().join("k8s-adapter/deploy/crds.yaml");
    plane
        .kubectl_ok(&["apply", "-f", crds.to_str().expect("utf-8 path")])
        .expect("apply CRDs");
    plane
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualmachineinstances.keel.dev",
            "crd/virtualmachines.keel.dev",
        ])
        .expect("CRDs established");
}

/// A VMI's spec (YAML, indented for `spec:`) that boots the test guest with `cmdline` and
/// `memory`, plus `extra` lines (already indented by two spaces).
pub fn vmi_spec(cmdline: &str, memory: &str, extra: &str) -> String {
    format!(
        "  domain:\n    cpu: {{cores: 1}}\n    memory: {{guest: {memory}}}\n    firmware:\n      kernelBoot:\n        kernelArgs: \"{cmdline}\"\n        container: {{image: local/keel-test-guest, kernelPath: {}}}\n  terminationGracePeriodSeconds: 10\n{extra}",
        test_guest().display()
    )
}

/// A VMI manifest.
pub fn vmi_manifest(name: &str, cmdline: &str, memory: &str, extra: &str) -> String {
    format!(
        "apiVersion: keel.dev/v1alpha1\nkind: VirtualMachineInstance\nmetadata:\n  name: {name}\nspec:\n{}",
        vmi_spec(cmdline, memory, extra)
    )
}
