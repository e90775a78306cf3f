//! virtio-vsock (virtio 1.2, section 5.10): one connection to the host, one from it.
//!
//! The protocol is [`Session`] (in the library, where host tests play the host); this module moves
//! its packets. Queues: 0 receives into [`RX_BUFFERS`] single-descriptor buffers of
//! [`RX_BUFFER_SIZE`] bytes (header and payload together), each posted again as soon as its packet
//! is copied out; 1 transmits from one buffer, one packet at a time; 2 holds one buffer for device
//! events, which the driver does not act on.

use keel_test_guest::cmdline::VirtioOptions;
use keel_test_guest::virtio::vsock::{Header, Packet, PacketIo, Session, HEADER_LEN, MAX_PAYLOAD};
use keel_test_guest::virtio::Printable;

use super::deadline;
use super::queue::{DmaArena, DmaBuffer, Segment, Virtqueue};
use super::transport::{DriverError, Transport};
use crate::console::report;
use crate::cpu::rdtsc;

/// Receive buffers kept posted.
const RX_BUFFERS: usize = 4;
/// Bytes per receive buffer: a header and the largest payload a [`Packet`] holds.
const RX_BUFFER_SIZE: usize = HEADER_LEN + MAX_PAYLOAD;
/// Receive space advertised for a connection: what the posted buffers hold. The driver consumes
/// every payload as soon as it arrives.
const BUF_ALLOC: u32 = (RX_BUFFERS * MAX_PAYLOAD) as u32;
/// Bytes of the transmit buffer: room for an echo of the largest payload received.
const TX_BUFFER_SIZE: usize = RX_BUFFER_SIZE;
/// Size of a `virtio_vsock_event`.
const EVENT_SIZE: usize = 8;
/// Payload characters shown in output lines.
const PAYLOAD_SHOWN: usize = 64;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const EVENT_QUEUE: u16 = 2;

/// Runs the socket test: `cid`, then `connect`, then `accepted` lines.
pub fn test(transport: &Transport, options: &VirtioOptions) {
    match Queues::open(transport, options) {
        Ok(queues) => {
            let cid = transport.config_u64(0);
            report!("virtio-vsock cid={cid}");
            let mut session = Session::new(
                queues,
                cid,
                options.vsock_listen,
                BUF_ALLOC,
                options.wait_tsc,
            );
            let port = options.vsock_port;
            match session.connect(port) {
                Ok((mut connection, reply)) => {
                    report!(
                        "virtio-vsock connect port={port} reply={}",
                        Printable {
                            bytes: reply.payload(),
                            limit: PAYLOAD_SHOWN
                        }
                    );
                    if let Err(error) = session.close(&mut connection, true) {
                        report!("FAIL virtio-vsock close port={port} {error}");
                    }
                }
                Err(error) => report!("FAIL virtio-vsock connect port={port} {error}"),
            }
            let port = options.vsock_listen;
            match session.accept() {
                Ok((mut connection, got)) => {
                    report!(
                        "virtio-vsock accepted port={port} got={}",
                        Printable {
                            bytes: got.payload(),
                            limit: PAYLOAD_SHOWN
                        }
                    );
                    if let Err(error) = session.close(&mut connection, false) {
                        report!("FAIL virtio-vsock close port={port} {error}");
                    }
                }
                Err(error) => report!("FAIL virtio-vsock accept port={port} {error}"),
            }
        }
        Err(error) => report!("FAIL virtio-vsock {error}"),
    }
    transport.reset();
}

/// The device's queues and buffers, moving packets for a [`Session`].
struct Queues<'a> {
    transport: &'a Transport,
    rx: Virtqueue,
    tx: Virtqueue,
    /// The head descriptor each receive buffer is posted under.
    rx_posted: [(u16, Option<DmaBuffer>); RX_BUFFERS],
    tx_buffer: DmaBuffer,
    wait: u64,
}

impl<'a> Queues<'a> {
    fn open(transport: &'a Transport, options: &VirtioOptions) -> Result<Self, DriverError> {
        transport.negotiate(0, 0)?;
        // SAFETY: the previous driver reset its device before returning.
        let mut arena = unsafe { DmaArena::take() };
        let mut rx = Virtqueue::new(transport, RX_QUEUE, &mut arena)?;
        let tx = Virtqueue::new(transport, TX_QUEUE, &mut arena)?;
        let mut events = Virtqueue::new(transport, EVENT_QUEUE, &mut arena)?;
        let mut rx_posted = [(0, None); RX_BUFFERS];
        for slot in &mut rx_posted {
            *slot = (0, Some(arena.alloc(RX_BUFFER_SIZE, 64)?));
        }
        let tx_buffer = arena.alloc(TX_BUFFER_SIZE, 64)?;
        let event = arena.alloc(EVENT_SIZE, 8)?;
        transport.driver_ok()?;
        for (head, buffer) in &mut rx_posted {
            if let Some(buffer) = buffer {
                *head = rx.submit(&[Segment::writable(*buffer)])?;
            }
        }
        transport.notify(RX_QUEUE);
        events.submit(&[Segment::writable(event)])?;
        transport.notify(EVENT_QUEUE);
        Ok(Self {
            transport,
            rx,
            tx,
            rx_posted,
            tx_buffer,
            wait: options.wait_tsc,
        })
    }
}

impl PacketIo for Queues<'_> {
    type Error = DriverError;

    fn send(&mut self, header: &Header, payload: &[u8]) -> Result<(), DriverError> {
        let len = HEADER_LEN + payload.len();
        if len > self.tx_buffer.len() {
            return Err(DriverError::TooLong(len));
        }
        self.tx_buffer.with_bytes(|bytes| {
            bytes[..HEADER_LEN].copy_from_slice(&header.to_bytes());
            bytes[HEADER_LEN..len].copy_from_slice(payload);
        });
        self.tx
            .submit(&[Segment::readable(self.tx_buffer.slice(0, len))])?;
        self.transport.notify(TX_QUEUE);
        self.tx
            .wait_used(self.transport, deadline(self.wait), "a sent packet")?;
        Ok(())
    }

    fn receive(&mut self, end: u64) -> Result<Option<Packet>, DriverError> {
        loop {
            let Some((head, len)) = self.rx.poll_used(self.transport, end)? else {
                return Ok(None);
            };
            let Some((posted_head, Some(buffer))) = self
                .rx_posted
                .iter_mut()
                .find(|(posted_head, buffer)| *posted_head == head && buffer.is_some())
            else {
                // A head the driver never posted: nothing to read or post again.
                continue;
            };
            let buffer = *buffer;
            let packet =
                buffer.with_bytes(|bytes| Packet::parse(&bytes[..(len as usize).min(bytes.len())]));
            *posted_head = self.rx.submit(&[Segment::writable(buffer)])?;
            self.transport.notify(RX_QUEUE);
            // A packet shorter than a header is dropped.
            if packet.is_some() {
                return Ok(packet);
            }
        }
    }

    fn now(&mut self) -> u64 {
        rdtsc()
    }
}
