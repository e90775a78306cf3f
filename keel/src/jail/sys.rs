//! The system calls that confine the process: device nodes, resource limits, namespaces,
//! `pivot_root`, descriptors, identity, and the final `execve`.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{JailError, Rlimit};

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        JailError::io(
            "holds a NUL byte:",
            path,
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })
}

/// `result < 0` as the error of `call`.
fn check(result: libc::c_int, call: impl FnOnce() -> String) -> Result<(), JailError> {
    if result < 0 {
        Err(JailError::sys(call()))
    } else {
        Ok(())
    }
}

/// Makes a character device node with the host's device number `rdev`.
pub(super) fn mknod_char(path: &Path, rdev: u64, mode: u32) -> Result<(), JailError> {
    let c = c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; mknod reads nothing else.
    let result = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | mode, rdev) };
    check(result, || format!("mknod {}", path.display()))
}

pub(super) fn set_rlimit(limit: &Rlimit) -> Result<(), JailError> {
    let value = libc::rlimit {
        rlim_cur: limit.value,
        rlim_max: limit.value,
    };
    // The constants' type differs between glibc and musl: pass them straight to the call.
    let result = match limit.name {
        "fsize" => {
            // SAFETY: `value` is a valid rlimit that outlives the call.
            unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &value) }
        }
        "nproc" => {
            // SAFETY: as above.
            unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &value) }
        }
        _ => {
            // SAFETY: as above.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &value) }
        }
    };
    check(result, || {
        format!("setrlimit {}={}", limit.name, limit.value)
    })
}

/// Joins the network namespace at `path` (e.g. `/var/run/netns/NAME`).
pub(super) fn join_netns(path: &Path) -> Result<(), JailError> {
    let file = std::fs::File::open(path)
        .map_err(|err| JailError::io("cannot open network namespace", path, err))?;
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the call's duration; setns changes only this
    // thread's namespace (the process is single-threaded here).
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    check(result, || format!("setns {}", path.display()))
}

/// Enters a new mount namespace whose root is `root`: the host's mounts stop propagating in,
/// `root` is bind-mounted on itself, `pivot_root` makes it `/`, and the old root is detached
/// so nothing of the host's tree is reachable.
pub(super) fn enter_root(root: &Path) -> Result<(), JailError> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "unshare(CLONE_NEWNS)".into()
    })?;
    let slash = c_path(Path::new("/"))?;
    // SAFETY: NULL source, type and data are allowed for a propagation change; `slash` lives.
    let result = unsafe {
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(result, || "mount --make-rslave /".into())?;
    let c_root = c_path(root)?;
    // SAFETY: as above; `c_root` is a NUL-terminated path that lives across the call.
    let result = unsafe {
        libc::mount(
            c_root.as_ptr(),
            c_root.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(result, || format!("bind mount {}", root.display()))?;
    std::env::set_current_dir(root)
        .map_err(|err| JailError::io("cannot enter the jail", root, err))?;
    let old = c"old-root";
    // SAFETY: `old` is a NUL-terminated literal.
    let result = unsafe { libc::mkdir(old.as_ptr(), 0o700) };
    if result < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::AlreadyExists {
        return Err(JailError::sys("mkdir old-root"));
    }
    let dot = c".";
    // SAFETY: pivot_root has no libc wrapper; both arguments are NUL-terminated paths.
    let result = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) };
    if result < 0 {
        return Err(JailError::sys("pivot_root"));
    }
    std::env::set_current_dir("/")
        .map_err(|err| JailError::io("cannot enter the jail", Path::new("/"), err))?;
    let old_abs = c"/old-root";
    // SAFETY: a NUL-terminated path; MNT_DETACH unmounts lazily.
    let result = unsafe { libc::umount2(old_abs.as_ptr(), libc::MNT_DETACH) };
    check(result, || "umount /old-root".into())?;
    // SAFETY: as above.
    check(unsafe { libc::rmdir(old_abs.as_ptr()) }, || {
        "rmdir /old-root".into()
    })
}

/// Enters a new PID namespace: the child returned `None` is its PID 1 and goes on to become
/// the VMM; the parent drops to `uid`/`gid` too, passes signals on, waits for the child and
/// returns its exit status.
pub(super) fn fork_into_pid_ns(uid: u32, gid: u32) -> Result<Option<u8>, JailError> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
        "unshare(CLONE_NEWPID)".into()
    })?;
    // SAFETY: the process is single-threaded here, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailError::sys("fork"));
    }
    if pid == 0 {
        return Ok(None);
    }
    forward_signals(pid)?;
    // The waiting parent keeps nothing of root's either.
    close_other_fds(&[])?;
    drop_privileges(uid, gid)?;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out pointer for the call.
        let result = unsafe { libc::waitpid(pid, &mut status, 0) };
        if result == pid {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(JailError::sys("waitpid"));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Some(u8::try_from(code).unwrap_or(u8::MAX)))
}

/// The VMM's PID, for [`forward`].
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Passes a signal on to the VMM.
extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe and takes integers only.
        unsafe { libc::kill(child, signal) };
    }
}

/// Makes SIGTERM, SIGINT and SIGHUP sent to keel jail reach the VMM (a manager stops the
/// process it started), which stops its VM and exits with 128 + the signal.
fn forward_signals(child: libc::pid_t) -> Result<(), JailError> {
    CHILD.store(child, std::sync::atomic::Ordering::SeqCst);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is a valid sigaction whose handler only loads an atomic and calls
        // kill, both async-signal-safe.
        let result = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        check(result, || format!("sigaction {signal}"))?;
    }
    Ok(())
}

/// Detaches from the terminal: a new session, standard streams on `/dev/null`.
pub(super) fn daemonize() -> Result<(), JailError> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }, || "setsid".into())?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|err| JailError::io("cannot open", Path::new("/dev/null"), err))?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: both descriptors are open; dup2 replaces `fd` atomically.
        check(unsafe { libc::dup2(null.as_raw_fd(), fd) }, || {
            format!("dup2 {fd}")
        })?;
    }
    Ok(())
}

/// Closes every descriptor above standard error but `keep` (sorted, each above 2), which stay
/// open across the `execve` (`--net fd=N` TAP descriptors a manager passes in).
pub(super) fn close_other_fds(keep: &[u32]) -> Result<(), JailError> {
    let mut from = 3u32;
    for &fd in keep.iter().chain([&u32::MAX]) {
        if fd > from {
            // SAFETY: close_range takes integers only and closes descriptors this code no
            // longer uses (Rust objects holding any of them were dropped by now).
            let result = unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
            if result < 0 {
                return Err(JailError::sys("close_range"));
            }
        }
        if fd == u32::MAX {
            break;
        }
        let raw = i32::try_from(fd).map_err(|_| JailError::flag("--keep-fd", "out of range"))?;
        // SAFETY: F_SETFD with 0 clears close-on-exec on `raw`; no pointers are involved.
        if unsafe { libc::fcntl(raw, libc::F_SETFD, 0) } < 0 {
            return Err(JailError::flag(
                "--keep-fd",
                format!("{fd} is not an open descriptor"),
            ));
        }
        from = fd.saturating_add(1);
    }
    Ok(())
}

/// Becomes `uid`/`gid` with no supplementary groups (and so no capabilities) and sets
/// `no_new_privs`, so nothing executed later regains privilege.
pub(super) fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: a zero-length group list with a NULL pointer is allowed.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, || {
        "setgroups".into()
    })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) }, || {
        format!("setresgid {gid}")
    })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) }, || {
        format!("setresuid {uid}")
    })?;
    // SAFETY: integer arguments only.
    let result = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(result, || "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    // Root could be regained only if the drop had failed silently: check.
    // SAFETY: integer arguments only.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(JailError::flag(
            "--uid",
            "dropping root failed: setuid(0) still works",
        ));
    }
    Ok(())
}

/// Executes the jail's `/keel` with `args` and an empty environment; returns only on failure.
pub(super) fn exec_vmm(args: &[CString]) -> JailError {
    let path = c"/keel";
    let argv0: &CStr = c"keel";
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(args.len() + 2);
    argv.push(argv0.as_ptr());
    argv.extend(args.iter().map(|arg| arg.as_ptr()));
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: `path` and every argv entry are NUL-terminated strings that outlive the call;
    // argv and envp are NULL-terminated arrays. execve returns only on failure.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    JailError::sys("execve /keel")
}
