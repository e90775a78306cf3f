//! The VMM controller: owns the one VM of the process and carries out every request on it,
//! from the API thread, from the VM's own state changes and from signals, one at a time on
//! the main thread.
//!
//! Lifecycle as the API sees it: not created → (`vm.create`) created → (`vm.boot`) running ⇄
//! paused → exited. A guest-initiated exit (power off, reset, crash) ends the process, as in
//! Firecracker and Cloud Hypervisor, unless `--keep-alive` or `--on-reset reboot` says
//! otherwise; an exit the manager asked for (`vm.shutdown`, `vm.delete`) leaves the VMM up for
//! its next request.

use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use log::{error, info, warn};
use tokio::sync::oneshot;
use vmm_core::console::ConsoleSocket;
use vmm_core::{
    BootTimer, Error as VmError, ExitReason, RateLimitUpdateError, SerialOutput, StateError, Vm,
    VmBuilder, VmConfig, VmState,
};

use crate::api::{
    ApiError, ApiVmState, Endpoint, ExitInfo, MigrationStatus, ReceiveMigrationRequest,
    RequestBody, SendMigrationRequest, VmInfo, VmmPing,
};
use crate::cli::OnReset;
use crate::migrate::{send_in_background, Address, Outgoing, Stream};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_core::migration::{IncomingMigration, MigrationOptions};

/// How long `vm.shutdown` and friends wait for the vCPUs to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request returns.
#[derive(Debug)]
pub enum Answer {
    /// Done, nothing to return.
    Empty,
    /// `vmm.ping`.
    Ping(VmmPing),
    /// `vm.info`.
    Info(Box<VmInfo>),
    /// `vm.counters`.
    Counters(vmm_core::VmCounters),
    /// `metrics`.
    Metrics(String),
    /// `vm.migration`.
    Migration(MigrationStatus),
}

/// A failed request: its HTTP status and the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 4xx for the caller's mistakes, 500 for the VMM's.
    pub status: u16,
    /// The body.
    pub error: ApiError,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Failure {
            status,
            error: ApiError {
                error: message.into(),
                field: None,
            },
        }
    }

    fn conflict(endpoint: Endpoint, state: ApiVmState, why: &str) -> Self {
        Failure::new(
            409,
            format!("{}: the VM is {state}: {why}", endpoint.name()),
        )
    }
}

/// Maps a build error to the caller's mistake (400, naming the field) or the VMM's (500).
fn build_failure(err: VmError) -> Failure {
    let (status, field) = match &err {
        VmError::Config(config) => (400, Some(config.field.to_string())),
        VmError::Limit(limit) => (400, Some(limit.field.clone())),
        VmError::Load(_)
        | VmError::Device(_)
        | VmError::SerialFile { .. }
        | VmError::Console(_) => (400, None),
        _ => (500, None),
    };
    Failure {
        status,
        error: ApiError {
            error: err.to_string(),
            field,
        },
    }
}

/// The console socket `output` asks for: the one in `kept` when it is on the same path (a
/// client attached before a reboot stays attached), else a new one (or none).
fn keep_socket(
    kept: &mut Option<ConsoleSocket>,
    output: Option<&SerialOutput>,
) -> Result<Option<ConsoleSocket>, Failure> {
    let Some(SerialOutput::Socket(path)) = output else {
        *kept = None;
        return Ok(None);
    };
    if kept
        .as_ref()
        .is_none_or(|socket| socket.path() != path.as_path())
    {
        // The old socket (a different path) goes first.
        *kept = None;
        *kept = Some(ConsoleSocket::bind(path).map_err(|err| build_failure(err.into()))?);
    }
    Ok(kept.clone())
}

/// A request from the API thread, with where to send the answer.
pub struct Request {
    /// What is asked.
    pub endpoint: Endpoint,
    /// The body (`vm.create`'s config, `vm.snapshot`'s and `vm.restore`'s requests).
    pub body: Option<RequestBody>,
    /// The answer goes back here.
    pub reply: oneshot::Sender<Result<Answer, Failure>>,
}

/// Everything the controller reacts to.
pub enum Event {
    /// An API request.
    Api(Request),
    /// A state change of a VM.
    State {
        /// Which VM it is (events of an older VM are ignored).
        generation: u64,
        /// The new state.
        state: VmState,
    },
    /// SIGINT, SIGTERM or SIGHUP: stop the VM and end the process.
    Signal(i32),
    /// A VM migrating in has connected (`vm.receive-migration`); its config override.
    Incoming(
        Box<IncomingMigration<Box<dyn Stream>>>,
        Option<Box<VmConfig>>,
    ),
    /// Waiting for a VM migrating in failed before it connected.
    IncomingFailed(String),
}

/// How the process should end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited (and neither --keep-alive nor --on-reset reboot kept us).
    GuestExited(ExitReason),
    /// `vmm.shutdown`.
    Requested,
    /// A signal.
    Signal(i32),
}

impl Outcome {
    /// The process's exit status: 0 for a guest that shut down or reset and for requested
    /// ends, 1 for a guest that crashed or a VMM failure, 128 + N for signal N.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::GuestExited(
                ExitReason::Shutdown | ExitReason::Reset | ExitReason::Stopped,
            )
            | Outcome::Requested => 0,
            Outcome::GuestExited(_) => 1,
            Outcome::Signal(signal) => 128u8.saturating_add(*signal as u8),
        }
    }
}

/// Policies from the command line.
pub struct Policy {
    /// What a guest reset does.
    pub on_reset: OnReset,
    /// Stay up after the guest exits.
    pub keep_alive: bool,
    /// Record start-up stages (the first boot only).
    pub boot_timer: Option<BootTimer>,
    /// Inherited TAP descriptors (`--net fd=N`) by NIC id; each VM built gets duplicates.
    pub tap_fds: Vec<(String, std::os::fd::OwnedFd)>,
    /// `--limits`: what every VM built is held to.
    pub limits: vmm_core::config::Limits,
    /// The seccomp filters every VM's threads install.
    pub seccomp: vmm_core::seccomp::SeccompPolicy,
}

/// The controller.
pub struct Vmm {
    config: Option<VmConfig>,
    vm: Option<Vm>,
    /// The serial port's console socket, kept across reboots so an attached client stays
    /// attached.
    console: Option<ConsoleSocket>,
    /// The virtio console's socket, likewise.
    virtio_console: Option<ConsoleSocket>,
    boots: u64,
    /// Bumped per VM built; state events carry it so a rebuilt VM ignores its predecessor's.
    generation: u64,
    exit: Option<ExitReason>,
    /// Whether the current VM's exit was asked for through the API.
    stopping: bool,
    events: Sender<Event>,
    policy: Policy,
    /// The migration out of this process, if one ran.
    outgoing: Arc<Mutex<Outgoing>>,
    /// Why the last migration into this process failed.
    incoming_error: Option<String>,
}

impl Vmm {
    /// A controller with no VM; state changes are sent to `events`.
    pub fn new(events: Sender<Event>, policy: Policy) -> Self {
        Vmm {
            config: None,
            vm: None,
            console: None,
            virtio_console: None,
            boots: 0,
            generation: 0,
            exit: None,
            stopping: false,
            events,
            policy,
            outgoing: Arc::new(Mutex::new(Outgoing::default())),
            incoming_error: None,
        }
    }

    /// The VM's state as the API reports it.
    pub fn state(&self) -> ApiVmState {
        match &self.vm {
            Some(vm) => ApiVmState::from(&vm.state()),
            None if self.exit.is_some() && self.config.is_some() => ApiVmState::Exited,
            None if self.config.is_some() => ApiVmState::Created,
            None => ApiVmState::NotCreated,
        }
    }

    /// Builds the VM for `config` (replacing the config), not started.
    pub fn create(&mut self, config: VmConfig) -> Result<(), Failure> {
        self.build(config)
    }

    fn build(&mut self, config: VmConfig) -> Result<(), Failure> {
        self.build_from(config, None)
    }

    /// Builds the VM from the snapshot in `source`, with `config` (or the snapshot's own), not
    /// started.
    pub fn restore(&mut self, source: &str, config: Option<VmConfig>) -> Result<(), Failure> {
        let config = match config {
            Some(config) => config,
            None => vmm_core::saved_config(source)
                .map_err(|err| Failure::new(400, format!("vm.restore: {err}")))?,
        };
        self.build_from(config, Some(source))
    }

    fn build_from(&mut self, config: VmConfig, snapshot: Option<&str>) -> Result<(), Failure> {
        let mut builder = self.builder_for(&config)?;
        if let Some(dir) = snapshot {
            builder = builder.restore(dir);
        }
        let vm = builder.build().map_err(build_failure)?;
        self.adopt(vm, config);
        Ok(())
    }

    /// A builder for `config` with this process's console sockets, TAP descriptors and boot
    /// timer. The old VM (exited or never started) goes first: its devices hold files and
    /// sockets the new one may open again.
    fn builder_for(&mut self, config: &VmConfig) -> Result<VmBuilder, Failure> {
        self.vm = None;
        let mut builder = VmBuilder::new(config.clone())
            .limits(self.policy.limits)
            .seccomp(self.policy.seccomp.clone());
        if let Some(socket) = keep_socket(&mut self.console, Some(&config.serial.output))? {
            builder = builder.console_socket(socket);
        }
        let virtio_output = config.console.as_ref().map(|console| &console.output);
        if let Some(socket) = keep_socket(&mut self.virtio_console, virtio_output)? {
            builder = builder.virtio_console_socket(socket);
        }
        for (id, fd) in &self.policy.tap_fds {
            if !config.nets.iter().any(|nic| &nic.id == id) {
                continue;
            }
            let fd = fd.try_clone().map_err(|err| {
                Failure::new(500, format!("cannot duplicate the TAP of `{id}`: {err}"))
            })?;
            builder = builder.tap_fd(id.clone(), fd);
        }
        if let Some(timer) = self.policy.boot_timer.take() {
            builder = builder.boot_timer(timer);
        }
        Ok(builder)
    }

    /// Makes `vm` (built from `config`) this process's VM, watching its state.
    fn adopt(&mut self, vm: Vm, config: VmConfig) {
        self.generation += 1;
        let generation = self.generation;
        let events = self.events.clone();
        vm.handle().on_state_change(move |state| {
            let _ = events.send(Event::State {
                generation,
                state: state.clone(),
            });
        });
        self.config = Some(config);
        self.vm = Some(vm);
        self.exit = None;
        self.stopping = false;
    }

    /// `vm.send-migration`: connects, then migrates on a thread of its own.
    fn send_migration(
        &mut self,
        endpoint: Endpoint,
        request: SendMigrationRequest,
    ) -> Result<(), Failure> {
        let handle = self.handle(endpoint)?;
        if !matches!(handle.state(), VmState::Running | VmState::Paused) {
            return Err(Failure::conflict(
                endpoint,
                self.state(),
                "it is not running",
            ));
        }
        if self
            .outgoing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running
        {
            return Err(Failure::conflict(
                endpoint,
                self.state(),
                "a migration is running",
            ));
        }
        let address = Address::parse(&request.destination, "destination")
            .map_err(|err| Failure::new(400, format!("vm.send-migration: {err}")))?;
        let stream = address.connect().map_err(|err| {
            Failure::new(
                400,
                format!(
                    "vm.send-migration: cannot reach {}: {err}",
                    request.destination
                ),
            )
        })?;
        let mut options = MigrationOptions::default();
        if let Some(ms) = request.downtime_ms {
            options.downtime = std::time::Duration::from_millis(ms);
        }
        if let Some(rounds) = request.max_rounds {
            options.max_rounds = rounds.max(1);
        }
        send_in_background(handle, stream, options, self.outgoing.clone())
            .map_err(|err| Failure::new(500, format!("vm.send-migration: {err}")))
    }

    /// `vm.receive-migration`: listens, and waits for the source on a thread of its own.
    fn receive_migration(
        &mut self,
        endpoint: Endpoint,
        request: ReceiveMigrationRequest,
    ) -> Result<(), Failure> {
        if let state @ (ApiVmState::Running | ApiVmState::Paused) = self.state() {
            return Err(Failure::conflict(endpoint, state, "vm.delete it first"));
        }
        let address = Address::parse(&request.listen, "listen")
            .map_err(|err| Failure::new(400, format!("vm.receive-migration: {err}")))?;
        let listener = address.listen().map_err(|err| {
            Failure::new(
                400,
                format!(
                    "vm.receive-migration: cannot listen on {}: {err}",
                    request.listen
                ),
            )
        })?;
        let events = self.events.clone();
        let config = request.config.map(Box::new);
        self.incoming_error = None;
        std::thread::Builder::new()
            .name("keel-migrate-in".into())
            .spawn(move || {
                let event =
                    match listener
                        .accept()
                        .map_err(|err| err.to_string())
                        .and_then(|stream| {
                            IncomingMigration::accept(stream).map_err(|err| err.to_string())
                        }) {
                        Ok(incoming) => Event::Incoming(Box::new(incoming), config),
                        Err(err) => Event::IncomingFailed(err),
                    };
                let _ = events.send(event);
            })
            .map(drop)
            .map_err(|err| Failure::new(500, format!("vm.receive-migration: {err}")))
    }

    /// A VM migrating in connected: receive it (the source pauses only for the last pages).
    fn incoming(
        &mut self,
        incoming: IncomingMigration<Box<dyn Stream>>,
        config: Option<Box<VmConfig>>,
    ) {
        let config = config
            .map(|config| *config)
            .unwrap_or_else(|| incoming.config().clone());
        let received = self
            .builder_for(&config)
            .map_err(|failure| failure.error.error)
            .and_then(|builder| incoming.receive(builder).map_err(|err| err.to_string()));
        match received {
            Ok(vm) => {
                self.adopt(vm, config);
                self.boots += 1;
                info!("VM migrated in and running");
            }
            Err(err) => {
                warn!("migration in failed: {err}");
                self.incoming_error = Some(err);
            }
        }
    }

    /// `vm.rate-limit`: changes the device's limiters, and the config keeps them (for `vm.info`
    /// and the next boot).
    fn set_rate_limit(
        &mut self,
        endpoint: Endpoint,
        update: &vmm_core::config::RateLimitUpdate,
    ) -> Result<(), Failure> {
        let handle = self.handle(endpoint)?;
        handle.set_rate_limit(update).map_err(|err| {
            let (status, field) = match &err {
                RateLimitUpdateError::UnknownDevice(_) => (400, Some("id".to_string())),
                RateLimitUpdateError::Invalid(config) => (400, Some(config.field.to_string())),
                _ => (500, None),
            };
            Failure {
                status,
                error: ApiError {
                    error: format!("{}: {err}", endpoint.name()),
                    field,
                },
            }
        })?;
        if let Some(config) = self.config.as_mut() {
            config.apply_rate_limit(update);
        }
        Ok(())
    }

    fn migration_status(&self) -> MigrationStatus {
        let outgoing = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
        let progress = self
            .vm
            .as_ref()
            .and_then(|vm| vm.handle().migration_progress())
            .and_then(|progress| serde_json::to_value(progress).ok());
        let (report, error) = match &outgoing.result {
            Some(Ok(report)) => (serde_json::to_value(report).ok(), None),
            Some(Err(err)) => (None, Some(err.clone())),
            None => (None, self.incoming_error.clone()),
        };
        MigrationStatus {
            running: outgoing.running,
            progress,
            report,
            error: error.or_else(|| self.incoming_error.clone()),
        }
    }

    /// Starts the built VM (building a fresh one after an exit).
    pub fn boot(&mut self, endpoint: Endpoint) -> Result<(), Failure> {
        match self.state() {
            ApiVmState::Created if self.vm.is_some() => {}
            ApiVmState::Created | ApiVmState::Exited => {
                let config = self.config.clone().ok_or_else(|| {
                    Failure::conflict(endpoint, ApiVmState::NotCreated, "vm.create first")
                })?;
                self.build(config)?;
            }
            ApiVmState::NotCreated => {
                return Err(Failure::conflict(
                    endpoint,
                    ApiVmState::NotCreated,
                    "vm.create first",
                ))
            }
            state @ (ApiVmState::Running | ApiVmState::Paused) => {
                return Err(Failure::conflict(endpoint, state, "it is already booted"))
            }
        }
        let vm = self.vm.as_mut().ok_or_else(|| Failure::new(500, "no VM"))?;
        vm.start().map_err(build_failure)?;
        self.boots += 1;
        info!("VM booted (boot {})", self.boots);
        Ok(())
    }

    /// Stops the VM if it runs and waits for its threads. Returns whether one was running.
    fn stop(&mut self) -> Result<bool, Failure> {
        let Some(vm) = self.vm.as_mut() else {
            return Ok(false);
        };
        if !matches!(vm.state(), VmState::Running | VmState::Paused) {
            return Ok(false);
        }
        self.stopping = true;
        vm.handle().stop();
        match vm.wait_timeout(STOP_TIMEOUT) {
            Some(reason) => {
                self.exit = Some(reason);
                Ok(true)
            }
            None => Err(Failure::new(
                500,
                format!("the vCPUs did not stop within {STOP_TIMEOUT:?}"),
            )),
        }
    }

    fn info(&self) -> VmInfo {
        let exit = match self.vm.as_ref().map(Vm::state) {
            Some(VmState::Exited(reason)) => Some(ExitInfo::from(&reason)),
            _ => self.exit.as_ref().map(ExitInfo::from),
        };
        VmInfo {
            state: self.state(),
            config: self.config.clone(),
            exit,
            boots: self.boots,
            console_socket: self
                .console
                .as_ref()
                .map(|console| console.path().display().to_string()),
            virtio_console_socket: self
                .virtio_console
                .as_ref()
                .map(|console| console.path().display().to_string()),
        }
    }

    fn handle(&self, endpoint: Endpoint) -> Result<vmm_core::VmHandle, Failure> {
        self.vm
            .as_ref()
            .map(Vm::handle)
            .ok_or_else(|| Failure::conflict(endpoint, self.state(), "there is no VM"))
    }

    fn state_failure(endpoint: Endpoint, err: StateError) -> Failure {
        match err {
            StateError::InvalidTransition { state, .. } => Failure::conflict(
                endpoint,
                ApiVmState::from(&state),
                "the request does not apply in this state",
            ),
            StateError::Timeout(_) => Failure::new(500, format!("{}: {err}", endpoint.name())),
        }
    }

    /// Carries out an API request. `Ok(Some(outcome))` ends the process after the answer.
    pub fn request(
        &mut self,
        endpoint: Endpoint,
        body: Option<RequestBody>,
    ) -> (Result<Answer, Failure>, Option<Outcome>) {
        let config = match &body {
            Some(RequestBody::Config(config)) => Some((**config).clone()),
            _ => None,
        };
        let answer = match endpoint {
            Endpoint::Ping => Ok(Answer::Ping(VmmPing {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                state: self.state(),
            })),
            Endpoint::VmmShutdown => {
                return match self.stop() {
                    Ok(_) => (Ok(Answer::Empty), Some(Outcome::Requested)),
                    Err(failure) => (Err(failure), None),
                }
            }
            Endpoint::VmCreate => {
                match (self.state(), config) {
                    (state @ (ApiVmState::Running | ApiVmState::Paused), _) => Err(
                        Failure::conflict(endpoint, state, "vm.delete it first to create another"),
                    ),
                    (_, None) => Err(Failure::new(400, "vm.create: a VmConfig body is required")),
                    (_, Some(config)) => self.create(config).map(|()| Answer::Empty),
                }
            }
            Endpoint::VmBoot => self.boot(endpoint).map(|()| Answer::Empty),
            Endpoint::VmPause => self.handle(endpoint).and_then(|handle| {
                handle
                    .pause()
                    .map(|()| Answer::Empty)
                    .map_err(|err| Self::state_failure(endpoint, err))
            }),
            Endpoint::VmResume => self.handle(endpoint).and_then(|handle| {
                handle
                    .resume()
                    .map(|()| Answer::Empty)
                    .map_err(|err| Self::state_failure(endpoint, err))
            }),
            Endpoint::VmPowerButton => self.handle(endpoint).and_then(|handle| {
                handle
                    .power_button()
                    .map(|()| Answer::Empty)
                    .map_err(|err| Self::state_failure(endpoint, err))
            }),
            Endpoint::VmShutdown => match self.stop() {
                Ok(true) => Ok(Answer::Empty),
                Ok(false) => Err(Failure::conflict(
                    endpoint,
                    self.state(),
                    "it is not running",
                )),
                Err(failure) => Err(failure),
            },
            Endpoint::VmReboot => match self.state() {
                ApiVmState::NotCreated => Err(Failure::conflict(
                    endpoint,
                    ApiVmState::NotCreated,
                    "vm.create first",
                )),
                _ => self
                    .stop()
                    .and_then(|_| {
                        let config = self.config.clone().ok_or_else(|| {
                            Failure::conflict(endpoint, ApiVmState::NotCreated, "vm.create first")
                        })?;
                        self.build(config)?;
                        self.boot(endpoint)
                    })
                    .map(|()| Answer::Empty),
            },
            Endpoint::VmDelete => self.stop().map(|_| {
                self.vm = None;
                self.config = None;
                self.console = None;
                self.virtio_console = None;
                self.exit = None;
                Answer::Empty
            }),
            Endpoint::VmSnapshot => match body {
                Some(RequestBody::Snapshot(request)) => self.handle(endpoint).and_then(|handle| {
                    if handle.state() != VmState::Paused {
                        return Err(Failure::conflict(
                            endpoint,
                            self.state(),
                            "vm.pause it first",
                        ));
                    }
                    handle
                        .snapshot(&request.destination)
                        .map(|()| Answer::Empty)
                        .map_err(|err| Failure::new(500, format!("vm.snapshot: {err}")))
                }),
                _ => Err(Failure::new(
                    400,
                    "vm.snapshot: a SnapshotRequest body is required",
                )),
            },
            Endpoint::VmRestore => {
                match (self.state(), body) {
                    (state @ (ApiVmState::Running | ApiVmState::Paused), _) => Err(
                        Failure::conflict(endpoint, state, "vm.delete it first to restore another"),
                    ),
                    (_, Some(RequestBody::Restore(request))) => self
                        .restore(&request.source, request.config)
                        .and_then(|()| {
                            if request.resume {
                                self.boot(endpoint)
                            } else {
                                Ok(())
                            }
                        })
                        .map(|()| Answer::Empty),
                    _ => Err(Failure::new(
                        400,
                        "vm.restore: a RestoreRequest body is required",
                    )),
                }
            }
            Endpoint::VmSendMigration => match body {
                Some(RequestBody::SendMigration(request)) => self
                    .send_migration(endpoint, request)
                    .map(|()| Answer::Empty),
                _ => Err(Failure::new(
                    400,
                    "vm.send-migration: a SendMigrationRequest body is required",
                )),
            },
            Endpoint::VmReceiveMigration => match body {
                Some(RequestBody::ReceiveMigration(request)) => self
                    .receive_migration(endpoint, *request)
                    .map(|()| Answer::Empty),
                _ => Err(Failure::new(
                    400,
                    "vm.receive-migration: a ReceiveMigrationRequest body is required",
                )),
            },
            Endpoint::VmMigration => Ok(Answer::Migration(self.migration_status())),
            Endpoint::VmRateLimit => match body {
                Some(RequestBody::RateLimit(update)) => self
                    .set_rate_limit(endpoint, &update)
                    .map(|()| Answer::Empty),
                _ => Err(Failure::new(
                    400,
                    "vm.rate-limit: a RateLimitUpdate body is required",
                )),
            },
            Endpoint::VmInfo => Ok(Answer::Info(Box::new(self.info()))),
            Endpoint::VmCounters => self
                .handle(endpoint)
                .map(|handle| Answer::Counters(handle.counters())),
            Endpoint::Metrics => Ok(Answer::Metrics(
                self.vm
                    .as_ref()
                    .map(|vm| crate::metrics::render(&vm.handle().counters()))
                    .unwrap_or_default(),
            )),
        };
        (answer, None)
    }

    /// Reacts to a state change; `Some(outcome)` ends the process.
    pub fn state_changed(&mut self, generation: u64, state: VmState) -> Option<Outcome> {
        // Events of an older VM (before a reboot or re-create) are history.
        if generation != self.generation {
            return None;
        }
        let VmState::Exited(reason) = state else {
            return None;
        };
        if let Some(vm) = self.vm.as_mut() {
            vm.wait();
        }
        self.exit = Some(reason.clone());
        if self.stopping {
            return None;
        }
        match &reason {
            ExitReason::Shutdown | ExitReason::Reset | ExitReason::Stopped => {
                info!("VM exited: {reason}")
            }
            _ => error!("VM exited: {reason}"),
        }
        if reason == ExitReason::Reset && self.policy.on_reset == OnReset::Reboot {
            info!("guest reset: booting a fresh VM");
            let config = self.config.clone()?;
            let rebooted = self
                .build(config)
                .and_then(|()| self.boot(Endpoint::VmReboot));
            match rebooted {
                Ok(()) => return None,
                Err(failure) => {
                    error!("reboot failed: {}", failure.error.error);
                    return Some(Outcome::GuestExited(reason));
                }
            }
        }
        if self.policy.keep_alive {
            return None;
        }
        Some(Outcome::GuestExited(reason))
    }

    /// Removes the socket files the VM serves (the console socket), for a process that ends
    /// without dropping the VM.
    pub fn remove_socket_files(&self) {
        for socket in [&self.console, &self.virtio_console].into_iter().flatten() {
            socket.remove_file();
        }
    }

    /// Stops the VM on the way out.
    pub fn shut_down(&mut self) {
        if let Err(failure) = self.stop() {
            warn!("stopping the VM: {}", failure.error.error);
        }
    }

    /// Runs until something ends the process: API requests, VM state changes and signals from
    /// `events`, in order.
    pub fn run(&mut self, events: &Receiver<Event>) -> Outcome {
        loop {
            let Ok(event) = events.recv() else {
                // Every sender is gone: nothing can happen any more.
                self.shut_down();
                return Outcome::Requested;
            };
            let outcome = match event {
                Event::Api(request) => {
                    let (answer, outcome) = self.request(request.endpoint, request.body);
                    let _ = request.reply.send(answer);
                    outcome
                }
                Event::State { generation, state } => self.state_changed(generation, state),
                Event::Signal(signal) => {
                    info!("signal {signal}: stopping the VM");
                    self.shut_down();
                    Some(Outcome::Signal(signal))
                }
                Event::Incoming(incoming, config) => {
                    self.incoming(*incoming, config);
                    None
                }
                Event::IncomingFailed(err) => {
                    warn!("migration in failed: {err}");
                    self.incoming_error = Some(err);
                    None
                }
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }
}
