//! The virtio-net packet header (`struct virtio_net_hdr_v1`, virtio 1.2 section 5.1.6) and the
//! checks a transmitted header must pass.
//!
//! Every frame on both queues starts with this 12-byte header; the TAP device is configured to
//! use the same layout, so the header travels between guest and TAP unchanged. This module is
//! pure: it parses and validates bytes and never touches guest memory or the backend.

use super::features;
use crate::virtio::byte;
use virtio_bindings::virtio_net;

/// Size of the header in bytes (with `num_buffers`, as used by virtio 1.x drivers).
pub const VIRTIO_NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` within the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// `flags`: the packet needs a checksum computed from `csum_start` and stored at
/// `csum_start + csum_offset`.
pub const FLAG_NEEDS_CSUM: u8 = byte(virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM);
/// `flags`: the checksum has been validated (meaningful on receive only).
pub const FLAG_DATA_VALID: u8 = byte(virtio_net::VIRTIO_NET_HDR_F_DATA_VALID);
/// `flags`: coalescing information is present (receive only, never negotiated here).
pub const FLAG_RSC_INFO: u8 = byte(virtio_net::VIRTIO_NET_HDR_F_RSC_INFO);

/// `gso_type`: no segmentation offload.
pub const GSO_NONE: u8 = byte(virtio_net::VIRTIO_NET_HDR_GSO_NONE);
/// `gso_type`: TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = byte(virtio_net::VIRTIO_NET_HDR_GSO_TCPV4);
/// `gso_type`: UDP fragmentation offload.
pub const GSO_UDP: u8 = byte(virtio_net::VIRTIO_NET_HDR_GSO_UDP);
/// `gso_type`: TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = byte(virtio_net::VIRTIO_NET_HDR_GSO_TCPV6);
/// `gso_type` modifier: the TCP packet has the ECN (CWR) bit set.
pub const GSO_ECN: u8 = byte(virtio_net::VIRTIO_NET_HDR_GSO_ECN);

/// A parsed `virtio_net_hdr_v1` (all multi-byte fields little endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHeader {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `GSO_*` type, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment size for segmentation offload.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, relative to `csum_start`.
    pub csum_offset: u16,
    /// How many receive buffers the frame was merged across (receive only).
    pub num_buffers: u16,
}

impl VirtioNetHeader {
    /// Parses the first [`VIRTIO_NET_HDR_LEN`] bytes of `bytes`; `None` if it is shorter.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; VIRTIO_NET_HDR_LEN] = bytes.get(..VIRTIO_NET_HDR_LEN)?.try_into().ok()?;
        let word = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Some(VirtioNetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
            num_buffers: word(NUM_BUFFERS_OFFSET),
        })
    }

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut out = [0u8; VIRTIO_NET_HDR_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        out
    }

    /// Checks a header the driver sent with a frame of `frame_len` bytes (after the header)
    /// against the features it negotiated. A header that asks for an offload the device did
    /// not agree to, or points outside the frame, is rejected so the backend never sees it.
    pub fn validate_tx(&self, frame_len: usize, acked_features: u64) -> Result<(), TxHeaderError> {
        let known_flags = FLAG_NEEDS_CSUM | FLAG_DATA_VALID;
        if self.flags & !known_flags != 0 {
            return Err(TxHeaderError::UnknownFlags(self.flags));
        }
        if self.flags & FLAG_NEEDS_CSUM != 0 {
            if acked_features & features::CSUM == 0 {
                return Err(TxHeaderError::ChecksumNotNegotiated);
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(TxHeaderError::ChecksumOutOfFrame {
                    csum_start: self.csum_start,
                    csum_offset: self.csum_offset,
                    frame_len,
                });
            }
        }
        if self.gso_type & GSO_ECN != 0 {
            // HOST_ECN is never offered.
            return Err(TxHeaderError::GsoNotNegotiated(self.gso_type));
        }
        let needed = match self.gso_type {
            GSO_NONE => return Ok(()),
            GSO_TCPV4 => features::HOST_TSO4,
            GSO_TCPV6 => features::HOST_TSO6,
            GSO_UDP => features::HOST_UFO,
            other => return Err(TxHeaderError::UnknownGsoType(other)),
        };
        if acked_features & needed == 0 {
            return Err(TxHeaderError::GsoNotNegotiated(self.gso_type));
        }
        if self.flags & FLAG_NEEDS_CSUM == 0 {
            return Err(TxHeaderError::GsoWithoutChecksum);
        }
        if self.gso_size == 0 {
            return Err(TxHeaderError::ZeroGsoSize);
        }
        Ok(())
    }
}

/// Why a transmitted header was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxHeaderError {
    /// `flags` has bits a driver must not set on transmit.
    #[error("header flags {0:#x} contain bits not valid on transmit")]
    UnknownFlags(u8),
    /// `NEEDS_CSUM` without `VIRTIO_NET_F_CSUM`.
    #[error("checksum offload requested but VIRTIO_NET_F_CSUM was not negotiated")]
    ChecksumNotNegotiated,
    /// The checksum position lies outside the frame.
    #[error("checksum at csum_start {csum_start} + csum_offset {csum_offset} is outside the {frame_len}-byte frame")]
    ChecksumOutOfFrame {
        /// `csum_start` from the header.
        csum_start: u16,
        /// `csum_offset` from the header.
        csum_offset: u16,
        /// Length of the frame after the header.
        frame_len: usize,
    },
    /// `gso_type` is not a type virtio defines.
    #[error("unknown gso_type {0:#x}")]
    UnknownGsoType(u8),
    /// Segmentation offload of a kind the driver did not negotiate.
    #[error("gso_type {0:#x} requires a host offload feature that was not negotiated")]
    GsoNotNegotiated(u8),
    /// Segmentation offload without `NEEDS_CSUM` (virtio requires both).
    #[error("segmentation offload requested without NEEDS_CSUM")]
    GsoWithoutChecksum,
    /// Segmentation offload with a zero segment size.
    #[error("segmentation offload requested with gso_size 0")]
    ZeroGsoSize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_serialise_round_trip_little_endian() {
        let bytes = [1, 4, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 3, 0];
        let header = VirtioNetHeader::parse(&bytes).unwrap();
        assert_eq!(header.flags, FLAG_NEEDS_CSUM);
        assert_eq!(header.gso_type, GSO_TCPV6);
        assert_eq!(header.hdr_len, 0x36);
        assert_eq!(header.gso_size, 1448);
        assert_eq!(header.csum_start, 0x22);
        assert_eq!(header.csum_offset, 0x10);
        assert_eq!(header.num_buffers, 3);
        assert_eq!(header.to_bytes(), bytes);
        assert_eq!(VirtioNetHeader::parse(&bytes[..11]), None);
    }

    #[test]
    fn plain_header_is_valid_without_offloads() {
        assert_eq!(VirtioNetHeader::default().validate_tx(60, 0), Ok(()));
    }

    #[test]
    fn offloads_need_their_features() {
        let csum = VirtioNetHeader {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            csum.validate_tx(100, 0),
            Err(TxHeaderError::ChecksumNotNegotiated)
        );
        assert_eq!(csum.validate_tx(100, features::CSUM), Ok(()));
        assert!(matches!(
            csum.validate_tx(51, features::CSUM),
            Err(TxHeaderError::ChecksumOutOfFrame { .. })
        ));
        assert_eq!(csum.validate_tx(52, features::CSUM), Ok(()));

        let tso4 = VirtioNetHeader {
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            ..csum
        };
        assert_eq!(
            tso4.validate_tx(100, features::CSUM),
            Err(TxHeaderError::GsoNotNegotiated(GSO_TCPV4))
        );
        assert_eq!(
            tso4.validate_tx(100, features::CSUM | features::HOST_TSO4),
            Ok(())
        );
        let all = features::CSUM | features::HOST_TSO4 | features::HOST_TSO6 | features::HOST_UFO;
        assert_eq!(
            VirtioNetHeader {
                gso_size: 0,
                ..tso4
            }
            .validate_tx(100, all),
            Err(TxHeaderError::ZeroGsoSize)
        );
        assert_eq!(
            VirtioNetHeader { flags: 0, ..tso4 }.validate_tx(100, all),
            Err(TxHeaderError::GsoWithoutChecksum)
        );
        assert_eq!(
            VirtioNetHeader {
                gso_type: GSO_TCPV4 | GSO_ECN,
                ..tso4
            }
            .validate_tx(100, all),
            Err(TxHeaderError::GsoNotNegotiated(GSO_TCPV4 | GSO_ECN))
        );
        assert_eq!(
            VirtioNetHeader {
                gso_type: 2,
                ..tso4
            }
            .validate_tx(100, all),
            Err(TxHeaderError::UnknownGsoType(2))
        );
        assert_eq!(
            VirtioNetHeader {
                flags: FLAG_RSC_INFO,
                ..Default::default()
            }
            .validate_tx(100, all),
            Err(TxHeaderError::UnknownFlags(FLAG_RSC_INFO))
        );
    }
}
