//! What happens when a filtered thread makes a call outside its list: the kernel sends it
//! `SIGSYS` (`SECCOMP_RET_TRAP`), and this handler writes the thread's kind and the call to
//! stderr, then ends the process with status 159 (128 + `SIGSYS`).
//!
//! The handler runs on the offending thread, under its filter, so it makes only calls every
//! filter allows (`prctl(PR_GET_NAME)`, `write`, `exit_group`), allocates nothing and takes no
//! lock: the thread's kind comes from a thread-local set before the filter was installed.

use std::cell::Cell;
use std::sync::Once;

use super::ThreadKind;

/// The exit status of a process a filter stopped.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

thread_local! {
    /// The calling thread's kind (an index into [`ThreadKind::ALL`]), for the handler.
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Records the calling thread's kind and installs the handler (once per process).
pub(super) fn install(kind: ThreadKind) {
    let index = ThreadKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(usize::MAX);
    KIND.with(|k| k.set(u8::try_from(index).unwrap_or(u8::MAX)));
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: a zeroed `sigaction` is a valid starting value; the fields set are the
        // handler (an `extern "C"` function of the signature SA_SIGINFO expects) and its
        // flags, and the signal mask is emptied by `sigemptyset` on a valid pointer.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                log::warn!(
                    "seccomp: cannot install the SIGSYS report: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// Writes `message` to stderr and ends the process with [`EXIT_STATUS`] (no unwinding, no
/// destructors: the thread may be in the hands of the guest).
pub(super) fn exit_now(message: &str) -> ! {
    write_stderr(message.as_bytes());
    // SAFETY: `_exit` ends the process; it takes a plain status and touches no memory.
    unsafe { libc::_exit(EXIT_STATUS) }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: `bytes` is a valid buffer of its length; a failed or short write is ignored
    // (nothing better can be done on this path).
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
}

/// Offset of `si_syscall` in a `SIGSYS` `siginfo_t` on x86-64: after `si_signo`, `si_errno`,
/// `si_code` and padding (16 bytes) comes `_sigsys`, whose `_call_addr` pointer (8 bytes)
/// precedes the call number.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    let call = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid `siginfo_t` for a SIGSYS raised by seccomp, whose
        // layout on x86-64 has the call number as a 4-byte int at this offset; the read is
        // unaligned-safe.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) }
    };
    let kind = ThreadKind::ALL.get(usize::from(KIND.with(Cell::get)));
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the 17-byte buffer; every
    // filter allows it. A failure leaves the buffer zeroed (an empty name).
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    let name_len = name.iter().position(|b| *b == 0).unwrap_or(16);
    let mut line = Line::default();
    line.push(b"keel: seccomp: thread ");
    line.push(&name[..name_len]);
    match kind {
        Some(kind) => {
            line.push(b" (");
            line.push(kind.name().as_bytes());
            line.push(b" filter)");
        }
        // A thread started by a filtered one runs under its parent's filter.
        None => line.push(b" (under the filter of the thread that started it)"),
    }
    line.push(b" made system call ");
    line.number(i64::from(call));
    if let Some(name) = super::rules::syscall_name(i64::from(call)) {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    line.push(b", which its filter forbids; exiting\n");
    write_stderr(line.as_bytes());
    // SAFETY: as in `exit_now`.
    unsafe { libc::_exit(EXIT_STATUS) }
}

/// A fixed buffer to format the report in without allocating.
struct Line {
    bytes: [u8; 192],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 192],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = bytes.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_formats_without_allocating() {
        let mut line = Line::default();
        line.push(b"call ");
        line.number(-7);
        line.push(b" ");
        line.number(0);
        line.push(b" ");
        line.number(i64::MAX);
        assert_eq!(line.as_bytes(), b"call -7 0 9223372036854775807");
        let mut long = Line::default();
        long.push(&[b'x'; 500]);
        assert_eq!(long.as_bytes().len(), 192, "truncated, not overflowing");
    }
}
