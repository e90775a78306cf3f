//! What the binaries share: the API client from a kubeconfig, logging, signals.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

/// Errors setting up a binary.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The kubeconfig could not be read.
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration was found or it was unusable.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The client could not be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A client from `kubeconfig`, or from the environment (`KUBECONFIG`, `~/.kube/config`, or
/// the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, SetupError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|source| SetupError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| SetupError::Config(Box::new(e)))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| SetupError::Config(Box::new(e)))?,
    };
    Client::try_from(config).map_err(SetupError::Client)
}

/// A small multi-threaded runtime (two workers: the controller and agent are I/O-bound).
pub fn runtime() -> Result<tokio::runtime::Runtime, SetupError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(SetupError::Runtime)
}

/// Logging to stderr at `level` unless `RUST_LOG` says otherwise.
pub fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
