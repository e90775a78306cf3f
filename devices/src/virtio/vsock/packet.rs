//! virtio-vsock packets (virtio 1.2 section 5.10.6): the 44-byte header and the checks a
//! packet from the driver must pass.
//!
//! Pure: bytes in, values or errors out; no guest memory, no sockets. This is what the fuzz
//! target exercises.
//!
//! virtio-bindings has no vsock header, so the layout and constants are spelled out here.

/// Size of the packet header.
pub const HDR_LEN: usize = 44;
/// Largest payload the device accepts or sends in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Socket type: stream (the only one offered).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused or torn down).
    pub const RST: u16 = 3;
    /// One or both directions are finished; see `shutdown` flags.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's credit (`buf_alloc`, `fwd_cnt`) changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of a `SHUTDOWN` packet.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
}

/// A parsed packet header (little endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags ([`shutdown`] for `SHUTDOWN`).
    pub flags: u32,
    /// Receive buffer space of the sender.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Parses the first [`HDR_LEN`] bytes; `None` if there are fewer.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; HDR_LEN] = bytes.get(..HDR_LEN)?.try_into().ok()?;
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at =
            |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        Some(PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut out = [0u8; HDR_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.type_.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }
}

/// Why a packet from the driver was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain is shorter than a header.
    #[error("packet of {0} bytes is shorter than the {HDR_LEN}-byte header")]
    Short(usize),
    /// `len` is larger than the device accepts.
    #[error("payload length {0} exceeds {MAX_PAYLOAD}")]
    TooLong(u32),
    /// `len` is larger than the buffers that carry the packet.
    #[error("payload length {len} exceeds the {available} bytes the descriptors hold")]
    LenExceedsBuffer {
        /// `len` from the header.
        len: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// The source is not the guest.
    #[error("source CID {got} is not the guest's CID {guest}")]
    SrcCid {
        /// `src_cid` from the header.
        got: u64,
        /// The guest's CID.
        guest: u64,
    },
    /// The destination is not the host.
    #[error("destination CID {0} is not the host ({HOST_CID})")]
    DstCid(u64),
    /// Not a stream packet.
    #[error("socket type {0} is not supported")]
    BadType(u16),
    /// Not a known operation.
    #[error("unknown operation {0}")]
    BadOp(u16),
}

impl PacketError {
    /// Whether the sender can be told with a reset: the addressing is sound but the packet
    /// is not acceptable. Packets with bad addressing or lengths are dropped silently.
    pub fn warrants_reset(&self) -> bool {
        matches!(self, PacketError::BadType(_) | PacketError::BadOp(_))
    }
}

/// Checks a driver packet whose chain holds `chain_len` bytes (header included) against the
/// guest's CID. Length and addressing are checked before type and operation, so a reset is
/// only ever sent to a well-addressed peer.
pub fn validate_tx(
    bytes: &[u8],
    chain_len: usize,
    guest_cid: u64,
) -> Result<PacketHeader, PacketError> {
    let header =
        PacketHeader::parse(bytes).ok_or(PacketError::Short(chain_len.min(bytes.len())))?;
    if chain_len < HDR_LEN {
        return Err(PacketError::Short(chain_len));
    }
    if header.len as usize > MAX_PAYLOAD {
        return Err(PacketError::TooLong(header.len));
    }
    let available = chain_len - HDR_LEN;
    if header.len as usize > available {
        return Err(PacketError::LenExceedsBuffer {
            len: header.len,
            available,
        });
    }
    if header.src_cid != guest_cid {
        return Err(PacketError::SrcCid {
            got: header.src_cid,
            guest: guest_cid,
        });
    }
    if header.dst_cid != HOST_CID {
        return Err(PacketError::DstCid(header.dst_cid));
    }
    if header.type_ != TYPE_STREAM {
        return Err(PacketError::BadType(header.type_));
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&header.op) {
        return Err(PacketError::BadOp(header.op));
    }
    Ok(header)
}

/// Parses the line a host process writes after connecting to the device's Unix socket:
/// `CONNECT <port>\n`. `Ok(None)` means the line is incomplete so far.
pub fn parse_connect_line(line: &[u8]) -> Result<Option<u32>, ConnectLineError> {
    let Some(end) = line.iter().position(|&b| b == b'\n') else {
        return if line.len() >= MAX_CONNECT_LINE {
            Err(ConnectLineError::TooLong)
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&line[..end]).map_err(|_| ConnectLineError::Malformed)?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or(ConnectLineError::Malformed)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectLineError::Malformed);
    }
    port.parse()
        .map(Some)
        .map_err(|_| ConnectLineError::Malformed)
}

/// Longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a `CONNECT` line was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    /// Not `CONNECT <decimal port>`.
    #[error("expected `CONNECT <port>`")]
    Malformed,
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: u64 = 3;

    fn request() -> PacketHeader {
        PacketHeader {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op: op::REQUEST,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn header_round_trip_and_layout() {
        let header = PacketHeader {
            len: 0x0102_0304,
            fwd_cnt: 0xa0b0_c0d0,
            ..request()
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes[0], 3);
        assert_eq!(&bytes[8..16], &2u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &[4, 3, 2, 1]);
        assert_eq!(&bytes[30..32], &[1, 0]);
        assert_eq!(&bytes[40..44], &[0xd0, 0xc0, 0xb0, 0xa0]);
        assert_eq!(PacketHeader::parse(&bytes), Some(header));
        assert_eq!(PacketHeader::parse(&bytes[..43]), None);
    }

    #[test]
    fn well_formed_packets_pass() {
        let bytes = request().to_bytes();
        assert_eq!(validate_tx(&bytes, HDR_LEN, GUEST), Ok(request()));
        let rw = PacketHeader {
            op: op::RW,
            len: 10,
            ..request()
        };
        assert_eq!(validate_tx(&rw.to_bytes(), HDR_LEN + 10, GUEST), Ok(rw));
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let check = |header: PacketHeader, chain_len: usize| {
            validate_tx(&header.to_bytes(), chain_len, GUEST)
        };
        assert_eq!(
            validate_tx(&[0; 20], 20, GUEST),
            Err(PacketError::Short(20))
        );
        let rw = PacketHeader {
            op: op::RW,
            len: 10,
            ..request()
        };
        assert_eq!(
            check(rw, HDR_LEN + 9),
            Err(PacketError::LenExceedsBuffer {
                len: 10,
                available: 9
            })
        );
        assert_eq!(
            check(
                PacketHeader {
                    len: u32::MAX,
                    ..rw
                },
                usize::MAX
            ),
            Err(PacketError::TooLong(u32::MAX))
        );
        assert_eq!(
            check(PacketHeader { src_cid: 4, ..rw }, HDR_LEN + 10),
            Err(PacketError::SrcCid {
                got: 4,
                guest: GUEST
            })
        );
        assert_eq!(
            check(PacketHeader { dst_cid: 7, ..rw }, HDR_LEN + 10),
            Err(PacketError::DstCid(7))
        );
        assert_eq!(
            check(PacketHeader { type_: 2, ..rw }, HDR_LEN + 10),
            Err(PacketError::BadType(2))
        );
        for bad in [0, 8, 0xffff] {
            let err = check(PacketHeader { op: bad, ..rw }, HDR_LEN + 10).unwrap_err();
            assert_eq!(err, PacketError::BadOp(bad));
            assert!(err.warrants_reset());
        }
        assert!(!PacketError::SrcCid { got: 4, guest: 3 }.warrants_reset());
    }

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), Ok(Some(52)));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967295\r\n"),
            Ok(Some(u32::MAX))
        );
        assert_eq!(parse_connect_line(b"CONNECT 5"), Ok(None));
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT \n",
            b"connect 5\n",
            b"CONNECT -5\n",
            b"CONNECT 4294967296\n",
            b"CONNECT 5 6\n",
            b"\xff\n",
        ] {
            assert_eq!(
                parse_connect_line(bad),
                Err(ConnectLineError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_connect_line(&[b'C'; 32]),
            Err(ConnectLineError::TooLong)
        );
    }
}
