//! virtio-net (virtio 1.2, section 5.1): the packet header and the test's Ethernet frames.
//!
//! The driver negotiates only `VIRTIO_NET_F_MAC` and `VIRTIO_F_VERSION_1`: no offloads and no
//! mergeable receive buffers, so every packet is one [`HEADER_LEN`]-byte `virtio_net_hdr_v1` (all
//! zero on transmit) followed by one Ethernet frame.

use core::fmt;

/// Feature: the configuration space holds the device's MAC address.
pub const F_MAC: u32 = 5;

/// Length of `virtio_net_hdr_v1` (with `num_buffers`, always present under VERSION_1).
pub const HEADER_LEN: usize = 12;

/// The EtherType of the test frames (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88b5;

/// Destination, source, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// Shortest Ethernet frame without its FCS; shorter test frames are padded with zeros.
pub const MIN_FRAME_LEN: usize = 60;

/// What payloads of the guest's frames start with.
pub const GUEST_PAYLOAD_PREFIX: &[u8] = b"KEEL-GUEST ";

/// What the payload of the frame the guest waits for starts with.
pub const HOST_PAYLOAD_PREFIX: &[u8] = b"KEEL-HOST";

/// A MAC address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Writes into `packet` the virtio-net header and broadcast test frame number `index` from `source`
/// (payload `KEEL-GUEST <index>`), returning the packet's length; `None` if `packet` is too short.
pub fn test_packet(packet: &mut [u8], source: Mac, index: u32) -> Option<usize> {
    let len = HEADER_LEN + MIN_FRAME_LEN;
    let packet = packet.get_mut(..len)?;
    packet.fill(0);
    let (_, frame) = packet.split_at_mut(HEADER_LEN);
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&source.0);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let payload = &mut frame[ETHERNET_HEADER_LEN..];
    payload[..GUEST_PAYLOAD_PREFIX.len()].copy_from_slice(GUEST_PAYLOAD_PREFIX);
    write_decimal(&mut payload[GUEST_PAYLOAD_PREFIX.len()..], index);
    Some(len)
}

/// What payloads of the frames `keel.net_bench` sends start with.
pub const BENCH_PAYLOAD: &[u8] = b"KEEL-BENCH";

/// Writes into `packet` the virtio-net header and the minimum-size broadcast frame from `source`
/// that `keel.net_bench` sends over and over (payload [`BENCH_PAYLOAD`]); returns its length.
pub fn bench_packet(packet: &mut [u8], source: Mac) -> Option<usize> {
    let len = test_packet(packet, source, 0)?;
    let payload = &mut packet[HEADER_LEN + ETHERNET_HEADER_LEN..len];
    payload.fill(0);
    payload[..BENCH_PAYLOAD.len()].copy_from_slice(BENCH_PAYLOAD);
    Some(len)
}

/// The payload of a received packet (header included) if its frame has the test EtherType and its
/// payload starts with [`HOST_PAYLOAD_PREFIX`]; the frame's length comes with it.
pub fn host_frame(packet: &[u8]) -> Option<(usize, &[u8])> {
    let frame = packet.get(HEADER_LEN..)?;
    let ethertype = frame.get(12..ETHERNET_HEADER_LEN)?;
    let payload = &frame[ETHERNET_HEADER_LEN..];
    (ethertype == ETHERTYPE.to_be_bytes() && payload.starts_with(HOST_PAYLOAD_PREFIX))
        .then_some((frame.len(), payload))
}

/// Writes `value` in decimal at the start of `out` (which must hold 10 digits).
fn write_decimal(out: &mut [u8], value: u32) {
    let mut digits = [0u8; 10];
    let mut count = 0;
    let mut rest = value;
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (slot, digit) in out.iter_mut().zip(digits[..count].iter().rev()) {
        *slot = *digit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn mac_display() {
        assert_eq!(MAC.to_string(), "52:54:00:12:34:56");
    }

    #[test]
    fn test_packet_layout() {
        let mut packet = [0xaau8; 2048];
        let len = test_packet(&mut packet, MAC, 4_294_967_295).unwrap();
        assert_eq!(len, 72);
        assert_eq!(packet[..HEADER_LEN], [0; HEADER_LEN]);
        let frame = &packet[HEADER_LEN..len];
        assert_eq!(frame[..6], [0xff; 6]);
        assert_eq!(frame[6..12], MAC.0);
        assert_eq!(frame[12..14], [0x88, 0xb5]);
        assert!(frame[14..].starts_with(b"KEEL-GUEST 4294967295\0"));
        assert!(frame[14 + 21..].iter().all(|byte| *byte == 0));
        test_packet(&mut packet, MAC, 0).unwrap();
        assert!(packet[26..].starts_with(b"KEEL-GUEST 0\0"));
        assert_eq!(test_packet(&mut [0; 71], MAC, 1), None);
    }

    #[test]
    fn bench_packet_layout() {
        let mut packet = [0xaau8; 128];
        assert_eq!(bench_packet(&mut packet, MAC), Some(72));
        assert_eq!(packet[HEADER_LEN + 12..HEADER_LEN + 14], [0x88, 0xb5]);
        assert!(packet[26..].starts_with(b"KEEL-BENCH\0"));
        assert!(packet[36..72].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn host_frames_are_recognised() {
        let mut packet = vec![0u8; HEADER_LEN];
        packet.extend_from_slice(&[0xff; 6]);
        packet.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        packet.extend_from_slice(&[0x88, 0xb5]);
        packet.extend_from_slice(b"KEEL-HOST hello");
        assert_eq!(
            host_frame(&packet),
            Some((29, b"KEEL-HOST hello".as_slice()))
        );
        let mut other = packet.clone();
        other[HEADER_LEN + 12] = 0x86;
        assert_eq!(host_frame(&other), None);
        let mut guest = packet.clone();
        guest.truncate(HEADER_LEN + 14);
        guest.extend_from_slice(b"KEEL-GUEST 1");
        assert_eq!(host_frame(&guest), None);
        assert_eq!(host_frame(&packet[..20]), None);
    }
}
