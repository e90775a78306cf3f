//! VM lifecycle: states, exit reasons, and the control block shared by the VM's threads.
//!
//! The control block is the one place where the VM's state changes. vCPU threads park in it while the
//! VM is paused and leave their run loops when an exit is requested; any thread holding a
//! [`VmHandle`] can pause, resume or stop the VM and watch its state changes.
//!
//! Interrupting a vCPU that is inside `KVM_RUN` uses the kernel's `immediate_exit` flag plus a
//! signal: the requester sets `immediate_exit` in the vCPU's `kvm_run` page (so a vCPU about to
//! enter the guest returns at once) and sends `SIGRTMIN` to the thread (so one already inside
//! returns with `EINTR`). Both happen under the control lock, and a vCPU clears the flag under
//! the same lock right after checking for requests, so no request is missed.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use devices::legacy::{EventFdTrigger, Ged, GED_EVENT_POWER_BUTTON};
use devices::virtio::net::Net;
use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::counters::{CounterSources, VmCounters};
use crate::vcpu::state::VcpuState;

/// Why a VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset line, or a reset system event).
    Reset,
    /// The guest powered off.
    Shutdown,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU that faulted.
        vcpu: u32,
    },
    /// [`VmHandle::stop`] (or dropping the VM) asked it to stop.
    Stopped,
    /// KVM could not handle a guest instruction (on nested KVM, often an emulation failure).
    InternalError {
        /// The vCPU.
        vcpu: u32,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Guest RIP at the failure, when it could be read.
        rip: Option<u64>,
    },
    /// Entering the guest failed (invalid vCPU state).
    EntryFailed {
        /// The vCPU.
        vcpu: u32,
        /// Hardware reason code.
        reason: u64,
    },
    /// The VMM failed (a KVM call returned an unexpected error, or an unexpected exit).
    Failed {
        /// The vCPU, when the failure was on one.
        vcpu: Option<u32>,
        /// What happened.
        detail: String,
    },
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => f.write_str("guest reset"),
            ExitReason::Shutdown => f.write_str("guest shutdown"),
            ExitReason::TripleFault { vcpu } => write!(f, "triple fault on vCPU {vcpu}"),
            ExitReason::Stopped => f.write_str("stopped on request"),
            ExitReason::InternalError {
                vcpu,
                suberror,
                rip,
            } => {
                write!(f, "KVM internal error (suberror {suberror}) on vCPU {vcpu}")?;
                match rip {
                    Some(rip) => write!(f, " at RIP {rip:#x}"),
                    None => Ok(()),
                }
            }
            ExitReason::EntryFailed { vcpu, reason } => {
                write!(f, "guest entry failed on vCPU {vcpu} (reason {reason:#x})")
            }
            ExitReason::Failed {
                vcpu: Some(vcpu),
                detail,
            } => {
                write!(f, "VMM failure on vCPU {vcpu}: {detail}")
            }
            ExitReason::Failed { vcpu: None, detail } => write!(f, "VMM failure: {detail}"),
        }
    }
}

/// A VM's lifecycle state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running guest code.
    Running,
    /// Every vCPU parked outside the guest.
    Paused,
    /// Every vCPU thread has ended.
    Exited(ExitReason),
}

/// Errors from lifecycle requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The request does not apply in the current state.
    #[error("cannot {action} a VM that is {state:?}")]
    InvalidTransition {
        /// What was asked.
        action: &'static str,
        /// The state it was in.
        state: VmState,
    },
    /// The vCPUs did not all park in time.
    #[error("vCPUs did not pause within {0:?}")]
    Timeout(Duration),
}

/// What the vCPUs are asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Exit,
}

/// A pthread handle. glibc makes `pthread_t` an integer, musl a pointer; either way it is an
/// opaque id that any thread of the process may pass to `pthread_kill`.
#[derive(Clone, Copy)]
struct ThreadHandle(libc::pthread_t);

// SAFETY: a pthread_t is an opaque identifier, not memory this process dereferences; POSIX lets
// any thread of the process use it (pthread_kill). Liveness is guaranteed separately: handles are
// removed from their slot, under the control lock, before their thread exits.
unsafe impl Send for ThreadHandle {}

/// Per-vCPU bookkeeping for kicks.
#[derive(Default)]
struct VcpuSlot {
    /// The vCPU's thread while it is alive.
    thread: Option<ThreadHandle>,
    /// Address of `kvm_run.immediate_exit` while the thread is alive.
    immediate_exit: Option<usize>,
}

/// What a parked vCPU thread is asked to do before it enters the guest again.
pub(crate) enum Step {
    /// Enter the guest.
    Run,
    /// Leave the run loop.
    Exit,
    /// Save the vCPU's state ([`Control::deliver_vcpu_state`]), then ask again.
    Save,
}

struct Inner {
    state: VmState,
    request: Request,
    /// A snapshot in progress: each vCPU's saved state, as the threads deliver them.
    saving: Option<Vec<Option<Result<VcpuState, String>>>>,
    exit: Option<ExitReason>,
    slots: Vec<VcpuSlot>,
    live: usize,
    parked: usize,
    subscribers: Vec<Sender<VmState>>,
    callbacks: Vec<StateCallback>,
}

/// A function called on every state change (see [`VmHandle::on_state_change`]).
type StateCallback = Box<dyn Fn(&VmState) + Send>;

/// The control block shared by a VM's threads and handles.
pub(crate) struct Control {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// Signal used to kick vCPU threads out of `KVM_RUN`.
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only has to interrupt KVM_RUN (EINTR).
}

/// Installs the (empty) kick handler once per process.
pub(crate) fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    static RESULT: Mutex<Option<vmm_sys_util::errno::Error>> = Mutex::new(None);
    ONCE.call_once(|| {
        if let Err(err) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            if let Ok(mut slot) = RESULT.lock() {
                *slot = Some(err);
            }
        }
    });
    match RESULT.lock() {
        Ok(slot) => slot.map_or(Ok(()), Err),
        Err(_) => Ok(()),
    }
}

impl Control {
    pub(crate) fn new(vcpus: usize) -> Arc<Self> {
        Arc::new(Control {
            inner: Mutex::new(Inner {
                state: VmState::Created,
                request: Request::Run,
                saving: None,
                exit: None,
                slots: (0..vcpus).map(|_| VcpuSlot::default()).collect(),
                live: 0,
                parked: 0,
                subscribers: Vec::new(),
                callbacks: Vec::new(),
            }),
            changed: Condvar::new(),
        })
    }

    /// vCPUs the VM was built with.
    pub(crate) fn vcpu_count(&self) -> usize {
        self.lock().slots.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock only guards plain bookkeeping; a panicking holder leaves it consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_state(inner: &mut Inner, state: VmState) {
        if inner.state == state {
            return;
        }
        debug!("vm state: {:?} -> {:?}", inner.state, state);
        inner.state = state.clone();
        inner
            .subscribers
            .retain(|subscriber| subscriber.send(state.clone()).is_ok());
        for callback in &inner.callbacks {
            callback(&state);
        }
    }

    /// Kicks every live vCPU out of the guest. Called with the lock held.
    fn kick_all(inner: &Inner) {
        for slot in &inner.slots {
            if let Some(addr) = slot.immediate_exit {
                // SAFETY: `addr` is the address of `immediate_exit` in the vCPU's mapped
                // `kvm_run` page, as `register_vcpu`'s contract requires. The slot holds it only
                // until the vCPU thread calls `vcpu_exited`, which it does (under this lock, on
                // every path including unwinding) before its VcpuFd and mapping are dropped; we
                // hold the lock, so the page is mapped. `AtomicU8` has the size and alignment of
                // `u8`, and every Rust write to the byte happens under this lock; KVM reads it
                // on guest entry from the vCPU thread, which an atomic store cannot tear.
                let flag = unsafe { &*(addr as *const AtomicU8) };
                flag.store(1, Ordering::SeqCst);
            }
            if let Some(thread) = slot.thread {
                // SAFETY: `thread` is a live thread: slots are cleared under this lock before
                // their thread exits. pthread_kill only queues a signal whose handler is empty.
                let rc = unsafe { libc::pthread_kill(thread.0, kick_signal()) };
                if rc != 0 {
                    warn!("cannot kick vCPU thread: error {rc}");
                }
            }
        }
    }

    /// Marks the VM running as its vCPU threads start.
    pub(crate) fn mark_started(&self, vcpus: usize) {
        let mut inner = self.lock();
        inner.live = vcpus;
        if inner.exit.is_none() {
            Self::set_state(&mut inner, VmState::Running);
        }
    }

    /// Registers the calling vCPU thread and its `immediate_exit` byte.
    ///
    /// # Safety
    ///
    /// `immediate_exit` must point to the `immediate_exit` byte of the calling thread's own
    /// vCPU's mapped `kvm_run` page, and that mapping must stay alive until the same thread has
    /// called [`Control::vcpu_exited`] for `index` (on every path, unwinding included): until
    /// then any thread may write the byte through [`Control::kick_all`].
    pub(crate) unsafe fn register_vcpu(&self, index: usize, immediate_exit: *mut u8) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(index) {
            // SAFETY: pthread_self has no preconditions and cannot fail.
            slot.thread = Some(ThreadHandle(unsafe { libc::pthread_self() }));
            slot.immediate_exit = Some(immediate_exit as usize);
        }
        // A request made before this thread registered could not kick it: make it see it.
        if inner.request != Request::Run {
            // SAFETY: the caller guarantees `immediate_exit` is its own vCPU's live, mapped
            // `kvm_run.immediate_exit` byte. Every other writer (`kick_all`) holds the lock we
            // hold, so this write races with no other Rust access; KVM only reads the byte on
            // entry to the guest, which this thread is not doing now.
            unsafe { immediate_exit.write_volatile(1) };
        }
    }

    /// Called by a vCPU thread before entering the guest: parks while paused, returns `false`
    /// when the vCPU must leave its loop. Clears `immediate_exit` when it returns `true`.
    ///
    /// # Safety
    ///
    /// As for [`Control::register_vcpu`]: `immediate_exit` is the calling thread's own vCPU's
    /// live `kvm_run.immediate_exit` byte.
    pub(crate) unsafe fn before_run(&self, index: usize, immediate_exit: *mut u8) -> Step {
        let mut inner = self.lock();
        loop {
            match inner.request {
                Request::Run => break,
                Request::Exit => return Step::Exit,
                Request::Pause => {
                    inner.parked += 1;
                    self.changed.notify_all();
                    while inner.request == Request::Pause {
                        let wanted = inner
                            .saving
                            .as_ref()
                            .is_some_and(|saved| saved.get(index).is_some_and(Option::is_none));
                        if wanted {
                            inner.parked -= 1;
                            return Step::Save;
                        }
                        inner = self
                            .changed
                            .wait(inner)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    inner.parked -= 1;
                }
            }
        }
        // SAFETY: the caller guarantees `immediate_exit` is this thread's own live, mapped
        // kvm_run byte, and this thread is not inside KVM_RUN. Kicks write it only under the
        // lock we hold, so this write races with no other Rust access, and clearing it here
        // cannot lose a kick made after the check above.
        unsafe { immediate_exit.write_volatile(0) };
        Step::Run
    }

    /// Called by a parked vCPU thread with its saved state (or why it could not be saved).
    pub(crate) fn deliver_vcpu_state(&self, index: usize, state: Result<VcpuState, String>) {
        let mut inner = self.lock();
        if let Some(slot) = inner.saving.as_mut().and_then(|saved| saved.get_mut(index)) {
            *slot = Some(state);
        }
        self.changed.notify_all();
    }

    /// Has every vCPU thread of a paused VM save its state, and returns the states in vCPU
    /// order.
    pub(crate) fn capture_vcpus(&self, timeout: Duration) -> Result<Vec<VcpuState>, String> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        if inner.state != VmState::Paused || inner.request != Request::Pause {
            return Err(format!("the VM is {:?}, not paused", inner.state));
        }
        if inner.saving.is_some() {
            return Err("another snapshot is being taken".into());
        }
        let vcpus = inner.slots.len();
        inner.saving = Some((0..vcpus).map(|_| None).collect());
        self.changed.notify_all();
        loop {
            let done = inner
                .saving
                .as_ref()
                .is_some_and(|saved| saved.iter().all(Option::is_some));
            if done {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                inner.saving = None;
                return Err(format!(
                    "the vCPUs did not save their state within {timeout:?}"
                ));
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        let saved = inner.saving.take().unwrap_or_default();
        saved
            .into_iter()
            .enumerate()
            .map(|(index, state)| match state {
                Some(Ok(state)) => Ok(state),
                Some(Err(err)) => Err(format!("vCPU {index}: {err}")),
                None => Err(format!("vCPU {index}: no state")),
            })
            .collect()
    }

    /// Records why the VM must exit (the first reason wins) and kicks every vCPU.
    pub(crate) fn request_exit(&self, reason: ExitReason) {
        let mut inner = self.lock();
        if inner.exit.is_none() {
            debug!("vm exit requested: {reason}");
            inner.exit = Some(reason);
        }
        inner.request = Request::Exit;
        Self::kick_all(&inner);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread as it leaves: the last one publishes the exit.
    /// Returns `true` for the last thread.
    pub(crate) fn vcpu_exited(&self, index: usize) -> bool {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(index) {
            *slot = VcpuSlot::default();
        }
        inner.live = inner.live.saturating_sub(1);
        if inner.live > 0 {
            return false;
        }
        let reason = inner.exit.clone().unwrap_or(ExitReason::Stopped);
        Self::set_state(&mut inner, VmState::Exited(reason));
        self.changed.notify_all();
        true
    }

    pub(crate) fn state(&self) -> VmState {
        self.lock().state.clone()
    }

    pub(crate) fn on_state_change(&self, callback: StateCallback) {
        let mut inner = self.lock();
        callback(&inner.state);
        inner.callbacks.push(callback);
    }

    pub(crate) fn subscribe(&self) -> Receiver<VmState> {
        let (sender, receiver) = channel();
        let mut inner = self.lock();
        if sender.send(inner.state.clone()).is_ok() {
            inner.subscribers.push(sender);
        }
        receiver
    }

    pub(crate) fn pause(&self, timeout: Duration) -> Result<(), StateError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        match inner.state {
            VmState::Running => {}
            VmState::Paused => return Ok(()),
            ref state => {
                return Err(StateError::InvalidTransition {
                    action: "pause",
                    state: state.clone(),
                })
            }
        }
        // A stop asked for meanwhile wins: pausing must not undo it (the VM would run on and
        // its waiters never see it exit).
        if inner.request == Request::Exit {
            return Err(StateError::InvalidTransition {
                action: "pause",
                state: inner.state.clone(),
            });
        }
        inner.request = Request::Pause;
        Self::kick_all(&inner);
        while inner.parked < inner.live && inner.request == Request::Pause {
            let now = Instant::now();
            if now >= deadline {
                return Err(StateError::Timeout(timeout));
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        if inner.request == Request::Pause {
            Self::set_state(&mut inner, VmState::Paused);
            Ok(())
        } else {
            Err(StateError::InvalidTransition {
                action: "pause",
                state: inner.state.clone(),
            })
        }
    }

    pub(crate) fn resume(&self) -> Result<(), StateError> {
        let mut inner = self.lock();
        match inner.state {
            VmState::Paused => {}
            VmState::Running if inner.request == Request::Run => return Ok(()),
            // A pause that timed out left the request set: undo it.
            VmState::Running if inner.request == Request::Pause => {}
            ref state => {
                return Err(StateError::InvalidTransition {
                    action: "resume",
                    state: state.clone(),
                })
            }
        }
        // As in `pause`: a pending stop is never turned back into running.
        if inner.request == Request::Exit {
            return Err(StateError::InvalidTransition {
                action: "resume",
                state: inner.state.clone(),
            });
        }
        inner.request = Request::Run;
        Self::set_state(&mut inner, VmState::Running);
        self.changed.notify_all();
        Ok(())
    }

    pub(crate) fn wait_exit(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut inner = self.lock();
        loop {
            if let VmState::Exited(reason) = &inner.state {
                return Some(reason.clone());
            }
            inner = match deadline {
                None => self
                    .changed
                    .wait(inner)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.changed
                        .wait_timeout(inner, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0)
                }
            };
        }
    }
}

/// A cloneable, thread-safe handle to control a running VM and watch its state.
///
/// Handles stay valid after the VM exits (requests then fail with
/// [`StateError::InvalidTransition`]).
#[derive(Clone)]
pub struct VmHandle {
    pub(crate) control: Arc<Control>,
    pub(crate) devices: Arc<HandleDevices>,
}

/// What a handle reaches besides the control block: the power button, the counters and the
/// NICs.
pub(crate) struct HandleDevices {
    pub(crate) ged: Arc<Mutex<Ged<EventFdTrigger>>>,
    pub(crate) counters: CounterSources,
    pub(crate) nets: Vec<(String, Arc<Mutex<Net>>)>,
    pub(crate) snapshot: crate::snapshot::SnapshotSources,
    /// The progress of a migration out of this VM, once one began.
    pub(crate) migration: Mutex<Option<crate::migration::MigrationProgress>>,
}

/// Why a NIC could not be asked to announce itself.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The VM has no NIC with that id.
    #[error("the VM has no NIC `{0}`")]
    UnknownNic(String),
    /// The NIC could not (driver not ready, feature not negotiated, interrupt failed).
    #[error(transparent)]
    Device(#[from] devices::virtio::net::AnnounceError),
}

/// Why a rate limit could not be changed ([`VmHandle::set_rate_limit`]).
#[derive(Debug, thiserror::Error)]
pub enum RateLimitUpdateError {
    /// The VM has no device with that id.
    #[error("the VM has no device `{0}`")]
    UnknownDevice(String),
    /// The update does not fit the device, or a bucket is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] crate::ConfigError),
    /// The device refused the limit.
    #[error("device `{id}`: {source}")]
    Device {
        /// The device.
        id: String,
        /// Why.
        source: devices::rate_limiter::RateLimitError,
    },
}

/// How long [`VmHandle::pause`] waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl VmHandle {
    /// The current state.
    pub fn state(&self) -> VmState {
        self.control.state()
    }

    /// A channel that receives the current state, then every change.
    pub fn subscribe(&self) -> Receiver<VmState> {
        self.control.subscribe()
    }

    /// Calls `callback` with the current state now, then with every change, for as long as
    /// the VM exists.
    ///
    /// The callback runs on the thread that changed the state (a vCPU thread, or the thread
    /// calling [`VmHandle::pause`], ...) while the VM's control lock is held, so it must be
    /// quick and must not call back into this VM's handle (that would deadlock): hand the state
    /// on, e.g. through a channel or an eventfd. Changes are delivered in order.
    pub fn on_state_change(&self, callback: impl Fn(&VmState) + Send + 'static) {
        self.control.on_state_change(Box::new(callback));
    }

    /// Presses the VM's ACPI power button: the guest is told through the Generic Event Device
    /// and, if its OS handles the button (Linux with systemd-logind or acpid), shuts down
    /// cleanly; the VM then exits with [`ExitReason::Shutdown`]. Returns at once: the guest
    /// may take its time or ignore the button (follow up with [`VmHandle::stop`] after a grace
    /// period). Refused unless the VM is running or paused.
    pub fn power_button(&self) -> Result<(), StateError> {
        match self.control.state() {
            VmState::Running | VmState::Paused => {}
            state => {
                return Err(StateError::InvalidTransition {
                    action: "press the power button of",
                    state,
                })
            }
        }
        let mut ged = self
            .devices
            .ged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(err) = ged.notify(GED_EVENT_POWER_BUTTON) {
            warn!("cannot raise the power button interrupt: {err}");
        }
        Ok(())
    }

    /// The VM's counters now: vCPU exits by kind, serial bytes, and each virtio device's own
    /// counters (blk operations and bytes, net frames and drops, vsock connections, ...).
    pub fn counters(&self) -> VmCounters {
        self.devices.counters.snapshot()
    }

    /// Stops every vCPU outside the guest; returns once all are parked (or fails after
    /// [`PAUSE_TIMEOUT`]).
    pub fn pause(&self) -> Result<(), StateError> {
        self.control.pause(PAUSE_TIMEOUT)
    }

    /// [`VmHandle::pause`] with the caller's limit on how long to wait for the vCPUs to park.
    /// On [`StateError::Timeout`] the VM stays asked to pause; [`VmHandle::resume`] undoes it.
    pub fn pause_timeout(&self, timeout: Duration) -> Result<(), StateError> {
        self.control.pause(timeout)
    }

    /// An eventfd that becomes readable (its counter goes up) on every state change, for an
    /// async runtime or a C caller that polls descriptors; read [`VmHandle::state`] when it
    /// fires. Each call makes a new eventfd.
    ///
    /// ```no_run
    /// # fn demo(handle: vmm_core::VmHandle) -> std::io::Result<()> {
    /// let changes = handle.state_eventfd()?;
    /// // poll(changes.as_raw_fd()) in a reactor; then:
    /// let _ = changes.read()?;
    /// println!("now {:?}", handle.state());
    /// # Ok(()) }
    /// ```
    pub fn state_eventfd(&self) -> std::io::Result<EventFd> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        let signal = fd.try_clone()?;
        self.on_state_change(move |_| {
            if let Err(err) = signal.write(1) {
                warn!("cannot signal a state change: {err}");
            }
        });
        Ok(fd)
    }

    /// Asks the guest behind NIC `id` to announce itself (gratuitous ARP, unsolicited neighbour
    /// advertisements), as after a live migration, so switches learn where it now is. Needs a
    /// driver that negotiated `VIRTIO_NET_F_GUEST_ANNOUNCE` (Linux does).
    pub fn announce(&self, id: &str) -> Result<(), AnnounceError> {
        let (_, net) = self
            .devices
            .nets
            .iter()
            .find(|(nic, _)| nic == id)
            .ok_or_else(|| AnnounceError::UnknownNic(id.to_string()))?;
        let mut net = net.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(net.request_announce()?)
    }

    /// Changes the rate limits of a disk, NIC or entropy device while the VM runs (or in any
    /// other state): the limiters `update` gives replace the device's, with full buckets;
    /// requests waiting under the old limit are looked at again at once. Everything is checked
    /// before anything changes. The VM's config (what a snapshot saves) is updated too.
    ///
    /// ```no_run
    /// use vmm_core::config::{RateLimitUpdate, RateLimiterConfig, TokenBucketConfig};
    /// # fn demo(vm: &vmm_core::VmHandle) -> Result<(), vmm_core::RateLimitUpdateError> {
    /// // disk0: 50 MiB/s, in 5 MiB buckets.
    /// vm.set_rate_limit(&RateLimitUpdate {
    ///     id: "disk0".into(),
    ///     rate_limiter: Some(RateLimiterConfig {
    ///         bandwidth: Some(TokenBucketConfig {
    ///             size: 5 << 20,
    ///             one_time_burst: 0,
    ///             refill_time_ms: 100,
    ///         }),
    ///         ops: None,
    ///     }),
    ///     ..Default::default()
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn set_rate_limit(
        &self,
        update: &crate::config::RateLimitUpdate,
    ) -> Result<(), RateLimitUpdateError> {
        let (id, kind, device) = self
            .devices
            .counters
            .virtio
            .iter()
            .find(|(id, _, _)| *id == update.id)
            .ok_or_else(|| RateLimitUpdateError::UnknownDevice(update.id.clone()))?;
        let limits = update.check_for(kind)?;
        {
            let mut device = crate::sync::lock(device);
            for (target, limit) in limits {
                device.set_rate_limit(target, limit).map_err(|source| {
                    RateLimitUpdateError::Device {
                        id: id.clone(),
                        source,
                    }
                })?;
            }
        }
        crate::sync::lock(&self.devices.snapshot.config).apply_rate_limit(update);
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<(), StateError> {
        self.control.resume()
    }

    /// Asks the VM to stop; its exit reason becomes [`ExitReason::Stopped`] unless the guest
    /// already exited for another reason. Returns without waiting.
    pub fn stop(&self) {
        self.control.request_exit(ExitReason::Stopped);
    }

    /// Saves the paused VM to `dir` (created if missing): guest memory to `dir/memory`, vCPUs,
    /// in-kernel devices and every device's state to `dir/state`. The VM stays paused; resume
    /// it, or stop it and [`VmBuilder::restore`](crate::VmBuilder::restore) the snapshot in
    /// this or another process. Requests in flight on a disk complete first; a snapshot that
    /// fails leaves no state file behind, so a directory never holds a half snapshot.
    ///
    /// ```no_run
    /// # fn demo(vm: &vmm_core::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// vm.pause()?;
    /// vm.snapshot("/var/lib/vm1/snapshot")?;
    /// vm.resume()?;
    /// # Ok(()) }
    /// ```
    pub fn snapshot(
        &self,
        dir: impl AsRef<std::path::Path>,
    ) -> Result<(), crate::snapshot::SnapshotError> {
        let vcpus = self
            .control
            .capture_vcpus(PAUSE_TIMEOUT)
            .map_err(crate::snapshot::SnapshotError::State)?;
        let ged = self
            .devices
            .ged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .state();
        let sources = &self.devices.snapshot;
        let saved = sources.capture(vcpus, ged)?;
        crate::snapshot::write(dir.as_ref(), &saved, &sources.memory)
    }

    /// Live-migrates the VM to the Keel process at the other end of `stream` (which receives it
    /// with [`IncomingMigration`](crate::migration::IncomingMigration)): pre-copy while the
    /// guest runs, then a short pause for the last pages and the state. On success the VM here
    /// is stopped (it runs there); on failure before the switch-over it keeps running here. See
    /// [`crate::migration`].
    pub fn send_migration<S: std::io::Read + std::io::Write>(
        &self,
        mut stream: S,
        options: &crate::migration::MigrationOptions,
    ) -> Result<crate::migration::MigrationReport, crate::migration::MigrationError> {
        crate::migration::send(self, &mut stream, options, &self.devices.migration)
    }

    /// Where a migration out of this VM stands (none if none began).
    pub fn migration_progress(&self) -> Option<crate::migration::MigrationProgress> {
        self.devices
            .migration
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until the VM exits, or `timeout` passes (`None`).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        self.control.wait_exit(Some(timeout))
    }
}
