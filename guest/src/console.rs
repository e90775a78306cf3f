//! Whole output lines on COM1, one vCPU at a time.
//!
//! Every line the guest prints starts with [`PREFIX`] and ends with CRLF; the host's tests parse
//! them. A spin lock keeps lines of different vCPUs apart. Paths that may run while the lock is
//! held on the same vCPU (panics, exceptions, exit) use [`report_urgent!`], which waits a bounded
//! time and then prints regardless.

use core::fmt::{self, Write};

use keel_test_guest::sync::SpinLock;

use crate::serial::{Uart, COM1};

/// Starts every output line.
pub const PREFIX: &str = "keel-guest: ";

/// Rounds of spinning after which an urgent line stops waiting for the console lock.
const URGENT_MAX_SPINS: u64 = 10_000_000;

static CONSOLE: SpinLock = SpinLock::new();

/// Prints `keel-guest: <formatted>\r\n` as one line.
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// Like [`report!`], but does not wait forever for the console lock (see the module documentation).
macro_rules! report_urgent {
    ($($arg:tt)*) => {
        $crate::console::print_line_urgent(format_args!($($arg)*))
    };
}

pub(crate) use {report, report_urgent};

/// Prints one line (use [`report!`]).
pub fn print_line(args: fmt::Arguments<'_>) {
    let _guard = CONSOLE.lock();
    write_line(args);
}

/// Prints one line, with or without the lock (use [`report_urgent!`]).
pub fn print_line_urgent(args: fmt::Arguments<'_>) {
    let _guard = CONSOLE.lock_with_limit(URGENT_MAX_SPINS);
    write_line(args);
}

/// Runs `f` with the console to itself, e.g. to print a line and count it as one step.
pub fn with_console<R>(f: impl FnOnce(&mut Console) -> R) -> R {
    let _guard = CONSOLE.lock();
    f(&mut Console { uart: COM1 })
}

/// The console while its lock is held (see [`with_console`]).
pub struct Console {
    uart: Uart,
}

impl Console {
    /// Prints one line.
    pub fn line(&mut self, args: fmt::Arguments<'_>) {
        write_line(args);
    }

    /// Sends raw bytes, without prefix or line end.
    pub fn raw(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|byte| self.uart.write_byte(*byte));
    }
}

fn write_line(args: fmt::Arguments<'_>) {
    let mut uart = COM1;
    // Writing to the UART cannot fail; a formatting error of a Display impl would only cut the line
    // short.
    let _ = uart.write_str(PREFIX);
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\r\n");
}
