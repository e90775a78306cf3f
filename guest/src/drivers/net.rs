//! virtio-net (virtio 1.2, section 5.1): send broadcast test frames, wait for the host's frame.
//!
//! Only VIRTIO_NET_F_MAC and VERSION_1 are negotiated, so each buffer holds a 12-byte header and
//! one whole frame. Queue 0 receives into [`RX_BUFFERS`] buffers of [`RX_BUFFER_SIZE`] bytes, which
//! are posted again after each frame; queue 1 transmits from one buffer, one frame at a time.

use keel_test_guest::cmdline::VirtioOptions;
use keel_test_guest::virtio::bench::BENCH_QUEUE_SIZE;
use keel_test_guest::virtio::net::{
    bench_packet, host_frame, test_packet, Mac, F_MAC, MIN_FRAME_LEN,
};
use keel_test_guest::virtio::Printable;

use super::deadline;
use super::queue::{DmaArena, DmaBuffer, Segment, Virtqueue};
use super::transport::{DriverError, Transport};
use crate::console::report;

/// Receive buffers kept posted.
const RX_BUFFERS: usize = 4;
/// Bytes per receive buffer: header plus the largest untagged frame (1514 bytes) fits.
const RX_BUFFER_SIZE: usize = 2048;
/// Bytes of the transmit buffer.
const TX_BUFFER_SIZE: usize = 128;
/// Payload characters shown of the host's frame.
const PAYLOAD_SHOWN: usize = 64;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// Runs the network test.
pub fn test(transport: &Transport, options: &VirtioOptions) {
    if let Err(error) = run(transport, options) {
        report!("FAIL virtio-net {error}");
    }
    transport.reset();
}

/// The send benchmark: `keel.bench_ops` minimum-size frames, as many in flight as the transmit
/// queue holds, all from one buffer (the device only reads it). Receive buffers are posted once and
/// never looked at.
pub fn bench(transport: &Transport, options: &VirtioOptions) {
    if let Err(error) = run_bench(transport, options) {
        report!("FAIL virtio-net {error}");
    }
    transport.reset();
}

fn run_bench(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    transport.negotiate(1 << F_MAC, 0)?;
    // SAFETY: the previous driver reset its device before returning.
    let mut arena = unsafe { DmaArena::take() };
    let mut rx = Virtqueue::new(transport, RX_QUEUE, &mut arena)?;
    let mut tx = Virtqueue::with_size(transport, TX_QUEUE, &mut arena, BENCH_QUEUE_SIZE)?;
    let packet = arena.alloc(TX_BUFFER_SIZE, 64)?;
    let mut buffers = [None; RX_BUFFERS];
    for slot in &mut buffers {
        *slot = Some(arena.alloc(RX_BUFFER_SIZE, 64)?);
    }
    transport.driver_ok()?;
    for buffer in buffers.iter().flatten() {
        rx.submit(&[Segment::writable(*buffer)])?;
    }
    transport.notify(RX_QUEUE);

    let mut mac = [0u8; 6];
    for (offset, byte) in mac.iter_mut().enumerate() {
        *byte = transport.config_u8(offset as u64);
    }
    let mac = Mac(mac);
    let len = packet.with_bytes(|bytes| bench_packet(bytes, mac));
    let frame = Segment::readable(packet.slice(0, len.ok_or(DriverError::OutOfDmaMemory)?));
    let frames = options.bench_ops;
    report!(
        "bench net mac={mac} frames={frames} frame_len={MIN_FRAME_LEN} queue={}",
        tx.size()
    );
    report!("bench net start");
    let mut sent = 0u64;
    let mut done = 0u64;
    while done < frames {
        let mut added = false;
        while tx.free() > 0 && sent < frames {
            tx.submit(&[frame])?;
            sent += 1;
            added = true;
        }
        if added {
            transport.notify(TX_QUEUE);
        }
        tx.wait_used(transport, deadline(options.wait_tsc), "a sent frame")?;
        done += 1;
        while tx.pop_used().is_some() {
            done += 1;
        }
    }
    report!(
        "bench net end ops={frames} bytes={}",
        frames * MIN_FRAME_LEN as u64
    );
    Ok(())
}

fn run(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    transport.negotiate(1 << F_MAC, 0)?;
    // SAFETY: the previous driver reset its device before returning.
    let mut arena = unsafe { DmaArena::take() };
    let mut rx = Virtqueue::new(transport, RX_QUEUE, &mut arena)?;
    let mut tx = Virtqueue::new(transport, TX_QUEUE, &mut arena)?;
    let mut buffers = [None; RX_BUFFERS];
    for slot in &mut buffers {
        *slot = Some(arena.alloc(RX_BUFFER_SIZE, 64)?);
    }
    let packet = arena.alloc(TX_BUFFER_SIZE, 64)?;
    transport.driver_ok()?;

    // Which receive buffer each head descriptor carries.
    let mut posted: [(u16, Option<DmaBuffer>); RX_BUFFERS] = [(0, None); RX_BUFFERS];
    for (slot, buffer) in posted.iter_mut().zip(buffers.iter().flatten()) {
        *slot = (rx.submit(&[Segment::writable(*buffer)])?, Some(*buffer));
    }
    transport.notify(RX_QUEUE);

    let mut mac = [0u8; 6];
    for (offset, byte) in mac.iter_mut().enumerate() {
        *byte = transport.config_u8(offset as u64);
    }
    let mac = Mac(mac);

    for index in 0..options.net_frames {
        let len = packet.with_bytes(|bytes| test_packet(bytes, mac, index));
        let len = len.ok_or(DriverError::OutOfDmaMemory)?;
        tx.submit(&[Segment::readable(packet.slice(0, len))])?;
        transport.notify(TX_QUEUE);
        tx.wait_used(transport, deadline(options.wait_tsc), "a sent frame")?;
    }
    report!("virtio-net mac={mac} sent={}", options.net_frames);

    let end = deadline(options.wait_tsc);
    loop {
        let Some((head, len)) = rx.poll_used(transport, end)? else {
            report!("FAIL virtio-net no frame received");
            return Ok(());
        };
        let slot = posted
            .iter_mut()
            .find(|(posted_head, buffer)| *posted_head == head && buffer.is_some());
        let Some((posted_head, Some(buffer))) = slot else {
            // A head the driver never posted: nothing to look at or post again.
            continue;
        };
        let buffer = *buffer;
        let len = (len as usize).min(buffer.len());
        let found = buffer.with_bytes(|bytes| {
            host_frame(&bytes[..len]).map(|(frame_len, payload)| {
                report!(
                    "virtio-net rx len={frame_len} payload={}",
                    Printable {
                        bytes: payload,
                        limit: PAYLOAD_SHOWN
                    }
                );
            })
        });
        if found.is_some() {
            return Ok(());
        }
        // Someone else's frame (the host's IPv6 chatter, say): post the buffer again.
        *posted_head = rx.submit(&[Segment::writable(buffer)])?;
        transport.notify(RX_QUEUE);
    }
}
