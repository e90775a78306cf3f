//! virtio-vsock (virtio 1.2, section 5.10): the packet header and one stream connection's
//! addressing and credit accounting.
//!
//! Every packet starts with a 44-byte little-endian [`Header`]; RW packets carry `len` payload
//! bytes after it. Each side tells the other, in every header, how much receive buffer space the
//! connection has (`buf_alloc`) and how many bytes it has consumed so far (`fwd_cnt`); a sender may
//! have at most `buf_alloc - (bytes sent - fwd_cnt)` bytes in flight.
//!
//! [`Session`] is the guest's whole test protocol over an abstract [`PacketIo`], so host tests can
//! play the host's side; the driver (`src/drivers/vsock.rs`) supplies the virtqueues.

use core::fmt;

/// Length of the packet header.
pub const HEADER_LEN: usize = 44;

/// The host's CID.
pub const HOST_CID: u64 = 2;

/// Socket type: stream.
pub const TYPE_STREAM: u16 = 1;

/// Operation: connection request.
pub const OP_REQUEST: u16 = 1;
/// Operation: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Operation: connection reset (refused or closed).
pub const OP_RST: u16 = 3;
/// Operation: the sender stops receiving and/or sending (see [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: data.
pub const OP_RW: u16 = 5;
/// Operation: unsolicited credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: asks the peer for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub socket_type: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation-specific flags.
    pub flags: u32,
    /// The sender's receive buffer space for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from this connection.
    pub fwd_cnt: u32,
}

impl Header {
    /// The wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// Reads a header from the start of `bytes`; `None` if they are too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Some(Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            socket_type: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// A RST answering `self` (source and destination swapped, nothing else set).
    pub fn reset_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            socket_type: self.socket_type,
            op: OP_RST,
            ..Self::default()
        }
    }
}

/// One stream connection: its addresses and both sides' credit counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The guest's CID.
    pub local_cid: u64,
    /// The guest's port.
    pub local_port: u32,
    /// The peer's CID.
    pub peer_cid: u64,
    /// The peer's port.
    pub peer_port: u32,
    /// The guest's receive buffer space, advertised in every header.
    pub buf_alloc: u32,
    /// Payload bytes the guest has consumed.
    pub fwd_cnt: u32,
    /// Payload bytes the guest has sent.
    pub tx_cnt: u32,
    /// The peer's advertised receive buffer space.
    pub peer_buf_alloc: u32,
    /// Payload bytes the peer has consumed.
    pub peer_fwd_cnt: u32,
}

impl Connection {
    /// A connection with nothing sent or received and no credit from the peer yet.
    pub fn new(
        local_cid: u64,
        local_port: u32,
        peer_cid: u64,
        peer_port: u32,
        buf_alloc: u32,
    ) -> Self {
        Self {
            local_cid,
            local_port,
            peer_cid,
            peer_port,
            buf_alloc,
            fwd_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// The header of a packet the guest sends on this connection.
    pub fn header(&self, op: u16, len: u32, flags: u32) -> Header {
        Header {
            src_cid: self.local_cid,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            socket_type: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Whether `header` belongs to this connection (sent by the peer to the guest).
    pub fn owns(&self, header: &Header) -> bool {
        header.src_cid == self.peer_cid
            && header.src_port == self.peer_port
            && header.dst_cid == self.local_cid
            && header.dst_port == self.local_port
    }

    /// Takes the peer's credit information from a header it sent.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Bytes the guest may send now without overrunning the peer's buffer.
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `len` payload bytes as sent.
    pub fn sent(&mut self, len: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(len);
    }

    /// Counts `len` received payload bytes as consumed.
    pub fn consumed(&mut self, len: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(len);
    }
}

/// Payload bytes one received packet can carry (the driver's receive buffers hold a header and
/// this much).
pub const MAX_PAYLOAD: usize = 980;

/// What the guest sends on the connection it opens.
pub const GREETING: &[u8] = b"hello from guest";

/// The guest's port for the connection it opens.
pub const GUEST_PORT: u32 = 49152;

/// A received packet, copied out of its buffer.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// The header.
    pub header: Header,
    /// Payload storage; the first `payload_len` bytes are the payload.
    pub payload: [u8; MAX_PAYLOAD],
    /// Payload bytes present (RW packets only: the header's `len`, clamped to what arrived).
    pub payload_len: usize,
}

impl Packet {
    /// Copies a packet out of what the device wrote; `None` if that is shorter than a header.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header = Header::from_bytes(bytes)?;
        let present = bytes.len() - HEADER_LEN;
        let payload_len = if header.op == OP_RW {
            (header.len as usize).min(present).min(MAX_PAYLOAD)
        } else {
            0
        };
        let mut payload = [0u8; MAX_PAYLOAD];
        payload[..payload_len].copy_from_slice(&bytes[HEADER_LEN..HEADER_LEN + payload_len]);
        Some(Self {
            header,
            payload,
            payload_len,
        })
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.payload_len]
    }
}

/// Moving packets between a [`Session`] and the device, and telling time.
pub trait PacketIo {
    /// What can go wrong with the device.
    type Error;
    /// Sends one packet (waiting until the device has taken it).
    fn send(&mut self, header: &Header, payload: &[u8]) -> Result<(), Self::Error>;
    /// The next received packet, or `None` once [`now`](Self::now) has passed `end`.
    fn receive(&mut self, end: u64) -> Result<Option<Packet>, Self::Error>;
    /// The current time, in the unit of the session's waits (TSC ticks in the guest).
    fn now(&mut self) -> u64;
    /// Queues an RW packet whose `header.len` payload bytes come from the mover's bulk data (the
    /// benchmark's), without waiting for the device to take it.
    fn send_bulk(&mut self, header: &Header) -> Result<(), Self::Error>;
    /// A received packet if one is there, without waiting.
    fn poll(&mut self) -> Result<Option<Packet>, Self::Error>;
    /// Waits until the device has taken every packet queued by [`send_bulk`](Self::send_bulk).
    fn drain(&mut self) -> Result<(), Self::Error>;
}

/// Why a connection step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure<E> {
    /// The device failed.
    Io(E),
    /// Nothing arrived in time; the text says what was awaited.
    Timeout(&'static str),
    /// The peer sent RST or SHUTDOWN (the op) while the step (the text) was not done.
    Closed(&'static str, u16),
    /// The peer gives no credit for the bytes to send (this much is free).
    NoCredit(u32),
}

impl<E> From<E> for Failure<E> {
    fn from(error: E) -> Self {
        Self::Io(error)
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => error.fmt(f),
            Self::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Self::Closed(when, op) => write!(f, "peer sent op {op} while {when}"),
            Self::NoCredit(free) => write!(f, "peer credit {free} too small"),
        }
    }
}

/// The guest's side of the vsock test: one stream connection at a time over a [`PacketIo`].
///
/// Packets for no open connection get a RST, except a connection request to the listening port,
/// which is kept for [`accept`](Self::accept) however early it arrives.
pub struct Session<Io> {
    io: Io,
    cid: u64,
    listen_port: u32,
    buf_alloc: u32,
    wait: u64,
    early_request: Option<Header>,
}

impl<Io: PacketIo> Session<Io> {
    /// A session of the guest with CID `cid`, accepting on `listen_port`, advertising `buf_alloc`
    /// bytes of receive space per connection and waiting up to `wait` time units for each step.
    pub fn new(io: Io, cid: u64, listen_port: u32, buf_alloc: u32, wait: u64) -> Self {
        Self {
            io,
            cid,
            listen_port,
            buf_alloc,
            wait,
            early_request: None,
        }
    }

    /// The packet mover, e.g. to reach the device after the session.
    pub fn io(&mut self) -> &mut Io {
        &mut self.io
    }

    fn deadline(&mut self, wait: u64) -> u64 {
        self.io.now().saturating_add(wait)
    }

    /// Connects to the host's `port`, sends [`GREETING`] and returns the connection and the
    /// peer's first RW packet. Close the connection with [`close`](Self::close).
    pub fn connect(&mut self, port: u32) -> Result<(Connection, Packet), Failure<Io::Error>> {
        let mut connection = self.open(port)?;
        self.send_data(&mut connection, GREETING)?;
        let reply = self.read(&mut connection, "waiting for the reply")?;
        Ok((connection, reply))
    }

    /// Connects to the host's `port` and returns the connection, nothing sent on it yet.
    pub fn open(&mut self, port: u32) -> Result<Connection, Failure<Io::Error>> {
        let mut connection = Connection::new(self.cid, GUEST_PORT, HOST_CID, port, self.buf_alloc);
        self.io.send(&connection.header(OP_REQUEST, 0, 0), &[])?;
        let end = self.deadline(self.wait);
        loop {
            let packet = self
                .next_on(&mut connection, end)?
                .ok_or(Failure::Timeout("the response"))?;
            match packet.header.op {
                OP_RESPONSE => break,
                op @ (OP_RST | OP_SHUTDOWN) => return Err(Failure::Closed("connecting", op)),
                _ => {}
            }
        }
        Ok(connection)
    }

    /// Streams `total` bytes of bulk data on `connection` in RW packets of up to `max_packet`
    /// bytes, as fast as the peer's credit allows, and returns the packets sent once the device
    /// has taken them all. Packets arriving meanwhile are handled without waiting for them; when
    /// the credit runs out the guest waits for the peer's update (a sixty-fourth of the wait) and
    /// then asks for one.
    pub fn stream(
        &mut self,
        connection: &mut Connection,
        total: u64,
        max_packet: u32,
    ) -> Result<u64, Failure<Io::Error>> {
        let mut left = total;
        let mut packets = 0u64;
        while left > 0 {
            while let Some(packet) = self.io.poll()? {
                self.absorb(connection, &packet, "streaming")?;
            }
            let len = left
                .min(u64::from(max_packet))
                .min(u64::from(connection.peer_free())) as u32;
            if len == 0 {
                self.wait_for_credit(connection)?;
                continue;
            }
            self.io.send_bulk(&connection.header(OP_RW, len, 0))?;
            connection.sent(len);
            left -= u64::from(len);
            packets += 1;
        }
        self.io.drain()?;
        Ok(packets)
    }

    /// Takes a packet that arrived while streaming: a stray is handled as such; on the
    /// connection, credit is taken, credit requests answered, data counted as consumed, and a RST
    /// or SHUTDOWN ends the stream.
    fn absorb(
        &mut self,
        connection: &mut Connection,
        packet: &Packet,
        step: &'static str,
    ) -> Result<(), Failure<Io::Error>> {
        if !connection.owns(&packet.header) {
            return self.stray(&packet.header);
        }
        connection.update_peer_credit(&packet.header);
        match packet.header.op {
            OP_CREDIT_REQUEST => self
                .io
                .send(&connection.header(OP_CREDIT_UPDATE, 0, 0), &[])?,
            op @ (OP_RST | OP_SHUTDOWN) => return Err(Failure::Closed(step, op)),
            OP_RW => connection.consumed(packet.payload_len as u32),
            _ => {}
        }
        Ok(())
    }

    /// Waits until the peer gives credit: first for its own update, then after asking.
    fn wait_for_credit(&mut self, connection: &mut Connection) -> Result<(), Failure<Io::Error>> {
        let mut asked = false;
        let mut end = self.deadline(self.wait / 64);
        loop {
            match self.io.receive(end)? {
                Some(packet) => {
                    self.absorb(connection, &packet, "waiting for credit")?;
                    if connection.peer_free() > 0 {
                        return Ok(());
                    }
                }
                None if !asked => {
                    self.io
                        .send(&connection.header(OP_CREDIT_REQUEST, 0, 0), &[])?;
                    asked = true;
                    end = self.deadline(self.wait);
                }
                None => return Err(Failure::NoCredit(connection.peer_free())),
            }
        }
    }

    /// Waits for a connection request to the listening port, accepts it, reads one RW packet and
    /// sends its payload back upper-cased. Returns the connection and the packet read. Close the
    /// connection with [`close`](Self::close).
    pub fn accept(&mut self) -> Result<(Connection, Packet), Failure<Io::Error>> {
        let request = match self.early_request.take() {
            Some(request) => request,
            None => self.wait_for_request()?,
        };
        let mut connection = Connection::new(
            self.cid,
            self.listen_port,
            request.src_cid,
            request.src_port,
            self.buf_alloc,
        );
        connection.update_peer_credit(&request);
        self.io.send(&connection.header(OP_RESPONSE, 0, 0), &[])?;
        let packet = self.read(&mut connection, "waiting for data")?;
        let mut echo = packet.payload;
        let echo = &mut echo[..packet.payload_len];
        echo.make_ascii_uppercase();
        self.send_data(&mut connection, echo)?;
        Ok((connection, packet))
    }

    /// Ends a connection. The side that opened it (`initiator`) shuts down first and waits for the
    /// peer's RST; the accepting side waits for the peer to shut down. Either way the guest sends
    /// its own RST unless the peer sent one. Waits a quarter of the usual time.
    pub fn close(
        &mut self,
        connection: &mut Connection,
        initiator: bool,
    ) -> Result<(), Failure<Io::Error>> {
        if initiator {
            let flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
            self.io
                .send(&connection.header(OP_SHUTDOWN, 0, flags), &[])?;
        }
        let end = self.deadline(self.wait / 4);
        while let Some(packet) = self.next_on(connection, end)? {
            match packet.header.op {
                OP_RST => return Ok(()),
                OP_SHUTDOWN => break,
                _ => {}
            }
        }
        self.io.send(&connection.header(OP_RST, 0, 0), &[])?;
        Ok(())
    }

    /// The next RW packet of `connection`, counted as consumed.
    fn read(
        &mut self,
        connection: &mut Connection,
        step: &'static str,
    ) -> Result<Packet, Failure<Io::Error>> {
        let end = self.deadline(self.wait);
        loop {
            let packet = self
                .next_on(connection, end)?
                .ok_or(Failure::Timeout("data"))?;
            match packet.header.op {
                OP_RW => {
                    connection.consumed(packet.payload_len as u32);
                    return Ok(packet);
                }
                op @ (OP_RST | OP_SHUTDOWN) => return Err(Failure::Closed(step, op)),
                _ => {}
            }
        }
    }

    fn wait_for_request(&mut self) -> Result<Header, Failure<Io::Error>> {
        let end = self.deadline(self.wait);
        loop {
            let packet = self
                .io
                .receive(end)?
                .ok_or(Failure::Timeout("a connection request"))?;
            self.stray(&packet.header)?;
            if let Some(request) = self.early_request.take() {
                return Ok(request);
            }
        }
    }

    /// Sends `payload` as one RW packet once the peer's credit allows it (asking for credit if it
    /// does not yet).
    fn send_data(
        &mut self,
        connection: &mut Connection,
        payload: &[u8],
    ) -> Result<(), Failure<Io::Error>> {
        let len = payload.len() as u32;
        if connection.peer_free() < len {
            self.io
                .send(&connection.header(OP_CREDIT_REQUEST, 0, 0), &[])?;
            let end = self.deadline(self.wait);
            while connection.peer_free() < len {
                match self.next_on(connection, end)? {
                    Some(packet) if matches!(packet.header.op, OP_RST | OP_SHUTDOWN) => {
                        return Err(Failure::Closed("waiting for credit", packet.header.op))
                    }
                    Some(_) => {}
                    None => return Err(Failure::NoCredit(connection.peer_free())),
                }
            }
        }
        self.io.send(&connection.header(OP_RW, len, 0), payload)?;
        connection.sent(len);
        Ok(())
    }

    /// The next packet of `connection` (its credit information taken, credit requests answered),
    /// handling packets for anything else on the way; `None` at `end`.
    fn next_on(
        &mut self,
        connection: &mut Connection,
        end: u64,
    ) -> Result<Option<Packet>, Failure<Io::Error>> {
        while let Some(packet) = self.io.receive(end)? {
            if !connection.owns(&packet.header) {
                self.stray(&packet.header)?;
                continue;
            }
            connection.update_peer_credit(&packet.header);
            if packet.header.op == OP_CREDIT_REQUEST {
                self.io
                    .send(&connection.header(OP_CREDIT_UPDATE, 0, 0), &[])?;
                continue;
            }
            return Ok(Some(packet));
        }
        Ok(None)
    }

    /// A packet for no open connection: keep an early connection request to the listening port,
    /// answer anything else but a RST with a RST.
    fn stray(&mut self, header: &Header) -> Result<(), Failure<Io::Error>> {
        let for_listener = header.op == OP_REQUEST
            && header.socket_type == TYPE_STREAM
            && header.dst_cid == self.cid
            && header.dst_port == self.listen_port;
        if for_listener && self.early_request.is_none() {
            self.early_request = Some(*header);
        } else if header.op != OP_RST {
            self.io.send(&header.reset_reply(), &[])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let header = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x0102_0304,
            dst_port: 5000,
            len: 16,
            socket_type: TYPE_STREAM,
            op: OP_RW,
            flags: 0xa0b0_c0d0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes[..8], [3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[8..16], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[16..20], [4, 3, 2, 1]);
        assert_eq!(bytes[20..24], 5000u32.to_le_bytes());
        assert_eq!(bytes[24..28], [16, 0, 0, 0]);
        assert_eq!(bytes[28..32], [1, 0, 5, 0]);
        assert_eq!(bytes[32..36], [0xd0, 0xc0, 0xb0, 0xa0]);
        assert_eq!(bytes[36..40], [0, 16, 0, 0]);
        assert_eq!(bytes[40..44], [7, 0, 0, 0]);
        assert_eq!(Header::from_bytes(&bytes), Some(header));
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"payload");
        assert_eq!(Header::from_bytes(&longer), Some(header));
        assert_eq!(Header::from_bytes(&bytes[..43]), None);
    }

    #[test]
    fn reset_reply_swaps_addresses() {
        let request = Header {
            src_cid: HOST_CID,
            dst_cid: 3,
            src_port: 1234,
            dst_port: 99,
            socket_type: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 100,
            ..Header::default()
        };
        let reset = request.reset_reply();
        assert_eq!((reset.src_cid, reset.dst_cid), (3, HOST_CID));
        assert_eq!((reset.src_port, reset.dst_port), (99, 1234));
        assert_eq!(
            (reset.op, reset.socket_type, reset.len),
            (OP_RST, TYPE_STREAM, 0)
        );
        assert_eq!((reset.buf_alloc, reset.fwd_cnt), (0, 0));
    }

    #[test]
    fn connection_addresses_and_credit() {
        let mut connection = Connection::new(3, 49152, HOST_CID, 5000, 3920);
        let request = connection.header(OP_REQUEST, 0, 0);
        assert_eq!((request.src_cid, request.src_port), (3, 49152));
        assert_eq!((request.dst_cid, request.dst_port), (HOST_CID, 5000));
        assert_eq!((request.buf_alloc, request.fwd_cnt), (3920, 0));
        assert_eq!(connection.peer_free(), 0);

        let mut response = request.reset_reply();
        response.op = OP_RESPONSE;
        response.buf_alloc = 64;
        response.fwd_cnt = 0;
        assert!(connection.owns(&response));
        assert!(!connection.owns(&request));
        let mut elsewhere = response;
        elsewhere.dst_port = 6000;
        assert!(!connection.owns(&elsewhere));

        connection.update_peer_credit(&response);
        assert_eq!(connection.peer_free(), 64);
        connection.sent(16);
        assert_eq!(connection.peer_free(), 48);
        connection.sent(60);
        assert_eq!(connection.peer_free(), 0);
        response.fwd_cnt = 76;
        connection.update_peer_credit(&response);
        assert_eq!(connection.peer_free(), 64);

        connection.consumed(5);
        assert_eq!(connection.header(OP_RW, 16, 0).fwd_cnt, 5);
    }

    #[test]
    fn counters_wrap() {
        let mut connection = Connection::new(3, 1, HOST_CID, 2, 100);
        connection.tx_cnt = u32::MAX - 1;
        connection.peer_fwd_cnt = u32::MAX - 1;
        connection.peer_buf_alloc = 10;
        connection.sent(4);
        assert_eq!(connection.tx_cnt, 2);
        assert_eq!(connection.peer_free(), 6);
    }

    /// The host side of a session: packets queued for the guest, packets the guest sent, and a
    /// reaction that answers each packet the guest sends.
    struct FakeHost<F> {
        to_guest: std::collections::VecDeque<Packet>,
        from_guest: Vec<(Header, Vec<u8>)>,
        time: u64,
        react: F,
    }

    type Reply = Vec<(Header, Vec<u8>)>;

    fn packet(header: Header, payload: &[u8]) -> Packet {
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        Packet::parse(&bytes).unwrap()
    }

    impl<F: FnMut(&Header, &[u8]) -> Reply> PacketIo for FakeHost<F> {
        type Error = &'static str;

        fn send(&mut self, header: &Header, payload: &[u8]) -> Result<(), Self::Error> {
            assert_eq!(header.len as usize, payload.len());
            self.from_guest.push((*header, payload.to_vec()));
            for (reply, data) in (self.react)(header, payload) {
                self.to_guest.push_back(packet(reply, &data));
            }
            Ok(())
        }

        fn receive(&mut self, end: u64) -> Result<Option<Packet>, Self::Error> {
            self.time += 1;
            match self.to_guest.pop_front() {
                Some(packet) => Ok(Some(packet)),
                None => {
                    self.time = self.time.max(end + 1);
                    Ok(None)
                }
            }
        }

        fn now(&mut self) -> u64 {
            self.time
        }

        fn send_bulk(&mut self, header: &Header) -> Result<(), Self::Error> {
            let payload = vec![0x42; header.len as usize];
            self.send(header, &payload)
        }

        fn poll(&mut self) -> Result<Option<Packet>, Self::Error> {
            Ok(self.to_guest.pop_front())
        }

        fn drain(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    const GUEST_CID: u64 = 3;

    fn session<F: FnMut(&Header, &[u8]) -> Reply>(
        queued: Vec<Packet>,
        react: F,
    ) -> Session<FakeHost<F>> {
        let host = FakeHost {
            to_guest: queued.into(),
            from_guest: Vec::new(),
            time: 0,
            react,
        };
        Session::new(host, GUEST_CID, 6000, 3920, 1000)
    }

    /// A packet from the host's `port` to the guest's `guest_port`.
    fn from_host(port: u32, guest_port: u32, op: u16, len: u32, buf_alloc: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: GUEST_CID,
            src_port: port,
            dst_port: guest_port,
            len,
            socket_type: TYPE_STREAM,
            op,
            buf_alloc,
            ..Header::default()
        }
    }

    /// A well-behaved host: listens on 5000 (replies "hi guest" to data), and talks to guest port
    /// 6000 from port 1234 (sends "ping keel" once accepted, then shuts down).
    fn host(header: &Header, payload: &[u8]) -> Reply {
        assert_eq!(header.src_cid, GUEST_CID);
        assert_eq!(header.dst_cid, HOST_CID);
        assert_eq!(header.socket_type, TYPE_STREAM);
        let answer = |op, data: &[u8]| {
            let mut reply = header.reset_reply();
            reply.op = op;
            reply.len = data.len() as u32;
            reply.buf_alloc = 64;
            reply.fwd_cnt = if op == OP_RW { payload.len() as u32 } else { 0 };
            vec![(reply, data.to_vec())]
        };
        match (header.dst_port, header.op) {
            (5000, OP_REQUEST) => answer(OP_RESPONSE, b""),
            (5000, OP_RW) => answer(OP_RW, b"hi guest"),
            (5000, OP_SHUTDOWN) => answer(OP_RST, b""),
            (1234, OP_RESPONSE) => answer(OP_RW, b"ping keel"),
            (1234, OP_RW) => answer(OP_SHUTDOWN, b""),
            _ => vec![],
        }
    }

    fn ops(sent: &[(Header, Vec<u8>)]) -> Vec<(u32, u16)> {
        sent.iter()
            .map(|(header, _)| (header.dst_port, header.op))
            .collect()
    }

    #[test]
    fn session_connects_then_accepts_an_early_request() {
        let early = packet(from_host(1234, 6000, OP_REQUEST, 0, 100), b"");
        let mut session = session(vec![early], host);
        let (mut connection, reply) = session.connect(5000).unwrap();
        assert_eq!(reply.payload(), b"hi guest");
        assert_eq!((connection.fwd_cnt, connection.tx_cnt), (8, 16));
        session.close(&mut connection, true).unwrap();
        let (mut connection, got) = session.accept().unwrap();
        assert_eq!(got.payload(), b"ping keel");
        session.close(&mut connection, false).unwrap();

        let sent = &session.io().from_guest;
        assert_eq!(
            ops(sent),
            [
                (5000, OP_REQUEST),
                (5000, OP_RW),
                (5000, OP_SHUTDOWN),
                (1234, OP_RESPONSE),
                (1234, OP_RW),
                (1234, OP_RST),
            ]
        );
        for (header, _) in sent {
            let port = if header.dst_port == 5000 {
                GUEST_PORT
            } else {
                6000
            };
            assert_eq!(header.src_port, port);
            assert_eq!(header.buf_alloc, 3920);
        }
        assert_eq!(sent[1].1, GREETING);
        assert_eq!(sent[2].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        assert_eq!(sent[2].0.fwd_cnt, 8);
        assert_eq!(sent[4].1, b"PING KEEL");
        assert_eq!(sent[4].0.fwd_cnt, 9);
    }

    #[test]
    fn refused_and_silent_peers_fail() {
        let mut refused = session(vec![], |header: &Header, _: &[u8]| {
            vec![(header.reset_reply(), vec![])]
        });
        assert_eq!(
            refused.connect(5000).unwrap_err(),
            Failure::Closed("connecting", OP_RST)
        );
        let mut silent = session(vec![], |_: &Header, _: &[u8]| vec![]);
        assert_eq!(
            silent.connect(5000).unwrap_err(),
            Failure::Timeout("the response")
        );
        assert_eq!(
            silent.accept().unwrap_err(),
            Failure::Timeout("a connection request")
        );
        // A peer that never sends data after accepting.
        let request = packet(from_host(1234, 6000, OP_REQUEST, 0, 100), b"");
        let mut mute = session(vec![request], |_: &Header, _: &[u8]| vec![]);
        assert_eq!(mute.accept().unwrap_err(), Failure::Timeout("data"));
        // Closing against a silent peer ends with the guest's own RST.
        let (mut connection, _) = {
            let mut talker = session(vec![], host);
            let result = talker.connect(5000).unwrap();
            (result.0, result.1)
        };
        silent.close(&mut connection, true).unwrap();
        assert_eq!(
            ops(&silent.io().from_guest)[1..],
            [(5000, OP_SHUTDOWN), (5000, OP_RST)]
        );
    }

    #[test]
    fn credit_is_requested_and_granted() {
        let mut stingy = session(vec![], |header: &Header, _: &[u8]| {
            let mut reply = header.reset_reply();
            match header.op {
                OP_REQUEST => {
                    reply.op = OP_RESPONSE;
                    reply.buf_alloc = 8;
                    // The host asks for the guest's credit before anything else.
                    let mut ask = reply;
                    ask.op = OP_CREDIT_REQUEST;
                    vec![(ask, vec![]), (reply, vec![])]
                }
                OP_CREDIT_REQUEST => {
                    reply.op = OP_CREDIT_UPDATE;
                    reply.buf_alloc = 64;
                    vec![(reply, vec![])]
                }
                OP_RW => {
                    reply.op = OP_RW;
                    reply.len = 2;
                    reply.buf_alloc = 64;
                    vec![(reply, b"ok".to_vec())]
                }
                _ => vec![],
            }
        });
        let (connection, reply) = stingy.connect(5000).unwrap();
        assert_eq!(reply.payload(), b"ok");
        assert_eq!(connection.peer_buf_alloc, 64);
        assert_eq!(
            ops(&stingy.io().from_guest),
            [
                (5000, OP_REQUEST),
                (5000, OP_CREDIT_UPDATE),
                (5000, OP_CREDIT_REQUEST),
                (5000, OP_RW),
            ]
        );

        let mut never = session(vec![], |header: &Header, _: &[u8]| {
            let mut reply = header.reset_reply();
            reply.op = if header.op == OP_REQUEST {
                OP_RESPONSE
            } else {
                OP_CREDIT_UPDATE
            };
            reply.buf_alloc = 4;
            vec![(reply, vec![])]
        });
        assert_eq!(never.connect(5000).unwrap_err(), Failure::NoCredit(4));
    }

    #[test]
    fn strays_get_a_reset_except_resets_and_the_first_listen_request() {
        let queued = vec![
            packet(from_host(77, 4242, OP_RW, 3, 64), b"abc"),
            packet(from_host(77, 4242, OP_RST, 0, 64), b""),
            packet(from_host(1234, 6000, OP_REQUEST, 0, 64), b""),
            packet(from_host(1235, 6000, OP_REQUEST, 0, 64), b""),
        ];
        let mut session = session(queued, |_: &Header, _: &[u8]| vec![]);
        assert_eq!(
            session.connect(5000).unwrap_err(),
            Failure::Timeout("the response")
        );
        let sent = &session.io().from_guest;
        assert_eq!(
            ops(sent),
            [(5000, OP_REQUEST), (77, OP_RST), (1235, OP_RST)]
        );
        assert_eq!(sent[1].0.src_port, 4242);
        // The kept request is accepted later; the peer then stays silent.
        assert_eq!(session.accept().unwrap_err(), Failure::Timeout("data"));
        let last = session.io().from_guest.last().unwrap().0;
        assert_eq!(
            (last.op, last.dst_port, last.src_port),
            (OP_RESPONSE, 1234, 6000)
        );
    }

    /// A host that accepts connections to 5000 with `buf_alloc` bytes of credit and, if `updates`,
    /// answers every RW packet with a CREDIT_UPDATE for everything received so far.
    fn sink(buf_alloc: u32, updates: bool) -> impl FnMut(&Header, &[u8]) -> Reply {
        let mut received = 0u32;
        move |header: &Header, payload: &[u8]| {
            let mut reply = header.reset_reply();
            reply.buf_alloc = buf_alloc;
            match header.op {
                OP_REQUEST => reply.op = OP_RESPONSE,
                OP_RW if updates => {
                    received += payload.len() as u32;
                    reply.op = OP_CREDIT_UPDATE;
                }
                OP_CREDIT_REQUEST => reply.op = OP_CREDIT_UPDATE,
                _ => return vec![],
            }
            reply.fwd_cnt = received;
            vec![(reply, vec![])]
        }
    }

    #[test]
    fn stream_sends_bulk_packets_within_credit() {
        let mut eager = session(vec![], sink(100, true));
        let mut connection = eager.open(5000).unwrap();
        assert_eq!(eager.stream(&mut connection, 230, 60), Ok(4));
        assert_eq!(connection.tx_cnt, 230);
        let sent = &eager.io().from_guest;
        let lens: Vec<_> = sent[1..].iter().map(|(h, _)| (h.op, h.len)).collect();
        assert_eq!(lens, [(OP_RW, 60), (OP_RW, 60), (OP_RW, 60), (OP_RW, 50)]);

        // Without updates the credit runs out after 100 bytes; the guest asks once, then fails.
        let mut stingy = session(vec![], sink(100, false));
        let mut connection = stingy.open(5000).unwrap();
        assert_eq!(
            stingy.stream(&mut connection, 230, 60),
            Err(Failure::NoCredit(0))
        );
        assert_eq!(
            ops(&stingy.io().from_guest),
            [
                (5000, OP_REQUEST),
                (5000, OP_RW),
                (5000, OP_RW),
                (5000, OP_CREDIT_REQUEST),
            ]
        );
        assert_eq!(stingy.io().from_guest[2].0.len, 40);

        // A reset while streaming ends the stream.
        let mut rude = session(vec![], |header: &Header, _: &[u8]| {
            let mut reply = header.reset_reply();
            reply.buf_alloc = 100;
            reply.op = if header.op == OP_REQUEST {
                OP_RESPONSE
            } else {
                OP_RST
            };
            vec![(reply, vec![])]
        });
        let mut connection = rude.open(5000).unwrap();
        assert_eq!(
            rude.stream(&mut connection, 230, 60),
            Err(Failure::Closed("streaming", OP_RST))
        );
    }

    #[test]
    fn packets_parse_with_clamped_payloads() {
        let header = from_host(1, 2, OP_RW, 10, 0);
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.payload(), b"abc");
        let request = from_host(1, 2, OP_REQUEST, 5, 0);
        let mut bytes = request.to_bytes().to_vec();
        bytes.extend_from_slice(b"xxxxx");
        assert_eq!(Packet::parse(&bytes).unwrap().payload(), b"");
        assert!(Packet::parse(&bytes[..HEADER_LEN - 1]).is_none());
    }
}
