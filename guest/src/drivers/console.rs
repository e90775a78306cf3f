//! virtio-console (virtio 1.2 section 5.3), one port: receiveq 0 (host to guest) and
//! transmitq 1 (guest to host).
//!
//! The test sends a greeting, then waits for one line from the host (up to a newline, at most
//! 64 bytes) and reports it on COM1, and sends it back on the console:
//! `virtio-console sent=<n>`, then `virtio-console received="<line>"`.

use keel_test_guest::cmdline::VirtioOptions;

use super::deadline;
use super::queue::{DmaArena, Segment, Virtqueue};
use super::transport::{DriverError, Transport};
use crate::console::report;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// What the guest writes first.
const GREETING: &[u8] = b"keel-guest: hello over virtio-console\n";
/// Longest line the test reads.
const LINE_MAX: usize = 64;

/// Runs the test and resets the device.
pub fn test(transport: &Transport, options: &VirtioOptions) {
    if let Err(error) = exchange(transport, options) {
        report!("FAIL virtio-console {error}");
    }
    transport.reset();
}

fn exchange(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    transport.negotiate(0, 0)?;
    // SAFETY: the previous driver reset its device before returning.
    let mut arena = unsafe { DmaArena::take() };
    let mut rx = Virtqueue::new(transport, RX_QUEUE, &mut arena)?;
    let mut tx = Virtqueue::new(transport, TX_QUEUE, &mut arena)?;
    let out = arena.alloc(LINE_MAX.max(GREETING.len()), 64)?;
    let input = arena.alloc(LINE_MAX, 64)?;
    transport.driver_ok()?;

    let greeting = out.slice(0, GREETING.len());
    greeting.with_bytes(|bytes| bytes.copy_from_slice(GREETING));
    tx.submit(&[Segment::readable(greeting)])?;
    transport.notify(TX_QUEUE);
    tx.wait_used(
        transport,
        deadline(options.wait_tsc),
        "the greeting to be sent",
    )?;
    report!("virtio-console sent={}", GREETING.len());

    let mut line = [0u8; LINE_MAX];
    let mut len = 0;
    while len < LINE_MAX && !line[..len].contains(&b'\n') {
        let part = input.slice(0, LINE_MAX - len);
        rx.submit(&[Segment::writable(part)])?;
        transport.notify(RX_QUEUE);
        let (_, got) = rx.wait_used(transport, deadline(options.wait_tsc), "a line of input")?;
        let got = (got as usize).min(LINE_MAX - len);
        part.with_bytes(|bytes| line[len..len + got].copy_from_slice(&bytes[..got]));
        len += got;
    }
    let text = line[..len].strip_suffix(b"\n").unwrap_or(&line[..len]);
    let text = core::str::from_utf8(text).unwrap_or("<not UTF-8>");
    report!("virtio-console received=\"{text}\"");

    let echo = out.slice(0, len);
    echo.with_bytes(|bytes| bytes.copy_from_slice(&line[..len]));
    tx.submit(&[Segment::readable(echo)])?;
    transport.notify(TX_QUEUE);
    tx.wait_used(transport, deadline(options.wait_tsc), "the echo to be sent")?;
    Ok(())
}
