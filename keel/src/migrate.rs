//! Live migration for the `keel` program: the streams (`unix:PATH`, `tcp:HOST:PORT`), the
//! sending side run on a thread of its own (the API keeps answering, `vm.migration` reports
//! progress), and the receiving side's listener.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use vmm_core::migration::{MigrationOptions, MigrationReport};
use vmm_core::VmHandle;

/// A byte stream a migration runs over.
pub trait Stream: Read + Write + Send {}

impl<T: Read + Write + Send> Stream for T {}

/// Where a migration connects or listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp(String),
}

impl Address {
    /// Parses `unix:PATH` or `tcp:HOST:PORT`, naming `field` in errors.
    pub fn parse(text: &str, field: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{field}: `unix:` needs a socket path"));
            }
            return Ok(Address::Unix(path.into()));
        }
        if let Some(address) = text.strip_prefix("tcp:") {
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("{field}: `{text}` is not tcp:HOST:PORT"));
            }
            return Ok(Address::Tcp(address.into()));
        }
        Err(format!(
            "{field}: `{text}` is neither unix:PATH nor tcp:HOST:PORT"
        ))
    }

    /// Connects to the address.
    pub fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Address::Unix(path) => Box::new(UnixStream::connect(path)?),
            Address::Tcp(address) => {
                let stream = TcpStream::connect(address)?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }

    /// Listens on the address.
    pub fn listen(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Address::Unix(path) => Listener::Unix(UnixListener::bind(path)?, path.clone()),
            Address::Tcp(address) => Listener::Tcp(TcpListener::bind(address)?),
        })
    }
}

/// A bound listener, waiting for the source.
pub enum Listener {
    /// On a Unix socket (removed once a connection came).
    Unix(UnixListener, PathBuf),
    /// On TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Waits for one connection.
    pub fn accept(self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Listener::Unix(listener, path) => {
                let accepted = listener.accept();
                let _ = std::fs::remove_file(&path);
                Ok(Box::new(accepted?.0))
            }
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// What the last migration out of this process came to.
#[derive(Default)]
pub struct Outgoing {
    /// A migration is running.
    pub running: bool,
    /// How the last one ended.
    pub result: Option<Result<MigrationReport, String>>,
}

/// Sends the VM behind `handle` over `stream` on a thread of its own; `state` records the
/// outcome.
pub fn send_in_background(
    handle: VmHandle,
    stream: Box<dyn Stream>,
    options: MigrationOptions,
    state: Arc<Mutex<Outgoing>>,
) -> std::io::Result<()> {
    state.lock().unwrap_or_else(PoisonError::into_inner).running = true;
    let thread_state = state.clone();
    let spawned = std::thread::Builder::new()
        .name("keel-migrate".into())
        .spawn(move || {
            let result = handle
                .send_migration(stream, &options)
                .map_err(|err| err.to_string());
            match &result {
                Ok(report) => log::info!(
                    "migrated out: {:.1} ms in all, {:.1} ms down, {} rounds",
                    report.total_ms,
                    report.downtime_ms,
                    report.rounds
                ),
                Err(err) => log::warn!("migration failed: {err}"),
            }
            let mut slot = thread_state.lock().unwrap_or_else(PoisonError::into_inner);
            slot.running = false;
            slot.result = Some(result);
        });
    if let Err(err) = spawned {
        state.lock().unwrap_or_else(PoisonError::into_inner).running = false;
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_name_the_field() {
        assert_eq!(
            Address::parse("unix:/run/m.sock", "destination"),
            Ok(Address::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            Address::parse("tcp:127.0.0.1:4000", "destination"),
            Ok(Address::Tcp("127.0.0.1:4000".into()))
        );
        for bad in [
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:h:99999",
            "http://x",
            "",
        ] {
            let err = Address::parse(bad, "listen").unwrap_err();
            assert!(err.starts_with("listen: "), "{err}");
        }
    }
}
