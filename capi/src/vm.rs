//! VM configs and VMs: `keel_config_*` builds a `VmConfig` field by field (each setter checks
//! the field at once, without touching the host), `keel_vm_*` builds, runs and watches the VM.

use std::ffi::{c_char, c_int, c_void};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vmm_core::config::{DiskConfig, NetConfig, RngConfig, VsockConfig};
use vmm_core::seccomp::SeccompPolicy;
use vmm_core::{ExitReason, MemSize, VirtioTransport, Vm, VmBuilder, VmConfig, VmHandle, VmState};

use crate::handles::{self, with_object, Kind, Object};
use crate::status::{
    guard, in_callback, keel_status, not_in_callback, Failure, Outcome, KEEL_ERR_HOST,
    KEEL_ERR_INVALID, KEEL_ERR_TIMEOUT,
};
use crate::strings::{copy_out, optional_text, store, text};

/// A VM config: a handle from `keel_config_new` or `keel_config_from_json`, freed with
/// `keel_config_free`.
pub type keel_config_t = u64;
/// A VM: a handle from `keel_vm_build`, freed with `keel_vm_free`.
pub type keel_vm_t = u64;

/// Receives the guest's serial output: `len` bytes at `data`, valid only during the call.
/// Called on the vCPU thread that wrote them; it must return quickly and must not call
/// `keel_vm_wait`, `keel_vm_pause` or `keel_vm_free` (they fail with `KEEL_ERR_THREAD`).
pub type keel_console_cb =
    Option<unsafe extern "C" fn(user: *mut c_void, data: *const u8, len: usize)>;
/// Told of a VM's state (`KEEL_STATE_*`): the current one when registered, then every change,
/// in order, on a thread of Keel's. It may call `keel_vm_state` and the like, but not
/// `keel_vm_wait`, `keel_vm_pause` or `keel_vm_free` (`KEEL_ERR_THREAD`).
pub type keel_state_cb = Option<unsafe extern "C" fn(user: *mut c_void, state: i32)>;

/// Built, not started.
pub const KEEL_STATE_CREATED: i32 = 1;
/// Running guest code.
pub const KEEL_STATE_RUNNING: i32 = 2;
/// Paused.
pub const KEEL_STATE_PAUSED: i32 = 3;
/// Exited; `keel_vm_exit_reason` says why.
pub const KEEL_STATE_EXITED: i32 = 4;

/// The guest reset the machine.
pub const KEEL_EXIT_RESET: i32 = 1;
/// The guest powered off.
pub const KEEL_EXIT_SHUTDOWN: i32 = 2;
/// `keel_vm_stop` (or `keel_vm_free`) stopped it.
pub const KEEL_EXIT_STOPPED: i32 = 3;
/// A vCPU triple-faulted.
pub const KEEL_EXIT_TRIPLE_FAULT: i32 = 4;
/// KVM could not run a guest instruction.
pub const KEEL_EXIT_INTERNAL_ERROR: i32 = 5;
/// Entering the guest failed.
pub const KEEL_EXIT_ENTRY_FAILED: i32 = 6;
/// The VMM failed; `keel_vm_describe_exit` has the detail.
pub const KEEL_EXIT_FAILED: i32 = 7;

/// virtio devices on PCI (the default).
pub const KEEL_TRANSPORT_PCI: i32 = 1;
/// virtio devices on MMIO.
pub const KEEL_TRANSPORT_MMIO: i32 = 2;

/// Keel's seccomp filters on the VM's threads (the default).
pub const KEEL_SECCOMP_ON: i32 = 1;
/// No seccomp filters (for running under valgrind, which cannot run them, or for console
/// callbacks that need system calls the vCPU filter forbids).
pub const KEEL_SECCOMP_OFF: i32 = 0;

/// `keel_vm_wait` without a timeout.
pub const KEEL_WAIT_FOREVER: u64 = u64::MAX;

/// A pointer of the caller's, handed back to its callbacks.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

impl UserData {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut c_void {
        self.0
    }
}

// SAFETY: Keel never dereferences the pointer; it only passes it back to the caller's callback,
// and keel.h tells the caller that the callbacks run on Keel's threads, so the caller has agreed
// that the pointer may be used from them.
unsafe impl Send for UserData {}
// SAFETY: as above; Keel only copies the pointer value.
unsafe impl Sync for UserData {}

/// Where the guest's serial output goes.
#[derive(Clone, Copy)]
enum ConsoleSink {
    Callback(
        unsafe extern "C" fn(*mut c_void, *const u8, usize),
        UserData,
    ),
}

/// The caller's console callback as a `Write`.
struct CallbackWriter {
    callback: unsafe extern "C" fn(*mut c_void, *const u8, usize),
    user: UserData,
}

impl Write for CallbackWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (callback, user) = (self.callback, self.user);
        in_callback(|| {
            // SAFETY: the caller registered `callback` for exactly this signature; `buf` is
            // valid for `buf.len()` bytes during the call, as keel.h promises it.
            unsafe { callback(user.get(), buf.as_ptr(), buf.len()) }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A config being put together.
pub(crate) struct ConfigObject {
    config: VmConfig,
    /// Whether the VM's threads get Keel's seccomp filters.
    seccomp: bool,
    console_fd: Option<OwnedFd>,
    console: Option<ConsoleSink>,
    /// TAP descriptors for NICs, moved into the VM at build.
    tap_fds: Vec<(String, OwnedFd)>,
}

/// A built VM.
pub(crate) struct VmObject {
    vm: Mutex<Option<Vm>>,
    handle: VmHandle,
    /// Set by `keel_vm_free`: callbacks stop from then on.
    freed: Arc<AtomicBool>,
    /// The threads that run state callbacks.
    dispatchers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn state_code(state: &VmState) -> i32 {
    match state {
        VmState::Created => KEEL_STATE_CREATED,
        VmState::Running => KEEL_STATE_RUNNING,
        VmState::Paused => KEEL_STATE_PAUSED,
        VmState::Exited(_) => KEEL_STATE_EXITED,
    }
}

fn exit_code(reason: &ExitReason) -> i32 {
    match reason {
        ExitReason::Reset => KEEL_EXIT_RESET,
        ExitReason::Shutdown => KEEL_EXIT_SHUTDOWN,
        ExitReason::Stopped => KEEL_EXIT_STOPPED,
        ExitReason::TripleFault { .. } => KEEL_EXIT_TRIPLE_FAULT,
        ExitReason::InternalError { .. } => KEEL_EXIT_INTERNAL_ERROR,
        ExitReason::EntryFailed { .. } => KEEL_EXIT_ENTRY_FAILED,
        ExitReason::Failed { .. } => KEEL_EXIT_FAILED,
    }
}

/// An error and its causes, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies `change` to the config behind `config` if the result still checks (without the
/// host); otherwise the config stays as it was and the error names the field.
fn edit(config: keel_config_t, change: impl FnOnce(&mut ConfigObject) -> Outcome) -> Outcome {
    with_object!(config, Config, |object| {
        let mut object = lock(object);
        let before = object.config.clone();
        change(&mut object)?;
        if let Err(err) = object.config.check() {
            object.config = before;
            return Err(Failure::invalid(err.to_string()));
        }
        Ok(())
    })
}

fn config_object(config: VmConfig) -> Object {
    Object::Config(Mutex::new(ConfigObject {
        config,
        seccomp: true,
        console_fd: None,
        console: None,
        tap_fds: Vec::new(),
    }))
}

/// Creates a config for the kernel at `kernel` (ELF or bzImage) with Keel's defaults: 1 vCPU,
/// 128 MiB, serial output to standard output, no devices. The file is opened at build.
///
/// # Safety
/// `kernel` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_new(
    kernel: *const c_char,
    out: *mut keel_config_t,
) -> keel_status {
    guard("keel_config_new", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let kernel = unsafe { text(kernel, "kernel") }?;
        let config = VmConfig::new(kernel);
        config
            .check()
            .map_err(|err| Failure::invalid(err.to_string()))?;
        // SAFETY: the caller passes NULL or a pointer valid for a write (keel.h).
        unsafe { handles::publish(out, config_object(config)) }
    })
}

/// Creates a config from the JSON form of a `VmConfig` (the document `keel --config` and the
/// REST API take).
///
/// # Safety
/// `json` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_from_json(
    json: *const c_char,
    out: *mut keel_config_t,
) -> keel_status {
    guard("keel_config_from_json", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let json = unsafe { text(json, "json") }?;
        let config: VmConfig = serde_json::from_str(json)
            .map_err(|err| Failure::invalid(format!("not a VM config: {err}")))?;
        config
            .check()
            .map_err(|err| Failure::invalid(err.to_string()))?;
        // SAFETY: the caller passes NULL or a pointer valid for a write (keel.h).
        unsafe { handles::publish(out, config_object(config)) }
    })
}

/// Writes the config as JSON into `buf` (`len` bytes); `needed` (may be NULL) receives the
/// length required, terminating NUL included. Too small a buffer gives `KEEL_ERR_BUFFER`.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes; `needed` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_to_json(
    config: keel_config_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> keel_status {
    guard("keel_config_to_json", || {
        let json = with_object!(config, Config, |object| {
            serde_json::to_string(&lock(object).config)
                .map_err(|err| Failure::invalid(err.to_string()))
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { copy_out(&json, buf, len, needed) }
    })
}

/// Sets the number of vCPUs (1 to 254).
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_set_vcpus(config: keel_config_t, vcpus: u32) -> keel_status {
    guard("keel_config_set_vcpus", || {
        edit(config, |object| {
            object.config.vcpus = vcpus;
            Ok(())
        })
    })
}

/// Sets guest memory in MiB.
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_set_memory_mib(config: keel_config_t, mib: u64) -> keel_status {
    guard("keel_config_set_memory_mib", || {
        let bytes = mib
            .checked_mul(1 << 20)
            .ok_or_else(|| Failure::invalid(format!("memory: {mib} MiB is too large")))?;
        edit(config, |object| {
            object.config.memory = MemSize::bytes(bytes);
            Ok(())
        })
    })
}

/// Sets the initrd (NULL: none).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_set_initrd(
    config: keel_config_t,
    path: *const c_char,
) -> keel_status {
    guard("keel_config_set_initrd", || {
        // SAFETY: the caller passes NULL or a NUL-terminated string (keel.h).
        let path = unsafe { optional_text(path, "path") }?;
        edit(config, |object| {
            object.config.initrd = path.map(Into::into);
            Ok(())
        })
    })
}

/// Sets the kernel command line.
///
/// # Safety
/// `cmdline` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_set_cmdline(
    config: keel_config_t,
    cmdline: *const c_char,
) -> keel_status {
    guard("keel_config_set_cmdline", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let cmdline = unsafe { text(cmdline, "cmdline") }?;
        edit(config, |object| {
            object.config.cmdline = cmdline.to_string();
            Ok(())
        })
    })
}

/// Puts virtio devices on PCI (`KEEL_TRANSPORT_PCI`) or MMIO (`KEEL_TRANSPORT_MMIO`).
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_set_transport(config: keel_config_t, transport: i32) -> keel_status {
    guard("keel_config_set_transport", || {
        let transport = match transport {
            KEEL_TRANSPORT_PCI => VirtioTransport::Pci,
            KEEL_TRANSPORT_MMIO => VirtioTransport::Mmio,
            other => {
                return Err(Failure::invalid(format!(
                    "transport: {other} is neither KEEL_TRANSPORT_PCI nor KEEL_TRANSPORT_MMIO"
                )))
            }
        };
        edit(config, |object| {
            object.config.virtio_transport = transport;
            Ok(())
        })
    })
}

/// Turns Keel's seccomp filters on (`KEEL_SECCOMP_ON`, the default) or off
/// (`KEEL_SECCOMP_OFF`) for the VM's threads. With them on, each vCPU thread and the device
/// event thread may make only the system calls its job needs: a console callback runs on a vCPU
/// thread under that thread's filter, where opening a file fails with `EACCES` and a system call
/// outside the filter ends the process (exit status 159, the call named on stderr). Turn them
/// off for such callbacks, and under valgrind (which cannot run seccomp filters).
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_set_seccomp(config: keel_config_t, mode: i32) -> keel_status {
    guard("keel_config_set_seccomp", || {
        let on = match mode {
            KEEL_SECCOMP_ON => true,
            KEEL_SECCOMP_OFF => false,
            other => {
                return Err(Failure::invalid(format!(
                    "seccomp: {other} is neither KEEL_SECCOMP_ON nor KEEL_SECCOMP_OFF"
                )))
            }
        };
        edit(config, |object| {
            object.seccomp = on;
            Ok(())
        })
    })
}

/// Adds a virtio-blk disk on the raw image at `path` (opened at build), with serial number
/// `id` (at most 20 bytes, unique among the VM's devices).
///
/// # Safety
/// `id` and `path` are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_add_disk(
    config: keel_config_t,
    id: *const c_char,
    path: *const c_char,
    read_only: bool,
    direct: bool,
) -> keel_status {
    guard("keel_config_add_disk", || {
        // SAFETY: the caller passes NUL-terminated strings (keel.h).
        let (id, path) = unsafe { (text(id, "id")?, text(path, "path")?) };
        edit(config, |object| {
            object.config.disks.push(DiskConfig {
                id: id.to_string(),
                path: path.into(),
                read_only,
                direct,
                rate_limiter: None,
            });
            Ok(())
        })
    })
}

/// Adds a virtio-net card on the TAP device named `tap`, with MAC `mac` ("52:54:00:12:34:56";
/// NULL: one derived from `id`).
///
/// # Safety
/// `id` and `tap` are NUL-terminated strings; `mac` is NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_add_net_tap(
    config: keel_config_t,
    id: *const c_char,
    tap: *const c_char,
    mac: *const c_char,
) -> keel_status {
    guard("keel_config_add_net_tap", || {
        // SAFETY: the caller passes NUL-terminated strings, `mac` possibly NULL (keel.h).
        let (id, tap, mac) = unsafe {
            (
                text(id, "id")?,
                text(tap, "tap")?,
                optional_text(mac, "mac")?,
            )
        };
        if tap.is_empty() {
            return Err(Failure::invalid(
                "tap: empty (use keel_config_add_net_fd for a descriptor)",
            ));
        }
        edit(config, |object| {
            object.config.nets.push(NetConfig {
                id: id.to_string(),
                tap: tap.to_string(),
                mac: mac.map(str::to_string),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            });
            Ok(())
        })
    })
}

/// Adds a virtio-net card on the open TAP device `fd` (opened with `IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`). On success Keel owns `fd` and closes it with the VM (or with the config if
/// no VM is built from it); on failure the caller still owns it.
///
/// # Safety
/// `id` is a NUL-terminated string, `mac` NULL or one; `fd` is a descriptor the caller owns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_add_net_fd(
    config: keel_config_t,
    id: *const c_char,
    fd: c_int,
    mac: *const c_char,
) -> keel_status {
    guard("keel_config_add_net_fd", || {
        // SAFETY: the caller passes NUL-terminated strings, `mac` possibly NULL (keel.h).
        let (id, mac) = unsafe { (text(id, "id")?, optional_text(mac, "mac")?) };
        check_fd(fd)?;
        edit(config, |object| {
            if object.tap_fds.iter().any(|(taken, _)| taken == id) {
                return Err(Failure::invalid(format!(
                    "id: `{id}` already has a TAP descriptor"
                )));
            }
            object.config.nets.push(NetConfig {
                id: id.to_string(),
                tap: String::new(),
                mac: mac.map(str::to_string),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            });
            Ok(())
        })?;
        // Only now that the NIC is in: the descriptor changes hands on success alone.
        // SAFETY: `fd` is open (checked) and the caller transfers its ownership on success.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        with_object!(config, Config, |object| {
            lock(object).tap_fds.push((id.to_string(), owned));
            Ok(())
        })
    })
}

/// Sets the vsock device: guest context ID `cid` (3 and up), host side on the Unix socket
/// `socket` (guest connections to port P go to `socket_P`).
///
/// # Safety
/// `id` and `socket` are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_set_vsock(
    config: keel_config_t,
    id: *const c_char,
    cid: u64,
    socket: *const c_char,
) -> keel_status {
    guard("keel_config_set_vsock", || {
        // SAFETY: the caller passes NUL-terminated strings (keel.h).
        let (id, socket) = unsafe { (text(id, "id")?, text(socket, "socket")?) };
        edit(config, |object| {
            object.config.vsock = Some(VsockConfig {
                id: id.to_string(),
                guest_cid: cid,
                uds_path: socket.into(),
            });
            Ok(())
        })
    })
}

/// Adds a virtio-rng entropy device named `id`.
///
/// # Safety
/// `id` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_config_set_rng(
    config: keel_config_t,
    id: *const c_char,
) -> keel_status {
    guard("keel_config_set_rng", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let id = unsafe { text(id, "id") }?;
        edit(config, |object| {
            object.config.rng = Some(RngConfig {
                id: id.to_string(),
                rate_limiter: None,
            });
            Ok(())
        })
    })
}

fn check_fd(fd: c_int) -> Outcome {
    if fd < 0 {
        return Err(Failure::invalid(format!("fd: {fd} is not a descriptor")));
    }
    // SAFETY: F_GETFD only reads the descriptor table; any integer is safe to ask about.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Failure::invalid(format!(
            "fd: {fd} is not an open descriptor"
        )));
    }
    Ok(())
}

/// Sends the guest's serial output to `fd` (a pipe, file or socket; Keel writes to its own
/// duplicate, so the caller keeps `fd`). Replaces a console callback.
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_set_console_fd(config: keel_config_t, fd: c_int) -> keel_status {
    guard("keel_config_set_console_fd", || {
        check_fd(fd)?;
        // SAFETY: `fd` is open (checked) and only borrowed for the duplication.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed.try_clone_to_owned().map_err(|err| {
            Failure::new(KEEL_ERR_HOST, format!("fd: cannot duplicate {fd}: {err}"))
        })?;
        with_object!(config, Config, |object| {
            let mut object = lock(object);
            object.console_fd = Some(owned);
            object.console = None;
            Ok(())
        })
    })
}

/// Sends the guest's serial output to `callback` with `user` (see `keel_console_cb`; `user`
/// must stay valid until the VM is freed). NULL `callback` is refused. Replaces a console fd.
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_set_console_callback(
    config: keel_config_t,
    callback: keel_console_cb,
    user: *mut c_void,
) -> keel_status {
    guard("keel_config_set_console_callback", || {
        let callback = callback
            .ok_or_else(|| Failure::new(crate::status::KEEL_ERR_NULL, "callback is NULL"))?;
        with_object!(config, Config, |object| {
            let mut object = lock(object);
            object.console = Some(ConsoleSink::Callback(callback, UserData(user)));
            object.console_fd = None;
            Ok(())
        })
    })
}

/// Frees a config. VMs built from it are not affected.
#[unsafe(no_mangle)]
pub extern "C" fn keel_config_free(config: keel_config_t) -> keel_status {
    guard("keel_config_free", || {
        handles::remove(config, Kind::Config).map(drop)
    })
}

/// Builds a VM from `config`: checks it against the host, maps memory, loads the kernel and
/// creates the KVM VM; the vCPUs wait for `keel_vm_start`. The config stays usable (TAP
/// descriptors given with `keel_config_add_net_fd` move into this VM).
///
/// # Safety
/// `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_build(config: keel_config_t, out: *mut keel_vm_t) -> keel_status {
    guard("keel_vm_build", || {
        if out.is_null() {
            return Err(Failure::new(crate::status::KEEL_ERR_NULL, "out is NULL"));
        }
        let builder = with_object!(config, Config, |object| {
            let mut object = lock(object);
            let mut builder = VmBuilder::new(object.config.clone());
            if !object.seccomp {
                builder = builder.seccomp(SeccompPolicy::Off);
            }
            if let Some(fd) = &object.console_fd {
                let dup = fd
                    .try_clone()
                    .map_err(|err| Failure::new(KEEL_ERR_HOST, format!("console fd: {err}")))?;
                builder = builder.serial_output(File::from(dup));
            } else if let Some(ConsoleSink::Callback(callback, user)) = object.console {
                builder = builder.serial_output(CallbackWriter { callback, user });
            }
            for (id, fd) in object.tap_fds.drain(..) {
                builder = builder.tap_fd(id, fd);
            }
            Ok::<_, Failure>(builder)
        })?;
        let vm = builder.build().map_err(|err| {
            let status = match err {
                vmm_core::Error::Config(_) => KEEL_ERR_INVALID,
                _ => KEEL_ERR_HOST,
            };
            Failure::new(status, chain(&err))
        })?;
        let handle = vm.handle();
        let object = VmObject {
            vm: Mutex::new(Some(vm)),
            handle,
            freed: Arc::new(AtomicBool::new(false)),
            dispatchers: Mutex::new(Vec::new()),
        };
        // SAFETY: the caller passes NULL or a pointer valid for a write (keel.h).
        unsafe { handles::publish(out, Object::Vm(object)) }
    })
}

fn with_vm<T>(
    vm: keel_vm_t,
    body: impl FnOnce(&VmObject) -> Result<T, Failure>,
) -> Result<T, Failure> {
    with_object!(vm, Vm, |object| body(object))
}

fn state_failure(err: vmm_core::StateError) -> Failure {
    Failure::state(err.to_string())
}

/// Starts the vCPUs of a built VM.
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_start(vm: keel_vm_t) -> keel_status {
    guard("keel_vm_start", || {
        with_vm(vm, |object| {
            let mut slot = lock(&object.vm);
            let vm = slot
                .as_mut()
                .ok_or_else(|| Failure::state("the VM was freed"))?;
            if vm.state() != VmState::Created {
                return Err(Failure::state(format!(
                    "the VM is {:?}, not created",
                    vm.state()
                )));
            }
            vm.start()
                .map_err(|err| Failure::new(KEEL_ERR_HOST, chain(&err)))
        })
    })
}

/// Waits until the VM exits or `timeout_ms` passes (`KEEL_WAIT_FOREVER`: no limit), storing
/// the exit reason (`KEEL_EXIT_*`) through `reason` (may be NULL). `KEEL_ERR_TIMEOUT` when the
/// time ran out; `KEEL_ERR_STATE` for a VM never started; `KEEL_ERR_THREAD` from a callback.
///
/// # Safety
/// `reason` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_wait(
    vm: keel_vm_t,
    timeout_ms: u64,
    reason: *mut i32,
) -> keel_status {
    guard("keel_vm_wait", || {
        not_in_callback("wait for a VM")?;
        let handle = with_vm(vm, |object| Ok(object.handle.clone()))?;
        if handle.state() == VmState::Created {
            return Err(Failure::state("the VM was never started (keel_vm_start)"));
        }
        let exit = if timeout_ms == KEEL_WAIT_FOREVER {
            loop {
                if let Some(exit) = handle.wait_timeout(Duration::from_secs(3600)) {
                    break exit;
                }
            }
        } else {
            handle
                .wait_timeout(Duration::from_millis(timeout_ms))
                .ok_or_else(|| {
                    Failure::new(
                        KEEL_ERR_TIMEOUT,
                        format!("the VM still runs after {timeout_ms} ms"),
                    )
                })?
        };
        if !reason.is_null() {
            // SAFETY: non-NULL and valid for a write by the caller's promise (keel.h).
            unsafe { reason.write(exit_code(&exit)) };
        }
        Ok(())
    })
}

/// Pauses a running VM; returns once every vCPU is parked (at most 5 s).
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_pause(vm: keel_vm_t) -> keel_status {
    guard("keel_vm_pause", || {
        not_in_callback("pause a VM")?;
        with_vm(vm, |object| object.handle.pause().map_err(state_failure))
    })
}

/// Resumes a paused VM.
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_resume(vm: keel_vm_t) -> keel_status {
    guard("keel_vm_resume", || {
        with_vm(vm, |object| object.handle.resume().map_err(state_failure))
    })
}

/// Asks the VM to stop now (exit reason `KEEL_EXIT_STOPPED` unless it already exited);
/// returns without waiting.
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_stop(vm: keel_vm_t) -> keel_status {
    guard("keel_vm_stop", || {
        with_vm(vm, |object| {
            object.handle.stop();
            Ok(())
        })
    })
}

/// Presses the ACPI power button: a guest OS that listens shuts down.
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_power_button(vm: keel_vm_t) -> keel_status {
    guard("keel_vm_power_button", || {
        with_vm(vm, |object| {
            object.handle.power_button().map_err(state_failure)
        })
    })
}

/// Stores the VM's state (`KEEL_STATE_*`) through `state`.
///
/// # Safety
/// `state` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_state(vm: keel_vm_t, state: *mut i32) -> keel_status {
    guard("keel_vm_state", || {
        let code = with_vm(vm, |object| Ok(state_code(&object.handle.state())))?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { store(state, code, "state") }
    })
}

/// Stores why the VM exited (`KEEL_EXIT_*`) through `reason`; `KEEL_ERR_STATE` while it has
/// not exited.
///
/// # Safety
/// `reason` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_exit_reason(vm: keel_vm_t, reason: *mut i32) -> keel_status {
    guard("keel_vm_exit_reason", || {
        let code = with_vm(vm, |object| match object.handle.state() {
            VmState::Exited(exit) => Ok(exit_code(&exit)),
            other => Err(Failure::state(format!(
                "the VM has not exited (it is {other:?})"
            ))),
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { store(reason, code, "reason") }
    })
}

/// Writes the exit reason as text ("triple fault on vCPU 0") into `buf`; see
/// `keel_config_to_json` for the buffer rules.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes; `needed` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_describe_exit(
    vm: keel_vm_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> keel_status {
    guard("keel_vm_describe_exit", || {
        let description = with_vm(vm, |object| match object.handle.state() {
            VmState::Exited(exit) => Ok(exit.to_string()),
            other => Err(Failure::state(format!(
                "the VM has not exited (it is {other:?})"
            ))),
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { copy_out(&description, buf, len, needed) }
    })
}

/// Writes the VM's counters as JSON (vCPU exits by kind, per-device counters) into `buf`; see
/// `keel_config_to_json` for the buffer rules.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes; `needed` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_counters_json(
    vm: keel_vm_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> keel_status {
    guard("keel_vm_counters_json", || {
        let json = with_vm(vm, |object| {
            serde_json::to_string(&object.handle.counters())
                .map_err(|err| Failure::invalid(err.to_string()))
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { copy_out(&json, buf, len, needed) }
    })
}

/// Calls `callback(user, state)` with the current state now, then on every state change, until
/// `keel_vm_free` returns (see `keel_state_cb`). The calls come from a thread of Keel's that
/// holds no lock, in order. NULL `callback` is refused.
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_on_state_change(
    vm: keel_vm_t,
    callback: keel_state_cb,
    user: *mut c_void,
) -> keel_status {
    guard("keel_vm_on_state_change", || {
        let callback = callback
            .ok_or_else(|| Failure::new(crate::status::KEEL_ERR_NULL, "callback is NULL"))?;
        let user = UserData(user);
        with_vm(vm, |object| {
            let states = object.handle.subscribe();
            let freed = object.freed.clone();
            let dispatcher = std::thread::Builder::new()
                .name("keel-state-cb".into())
                .spawn(move || loop {
                    let state = match states.recv_timeout(Duration::from_millis(50)) {
                        Ok(state) => state,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            if freed.load(Ordering::SeqCst) {
                                return;
                            }
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    let code = state_code(&state);
                    in_callback(|| {
                        // SAFETY: the caller registered `callback` with this signature and
                        // `user` for it; keel.h says it runs on a Keel thread until keel_vm_free
                        // returns.
                        unsafe { callback(user.get(), code) }
                    });
                    // An exit is final: nothing follows it.
                    if code == KEEL_STATE_EXITED {
                        return;
                    }
                })
                .map_err(|err| {
                    Failure::new(
                        KEEL_ERR_HOST,
                        format!("cannot start the callback thread: {err}"),
                    )
                })?;
            lock(&object.dispatchers).push(dispatcher);
            Ok(())
        })
    })
}

/// Stores through `fd` a descriptor that becomes readable on each state change (an eventfd:
/// read 8 bytes to reset it), for poll/epoll loops. The caller owns it and closes it.
///
/// # Safety
/// `fd` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_vm_state_fd(vm: keel_vm_t, fd: *mut c_int) -> keel_status {
    guard("keel_vm_state_fd", || {
        if fd.is_null() {
            return Err(Failure::new(crate::status::KEEL_ERR_NULL, "fd is NULL"));
        }
        let eventfd = with_vm(vm, |object| {
            object.handle.state_eventfd().map_err(|err| {
                Failure::new(KEEL_ERR_HOST, format!("cannot create an eventfd: {err}"))
            })
        })?;
        // The eventfd's own descriptor goes to the caller.
        let raw = eventfd.into_raw_fd();
        // SAFETY: checked non-NULL; valid for a write by the caller's promise (keel.h).
        unsafe { fd.write(raw) };
        Ok(())
    })
}

/// Stops the VM if it runs, waits for its threads to end, and frees it: no callback runs after
/// this returns. The handle is dead afterwards (a second free fails with `KEEL_ERR_HANDLE`).
/// `KEEL_ERR_THREAD` from a callback.
#[unsafe(no_mangle)]
pub extern "C" fn keel_vm_free(vm: keel_vm_t) -> keel_status {
    guard("keel_vm_free", || {
        not_in_callback("free a VM")?;
        let object = handles::remove(vm, Kind::Vm)?;
        if let Object::Vm(object) = &*object {
            object.handle.stop();
            let taken = lock(&object.vm).take();
            // Joins the vCPU and event-loop threads.
            drop(taken);
            object.freed.store(true, Ordering::SeqCst);
            for dispatcher in lock(&object.dispatchers).drain(..) {
                let _ = dispatcher.join();
            }
        }
        Ok(())
    })
}
