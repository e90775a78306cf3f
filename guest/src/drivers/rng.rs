//! virtio-rng (entropy device, virtio 1.2 section 5.4): one request queue of device-writable
//! buffers.

use keel_test_guest::cmdline::VirtioOptions;
use keel_test_guest::virtio::distinct_bytes;

use super::deadline;
use super::queue::{DmaArena, Segment, Virtqueue};
use super::transport::{DriverError, Transport};
use crate::console::report;

/// Bytes the test asks for.
const WANTED: usize = 64;

/// Fetches [`WANTED`] bytes and prints `virtio-rng bytes=<n> distinct=<k>`.
pub fn test(transport: &Transport, options: &VirtioOptions) {
    if let Err(error) = fetch(transport, options) {
        report!("FAIL virtio-rng {error}");
    }
    transport.reset();
}

fn fetch(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    transport.negotiate(0, 0)?;
    // SAFETY: the previous driver reset its device before returning.
    let mut arena = unsafe { DmaArena::take() };
    let mut queue = Virtqueue::new(transport, 0, &mut arena)?;
    let buffer = arena.alloc(WANTED, 64)?;
    transport.driver_ok()?;
    let mut collected = [0u8; WANTED];
    let mut filled = 0;
    // The device may return fewer bytes than asked; ask again for the rest, a bounded number of times.
    for _ in 0..WANTED {
        if filled == WANTED {
            break;
        }
        let part = buffer.slice(0, WANTED - filled);
        queue.submit(&[Segment::writable(part)])?;
        transport.notify(queue.index());
        let (_, len) = queue.wait_used(transport, deadline(options.wait_tsc), "entropy")?;
        let len = (len as usize).min(part.len());
        part.with_bytes(|bytes| collected[filled..filled + len].copy_from_slice(&bytes[..len]));
        filled += len;
    }
    report!(
        "virtio-rng bytes={filled} distinct={}",
        distinct_bytes(&collected[..filled])
    );
    Ok(())
}
