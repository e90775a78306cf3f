//! virtio-vsock packet parsing and the connection state machine over a socketpair.

use std::os::unix::net::UnixStream;

use devices::virtio::vsock::packet::{parse_connect_line, validate_tx, HDR_LEN, MAX_PAYLOAD};
use devices::virtio::vsock::{Connection, CONN_BUF_SIZE};

use crate::support::Input;

const GUEST_CID: u64 = 3;

/// Parses the input as packets from the guest and feeds valid ones to one connection; panics
/// only on a bug.
pub fn vsock_packet(data: &[u8]) {
    if let Ok(Some(port)) = parse_connect_line(data) {
        let line = std::str::from_utf8(data).expect("accepted lines are text");
        assert!(line.starts_with(&format!("CONNECT {port}")));
    }
    let mut input = Input::new(data);
    let Ok((device_side, _host_side)) = UnixStream::pair() else {
        return;
    };
    if device_side.set_nonblocking(true).is_err() || _host_side.set_nonblocking(true).is_err() {
        return;
    }
    let mut conn: Option<Connection<UnixStream>> = None;
    let mut rx_buf = vec![0u8; 4096];
    for _ in 0..16 {
        let chain_len = usize::from(input.u16());
        let bytes: Vec<u8> = (0..HDR_LEN + 32).map(|_| input.byte()).collect();
        let bytes = &bytes[..bytes.len().min(chain_len.max(HDR_LEN))];
        let Ok(header) = validate_tx(bytes, chain_len, GUEST_CID) else {
            continue;
        };
        assert_eq!(&header.to_bytes()[..], &bytes[..HDR_LEN]);
        assert!(header.len as usize <= MAX_PAYLOAD && HDR_LEN + header.len as usize <= chain_len);
        let payload_len = (header.len as usize).min(bytes.len() - HDR_LEN);
        let payload = &bytes[HDR_LEN..HDR_LEN + payload_len];
        match conn.as_mut() {
            Some(conn) => conn.handle_packet(&header, payload),
            None => {
                let Ok(stream) = device_side.try_clone() else {
                    return;
                };
                conn = Some(Connection::guest_initiated(stream, GUEST_CID, &header));
            }
        }
        let conn = conn.as_mut().expect("created above");
        assert!(conn.pending_to_host() <= CONN_BUF_SIZE as usize);
        if input.byte() & 1 == 0 {
            conn.host_ready();
        }
        // Drain what the connection wants to say; it must run dry.
        for _ in 0..64 {
            let Some(out) = conn.next_rx(&mut rx_buf) else {
                break;
            };
            assert_eq!((out.src_cid, out.dst_cid), (2, GUEST_CID));
            assert!(out.len as usize <= rx_buf.len());
        }
        if conn.is_finished() {
            return;
        }
    }
}
