//! A console (the serial port or a virtio console) on a Unix socket: a client attaches, sees
//! the guest's output, types input, detaches; the guest never waits for it.
//!
//! Output the guest writes to COM1 goes into a bounded buffer ([`CONSOLE_BUFFER_BYTES`]) and
//! from there to the attached client as fast as it reads. With no client, or a slow one, the
//! buffer keeps the newest bytes: the oldest are dropped and counted (`dropped_bytes` in the
//! serial port's counters), so the vCPU writing them never blocks. A client that attaches
//! gets what is buffered first (the boot banner, when it attaches late). Input from the client
//! reaches the UART with the same flow control as standard input: it is read only while the
//! UART's receive FIFO has room.
//!
//! One client at a time: a second connection is told the console is busy and closed. A
//! [`ConsoleSocket`] outlives the VM it serves, so a program can hand the same socket to the
//! VM it builds after a reboot and an attached client stays attached.
//!
//! What it deliberately does not do: authenticate clients (the socket file's permissions
//! do), or keep output for more than one client.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, info, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::event_loop::{deliver_serial_input, SharedConsoleInput};
use crate::sync::lock;

/// Guest output kept for a client that is absent or slow, in bytes.
pub const CONSOLE_BUFFER_BYTES: usize = 64 * 1024;

/// What a second client reads before it is disconnected.
const BUSY_MESSAGE: &[u8] = b"keel: the console is busy: another client is attached\r\n";

/// Errors creating a console socket.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Something other than a stale socket exists at the path, or a live program listens there.
    #[error("console socket {path}: {reason}")]
    InUse {
        /// The path.
        path: PathBuf,
        /// What is there.
        reason: &'static str,
    },
    /// The socket could not be created.
    #[error("cannot listen on console socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// A Unix socket a console client attaches to; see the module documentation.
///
/// ```no_run
/// use vmm_core::console::ConsoleSocket;
/// use vmm_core::{VmBuilder, VmConfig};
///
/// let console = ConsoleSocket::bind("/run/keel/vm1.console")?;
/// let vm = VmBuilder::new(VmConfig::new("vmlinux"))
///     .console_socket(console.clone())
///     .build()?;
/// // `socat -,raw,echo=0 UNIX-CONNECT:/run/keel/vm1.console` now shows the guest's console.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ConsoleSocket {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    listener: UnixListener,
    /// Signalled when output arrives in an empty buffer.
    wake: EventFd,
    output: Mutex<VecDeque<u8>>,
    client: Mutex<Option<UnixStream>>,
    dropped: AtomicU64,
    attaches: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The socket file is ours: created by bind, gone with the last handle (unless
        // remove_file took it already).
        if let Err(err) = std::fs::remove_file(&self.path) {
            if err.kind() != ErrorKind::NotFound {
                debug!("console: cannot remove {}: {err}", self.path.display());
            }
        }
    }
}

impl ConsoleSocket {
    /// Listens on `path`. A socket file left by a program that no longer listens there is
    /// replaced; anything else at the path is an error.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ConsoleError> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| ConsoleError::Bind {
            path: path.clone(),
            source,
        })?;
        let nonblocking = listener.set_nonblocking(true);
        let wake = EventFd::new(EFD_NONBLOCK);
        let (wake, ()) = match (wake, nonblocking) {
            (Ok(wake), Ok(())) => (wake, ()),
            (Err(source), _) | (_, Err(source)) => {
                let _ = std::fs::remove_file(&path);
                return Err(ConsoleError::Bind { path, source });
            }
        };
        Ok(ConsoleSocket {
            shared: Arc::new(Shared {
                path,
                listener,
                wake,
                output: Mutex::new(VecDeque::new()),
                client: Mutex::new(None),
                dropped: AtomicU64::new(0),
                attaches: AtomicU64::new(0),
            }),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Removes the socket file now (it is removed anyway when the last clone is dropped): no
    /// new client can attach, an attached one stays. For programs that end without dropping
    /// their VM.
    pub fn remove_file(&self) {
        if let Err(err) = std::fs::remove_file(&self.shared.path) {
            debug!(
                "console: cannot remove {}: {err}",
                self.shared.path.display()
            );
        }
    }

    /// Output bytes dropped because no client read them in time.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Clients attached so far.
    pub fn attaches(&self) -> u64 {
        self.shared.attaches.load(Ordering::Relaxed)
    }

    /// Whether a client is attached now.
    pub fn attached(&self) -> bool {
        lock(&self.shared.client).is_some()
    }

    /// The writer the serial port sends the guest's output to.
    pub(crate) fn writer(&self) -> ConsoleWriter {
        ConsoleWriter {
            shared: self.shared.clone(),
        }
    }

    /// The event-loop subscriber that serves clients for the console device `serial`.
    pub(crate) fn server(&self, serial: SharedConsoleInput) -> io::Result<ConsoleServer> {
        let drained = lock(&serial).input_drained().try_clone()?;
        Ok(ConsoleServer {
            shared: self.shared.clone(),
            serial,
            drained,
            pending: Vec::new(),
            client_events: None,
        })
    }
}

/// Prepares `path` for a new listening socket: nothing there is fine, a socket file nobody
/// listens on any more (left by a program that died) is removed, and anything else (a live
/// listener, a regular file) is refused. For any Unix socket a VMM serves (API, console).
pub fn remove_stale_socket(path: &Path) -> Result<(), ConsoleError> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(ConsoleError::InUse {
            path: path.to_path_buf(),
            reason: "exists and is not a socket",
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ConsoleError::InUse {
            path: path.to_path_buf(),
            reason: "another program is listening on it",
        }),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ConsoleError::Bind {
                path: path.to_path_buf(),
                source,
            }),
        Err(source) => Err(ConsoleError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The serial port's output sink: appends to the bounded buffer, never blocks on a client.
pub(crate) struct ConsoleWriter {
    shared: Arc<Shared>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let was_empty = {
            let mut output = lock(&self.shared.output);
            let was_empty = output.is_empty();
            output.extend(buf);
            let excess = output.len().saturating_sub(CONSOLE_BUFFER_BYTES);
            if excess > 0 {
                output.drain(..excess);
                self.shared
                    .dropped
                    .fetch_add(excess as u64, Ordering::Relaxed);
            }
            was_empty
        };
        // The server drains everything per wake-up: only the first byte needs one.
        if was_empty {
            if let Err(err) = self.shared.wake.write(1) {
                warn!("console: cannot wake the console server: {err}");
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves console clients on the VM's event loop.
pub(crate) struct ConsoleServer {
    shared: Arc<Shared>,
    serial: SharedConsoleInput,
    drained: EventFd,
    /// Input read from the client and not yet taken by the UART.
    pending: Vec<u8>,
    /// What the client's socket is registered for (None: not registered).
    client_events: Option<EventSet>,
}

impl ConsoleServer {
    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.shared.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    warn!("console: accept failed: {err}");
                    return;
                }
            };
            let mut client = lock(&self.shared.client);
            if client.is_some() {
                let mut stream = stream;
                let _ = stream.set_nonblocking(true);
                let _ = stream.write(BUSY_MESSAGE);
                debug!("console: second client refused");
                continue;
            }
            if let Err(err) = stream.set_nonblocking(true) {
                warn!("console: client refused, cannot make it non-blocking: {err}");
                continue;
            }
            info!("console: client attached");
            self.shared.attaches.fetch_add(1, Ordering::Relaxed);
            *client = Some(stream);
            drop(client);
            self.pending.clear();
            self.flush_output(ops);
        }
    }

    fn detach(&mut self, ops: &mut EventOps) {
        if let Some(stream) = lock(&self.shared.client).take() {
            if self.client_events.take().is_some() {
                let _ = ops.remove(Events::new(&stream, EventSet::empty()));
            }
            info!("console: client detached");
        }
        self.pending.clear();
    }

    /// Sends buffered output to the client until the buffer is empty or the client is full.
    fn flush_output(&mut self, ops: &mut EventOps) {
        let mut broken = false;
        {
            let client = lock(&self.shared.client);
            let Some(mut stream) = client.as_ref() else {
                return;
            };
            let mut output = lock(&self.shared.output);
            while !output.is_empty() {
                let (front, _) = output.as_slices();
                match stream.write(front) {
                    Ok(0) => {
                        broken = true;
                        break;
                    }
                    Ok(written) => {
                        output.drain(..written);
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => {
                        debug!("console: client write failed: {err}");
                        broken = true;
                        break;
                    }
                }
            }
        }
        if broken {
            self.detach(ops);
        } else {
            self.update_interest(ops);
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let result = match lock(&self.shared.client).as_ref() {
            Some(mut stream) => stream.read(&mut buf),
            None => return,
        };
        match result {
            Ok(0) => self.detach(ops),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                self.deliver_input();
                self.update_interest(ops);
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(err) => {
                debug!("console: client read failed: {err}");
                self.detach(ops);
            }
        }
    }

    fn deliver_input(&mut self) {
        deliver_serial_input(&self.serial, &mut self.pending);
    }

    /// Registers the client for input (while the UART can take it) and for output space
    /// (while output waits).
    fn update_interest(&mut self, ops: &mut EventOps) {
        let client = lock(&self.shared.client);
        let Some(stream) = client.as_ref() else {
            return;
        };
        let mut want = EventSet::empty();
        if self.pending.is_empty() {
            want |= EventSet::IN;
        }
        if !lock(&self.shared.output).is_empty() {
            want |= EventSet::OUT;
        }
        if self.client_events == Some(want) {
            return;
        }
        let events = Events::new(stream, want);
        let result = match self.client_events {
            None => ops.add(events),
            Some(_) => ops.modify(events),
        };
        match result {
            Ok(()) => self.client_events = Some(want),
            Err(err) => warn!("console: cannot watch the client: {err:?}"),
        }
    }
}

impl MutEventSubscriber for ConsoleServer {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, what) in [
            (self.shared.listener.as_raw_fd(), "listener"),
            (self.shared.wake.as_raw_fd(), "output wake-up"),
            (self.drained.as_raw_fd(), "input drained"),
        ] {
            if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("console: cannot watch the {what}: {err:?}");
            }
        }
        // A client attached to the VM before a reboot stays attached.
        self.flush_output(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.shared.listener.as_raw_fd() {
            self.accept(ops);
        } else if fd == self.shared.wake.as_raw_fd() {
            let _ = self.shared.wake.read();
            self.flush_output(ops);
        } else if fd == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            self.deliver_input();
            self.update_interest(ops);
        } else {
            let set = events.event_set();
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
                self.read_input(ops);
            }
            if set.contains(EventSet::OUT) {
                self.flush_output(ops);
            }
            if set.contains(EventSet::ERROR) {
                self.detach(ops);
            }
        }
    }
}
