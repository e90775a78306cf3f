//! `keel remote`: the command-line client (Cloud Hypervisor's `ch-remote`), and the
//! interactive console attach.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use crate::api::Endpoint;
use crate::cli::{read_config_file, take_rate_limiter, Direction, RemoteAction, RemoteArgs};
use crate::client::{Client, ClientError};
use crate::options::OptionList;
use crate::terminal::RawMode;

/// The byte that detaches `keel remote console` (Ctrl-], as telnet and virsh use).
pub const DETACH_BYTE: u8 = 0x1d;

/// Runs a `keel remote` command; prints answers on stdout and errors on stderr.
pub fn run(args: RemoteArgs) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("keel remote: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The `vm.rate-limit` body for `keel remote rate-limit DEVICE LIMIT [--direction]`. Which
/// field the limit goes in depends on the device's kind, which only the VMM knows: with a
/// direction it is a NIC's, without one a disk's or the entropy device's (the VMM refuses what
/// does not fit the device, naming the field).
pub(crate) fn rate_limit_update(
    device: &str,
    limit: &str,
    direction: Option<Direction>,
) -> Result<vmm_core::config::RateLimitUpdate, String> {
    let limiter = if limit == "none" {
        vmm_core::config::RateLimiterConfig::default()
    } else {
        let keys = [
            "bw_size",
            "bw_one_time_burst",
            "bw_refill_time",
            "ops_size",
            "ops_one_time_burst",
            "ops_refill_time",
        ];
        let mut list =
            OptionList::parse("rate-limit", limit, &keys, None).map_err(|err| err.to_string())?;
        take_rate_limiter(&mut list)
            .map_err(|err| err.to_string())?
            .ok_or("rate-limit: give bw_size and bw_refill_time, ops_size and ops_refill_time, or none")?
    };
    let mut update = vmm_core::config::RateLimitUpdate {
        id: device.to_string(),
        ..Default::default()
    };
    match direction {
        None => update.rate_limiter = Some(limiter),
        Some(Direction::Rx) => update.rx_rate_limiter = Some(limiter),
        Some(Direction::Tx) => update.tx_rate_limiter = Some(limiter),
        Some(Direction::Both) => {
            update.rx_rate_limiter = Some(limiter);
            update.tx_rate_limiter = Some(limiter);
        }
    }
    Ok(update)
}

fn pretty(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|err| err.to_string())
}

fn execute(args: &RemoteArgs) -> Result<(), String> {
    let client = Client::new(&args.api_socket).map_err(|err| err.to_string())?;
    let text = |err: ClientError| err.to_string();
    let endpoint = match &args.action {
        RemoteAction::Ping => {
            println!("{}", pretty(&client.ping().map_err(text)?)?);
            return Ok(());
        }
        RemoteAction::Info => {
            println!("{}", pretty(&client.info().map_err(text)?)?);
            return Ok(());
        }
        RemoteAction::Counters => {
            println!("{}", pretty(&client.counters().map_err(text)?)?);
            return Ok(());
        }
        RemoteAction::Metrics => {
            print!("{}", client.metrics().map_err(text)?);
            return Ok(());
        }
        RemoteAction::Create { config } => {
            let config = read_config_file(config).map_err(|err| err.to_string())?;
            return client.create(&config).map_err(text);
        }
        RemoteAction::SendMigration {
            destination,
            downtime_ms,
        } => {
            return client
                .send_migration(destination, *downtime_ms)
                .map_err(text);
        }
        RemoteAction::ReceiveMigration { listen, config } => {
            let config = match config {
                Some(path) => Some(read_config_file(path).map_err(|err| err.to_string())?),
                None => None,
            };
            return client
                .receive_migration(listen, config.as_ref())
                .map_err(text);
        }
        RemoteAction::Migration => {
            println!("{}", pretty(&client.migration().map_err(text)?)?);
            return Ok(());
        }
        RemoteAction::RateLimit {
            device,
            limit,
            direction,
        } => {
            let update = rate_limit_update(device, limit, *direction)?;
            return client.set_rate_limit(&update).map_err(text);
        }
        RemoteAction::Snapshot { destination } => {
            return client
                .snapshot(&destination.to_string_lossy())
                .map_err(text);
        }
        RemoteAction::Restore {
            source,
            config,
            resume,
        } => {
            let config = match config {
                Some(path) => Some(read_config_file(path).map_err(|err| err.to_string())?),
                None => None,
            };
            return client
                .restore(&source.to_string_lossy(), config.as_ref(), *resume)
                .map_err(text);
        }
        RemoteAction::Console { socket, virtio } => {
            let path = match socket {
                Some(path) => path.clone(),
                None => {
                    let info = client.info().map_err(text)?;
                    let (socket, missing) = if *virtio {
                        (
                            info.virtio_console_socket,
                            "the VM has no virtio console on a socket (--console socket=PATH)",
                        )
                    } else {
                        (
                            info.console_socket,
                            "the VM's serial port is not on a socket (--serial socket=PATH)",
                        )
                    };
                    socket.ok_or(missing)?.into()
                }
            };
            return attach(&path);
        }
        RemoteAction::Boot => Endpoint::VmBoot,
        RemoteAction::Pause => Endpoint::VmPause,
        RemoteAction::Resume => Endpoint::VmResume,
        RemoteAction::Shutdown => Endpoint::VmShutdown,
        RemoteAction::PowerButton => Endpoint::VmPowerButton,
        RemoteAction::Reboot => Endpoint::VmReboot,
        RemoteAction::Delete => Endpoint::VmDelete,
        RemoteAction::ShutdownVmm => Endpoint::VmmShutdown,
    };
    client.act(endpoint).map_err(text)
}

/// Attaches this terminal to the console socket at `path` until Ctrl-] or the VMM closes it.
pub fn attach(path: &Path) -> Result<(), String> {
    let mut socket = UnixStream::connect(path)
        .map_err(|err| format!("cannot attach to the console at {}: {err}", path.display()))?;
    let stdin = std::io::stdin();
    let raw = RawMode::enable(stdin.as_raw_fd());
    if raw.is_some() {
        eprint!(
            "keel: attached to {} (detach with Ctrl-])\r\n",
            path.display()
        );
    }
    let result = pump(&mut socket, raw.is_some());
    drop(raw);
    result
}

/// Copies the socket to stdout and stdin to the socket, until either ends.
fn pump(socket: &mut UnixStream, interactive: bool) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    let mut stdin = std::io::stdin().lock();
    let mut stdin_open = true;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { stdin.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {err}"));
        }
        if fds[0].revents != 0 {
            let n = socket.read(&mut buf).map_err(|err| err.to_string())?;
            if n == 0 {
                if interactive {
                    eprint!("\r\nkeel: the console closed\r\n");
                }
                return Ok(());
            }
            stdout.write_all(&buf[..n]).map_err(|err| err.to_string())?;
            stdout.flush().map_err(|err| err.to_string())?;
        }
        if fds[1].revents != 0 {
            let n = stdin.read(&mut buf).map_err(|err| err.to_string())?;
            if n == 0 {
                // End of input (a pipe): keep showing output until the console closes.
                stdin_open = false;
                continue;
            }
            let input = &buf[..n];
            if interactive {
                if let Some(at) = input.iter().position(|&b| b == DETACH_BYTE) {
                    socket
                        .write_all(&input[..at])
                        .map_err(|err| err.to_string())?;
                    eprint!("\r\nkeel: detached\r\n");
                    return Ok(());
                }
            }
            socket.write_all(input).map_err(|err| err.to_string())?;
        }
    }
}
