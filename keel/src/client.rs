//! A typed client of the REST API over its Unix socket: [`AsyncClient`] for async callers
//! (a node agent on tokio), [`Client`] for everyone else (it runs its own single-threaded
//! runtime).
//!
//! ```no_run
//! use keel::client::Client;
//!
//! let client = Client::new("/run/keel/vm1.sock")?;
//! println!("{:?}", client.ping()?.state);
//! client.pause()?;
//! let counters = client.counters()?;
//! println!("disk0 read {:?} bytes", counters.device("disk0").and_then(|d| d.get("read_bytes")));
//! client.resume()?;
//! # Ok::<(), keel::client::ClientError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use vmm_core::VmConfig;

use crate::api::{
    ApiError, Endpoint, Method, MigrationStatus, ReceiveMigrationRequest, RestoreRequest,
    SendMigrationRequest, SnapshotRequest, VmInfo, VmmPing,
};

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the keel API at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// HTTP failed (the connection broke, the answer was not HTTP).
    #[error("HTTP error talking to {path}: {source}")]
    Http {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: hyper::Error,
    },
    /// The VMM refused or failed the request.
    #[error("{endpoint}: {status}: {}", .error.error)]
    Api {
        /// The endpoint's name.
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// The VMM's error body.
        error: ApiError,
    },
    /// The answer did not have the expected shape.
    #[error("{endpoint}: unexpected answer: {source}")]
    Decode {
        /// The endpoint's name.
        endpoint: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
    /// The client's runtime could not start.
    #[error("cannot start the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// One device's (or vCPU's) counters as `vm.counters` returns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// Device id (`disk0`, `com1`, `vcpu0`).
    pub id: String,
    /// Its kind (`block`, `serial`, `vcpu`, ...).
    pub kind: String,
    /// Counter name → value.
    pub counters: BTreeMap<String, u64>,
}

impl DeviceCounters {
    /// The value of counter `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }
}

/// `vm.counters`' answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Per vCPU: exits by kind.
    pub vcpus: Vec<DeviceCounters>,
    /// The serial port and each virtio device.
    pub devices: Vec<DeviceCounters>,
}

impl Counters {
    /// The entry with this id.
    pub fn device(&self, id: &str) -> Option<&DeviceCounters> {
        self.vcpus.iter().chain(&self.devices).find(|d| d.id == id)
    }
}

/// A raw HTTP answer: status, content type and body.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The `Allow` header, if any.
    pub allow: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// The async client; one connection per call.
#[derive(Clone, Debug)]
pub struct AsyncClient {
    socket: PathBuf,
}

impl AsyncClient {
    /// A client of the API at `socket` (nothing is connected until a call).
    pub fn new(socket: impl AsRef<Path>) -> Self {
        AsyncClient {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// Sends any request (tests use it for malformed ones).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<RawResponse, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let http = |source| ClientError::Http {
            path: self.socket.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = match request.body(Full::new(Bytes::from(body))) {
            Ok(request) => request,
            Err(err) => {
                return Err(ClientError::Connect {
                    path: self.socket.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err),
                })
            }
        };
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value: &hyper::header::HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE);
        let allow = header(hyper::header::ALLOW);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http)?
            .to_bytes()
            .to_vec();
        driver.abort();
        Ok(RawResponse {
            status,
            content_type,
            allow,
            body,
        })
    }

    /// Calls `endpoint` (with `config` for `vm.create`); returns the answer's body.
    pub async fn call(
        &self,
        endpoint: Endpoint,
        config: Option<&VmConfig>,
    ) -> Result<Vec<u8>, ClientError> {
        self.call_with(endpoint, config).await
    }

    /// Calls `endpoint` with `body` as its JSON body; returns the answer's body.
    pub async fn call_with(
        &self,
        endpoint: Endpoint,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Vec<u8>, ClientError> {
        let name = endpoint.name();
        let config = body.map(|_| ());
        let body = match body {
            Some(body) => serde_json::to_vec(body).map_err(|source| ClientError::Decode {
                endpoint: name,
                source,
            })?,
            None => Vec::new(),
        };
        let method = match endpoint.method() {
            Method::Get => "GET",
            Method::Put => "PUT",
        };
        let content_type = config.map(|_| "application/json");
        let response = self
            .raw(method, endpoint.path(), content_type, body)
            .await?;
        if response.status >= 400 {
            let error = serde_json::from_slice(&response.body).unwrap_or_else(|_| ApiError {
                error: String::from_utf8_lossy(&response.body).into_owned(),
                field: None,
            });
            return Err(ClientError::Api {
                endpoint: name,
                status: response.status,
                error,
            });
        }
        Ok(response.body)
    }

    async fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: Endpoint,
    ) -> Result<T, ClientError> {
        let body = self.call(endpoint, None).await?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            endpoint: endpoint.name(),
            source,
        })
    }

    /// `vmm.ping`.
    pub async fn ping(&self) -> Result<VmmPing, ClientError> {
        self.call_json(Endpoint::Ping).await
    }

    /// `vm.info`.
    pub async fn info(&self) -> Result<VmInfo, ClientError> {
        self.call_json(Endpoint::VmInfo).await
    }

    /// `vm.counters`.
    pub async fn counters(&self) -> Result<Counters, ClientError> {
        self.call_json(Endpoint::VmCounters).await
    }

    /// `metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let body = self.call(Endpoint::Metrics, None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `vm.create`.
    pub async fn create(&self, config: &VmConfig) -> Result<(), ClientError> {
        self.call(Endpoint::VmCreate, Some(config)).await.map(drop)
    }

    /// Any endpoint that takes no body and returns nothing (`vm.pause`, `vm.boot`, ...).
    pub async fn act(&self, endpoint: Endpoint) -> Result<(), ClientError> {
        self.call(endpoint, None).await.map(drop)
    }

    /// `vm.rate-limit`: replaces a device's rate limiters.
    pub async fn set_rate_limit(
        &self,
        update: &vmm_core::config::RateLimitUpdate,
    ) -> Result<(), ClientError> {
        self.call_with(Endpoint::VmRateLimit, Some(update))
            .await
            .map(drop)
    }

    /// `vm.snapshot`: saves the paused VM to `destination`.
    pub async fn snapshot(&self, destination: &str) -> Result<(), ClientError> {
        let request = SnapshotRequest {
            destination: destination.into(),
        };
        self.call_with(Endpoint::VmSnapshot, Some(&request))
            .await
            .map(drop)
    }

    /// `vm.restore`: builds the VM from the snapshot in `source` (with `config`, or the saved
    /// one), started at once if `resume`.
    pub async fn restore(
        &self,
        source: &str,
        config: Option<&VmConfig>,
        resume: bool,
    ) -> Result<(), ClientError> {
        let request = RestoreRequest {
            source: source.into(),
            config: config.cloned(),
            resume,
        };
        self.call_with(Endpoint::VmRestore, Some(&request))
            .await
            .map(drop)
    }

    /// `vm.send-migration`: starts migrating the VM to `destination` (`unix:PATH` or
    /// `tcp:HOST:PORT`); [`AsyncClient::migration`] follows it.
    pub async fn send_migration(
        &self,
        destination: &str,
        downtime_ms: Option<u64>,
    ) -> Result<(), ClientError> {
        let request = SendMigrationRequest {
            destination: destination.into(),
            downtime_ms,
            max_rounds: None,
        };
        self.call_with(Endpoint::VmSendMigration, Some(&request))
            .await
            .map(drop)
    }

    /// `vm.receive-migration`: listens on `listen` for a VM migrating in (run with `config`,
    /// or the source's).
    pub async fn receive_migration(
        &self,
        listen: &str,
        config: Option<&VmConfig>,
    ) -> Result<(), ClientError> {
        let request = ReceiveMigrationRequest {
            listen: listen.into(),
            config: config.cloned(),
        };
        self.call_with(Endpoint::VmReceiveMigration, Some(&request))
            .await
            .map(drop)
    }

    /// `vm.migration`.
    pub async fn migration(&self) -> Result<MigrationStatus, ClientError> {
        self.call_json(Endpoint::VmMigration).await
    }
}

/// The blocking client: [`AsyncClient`] on a runtime of its own.
pub struct Client {
    inner: AsyncClient,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the API at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client {
            inner: AsyncClient::new(socket),
            runtime,
        })
    }

    /// Sends any request.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<RawResponse, ClientError> {
        self.runtime
            .block_on(self.inner.raw(method, path, content_type, body))
    }

    /// `vmm.ping`.
    pub fn ping(&self) -> Result<VmmPing, ClientError> {
        self.runtime.block_on(self.inner.ping())
    }

    /// `vm.info`.
    pub fn info(&self) -> Result<VmInfo, ClientError> {
        self.runtime.block_on(self.inner.info())
    }

    /// `vm.counters`.
    pub fn counters(&self) -> Result<Counters, ClientError> {
        self.runtime.block_on(self.inner.counters())
    }

    /// `metrics`.
    pub fn metrics(&self) -> Result<String, ClientError> {
        self.runtime.block_on(self.inner.metrics())
    }

    /// `vm.create`.
    pub fn create(&self, config: &VmConfig) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.create(config))
    }

    /// `vm.boot`.
    pub fn boot(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmBoot)
    }

    /// `vm.pause`.
    pub fn pause(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmPause)
    }

    /// `vm.resume`.
    pub fn resume(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmResume)
    }

    /// `vm.shutdown` (stop now).
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmShutdown)
    }

    /// `vm.power-button`.
    pub fn power_button(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmPowerButton)
    }

    /// `vm.reboot`.
    pub fn reboot(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmReboot)
    }

    /// `vm.delete`.
    pub fn delete(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmDelete)
    }

    /// `vmm.shutdown`: the keel process ends after answering.
    pub fn shutdown_vmm(&self) -> Result<(), ClientError> {
        self.act(Endpoint::VmmShutdown)
    }

    /// Any endpoint that takes no body and returns nothing.
    pub fn act(&self, endpoint: Endpoint) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.act(endpoint))
    }

    /// `vm.rate-limit`: replaces a device's rate limiters.
    pub fn set_rate_limit(
        &self,
        update: &vmm_core::config::RateLimitUpdate,
    ) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.set_rate_limit(update))
    }

    /// `vm.snapshot`: saves the paused VM to `destination`.
    pub fn snapshot(&self, destination: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.snapshot(destination))
    }

    /// `vm.restore`: builds the VM from the snapshot in `source` (with `config`, or the saved
    /// one), started at once if `resume`.
    pub fn restore(
        &self,
        source: &str,
        config: Option<&VmConfig>,
        resume: bool,
    ) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.restore(source, config, resume))
    }

    /// `vm.send-migration` (see [`AsyncClient::send_migration`]).
    pub fn send_migration(
        &self,
        destination: &str,
        downtime_ms: Option<u64>,
    ) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.send_migration(destination, downtime_ms))
    }

    /// `vm.receive-migration` (see [`AsyncClient::receive_migration`]).
    pub fn receive_migration(
        &self,
        listen: &str,
        config: Option<&VmConfig>,
    ) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.receive_migration(listen, config))
    }

    /// `vm.migration`.
    pub fn migration(&self) -> Result<MigrationStatus, ClientError> {
        self.runtime.block_on(self.inner.migration())
    }
}
