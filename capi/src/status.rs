//! Status codes, the thread-local last error, and the guard every exported function runs in.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a `keel_*` function returns: `KEEL_OK` or one of the `KEEL_ERR_*` codes. On an error,
/// `keel_last_error()` on the same thread says what went wrong, naming the argument or field.
pub type keel_status = i32;

/// Success.
pub const KEEL_OK: keel_status = 0;
/// A pointer argument was NULL.
pub const KEEL_ERR_NULL: keel_status = 1;
/// A string argument was not valid UTF-8.
pub const KEEL_ERR_UTF8: keel_status = 2;
/// A handle was never issued, was freed already, or is of another kind (a config where a VM was
/// expected).
pub const KEEL_ERR_HANDLE: keel_status = 3;
/// An argument or config field has a bad value (the message names it and says why).
pub const KEEL_ERR_INVALID: keel_status = 4;
/// The call does not apply in the object's current state (pausing a VM that is not running).
pub const KEEL_ERR_STATE: keel_status = 5;
/// The call would block on a thread it is made from (waiting for or pausing a VM from inside one
/// of its callbacks).
pub const KEEL_ERR_THREAD: keel_status = 6;
/// The timeout passed first.
pub const KEEL_ERR_TIMEOUT: keel_status = 7;
/// The host refused (a file, a TAP device, KVM).
pub const KEEL_ERR_HOST: keel_status = 8;
/// No host can take the request; `keel_placer_explain` says why.
pub const KEEL_ERR_UNSCHEDULABLE: keel_status = 9;
/// Another decider changed the state first; decide again.
pub const KEEL_ERR_CONFLICT: keel_status = 10;
/// The output buffer is too small; the length needed was stored.
pub const KEEL_ERR_BUFFER: keel_status = 11;
/// A bug in Keel (a Rust panic, caught at the boundary). The process can go on; the object
/// involved may not.
pub const KEEL_ERR_INTERNAL: keel_status = 12;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// Set while Keel runs a callback of the caller's on this thread.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Why a call failed: a status code and the message `keel_last_error` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: keel_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: keel_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(KEEL_ERR_INVALID, message)
    }

    pub fn state(message: impl Into<String>) -> Self {
        Self::new(KEEL_ERR_STATE, message)
    }
}

/// What an exported function's body returns.
pub(crate) type Outcome = Result<(), Failure>;

fn set_last_error(message: String) {
    // A message with a NUL byte (from a path, say) is cut there rather than lost.
    let message = CString::new(message).unwrap_or_else(|err| {
        let end = err.nul_position();
        let mut bytes = err.into_vec();
        bytes.truncate(end);
        CString::new(bytes).unwrap_or_default()
    });
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// Runs the body of exported function `name`: its failure becomes the status and the
/// thread's last error, and a panic is caught here instead of unwinding into C.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> Outcome) -> keel_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error(String::new());
            KEEL_OK
        }
        Ok(Err(failure)) => {
            set_last_error(format!("{name}: {}", failure.message));
            failure.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("{name}: internal error (a bug in Keel): {what}"));
            KEEL_ERR_INTERNAL
        }
    }
}

/// Runs a callback of the caller's, marking the thread so that calls which would wait for
/// this very thread are refused instead of deadlocking.
pub(crate) fn in_callback(body: impl FnOnce()) {
    let outer = IN_CALLBACK.with(|flag| flag.replace(true));
    // A panic cannot come from C code; a Rust panic here would be Keel's and must not skip the
    // reset.
    let result = catch_unwind(AssertUnwindSafe(body));
    IN_CALLBACK.with(|flag| flag.set(outer));
    if result.is_err() {
        eprintln!("keel: a panic in a callback trampoline was contained");
    }
}

/// Refuses a blocking call made from inside a callback.
pub(crate) fn not_in_callback(what: &str) -> Outcome {
    if IN_CALLBACK.with(Cell::get) {
        return Err(Failure::new(
            KEEL_ERR_THREAD,
            format!("cannot {what} from inside a Keel callback: it runs on the VM's own thread"),
        ));
    }
    Ok(())
}

/// The message of the last failed `keel_*` call on this thread, or "" after a successful one.
/// The string belongs to Keel and stays valid until the next `keel_*` call on this thread.
/// Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn keel_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The name of a status code ("KEEL_ERR_HANDLE"), a static string; "KEEL_ERR_UNKNOWN" for a
/// code Keel does not define.
#[unsafe(no_mangle)]
pub extern "C" fn keel_status_name(status: keel_status) -> *const c_char {
    let name: &'static [u8] = match status {
        KEEL_OK => b"KEEL_OK\0",
        KEEL_ERR_NULL => b"KEEL_ERR_NULL\0",
        KEEL_ERR_UTF8 => b"KEEL_ERR_UTF8\0",
        KEEL_ERR_HANDLE => b"KEEL_ERR_HANDLE\0",
        KEEL_ERR_INVALID => b"KEEL_ERR_INVALID\0",
        KEEL_ERR_STATE => b"KEEL_ERR_STATE\0",
        KEEL_ERR_THREAD => b"KEEL_ERR_THREAD\0",
        KEEL_ERR_TIMEOUT => b"KEEL_ERR_TIMEOUT\0",
        KEEL_ERR_HOST => b"KEEL_ERR_HOST\0",
        KEEL_ERR_UNSCHEDULABLE => b"KEEL_ERR_UNSCHEDULABLE\0",
        KEEL_ERR_CONFLICT => b"KEEL_ERR_CONFLICT\0",
        KEEL_ERR_BUFFER => b"KEEL_ERR_BUFFER\0",
        KEEL_ERR_INTERNAL => b"KEEL_ERR_INTERNAL\0",
        _ => b"KEEL_ERR_UNKNOWN\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: keel_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(keel_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn failures_and_panics_become_codes_and_messages() {
        assert_eq!(guard("keel_x", || Ok(())), KEEL_OK);
        assert_eq!(last(), "");
        let status = guard("keel_x", || {
            Err(Failure::invalid("vcpus: must be at least 1"))
        });
        assert_eq!(status, KEEL_ERR_INVALID);
        assert_eq!(last(), "keel_x: vcpus: must be at least 1");
        let status = guard("keel_y", || panic!("boom"));
        assert_eq!(status, KEEL_ERR_INTERNAL);
        assert!(
            last().contains("internal error") && last().contains("boom"),
            "{}",
            last()
        );
        let status = guard("keel_z", || Err(Failure::invalid("a\0b")));
        assert_eq!(status, KEEL_ERR_INVALID);
        assert_eq!(last(), "keel_z: a");
    }

    #[test]
    fn blocking_calls_are_refused_inside_callbacks() {
        assert!(not_in_callback("wait").is_ok());
        in_callback(|| {
            let err = not_in_callback("wait for the VM").unwrap_err();
            assert_eq!(err.status, KEEL_ERR_THREAD);
        });
        assert!(
            not_in_callback("wait").is_ok(),
            "the flag is reset afterwards"
        );
    }
}
