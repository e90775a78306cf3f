//! The host side of virtio-vsock on Unix sockets, in Firecracker's model.
//!
//! - Host-initiated: a host process connects to `uds_path` and writes `CONNECT <port>\n`; the
//!   guest gets a request for `<port>` from a fresh host port, and when it accepts, the host
//!   process reads `OK <host port>\n` followed by the stream.
//! - Guest-initiated: a guest connection to host port `P` is forwarded by connecting to the
//!   Unix socket `<uds_path>_<P>`; if nobody listens there the guest gets a reset.
//!
//! The muxer owns an epoll set with the listening socket and every connection's socket, and
//! exposes that epoll's descriptor for the VMM's event loop, so connections come and go
//! without touching the outer loop. A socket is only watched for what its connection can act
//! on (readable when the guest has credit, writable when guest data is waiting), so nothing
//! polls busily.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::debug;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::Connection;
use super::packet::{
    op, parse_connect_line, PacketHeader, HOST_CID, MAX_CONNECT_LINE, TYPE_STREAM,
};

/// Most connections (and pending `CONNECT` handshakes) at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most resets for unknown connections waiting for receive buffers; more are dropped.
const MAX_PENDING_RESETS: usize = 256;
/// First host port handed out for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll data of the listening socket (connection sockets use their descriptor number).
const LISTENER_TOKEN: u64 = u64::MAX;

/// Identifies a connection: (host port, guest port).
type ConnKey = (u32, u32);

/// A host process that connected and has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Why the Unix-socket backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Binding `uds_path` failed (it may already exist).
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// Creating or configuring the epoll set failed.
    #[error("epoll: {0}")]
    Epoll(#[source] io::Error),
}

/// Connections between guest ports and host Unix sockets; see the module documentation.
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Connection<UnixStream>>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Event sets each connection's socket is registered for (absent: not registered).
    registered: HashMap<ConnKey, EventSet>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections that have a packet for the guest, in order, without duplicates.
    rx_ready: VecDeque<ConnKey>,
    rx_ready_set: HashSet<ConnKey>,
    /// Resets owed to the guest for packets to unknown connections: (host port, guest port).
    resets: VecDeque<ConnKey>,
    next_local_port: u32,
    /// Connections established so far, in either direction.
    opened: u64,
}

impl VsockMuxer {
    /// Listens on `uds_path` (which must not exist) for host-initiated connections.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let listener = UnixListener::bind(uds_path).map_err(|source| MuxerError::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(MuxerError::Epoll)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(VsockMuxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            registered: HashMap::new(),
            handshakes: HashMap::new(),
            rx_ready: VecDeque::new(),
            rx_ready_set: HashSet::new(),
            resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            opened: 0,
        })
    }

    /// The descriptor that polls readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections established so far (host- and guest-initiated).
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Drops every connection and handshake (device reset). The listener stays.
    pub fn reset(&mut self) {
        for key in self.conns.keys().copied().collect::<Vec<_>>() {
            self.remove(key);
        }
        for (fd, _) in self.handshakes.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.rx_ready.clear();
        self.rx_ready_set.clear();
        self.resets.clear();
    }

    /// Handles whatever host sockets are ready; never blocks.
    pub fn process_host_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(err) => {
                crate::guest_warn!("vsock: epoll_wait failed: {err}");
                return;
            }
        };
        for event in &events[..count] {
            let token = event.data();
            if token == LISTENER_TOKEN {
                self.accept_host_connections();
                continue;
            }
            // Connection tokens are the descriptors they were registered with.
            let Ok(fd) = RawFd::try_from(token) else {
                debug!("vsock: epoll event with unknown token {token:#x}");
                continue;
            };
            if self.handshakes.contains_key(&fd) {
                self.continue_handshake(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                let ready = event.event_set();
                if let Some(conn) = self.conns.get_mut(&key) {
                    if ready.intersects(
                        EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                    ) {
                        conn.host_ready();
                    }
                    if ready.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
                        conn.flush_to_host();
                    }
                }
                self.after_change(key);
            }
        }
    }

    fn accept_host_connections(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    crate::guest_warn!(
                        "vsock: accept on {} failed: {err}",
                        self.uds_path.display()
                    );
                    return;
                }
            };
            if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                crate::guest_warn!(
                    "vsock: {MAX_CONNECTIONS} connections open; refusing a host connection"
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(err) = self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            ) {
                crate::guest_warn!("vsock: cannot watch a host connection: {err}");
                continue;
            }
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    /// Reads the `CONNECT` line one byte at a time, so no stream data after it is consumed.
    fn continue_handshake(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match handshake.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT".to_string()),
                Ok(_) => {
                    handshake.line.push(byte[0]);
                    match parse_connect_line(&handshake.line) {
                        Ok(Some(port)) => break Ok(port),
                        Ok(None) => {}
                        Err(err) => break Err(err.to_string()),
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err.to_string()),
            }
        };
        debug_assert!(handshake.line.len() <= MAX_CONNECT_LINE);
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return;
        };
        match outcome {
            Ok(peer_port) => {
                let local_port = self.allocate_local_port(peer_port);
                let key = (local_port, peer_port);
                let conn = Connection::host_initiated(
                    handshake.stream,
                    self.guest_cid,
                    local_port,
                    peer_port,
                );
                self.insert(key, conn);
            }
            Err(reason) => debug!("vsock: host connection dropped: {reason}"),
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Connection<UnixStream>) {
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.opened += 1;
        self.after_change(key);
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            if self.registered.remove(&key).is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.by_fd.remove(&fd);
        }
    }

    /// Re-derives a connection's epoll interest and rx readiness after anything happened to it.
    fn after_change(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if conn.is_finished() {
            self.remove(key);
            return;
        }
        let mut wanted = EventSet::empty();
        if conn.wants_readable() {
            wanted |= EventSet::IN;
        }
        if conn.wants_writable() {
            wanted |= EventSet::OUT;
        }
        let fd = conn.stream().as_raw_fd();
        let has_rx = conn.has_rx();
        // An empty interest set would still report hang-ups, level-triggered: unregister.
        let current = self.registered.get(&key).copied();
        let result = match (current, wanted.is_empty()) {
            (None, true) => Ok(()),
            (Some(_), true) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, false) => self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(wanted, fd as u64),
            ),
            (Some(set), false) if set == wanted => Ok(()),
            (Some(_), false) => self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(wanted, fd as u64),
            ),
        };
        match result {
            Ok(()) if wanted.is_empty() => {
                self.registered.remove(&key);
            }
            Ok(()) => {
                self.registered.insert(key, wanted);
            }
            Err(err) => {
                crate::guest_warn!("vsock: cannot watch connection {key:?}: {err}");
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.kill();
                }
            }
        }
        if has_rx && self.rx_ready_set.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    /// Owes the guest a reset in reply to `header` (unless it is a reset itself).
    pub fn queue_reset(&mut self, header: &PacketHeader) {
        if header.op == op::RST {
            return;
        }
        if self.resets.len() >= MAX_PENDING_RESETS {
            debug!("vsock: too many pending resets; dropping one");
            return;
        }
        self.resets.push_back((header.dst_port, header.src_port));
    }

    /// Handles a validated packet from the guest (see [`super::packet::validate_tx`]).
    pub fn send_pkt(&mut self, header: &PacketHeader, data: &[u8]) {
        let key = (header.dst_port, header.src_port);
        if self.conns.contains_key(&key) {
            if header.op == op::REQUEST {
                // A second request for a live connection: the guest is confused; reset both.
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.kill();
                }
            } else if let Some(conn) = self.conns.get_mut(&key) {
                conn.handle_packet(header, data);
            }
            self.after_change(key);
            return;
        }
        if header.op != op::REQUEST {
            self.queue_reset(header);
            return;
        }
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            crate::guest_warn!(
                "vsock: {MAX_CONNECTIONS} connections open; refusing guest port {}",
                header.src_port
            );
            self.queue_reset(header);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), header.dst_port);
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, self.guest_cid, header);
                self.insert(key, conn);
            }
            Err(err) => {
                debug!(
                    "vsock: guest connection to host port {}: {path}: {err}",
                    header.dst_port
                );
                self.queue_reset(header);
            }
        }
    }

    /// Whether a packet is waiting for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rx_ready.is_empty()
    }

    /// Produces the next packet for the guest, with payload in `buf` (which bounds it).
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if let Some((local_port, peer_port)) = self.resets.pop_front() {
            return Some(PacketHeader {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local_port,
                dst_port: peer_port,
                len: 0,
                type_: TYPE_STREAM,
                op: op::RST,
                flags: 0,
                buf_alloc: 0,
                fwd_cnt: 0,
            });
        }
        while let Some(key) = self.rx_ready.pop_front() {
            self.rx_ready_set.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let packet = conn.next_rx(buf);
            self.after_change(key);
            if packet.is_some() {
                return packet;
            }
        }
        None
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        // The socket file is ours: we created it in `new`.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
