//! The REST API server: HTTP/1.1 (hyper) on a Unix socket, on a thread of its own running a
//! single-threaded tokio runtime, started only with `--api-socket`.
//!
//! It parses and checks each request (path, method, body size and type, JSON) and hands it to
//! the controller ([`crate::vmm`]) on the main thread, then writes the controller's answer. A
//! bad request never reaches the controller, so it cannot disturb the VM.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use log::{debug, warn};
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use vmm_core::seccomp::{Filters, ThreadKind};
use vmm_core::VmConfig;

use crate::api::{
    ApiError, Endpoint, Method, ReceiveMigrationRequest, RequestBody, RestoreRequest,
    SendMigrationRequest, SnapshotRequest, MAX_BODY_BYTES,
};
use crate::vmm::{Answer, Event, Failure, Request};

/// How long in-flight requests may take to finish when the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created.
    #[error("--api-socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A live program already listens there, or a non-socket file is in the way.
    #[error("--api-socket {path}: {reason}")]
    InUse {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The thread or runtime could not be created.
    #[error("cannot start the API server: {0}")]
    Start(#[source] std::io::Error),
}

/// The running server; [`ApiServer::stop`] ends it after answering requests in flight.
pub struct ApiServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `path` and serves requests, sending them to the controller as `events`.
    pub fn start(
        path: &Path,
        events: Sender<Event>,
        filters: Filters,
    ) -> Result<ApiServer, ServerError> {
        vmm_core::console::remove_stale_socket(path).map_err(|err| match err {
            vmm_core::console::ConsoleError::InUse { reason, .. } => ServerError::InUse {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            },
            vmm_core::console::ConsoleError::Bind { source, .. } => ServerError::Bind {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let listener =
            std::os::unix::net::UnixListener::bind(path).map_err(|source| ServerError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        listener.set_nonblocking(true).map_err(ServerError::Start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServerError::Start)?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("keel-api".into())
            .spawn(move || {
                filters.apply_or_exit(ThreadKind::Api);
                runtime.block_on(serve(listener, events, stopped))
            })
            .map_err(ServerError::Start)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting, lets requests in flight finish (up to 2 s), removes the socket file.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("the API server thread panicked");
            }
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            debug!("cannot remove {}: {err}", self.path.display());
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    events: Sender<Event>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!("API server: {err}");
            return;
        }
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        warn!("API server: accept failed: {err}");
                        continue;
                    }
                };
                let events = events.clone();
                let service = service_fn(move |request| {
                    let events = events.clone();
                    async move { Ok::<_, Infallible>(handle(request, events).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        debug!("API connection ended: {err}");
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("API server: requests still in flight after {DRAIN_TIMEOUT:?}");
    }
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_reply(status: StatusCode, error: ApiError) -> Reply {
    let body = serde_json::to_vec(&error).unwrap_or_default();
    json_reply(status, body)
}

fn error(status: StatusCode, message: String) -> Reply {
    error_reply(
        status,
        ApiError {
            error: message,
            field: None,
        },
    )
}

/// Checks a request and turns it into the controller's form, or the 4xx to answer.
async fn parse(
    request: hyper::Request<Incoming>,
) -> Result<(Endpoint, Option<RequestBody>), Reply> {
    let path = request.uri().path().to_string();
    let Some(endpoint) = Endpoint::from_path(&path) else {
        let known: Vec<&str> = Endpoint::ALL.iter().map(|e| e.path()).collect();
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no endpoint at {path}; the API serves {}", known.join(", ")),
        ));
    };
    let method = match *request.method() {
        hyper::Method::GET => Some(Method::Get),
        hyper::Method::PUT => Some(Method::Put),
        _ => None,
    };
    if method != Some(endpoint.method()) {
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} takes {}, not {}",
                endpoint.name(),
                endpoint.method().as_str(),
                request.method()
            ),
        );
        reply
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(endpoint.method().as_str()));
        return Err(reply);
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{}: the body is larger than {MAX_BODY_BYTES} bytes",
                    endpoint.name()
                ),
            ))
        }
        Err(err) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{}: cannot read the body: {err}", endpoint.name()),
            ))
        }
    };
    if !endpoint.takes_body() {
        if !body.iter().all(u8::is_ascii_whitespace) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{} takes no body", endpoint.name()),
            ));
        }
        return Ok((endpoint, None));
    }
    if let Some(content_type) = content_type {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{}: the body must be application/json, not {content_type}",
                    endpoint.name()
                ),
            ));
        }
    }
    let schema = endpoint.body_schema().unwrap_or("JSON");
    if body.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{}: a JSON {schema} body is required", endpoint.name()),
        ));
    }
    let invalid = |err: serde_json::Error| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{}: invalid {schema} body: {err}", endpoint.name()),
        )
    };
    let parsed = match endpoint {
        Endpoint::VmSnapshot => serde_json::from_slice::<SnapshotRequest>(&body)
            .map(RequestBody::Snapshot)
            .map_err(invalid)?,
        Endpoint::VmRestore => serde_json::from_slice::<RestoreRequest>(&body)
            .map(|request| RequestBody::Restore(Box::new(request)))
            .map_err(invalid)?,
        Endpoint::VmSendMigration => serde_json::from_slice::<SendMigrationRequest>(&body)
            .map(RequestBody::SendMigration)
            .map_err(invalid)?,
        Endpoint::VmReceiveMigration => serde_json::from_slice::<ReceiveMigrationRequest>(&body)
            .map(|request| RequestBody::ReceiveMigration(Box::new(request)))
            .map_err(invalid)?,
        Endpoint::VmRateLimit => serde_json::from_slice::<vmm_core::config::RateLimitUpdate>(&body)
            .map(RequestBody::RateLimit)
            .map_err(invalid)?,
        _ => serde_json::from_slice::<VmConfig>(&body)
            .map(|config| RequestBody::Config(Box::new(config)))
            .map_err(invalid)?,
    };
    Ok((endpoint, Some(parsed)))
}

async fn handle(request: hyper::Request<Incoming>, events: Sender<Event>) -> Reply {
    let (endpoint, body) = match parse(request).await {
        Ok(parsed) => parsed,
        Err(reply) => return reply,
    };
    let (reply, answer) = oneshot::channel();
    let sent = events.send(Event::Api(Request {
        endpoint,
        body,
        reply,
    }));
    let answer = match sent {
        Ok(()) => answer.await.ok(),
        Err(_) => None,
    };
    match answer {
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: the VMM is shutting down", endpoint.name()),
        ),
        Some(Err(Failure { status, error })) => error_reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error,
        ),
        Some(Ok(answer)) => render(answer),
    }
}

fn render(answer: Answer) -> Reply {
    let body = match &answer {
        Answer::Empty => {
            let mut reply = Response::new(Full::new(Bytes::new()));
            *reply.status_mut() = StatusCode::NO_CONTENT;
            return reply;
        }
        Answer::Metrics(text) => {
            let mut reply = Response::new(Full::new(Bytes::from(text.clone())));
            reply.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return reply;
        }
        Answer::Ping(ping) => serde_json::to_vec(ping),
        Answer::Info(info) => serde_json::to_vec(info),
        Answer::Counters(counters) => serde_json::to_vec(counters),
        Answer::Migration(status) => serde_json::to_vec(status),
    };
    match body {
        Ok(body) => json_reply(StatusCode::OK, body),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialize the answer: {err}"),
        ),
    }
}
