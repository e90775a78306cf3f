//! virtio-vsock (virtio 1.2, section 5.10): one connection to the host, one from it.
//!
//! The protocol is [`Session`] (in the library, where host tests play the host); this module moves
//! its packets. Queues: 0 receives into [`RX_BUFFERS`] single-descriptor buffers of
//! [`RX_BUFFER_SIZE`] bytes (header and payload together), each posted again as soon as its packet
//! is copied out; 1 transmits from one buffer, one packet at a time; 2 holds one buffer for device
//! events, which the driver does not act on.

use keel_test_guest::cmdline::VirtioOptions;
use keel_test_guest::virtio::bench::{BENCH_QUEUE_SIZE, VSOCK_PACKET};
use keel_test_guest::virtio::vsock::{
    Header, Packet, PacketIo, Session, HEADER_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM,
};
use keel_test_guest::virtio::Printable;

use super::deadline;
use super::queue::{DmaArena, DmaBuffer, Segment, Virtqueue, MAX_QUEUE_SIZE};
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

/// Bytes reserved per bulk packet header (one per transmit descriptor).
const BULK_HEADER_SLOT: usize = 64;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const EVENT_QUEUE: u16 = 2;

/// Which socket-device attack to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VsockAttack {
    /// Requests to a port nobody listens on, the receive queue unread meanwhile.
    ResetFlood,
    /// Requests to a port whose host peer accepts them all, the receive queue read.
    ConnectionFlood,
    /// Data past the connection's credit.
    CreditOverflow,
}

/// What a hostile-guest attack on the socket device saw.
pub enum Seen {
    /// Resets received for a flood of connection requests, and other packets.
    Resets(u64, u64),
    /// Connections accepted and refused in a flood of requests.
    Connections(u64, u64),
    /// The connection was reset after the guest sent this many bytes past its credit.
    ResetAfter(u64),
    /// The connection request was refused, or never reset however much was sent.
    NoReset(&'static str),
}

/// Bytes `vsock_credit_overflow` sends at most before giving up on a reset.
const OVERFLOW_LIMIT: u64 = 64 << 20;
/// First source port of the attacks' connections.
const ATTACK_PORT: u32 = 100_000;

/// `vsock_reset_flood`: `count` connection requests to host port `keel.vsock_port` (where
/// nobody listens) without reading the receive queue, then the resets that come back.
/// `vsock_credit_overflow`: one connection, then data sent with no regard for the device's
/// credit until the device resets the connection.
pub fn attack(
    transport: &Transport,
    options: &VirtioOptions,
    which: VsockAttack,
) -> Result<Seen, DriverError> {
    let mut queues = Queues::open(transport, options, None)?;
    let cid = transport.config_u64(0);
    let header = |op, src_port, len| Header {
        src_cid: cid,
        dst_cid: HOST_CID,
        src_port,
        dst_port: options.vsock_port,
        len,
        socket_type: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: 0,
    };
    let short = || deadline(options.wait_tsc / 10);
    if which == VsockAttack::ConnectionFlood {
        let (mut accepted, mut refused) = (0u64, 0u64);
        let mut count = |packet: Packet| match packet.header.op {
            OP_RESPONSE => accepted += 1,
            OP_RST => refused += 1,
            _ => {}
        };
        for port in 0..options.attack_count as u32 {
            queues.send(&header(OP_REQUEST, ATTACK_PORT + port, 0), &[])?;
            while let Some(packet) = queues.poll()? {
                count(packet);
            }
        }
        while let Some(packet) = queues.receive(short())? {
            count(packet);
        }
        return Ok(Seen::Connections(accepted, refused));
    }
    if which == VsockAttack::ResetFlood {
        for port in 0..options.attack_count as u32 {
            queues.send(&header(OP_REQUEST, ATTACK_PORT + port, 0), &[])?;
        }
        let (mut resets, mut other) = (0, 0);
        while let Some(packet) = queues.receive(short())? {
            if packet.header.op == OP_RST {
                resets += 1;
            } else {
                other += 1;
            }
        }
        return Ok(Seen::Resets(resets, other));
    }
    queues.send(&header(OP_REQUEST, ATTACK_PORT, 0), &[])?;
    loop {
        match queues.receive(deadline(options.wait_tsc))? {
            Some(packet) if packet.header.op == OP_RESPONSE => break,
            Some(packet) if packet.header.op == OP_RST => return Ok(Seen::NoReset("refused")),
            Some(_) => {}
            None => return Err(DriverError::Timeout("the connection's response")),
        }
    }
    let payload = [0x5au8; MAX_PAYLOAD];
    let mut sent = 0u64;
    while sent < OVERFLOW_LIMIT {
        queues.send(&header(OP_RW, ATTACK_PORT, MAX_PAYLOAD as u32), &payload)?;
        sent += MAX_PAYLOAD as u64;
        while let Some(packet) = queues.poll()? {
            match packet.header.op {
                OP_RST => return Ok(Seen::ResetAfter(sent)),
                // Credit updates say the guest may send more; it sends regardless.
                OP_CREDIT_UPDATE => {}
                _ => {}
            }
        }
    }
    Ok(Seen::NoReset("never reset"))
}

/// After an attack: the device, set up afresh, answers a connection request to a port nobody
/// listens on (`keel.vsock_port` + 1) with a reset.
pub fn probe(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    transport.reset();
    let mut queues = Queues::open(transport, options, None)?;
    let request = Header {
        src_cid: transport.config_u64(0),
        dst_cid: HOST_CID,
        src_port: ATTACK_PORT - 1,
        dst_port: options.vsock_port.wrapping_add(1),
        len: 0,
        socket_type: TYPE_STREAM,
        op: OP_REQUEST,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: 0,
    };
    queues.send(&request, &[])?;
    loop {
        match queues.receive(deadline(options.wait_tsc))? {
            Some(packet)
                if packet.header.op == OP_RST && packet.header.dst_port == ATTACK_PORT - 1 =>
            {
                return Ok(())
            }
            Some(_) => {}
            None => {
                return Err(DriverError::Timeout(
                    "the reset of a request after the attack",
                ))
            }
        }
    }
}

/// Runs the socket test: `cid`, then `connect`, then `accepted` lines.
pub fn test(transport: &Transport, options: &VirtioOptions) {
    match Queues::open(transport, options, None) {
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

/// The streaming benchmark: connects to host port `keel.vsock_port`, streams `keel.bench_bytes`
/// bytes from `memory` in RW packets of up to 64 KiB (up to `keel.bench_depth` of them queued),
/// then closes the connection.
pub fn bench(transport: &Transport, options: &VirtioOptions, memory: DmaBuffer) {
    match Queues::open(transport, options, Some(memory)) {
        Ok(queues) => {
            let cid = transport.config_u64(0);
            let mut session = Session::new(
                queues,
                cid,
                options.vsock_listen,
                BUF_ALLOC,
                options.wait_tsc,
            );
            let port = options.vsock_port;
            match session.open(port) {
                Ok(mut connection) => {
                    let total = options.bench_bytes;
                    let packet = VSOCK_PACKET.min(memory.len() as u32);
                    report!(
                        "bench vsock cid={cid} port={port} bytes={total} packet={packet} depth={} peer_buf_alloc={}",
                        options.bench_depth,
                        connection.peer_buf_alloc
                    );
                    report!("bench vsock start");
                    match session.stream(&mut connection, total, packet) {
                        Ok(packets) => report!("bench vsock end ops={packets} bytes={total}"),
                        Err(error) => report!("FAIL virtio-vsock stream port={port} {error}"),
                    }
                    if let Err(error) = session.close(&mut connection, true) {
                        report!("FAIL virtio-vsock close port={port} {error}");
                    }
                }
                Err(error) => report!("FAIL virtio-vsock connect port={port} {error}"),
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
    /// Bulk packets on the transmit queue that the device has not returned yet.
    tx_in_flight: u16,
    /// Bulk packets allowed on the transmit queue at once.
    depth: u16,
    /// Benchmark only: one header slot per transmit descriptor, and the bulk payload's memory.
    bulk: Option<(DmaBuffer, DmaBuffer)>,
}

impl<'a> Queues<'a> {
    /// Sets the device up; with `bulk` memory (the benchmark) the transmit queue is as large as
    /// the benchmarks' queues.
    fn open(
        transport: &'a Transport,
        options: &VirtioOptions,
        bulk: Option<DmaBuffer>,
    ) -> Result<Self, DriverError> {
        transport.negotiate(0, 0)?;
        // SAFETY: the previous driver reset its device before returning.
        let mut arena = unsafe { DmaArena::take() };
        let mut rx = Virtqueue::new(transport, RX_QUEUE, &mut arena)?;
        let tx_size = if bulk.is_some() {
            BENCH_QUEUE_SIZE
        } else {
            MAX_QUEUE_SIZE
        };
        let tx = Virtqueue::with_size(transport, TX_QUEUE, &mut arena, tx_size)?;
        let bulk = match bulk {
            Some(memory) => Some((
                arena.alloc(BULK_HEADER_SLOT * usize::from(tx.size()), 64)?,
                memory,
            )),
            None => None,
        };
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
            rx_posted,
            tx_buffer,
            wait: options.wait_tsc,
            tx_in_flight: 0,
            // Two descriptors per bulk packet; one more chain for a control packet.
            depth: options.bench_depth.min(tx.size() / 2 - 1).max(1),
            bulk,
            tx,
        })
    }

    /// Waits for one transmitted packet to come back, then takes any others that have.
    fn reclaim(&mut self) -> Result<(), DriverError> {
        self.tx
            .wait_used(self.transport, deadline(self.wait), "a sent packet")?;
        self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
        while self.tx.pop_used().is_some() {
            self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
        }
        Ok(())
    }

    /// The packet in receive buffer `head` (`len` bytes written), posting the buffer again.
    fn take(&mut self, head: u16, len: u32) -> Result<Option<Packet>, DriverError> {
        let Some((posted_head, Some(buffer))) = self
            .rx_posted
            .iter_mut()
            .find(|(posted_head, buffer)| *posted_head == head && buffer.is_some())
        else {
            // A head the driver never posted: nothing to read or post again.
            return Ok(None);
        };
        let buffer = *buffer;
        let packet =
            buffer.with_bytes(|bytes| Packet::parse(&bytes[..(len as usize).min(bytes.len())]));
        *posted_head = self.rx.submit(&[Segment::writable(buffer)])?;
        self.transport.notify(RX_QUEUE);
        // A packet shorter than a header is dropped.
        Ok(packet)
    }
}

impl PacketIo for Queues<'_> {
    type Error = DriverError;

    fn send(&mut self, header: &Header, payload: &[u8]) -> Result<(), DriverError> {
        // Control packets go one at a time, after every bulk packet, through one buffer.
        self.drain()?;
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
            if let Some(packet) = self.take(head, len)? {
                return Ok(Some(packet));
            }
        }
    }

    fn poll(&mut self) -> Result<Option<Packet>, DriverError> {
        while let Some((head, len)) = self.rx.pop_used() {
            if let Some(packet) = self.take(head, len)? {
                return Ok(Some(packet));
            }
        }
        Ok(None)
    }

    fn send_bulk(&mut self, header: &Header) -> Result<(), DriverError> {
        let Some((headers, memory)) = self.bulk else {
            return Err(DriverError::TooLong(header.len as usize));
        };
        let len = header.len as usize;
        if len > memory.len() {
            return Err(DriverError::TooLong(len));
        }
        while self.tx.pop_used().is_some() {
            self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
        }
        while self.tx_in_flight >= self.depth || self.tx.free() < 2 {
            self.reclaim()?;
        }
        let slot = headers.slice(
            usize::from(self.tx.next_head()) * BULK_HEADER_SLOT,
            HEADER_LEN,
        );
        slot.with_bytes(|bytes| bytes.copy_from_slice(&header.to_bytes()));
        self.tx.submit(&[
            Segment::readable(slot),
            Segment::readable(memory.slice(0, len)),
        ])?;
        self.tx_in_flight += 1;
        self.transport.notify(TX_QUEUE);
        Ok(())
    }

    fn drain(&mut self) -> Result<(), DriverError> {
        while self.tx_in_flight > 0 {
            self.reclaim()?;
        }
        Ok(())
    }

    fn now(&mut self) -> u64 {
        rdtsc()
    }
}
