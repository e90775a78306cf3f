//! `keel`: Keel's VMM program, one VM per process, and the client of its REST API.
//!
//! The program boots a VM from flags in Cloud Hypervisor's shape (`--cpus boot=2 --memory
//! size=512M --kernel vmlinux --disk path=root.img`) or from a config file (JSON or YAML, the
//! serialized [`vmm_core::VmConfig`]), and with `--api-socket PATH` serves a REST API on a Unix
//! socket: create, boot, pause, resume, shutdown, power button, reboot, info, counters,
//! Prometheus metrics, ping and VMM shutdown ([`api::Endpoint`]; the OpenAPI document is
//! [`openapi::document`], committed as `keel/api/openapi.json` and printed by the
//! `keel-openapi` program). The serial console can go to
//! a Unix socket that `keel remote console` attaches to. `keel remote` is the command-line
//! client; [`client::Client`] is the typed Rust one.
//!
//! ```no_run
//! use keel::client::Client;
//! use vmm_core::{MemSize, VmConfig};
//!
//! // A keel started as `keel --api-socket /tmp/vm1.sock` waits for a config:
//! let client = Client::new("/tmp/vm1.sock")?;
//! let mut config = VmConfig::new("/boot/vmlinux");
//! config.memory = MemSize::mib(256);
//! client.create(&config)?;
//! client.boot()?;
//! assert_eq!(client.info()?.state, keel::api::ApiVmState::Running);
//! client.shutdown_vmm()?;
//! # Ok::<(), keel::client::ClientError>(())
//! ```

pub mod api;
pub mod cli;
pub mod client;
mod jail;
pub mod metrics;
mod migrate;
pub mod openapi;
mod options;
mod remote;
mod seccomp;
mod server;
mod terminal;
mod vmm;

use std::fs::OpenOptions;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use log::error;
use vmm_core::seccomp::ThreadKind;
use vmm_core::{BootTimer, SerialInput};

use crate::cli::{Cli, Command, VmmArgs};
use crate::server::ApiServer;
use crate::vmm::{Event, Outcome, Policy, Vmm};

/// Exit status for bad flags, a bad config or a VM that cannot be built.
const EXIT_USAGE: u8 = 2;

/// The program: parses the command line and runs the VMM or a subcommand.
pub fn main() -> ExitCode {
    let started = Instant::now();
    run(Cli::parse(), started)
}

/// Runs the program for an already parsed command line (`started`: when the process began,
/// for `--boot-timer`). Programs that wrap `keel` (the demo) adjust the [`Cli`] first.
pub fn run(cli: Cli, started: Instant) -> ExitCode {
    match cli.command {
        Some(Command::Remote(args)) => remote::run(args),
        Some(Command::Jail(args)) => jail::run(args),
        None => run_vmm(cli.vmm, started),
    }
}

fn init_logging(args: &VmmArgs) -> Result<(), String> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(args.log_level.filter());
    if let Some(path) = &args.log_file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| format!("--log-file {}: {err}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder
        .try_init()
        .map_err(|err| format!("cannot set up logging: {err}"))
}

/// Raises the soft limit on open descriptors to the hard one, as Go programs do at start: a
/// guest may open up to `MAX_CONNECTIONS` (1,024) host vsock connections, the whole of the
/// usual soft limit, and the VMM must keep descriptors for its API and snapshots. Under
/// `keel jail` both limits are the jail's `no-file`.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out pointer for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!(
                "open file limit raised from {} to {}",
                limit.rlim_cur,
                limit.rlim_max
            );
        }
    }
}

/// Takes ownership of the TAP descriptors `--net fd=N` named: each must be open (it was
/// inherited from the manager that started keel).
fn adopt_tap_fds(fds: Vec<(String, i32)>) -> Result<Vec<(String, OwnedFd)>, String> {
    fds.into_iter()
        .map(|(id, fd)| {
            // SAFETY: F_GETFD takes no pointer and changes nothing; it tells whether `fd` is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!(
                    "--net: key `fd`: descriptor {fd} (NIC `{id}`) is not open: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: `fd` is open (checked above), was inherited for this purpose and nothing
            // else in this process owns it (0-2 are refused when the flags are parsed), so this
            // is its only owner from now on.
            Ok((id, unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .collect()
}

/// Blocks the termination signals in this thread (and the threads it starts), so one thread
/// can take them with `sigwait` and turn them into an orderly stop.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only edit it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Waits for a termination signal on a thread of its own and hands it to the controller.
fn forward_signals(set: libc::sigset_t, events: mpsc::Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is a valid signal set and `signal` a valid place for the number.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0
                && events.send(Event::Signal(signal)).is_err()
            {
                return;
            }
        });
    if let Err(err) = spawned {
        log::warn!("cannot watch for signals: {err}");
    }
}

fn run_vmm(args: VmmArgs, started: Instant) -> ExitCode {
    if let Err(message) = init_logging(&args) {
        eprintln!("keel: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    raise_open_file_limit();
    let (config, tap_fds) = match cli::vm_config(&args) {
        Ok(Some(vm)) => (Some(vm.config), vm.tap_fds),
        Ok(None) => (None, Vec::new()),
        Err(err) => {
            eprintln!("keel: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tap_fds = match adopt_tap_fds(tap_fds) {
        Ok(fds) => fds,
        Err(message) => {
            eprintln!("keel: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let limits = match cli::limits(&args) {
        Ok(limits) => limits,
        Err(err) => {
            eprintln!("keel: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if config.is_none() && args.api_socket.is_none() && args.restore.is_none() {
        eprintln!("keel: nothing to run: give --kernel, --config or --api-socket (see --help)");
        return ExitCode::from(EXIT_USAGE);
    }
    let timer = args.boot_timer.then(BootTimer::new);
    if let Some(timer) = &timer {
        timer.mark("flags parsed");
    }
    let (seccomp, filters) = match seccomp::policy(&args) {
        Ok(chosen) => chosen,
        Err(message) => {
            eprintln!("keel: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // This thread builds, snapshots and migrates VMs from here on; the threads it starts
    // keep its filter under their own.
    if let Err(err) = filters.apply(ThreadKind::Vmm) {
        eprintln!("keel: {err}");
        return ExitCode::from(1);
    }
    let signals = block_termination_signals();
    let (events, receiver) = mpsc::channel();
    let mut server = match &args.api_socket {
        Some(path) => match ApiServer::start(path, events.clone(), filters.clone()) {
            Ok(server) => Some(server),
            Err(err) => {
                eprintln!("keel: {err}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let interactive = config
        .as_ref()
        .is_some_and(|config| config.serial.input == SerialInput::Stdin);
    let mut vmm = Vmm::new(
        events.clone(),
        Policy {
            on_reset: args.on_reset,
            keep_alive: args.keep_alive,
            boot_timer: timer.clone(),
            tap_fds,
            limits,
            seccomp,
        },
    );
    let raw = interactive
        .then(|| terminal::RawMode::enable(libc::STDIN_FILENO))
        .flatten();
    let start = match (&args.restore, config) {
        (Some(dir), config) => Some(
            vmm.restore(&dir.to_string_lossy(), config)
                .and_then(|()| vmm.boot(api::Endpoint::VmBoot)),
        ),
        (None, Some(config)) => Some(
            vmm.create(config)
                .and_then(|()| vmm.boot(api::Endpoint::VmBoot)),
        ),
        (None, None) => None,
    };
    if let Some(Err(failure)) = start {
        drop(raw);
        eprintln!("keel: {}", failure.error.error);
        return ExitCode::from(if failure.status < 500 { EXIT_USAGE } else { 1 });
    }
    forward_signals(signals, events);
    let outcome = vmm.run(&receiver);
    if let Some(server) = server.as_mut() {
        server.stop();
    }
    vmm.remove_socket_files();
    drop(raw);
    if let Some(timer) = &timer {
        print_boot_timer(started, timer);
    }
    match &outcome {
        Outcome::GuestExited(reason) => eprintln!("keel: VM exited: {reason}"),
        Outcome::Signal(signal) => eprintln!("keel: stopped by signal {signal}"),
        Outcome::Requested => {}
    }
    if outcome.exit_code() == 1 {
        error!("VM ended in failure");
    }
    exit_now(outcome.exit_code())
}

/// Ends the process, leaving the VM's teardown to the kernel's process exit.
///
/// Everything the VM wrote is already with the kernel (disk writes are `pwrite`s, flushes
/// `fdatasync`s, sockets and the serial file unbuffered), the sockets are removed and the
/// terminal restored; only stdout is flushed here. Dropping the VM instead would close its
/// KVM descriptor while the address space is still alive, which measured 5-18 ms on the
/// development hosts (`kvm_destroy_vm`), against well under a millisecond for the same
/// teardown inside the process exit, after the kernel has torn down the address space.
fn exit_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; nothing after it runs, and nothing this process
    // still holds needs user-space cleanup (see above).
    unsafe { libc::_exit(i32::from(code)) }
}

/// `--boot-timer`: each stage's end, relative to `main` (and to the parent's clock when it
/// passed `KEEL_BOOT_T0_NS`, its CLOCK_MONOTONIC time just before exec, in nanoseconds).
fn print_boot_timer(started: Instant, timer: &BootTimer) {
    let exec_to_main_us = std::env::var("KEEL_BOOT_T0_NS")
        .ok()
        .and_then(|value| value.parse::<u128>().ok())
        .and_then(|t0| {
            let now = monotonic_ns()?;
            let since_main = started.elapsed().as_nanos();
            now.checked_sub(since_main)?.checked_sub(t0)
        })
        .map(|ns| ns as f64 / 1000.0);
    if let Some(us) = exec_to_main_us {
        eprintln!("keel-boot-timer: {us:>10.1} us  exec -> main");
    }
    let mut previous = started;
    for (stage, at) in timer.stages() {
        let total = at.saturating_duration_since(started).as_secs_f64() * 1e6;
        let step = at.saturating_duration_since(previous).as_secs_f64() * 1e6;
        eprintln!("keel-boot-timer: {total:>10.1} us  (+{step:>8.1})  {stage}");
        previous = at;
    }
}

fn monotonic_ns() -> Option<u128> {
    // SAFETY: timespec is plain data that clock_gettime fills.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return None;
    }
    Some(now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128)
}
