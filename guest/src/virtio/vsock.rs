//! virtio-vsock (virtio 1.2, section 5.10): the packet header and one stream connection's
//! addressing and credit accounting.
//!
//! Every packet starts with a 44-byte little-endian [`Header`]; RW packets carry `len` payload
//! bytes after it. Each side tells the other, in every header, how much receive buffer space the
//! connection has (`buf_alloc`) and how many bytes it has consumed so far (`fwd_cnt`); a sender may
//! have at most `buf_alloc - (bytes sent - fwd_cnt)` bytes in flight.

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
}
