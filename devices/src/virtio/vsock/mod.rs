//! virtio-vsock: stream sockets between guest and host over Unix sockets, in Firecracker's
//! model (virtio 1.2 section 5.10).
//!
//! - [`Vsock`] is the device: queues rx (0), tx (1) and event (2); config space holds the
//!   guest's CID.
//! - [`packet`] parses and checks the 44-byte packet header (pure, fuzzed).
//! - [`Connection`] is one stream's state machine with credit-based flow control, generic over
//!   its host stream.
//! - [`VsockMuxer`] maps connections onto Unix sockets: host processes connect to `uds_path`
//!   and write `CONNECT <port>\n`; guest connections to host port `P` go to `<uds_path>_<P>`.
//!
//! Not implemented: datagram and seqpacket sockets, the transport-reset event (only needed
//! after snapshot restore), and timeouts for peers that never answer a shutdown.

mod config;
pub mod connection;
mod device;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

pub use config::{VsockConfig, VsockConfigError};
pub use connection::{ConnState, Connection, HostStream, CONN_BUF_SIZE};
pub use device::{Vsock, VsockError, VsockMetrics, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use muxer::{MuxerError, VsockMuxer, MAX_CONNECTIONS};
pub use packet::{PacketError, PacketHeader, HOST_CID};
