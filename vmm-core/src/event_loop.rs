//! The VM's event loop thread (event-manager): host-side I/O that is not a vCPU exit.
//!
//! Today it feeds serial input to COM1 with flow control: input is read only while the UART's
//! receive FIFO has room, and reading resumes when the guest drains it. Devices that need host
//! events (virtio queues, sockets) add subscribers here. The loop ends when its exit eventfd
//! is signalled.

use crate::seccomp::{Filters, ThreadKind};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::console::ConsoleInput;
use devices::legacy::Serial;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use log::{debug, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The serial device as the VMM shares it between vCPU threads and the event loop.
pub type SharedSerial = Arc<Mutex<Serial<Box<dyn Write + Send>>>>;

/// A console device (the UART or virtio-console) as its input plumbing sees it.
pub type SharedConsoleInput = Arc<Mutex<dyn ConsoleInput>>;

/// Reads host input and pushes it into a console device as it has room.
struct SerialInput {
    serial: SharedConsoleInput,
    source: File,
    drained: EventFd,
    pending: Vec<u8>,
    reading: bool,
    eof: bool,
}

/// Offers `pending` input to a console device and removes what it took.
pub(crate) fn deliver_serial_input(serial: &SharedConsoleInput, pending: &mut Vec<u8>) {
    if pending.is_empty() {
        return;
    }
    let accepted = match serial.lock() {
        Ok(mut serial) => serial.enqueue_input(pending),
        Err(poisoned) => poisoned.into_inner().enqueue_input(pending),
    };
    pending.drain(..accepted);
}

impl SerialInput {
    fn deliver_pending(&mut self) {
        deliver_serial_input(&self.serial, &mut self.pending);
    }

    /// Reads input only while nothing is pending, so a slow guest throttles the source.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.pending.is_empty() && !self.eof;
        if want != self.reading {
            let events = Events::new(&self.source, EventSet::IN);
            let result = if want {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            if let Err(err) = result {
                warn!("serial input: cannot update interest: {err:?}");
            }
            self.reading = want;
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            warn!("serial input: cannot watch drain events: {err:?}");
        }
        self.update_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
        } else if events.fd() == self.source.as_raw_fd() {
            let mut buf = [0u8; 256];
            match self.source.read(&mut buf) {
                Ok(0) => {
                    debug!("serial input: end of input");
                    self.eof = true;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    warn!("serial input: read failed, input closed: {err}");
                    self.eof = true;
                }
            }
        }
        self.deliver_pending();
        self.update_interest(ops);
    }
}

/// Ends the loop when signalled.
struct ExitWatch {
    exit: EventFd,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.exit, EventSet::IN)) {
            warn!("event loop: cannot watch its exit eventfd: {err:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.read();
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A running event loop thread.
pub struct EventLoop {
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Errors starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// An eventfd, epoll instance or the thread could not be created.
    #[error("cannot start the event loop: {0}")]
    Io(#[from] std::io::Error),
    /// event-manager failed.
    #[error("cannot start the event loop: {0:?}")]
    EventManager(event_manager::Error),
}

/// Collects subscribers while the VM is built; [`EventLoopBuilder::start`] runs them.
pub struct EventLoopBuilder {
    manager: EventManager<Box<dyn MutEventSubscriber + Send>>,
    subscribers: usize,
}

impl EventLoopBuilder {
    /// Creates the epoll instance.
    pub fn new() -> Result<Self, EventLoopError> {
        Ok(EventLoopBuilder {
            manager: EventManager::new().map_err(EventLoopError::EventManager)?,
            subscribers: 0,
        })
    }

    /// Adds a subscriber (a device with host-side event sources, for example).
    pub fn add_subscriber(&mut self, subscriber: Box<dyn MutEventSubscriber + Send>) {
        self.manager.add_subscriber(subscriber);
        self.subscribers += 1;
    }

    /// Feeds `input` to the console device `serial` with flow control.
    pub fn add_serial_input(
        &mut self,
        serial: SharedConsoleInput,
        input: OwnedFd,
    ) -> Result<(), EventLoopError> {
        let drained = match serial.lock() {
            Ok(serial) => serial.input_drained().try_clone()?,
            Err(poisoned) => poisoned.into_inner().input_drained().try_clone()?,
        };
        self.add_subscriber(Box::new(SerialInput {
            serial,
            source: File::from(input),
            drained,
            pending: Vec::new(),
            reading: false,
            eof: false,
        }));
        Ok(())
    }

    /// Serves clients of `console` for the console device `serial` (see [`crate::console`]).
    pub(crate) fn add_console(
        &mut self,
        console: &crate::console::ConsoleSocket,
        serial: SharedConsoleInput,
    ) -> Result<(), EventLoopError> {
        self.add_subscriber(Box::new(console.server(serial)?));
        Ok(())
    }

    /// Whether nothing was added (then no thread is needed).
    pub fn is_empty(&self) -> bool {
        self.subscribers == 0
    }

    /// Starts the loop's thread.
    pub fn start(mut self, filters: Filters) -> Result<EventLoop, EventLoopError> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.manager.add_subscriber(Box::new(ExitWatch {
            exit: exit.try_clone()?,
            done: done.clone(),
        }));
        let mut manager = self.manager;
        let thread = std::thread::Builder::new()
            .name("keel-events".into())
            .spawn(move || {
                filters.apply_or_exit(ThreadKind::EventLoop);
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(err) = manager.run() {
                        warn!("event loop failed: {err:?}");
                        break;
                    }
                }
            })?;
        Ok(EventLoop {
            exit,
            thread: Some(thread),
        })
    }
}

impl EventLoop {
    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(err) = self.exit.write(1) {
                warn!("cannot signal the event loop to stop: {err}");
            }
            if thread.join().is_err() {
                warn!("event loop thread panicked");
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
