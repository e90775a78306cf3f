//! One vsock stream connection between a guest port and a host Unix socket: its state
//! machine and credit-based flow control.
//!
//! A [`Connection`] is generic over its host stream, so tests run it over a socketpair. It never
//! blocks: data from the guest that the host socket cannot take yet waits in a buffer bounded
//! by the credit the device advertises ([`CONN_BUF_SIZE`]); data from the host is read only when
//! the guest has receive credit and an rx buffer is being filled, so it is never buffered here.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use log::debug;

use super::packet::{op, shutdown, PacketHeader, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use crate::narrow::len_u32;

/// Receive buffer the device advertises per connection (`buf_alloc`): the bound on data from
/// the guest waiting for the host socket.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once this much has been forwarded since the guest last heard.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// A host-side stream a connection can use.
pub trait HostStream: Read + Write + AsRawFd + Send {
    /// Shuts down the writing half (the host reads end of file).
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected; the device sent (or will send) a request and waits for the guest.
    AwaitingResponse,
    /// Data flows.
    Established,
    /// Finished: the connection is dropped once its last packet (a reset) has been sent.
    Killed,
}

/// A stream connection; see the module documentation.
pub struct Connection<S: HostStream> {
    stream: S,
    state: ConnState,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    send_request: bool,
    send_response: bool,
    send_rst: bool,
    send_credit_update: bool,
    send_shutdown: bool,
    credit_requested: bool,
    /// The host stream may have data for the guest.
    host_readable: bool,
    /// The host sent end of file.
    host_eof: bool,
    /// The guest will send nothing more.
    guest_send_done: bool,
    /// The guest will receive nothing more.
    guest_rcv_done: bool,
    /// Data from the guest the host socket has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Bytes of guest data written to the host socket (wrapping, as on the wire).
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes of host data sent to the guest (wrapping).
    rx_cnt: u32,
}

impl<S: HostStream> Connection<S> {
    fn new(stream: S, state: ConnState, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            state,
            guest_cid,
            local_port,
            peer_port,
            send_request: false,
            send_response: false,
            send_rst: false,
            send_credit_update: false,
            send_shutdown: false,
            credit_requested: false,
            host_readable: false,
            host_eof: false,
            guest_send_done: false,
            guest_rcv_done: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
        }
    }

    /// A connection the host opened (after `CONNECT <peer_port>`): it starts by sending a
    /// request to the guest from `local_port`.
    pub fn host_initiated(stream: S, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Self::new(
            stream,
            ConnState::AwaitingResponse,
            guest_cid,
            local_port,
            peer_port,
        );
        conn.send_request = true;
        conn
    }

    /// A connection the guest requested with `request`, now connected to the host socket: it
    /// starts by sending the response.
    pub fn guest_initiated(stream: S, guest_cid: u64, request: &PacketHeader) -> Self {
        let mut conn = Self::new(
            stream,
            ConnState::Established,
            guest_cid,
            request.dst_port,
            request.src_port,
        );
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        conn.send_response = true;
        conn
    }

    /// The connection's state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Bytes the guest can still receive before it must report consumption.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Bytes of guest data waiting for the host socket.
    pub fn pending_to_host(&self) -> usize {
        self.tx_buf.len()
    }

    /// Resets the connection: a reset goes to the guest, then the connection is finished.
    pub fn kill(&mut self) {
        if self.state != ConnState::Killed {
            self.state = ConnState::Killed;
            self.send_rst = true;
        }
    }

    /// Handles a packet from the guest addressed to this connection.
    pub fn handle_packet(&mut self, header: &PacketHeader, data: &[u8]) {
        let old_credit = self.peer_credit();
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        if self.peer_credit() > old_credit {
            self.credit_requested = false;
        }
        match (self.state, header.op) {
            (ConnState::Killed, _) => {}
            (_, op::RST) => {
                self.state = ConnState::Killed;
                self.send_rst = false;
            }
            (ConnState::AwaitingResponse, op::RESPONSE) => {
                let reply = format!("OK {}\n", self.local_port);
                // A fresh socket's buffer takes a few bytes; anything else means the host is gone.
                match self.stream.write(reply.as_bytes()) {
                    Ok(n) if n == reply.len() => self.state = ConnState::Established,
                    result => {
                        debug!(
                            "vsock: host socket for port {} gone before OK: {result:?}",
                            self.local_port
                        );
                        self.kill();
                    }
                }
            }
            (ConnState::Established, op::RW) => {
                if self.guest_send_done {
                    self.kill();
                } else {
                    self.forward_to_host(data);
                }
            }
            (ConnState::Established, op::CREDIT_UPDATE) => {}
            (ConnState::Established, op::CREDIT_REQUEST) => self.send_credit_update = true,
            (ConnState::Established, op::SHUTDOWN) => {
                if header.flags & shutdown::RCV != 0 {
                    self.guest_rcv_done = true;
                }
                if header.flags & shutdown::SEND != 0 {
                    self.guest_send_done = true;
                    self.flush_to_host();
                }
                if self.guest_rcv_done
                    && self.guest_send_done
                    && self.state == ConnState::Established
                {
                    // Both directions finished: reset to close, as virtio-vsock peers do.
                    self.kill();
                }
            }
            _ => {
                debug!(
                    "vsock: op {} unexpected in state {:?} (port {} <- {}); resetting",
                    header.op, self.state, self.local_port, self.peer_port
                );
                self.kill();
            }
        }
    }

    fn forward_to_host(&mut self, data: &[u8]) {
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            debug!(
                "vsock: guest overran its credit on port {}; resetting",
                self.local_port
            );
            self.kill();
            return;
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, rest) {
                Ok(written) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(len_u32(written));
                    rest = &rest[written..];
                }
                Err(err) => {
                    debug!(
                        "vsock: host socket for port {} write failed: {err}",
                        self.local_port
                    );
                    self.kill();
                    return;
                }
            }
        }
        self.tx_buf.extend(rest);
        self.note_forwarded();
    }

    /// Writes buffered guest data to the host socket (call when it is writable).
    pub fn flush_to_host(&mut self) {
        while !self.tx_buf.is_empty() && self.state != ConnState::Killed {
            let (front, _) = self.tx_buf.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => break,
                Ok(written) => {
                    self.tx_buf.drain(..written);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(len_u32(written));
                }
                Err(err) => {
                    debug!(
                        "vsock: host socket for port {} write failed: {err}",
                        self.local_port
                    );
                    self.kill();
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() && self.guest_send_done && self.state == ConnState::Established {
            let _ = self.stream.shutdown_write();
        }
        self.note_forwarded();
    }

    fn note_forwarded(&mut self) {
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    /// Records that the host socket polled readable (or hung up).
    pub fn host_ready(&mut self) {
        self.host_readable = true;
    }

    fn wants_host_data(&self) -> bool {
        self.state == ConnState::Established && !self.host_eof && !self.guest_rcv_done
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx(&self) -> bool {
        self.send_rst
            || self.send_request
            || self.send_response
            || self.send_credit_update
            || self.send_shutdown
            || (self.host_readable
                && self.wants_host_data()
                && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// Whether the event loop should tell us when the host socket is readable.
    pub fn wants_readable(&self) -> bool {
        !self.host_readable && self.wants_host_data()
    }

    /// Whether the event loop should tell us when the host socket is writable.
    pub fn wants_writable(&self) -> bool {
        !self.tx_buf.is_empty() && self.state != ConnState::Killed
    }

    /// Whether the connection is over and can be dropped.
    pub fn is_finished(&self) -> bool {
        self.state == ConnState::Killed && !self.send_rst
    }

    fn header(&mut self, op: u16, flags: u32, len: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Produces the next packet for the guest; payload (for `RW`) goes into `buf`, which
    /// bounds it. `None` when there is nothing to send now.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if self.send_rst {
            self.send_rst = false;
            self.state = ConnState::Killed;
            return Some(self.header(op::RST, 0, 0));
        }
        if self.state == ConnState::Killed {
            return None;
        }
        if self.send_request {
            self.send_request = false;
            return Some(self.header(op::REQUEST, 0, 0));
        }
        if self.send_response {
            self.send_response = false;
            return Some(self.header(op::RESPONSE, 0, 0));
        }
        if self.host_readable && self.wants_host_data() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    return Some(self.header(op::CREDIT_REQUEST, 0, 0));
                }
            } else {
                let room = buf.len().min(credit).min(MAX_PAYLOAD);
                if room > 0 {
                    match self.stream.read(&mut buf[..room]) {
                        Ok(0) => {
                            self.host_readable = false;
                            self.host_eof = true;
                            self.send_shutdown = true;
                        }
                        Ok(read) => {
                            // At most MAX_PAYLOAD bytes.
                            let read = len_u32(read);
                            self.rx_cnt = self.rx_cnt.wrapping_add(read);
                            return Some(self.header(op::RW, 0, read));
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            self.host_readable = false
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            debug!(
                                "vsock: host socket for port {} read failed: {err}",
                                self.local_port
                            );
                            self.state = ConnState::Killed;
                            return Some(self.header(op::RST, 0, 0));
                        }
                    }
                }
            }
        }
        if self.send_credit_update {
            return Some(self.header(op::CREDIT_UPDATE, 0, 0));
        }
        if self.send_shutdown {
            self.send_shutdown = false;
            return Some(self.header(op::SHUTDOWN, shutdown::SEND, 0));
        }
        None
    }
}

/// Writes as much of `data` as the stream takes now; `Ok(0)` if it would block.
fn write_some<S: Write>(stream: &mut S, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: u64 = 3;

    fn pair() -> (UnixStream, UnixStream) {
        let (device_side, host_side) = UnixStream::pair().unwrap();
        device_side.set_nonblocking(true).unwrap();
        host_side.set_nonblocking(true).unwrap();
        (device_side, host_side)
    }

    fn from_guest(op: u16, len: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn read_all(stream: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return out,
            }
        }
    }

    #[test]
    fn host_initiated_handshake_writes_ok_line() {
        let (device, mut host) = pair();
        let mut conn = Connection::host_initiated(device, GUEST, 1 << 30, 52);
        let mut buf = [0u8; 64];
        let request = conn.next_rx(&mut buf).unwrap();
        assert_eq!(
            (
                request.op,
                request.src_port,
                request.dst_port,
                request.dst_cid
            ),
            (op::REQUEST, 1 << 30, 52, GUEST)
        );
        assert_eq!(request.buf_alloc, CONN_BUF_SIZE);
        assert!(conn.next_rx(&mut buf).is_none());
        assert!(
            !conn.wants_readable(),
            "no host data before the guest accepts"
        );

        conn.handle_packet(&from_guest(op::RESPONSE, 0, 4096, 0), &[]);
        assert_eq!(conn.state(), ConnState::Established);
        assert_eq!(read_all(&mut host), format!("OK {}\n", 1 << 30).as_bytes());
        assert!(conn.wants_readable());
    }

    #[test]
    fn data_flows_both_ways_within_credit() {
        let (device, mut host) = pair();
        let request = from_guest(op::REQUEST, 0, 8, 0);
        let mut conn = Connection::guest_initiated(device, GUEST, &request);
        let mut buf = [0u8; 64];
        assert_eq!(conn.next_rx(&mut buf).unwrap().op, op::RESPONSE);

        // Host to guest: 20 bytes written, but the guest has only 8 bytes of buffer.
        host.write_all(b"0123456789abcdefghij").unwrap();
        conn.host_ready();
        let rw = conn.next_rx(&mut buf).unwrap();
        assert_eq!((rw.op, rw.len), (op::RW, 8));
        assert_eq!(&buf[..8], b"01234567");
        assert_eq!(conn.peer_credit(), 0);
        let ask = conn.next_rx(&mut buf).unwrap();
        assert_eq!(ask.op, op::CREDIT_REQUEST, "out of credit: ask once");
        assert!(conn.next_rx(&mut buf).is_none());
        assert!(!conn.has_rx());
        // The guest consumed 8 bytes and says so.
        conn.handle_packet(&from_guest(op::CREDIT_UPDATE, 0, 8, 8), &[]);
        assert!(conn.has_rx());
        let rw = conn.next_rx(&mut buf).unwrap();
        assert_eq!((rw.len, &buf[..8]), (8, &b"89abcdef"[..]));

        // Guest to host: data is written and counted in fwd_cnt.
        conn.handle_packet(&from_guest(op::RW, 5, 8, 16), b"hello");
        assert_eq!(read_all(&mut host), b"hello");
        let rw = conn.next_rx(&mut buf).unwrap();
        assert_eq!(rw.fwd_cnt, 5);
        assert_eq!(rw.len, 4);
    }

    #[test]
    fn guest_data_is_buffered_up_to_the_advertised_credit() {
        let (device, mut host) = pair();
        let mut conn =
            Connection::guest_initiated(device, GUEST, &from_guest(op::REQUEST, 0, 4096, 0));
        let chunk = vec![7u8; 32 * 1024];
        let mut sent = 0usize;
        // Fill the socket buffer and then the connection's buffer, staying within credit.
        while conn.state() == ConnState::Established
            && sent + chunk.len() <= CONN_BUF_SIZE as usize + 64 * 1024
        {
            if conn.pending_to_host() + chunk.len() > CONN_BUF_SIZE as usize {
                break;
            }
            conn.handle_packet(&from_guest(op::RW, chunk.len() as u32, 4096, 0), &chunk);
            sent += chunk.len();
        }
        assert_eq!(conn.state(), ConnState::Established);
        assert!(
            conn.pending_to_host() > 0,
            "the socket filled up and data waits"
        );
        assert!(conn.wants_writable());
        // A guest ignoring credit gets reset rather than unbounded buffering.
        let overrun = vec![0u8; CONN_BUF_SIZE as usize];
        conn.handle_packet(&from_guest(op::RW, overrun.len() as u32, 4096, 0), &overrun);
        assert_eq!(conn.state(), ConnState::Killed);
        let mut buf = [0u8; 64];
        assert_eq!(conn.next_rx(&mut buf).unwrap().op, op::RST);
        assert!(conn.is_finished());
        drop(host.read(&mut [0u8; 1]));
    }

    #[test]
    fn forwarded_data_earns_a_credit_update_and_flush_drains() {
        let (device, mut host) = pair();
        let mut conn =
            Connection::guest_initiated(device, GUEST, &from_guest(op::REQUEST, 0, 4096, 0));
        let mut buf = [0u8; 64];
        conn.next_rx(&mut buf).unwrap();
        let chunk = vec![1u8; 16 * 1024];
        let mut total = 0;
        for _ in 0..8 {
            conn.handle_packet(&from_guest(op::RW, chunk.len() as u32, 4096, 0), &chunk);
            total += chunk.len();
            let _ = read_all(&mut host).len();
            conn.flush_to_host();
        }
        assert_eq!(conn.pending_to_host(), 0);
        assert!(conn.has_rx());
        let update = conn.next_rx(&mut buf).unwrap();
        assert_eq!(update.op, op::CREDIT_UPDATE);
        assert_eq!(update.fwd_cnt as usize, total);
    }

    #[test]
    fn host_eof_becomes_shutdown_and_guest_shutdown_resets() {
        let (device, host) = pair();
        let mut conn =
            Connection::guest_initiated(device, GUEST, &from_guest(op::REQUEST, 0, 4096, 0));
        let mut buf = [0u8; 64];
        conn.next_rx(&mut buf).unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        conn.host_ready();
        let shut = conn.next_rx(&mut buf).unwrap();
        assert_eq!((shut.op, shut.flags), (op::SHUTDOWN, shutdown::SEND));
        assert!(!conn.wants_readable());

        let mut bye = from_guest(op::SHUTDOWN, 0, 4096, 0);
        bye.flags = shutdown::SEND | shutdown::RCV;
        conn.handle_packet(&bye, &[]);
        assert_eq!(conn.next_rx(&mut buf).unwrap().op, op::RST);
        assert!(conn.is_finished());
    }

    #[test]
    fn protocol_violations_reset_and_guest_reset_is_silent() {
        let (device, _host) = pair();
        let mut conn =
            Connection::guest_initiated(device, GUEST, &from_guest(op::REQUEST, 0, 4096, 0));
        conn.handle_packet(&from_guest(op::RESPONSE, 0, 4096, 0), &[]);
        let mut buf = [0u8; 64];
        assert_eq!(conn.next_rx(&mut buf).unwrap().op, op::RST);

        let (device, _host) = pair();
        let mut conn = Connection::host_initiated(device, GUEST, 5, 6);
        conn.handle_packet(&from_guest(op::RST, 0, 0, 0), &[]);
        assert!(conn.is_finished());
        assert!(
            conn.next_rx(&mut buf).is_none(),
            "no reset in reply to a reset"
        );
    }
}
