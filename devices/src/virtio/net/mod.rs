//! virtio-net: an Ethernet NIC backed by a Linux TAP interface (virtio 1.2 section 5.1).
//!
//! - [`Net`] is the device: queue 0 receives (host to guest), queue 1 transmits. It offers
//!   mergeable receive buffers, link status, a MAC address when one is configured, event-index
//!   notification suppression, and the checksum/segmentation offloads that the TAP device can
//!   carry; offloads the driver accepts are switched on in the TAP with `TUNSETOFFLOAD`.
//! - [`header`] parses and checks the 12-byte `virtio_net_hdr_v1` every frame carries.
//! - [`NetBackend`] is the host side; [`Tap`] implements it with `/dev/net/tun`.
//! - [`NetConfig`] is what a caller supplies, with validation ([`MacAddress`] parsing).
//!
//! Receive is flow controlled: when the guest has posted no buffers the device stops polling
//! the TAP (it holds at most one frame) until the driver notifies the receive queue.
//!
//! Not implemented: the control queue (`CTRL_VQ`: receive filters, VLANs, announce),
//! multiqueue, `MTU` and `SPEED_DUPLEX` config fields, and ECN-marked segmentation offload.

mod backend;
pub mod chain;
mod config;
mod device;
pub mod header;
mod tap;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use backend::{NetBackend, OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO};
pub use config::{
    valid_interface_name, MacAddress, MacAddressError, NetConfig, NetConfigError, TapSource,
    MAX_IF_NAME_LEN,
};
pub use device::{
    Net, NetError, NetMetrics, RxState, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
pub use header::{TxHeaderError, VirtioNetHeader, VIRTIO_NET_HDR_LEN};
pub use tap::{Tap, TapError};

/// virtio-net feature bits (virtio 1.2 section 5.1.3).
pub mod features {
    /// The device handles packets with partial checksums (guest to host).
    pub const CSUM: u64 = 1 << 0;
    /// The driver handles packets with partial checksums (host to guest).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The device has a MAC address in its config space.
    pub const MAC: u64 = 1 << 5;
    /// The driver can receive TCP/IPv4 segmentation-offloaded packets.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver can receive TCP/IPv6 segmentation-offloaded packets.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The driver can receive UDP fragmentation-offloaded packets.
    pub const GUEST_UFO: u64 = 1 << 10;
    /// The device can receive TCP/IPv4 segmentation-offloaded packets.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device can receive TCP/IPv6 segmentation-offloaded packets.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// The device can receive UDP fragmentation-offloaded packets.
    pub const HOST_UFO: u64 = 1 << 14;
    /// The driver can merge receive buffers: one frame may span several chains.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The config space has a link status field.
    pub const STATUS: u64 = 1 << 16;
}

/// Config space `status` bit: the link is up.
pub const LINK_UP: u16 = 1;
