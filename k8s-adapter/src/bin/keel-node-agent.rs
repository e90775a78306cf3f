//! The Keel node agent: runs the VMIs placed on its node with the keel program, reports them,
//! and serves their consoles. `--attach NAMESPACE/NAME` is the console client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use k8s_adapter::agent::{self, AgentConfig, Launch};
use k8s_adapter::pod::DEFAULT_RUN_DIR;

/// Keel's node agent.
#[derive(Parser, Debug)]
#[command(name = "keel-node-agent", version)]
struct Args {
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Where VMM sockets live (shared with launcher pods).
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Run keel as the agent's own child (nodes without a kubelet, tests); without it the
    /// launcher pod's container runs keel and the agent waits for its socket.
    #[arg(long, value_name = "KEEL_BINARY")]
    spawn_keel: Option<PathBuf>,
    /// Only VMIs of this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// The console endpoint.
    #[arg(long, default_value = "127.0.0.1:7070")]
    console_listen: SocketAddr,
    /// How often a running VM's state is read, milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Attach to the console of NAMESPACE/NAME at --console-listen instead of running the agent
    /// (Ctrl-] detaches).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    attach: Option<String>,
    /// Log level (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn attach(endpoint: SocketAddr, key: &str) -> ExitCode {
    let mut stream = match TcpStream::connect(endpoint) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("keel-node-agent: cannot reach the console endpoint {endpoint}: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = writeln!(stream, "{key}") {
        eprintln!("keel-node-agent: {err}");
        return ExitCode::FAILURE;
    }
    let Ok(mut reader) = stream.try_clone() else {
        return ExitCode::FAILURE;
    };
    let output = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let mut stdin = std::io::stdin();
    while let Ok(n) = stdin.read(&mut buf) {
        if n == 0 || buf[..n].contains(&0x1d) || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = output.join();
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(key) = &args.attach {
        return attach(args.console_listen, key);
    }
    k8s_adapter::cli::init_logging(&args.log_level);
    let Some(node) = args.node.clone() else {
        eprintln!("keel-node-agent: --node (or NODE_NAME) is required");
        return ExitCode::from(2);
    };
    let runtime = match k8s_adapter::cli::runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keel-node-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match k8s_adapter::cli::client(args.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(err) => {
                eprintln!("keel-node-agent: {err}");
                return ExitCode::FAILURE;
            }
        };
        let config = AgentConfig {
            node,
            run_dir: args.run_dir,
            launch: match args.spawn_keel {
                Some(keel) => Launch::Child { keel },
                None => Launch::Pod {
                    timeout: Duration::from_secs(120),
                },
            },
            namespace: args.namespace,
            console_listen: args.console_listen,
            poll: Duration::from_millis(args.poll_ms.max(10)),
        };
        tokio::select! {
            result = agent::run(client, config) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("keel-node-agent: {err}");
                    ExitCode::FAILURE
                }
            },
            // VMMs keep running; a restarted agent adopts them.
            _ = k8s_adapter::cli::terminated() => ExitCode::SUCCESS,
        }
    })
}
