//! The Keel controller: VirtualMachines and VirtualMachineInstances to launcher pods, placed by
//! kube-scheduler or by Keel (`schedulerName: keel`), behind a Lease.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use k8s_adapter::controller::{self, Config};
use k8s_adapter::pod::{LauncherOptions, DEFAULT_LAUNCHER_IMAGE, DEFAULT_RUN_DIR};

/// Keel's Kubernetes controller.
#[derive(Parser, Debug)]
#[command(name = "keel-controller", version)]
struct Args {
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// The launcher pods' image (it holds the keel binary).
    #[arg(long, default_value = DEFAULT_LAUNCHER_IMAGE)]
    launcher_image: String,
    /// The node directory for VMM sockets, shared with the node agent.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// This replica's identity in the Lease (default: hostname-pid).
    #[arg(long)]
    identity: Option<String>,
    /// The Lease's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "keel-controller")]
    lease_name: String,
    /// Lease duration, seconds (a successor takes over this long after a leader vanishes).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Re-read every running VMI this often, seconds.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Log level (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

fn main() -> ExitCode {
    let args = Args::parse();
    k8s_adapter::cli::init_logging(&args.log_level);
    let runtime = match k8s_adapter::cli::runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keel-controller: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match k8s_adapter::cli::client(args.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(err) => {
                eprintln!("keel-controller: {err}");
                return ExitCode::FAILURE;
            }
        };
        let config = Config {
            namespace: args.namespace,
            launcher: LauncherOptions {
                image: args.launcher_image,
                run_dir: args.run_dir,
            },
            identity: args.identity.unwrap_or_else(identity),
            lease_namespace: args.lease_namespace,
            lease_name: args.lease_name,
            lease_duration: Duration::from_secs(args.lease_seconds.max(1)),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
        };
        match controller::run(client, config, k8s_adapter::cli::terminated()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("keel-controller: {err}");
                ExitCode::FAILURE
            }
        }
    })
}
