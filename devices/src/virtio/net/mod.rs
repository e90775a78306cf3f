//! virtio-net: an Ethernet NIC backed by a Linux TAP interface (virtio 1.2 section 5.1).
//!
//! - [`Net`] is the device: queue 0 receives (host to guest), queue 1 transmits, queue 2 is the
//!   control queue when the driver accepts `CTRL_VQ`. It offers mergeable receive buffers, link
//!   status, a MAC address when one is configured, event-index notification suppression, and
//!   the checksum/segmentation offloads that the TAP device can carry; offloads the driver
//!   accepts are switched on in the TAP with `TUNSETOFFLOAD`.
//! - [`header`] parses and checks the 12-byte `virtio_net_hdr_v1` every frame carries.
//! - [`ctrl`] parses control-queue requests; the device carries them out:
//!   - `CTRL_RX` / `CTRL_RX_EXTRA`: the receive modes (promiscuous, all-multicast,
//!     all-unicast, no-multicast, no-unicast, no-broadcast) and `MAC_TABLE_SET` are checked,
//!     recorded ([`RxFilter`], [`Net::rx_filter`]) and acknowledged, but not enforced: the TAP
//!     delivers every frame the host sends it, so the guest may see frames its filter excludes
//!     (the specification allows this; Linux filters again in its stack).
//!   - `CTRL_MAC_ADDR`: `MAC_ADDR_SET` changes the MAC address config space shows, until reset.
//!   - `GUEST_ANNOUNCE`: [`Net::request_announce`] (for the VMM, e.g. after a live migration)
//!     sets `VIRTIO_NET_S_ANNOUNCE` in config `status` and raises a configuration-change
//!     interrupt; the driver sends gratuitous ARP/ND and acknowledges with `ANNOUNCE_ACK`,
//!     which clears the bit.
//!
//!   Requests of a class or command the driver did not negotiate (or that Keel does not offer:
//!   VLAN filtering, multiqueue, offload control) and malformed requests are answered with
//!   `VIRTIO_NET_ERR`. A driver that does not accept `CTRL_VQ` (such as Keel's test guest)
//!   sets up two queues and never sees any of this.
//! - [`NetBackend`] is the host side; [`Tap`] implements it with `/dev/net/tun`.
//! - [`NetConfig`] is what a caller supplies, with validation ([`MacAddress`] parsing).
//!
//! Receive is flow controlled: when the guest has posted no buffers the device stops polling
//! the TAP (it holds at most one frame) until the driver notifies the receive queue.
//!
//! Not implemented: VLAN filtering, multiqueue, enforcing the receive filter, `MTU` and
//! `SPEED_DUPLEX` config fields, and ECN-marked segmentation offload.

mod backend;
mod config;
pub mod ctrl;
mod ctrl_state;
#[cfg(test)]
mod ctrl_tests;
mod device;
pub mod header;
mod tap;
#[cfg(test)]
mod tests;

pub use backend::{NetBackend, NullBackend, OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO};
pub use config::{
    valid_interface_name, MacAddress, MacAddressError, NetConfig, NetConfigError, TapSource,
    MAX_IF_NAME_LEN,
};
pub use ctrl_state::{NetSnapshot, RxFilter};
pub use device::{
    AnnounceError, Net, NetError, NetMetrics, RxState, CTRL_QUEUE, CTRL_QUEUE_SIZE, MAX_FRAME_LEN,
    QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
pub use header::{TxHeaderError, VirtioNetHeader, VIRTIO_NET_HDR_LEN};
pub use tap::{Tap, TapError};

/// virtio-net feature bits (virtio 1.2 section 5.1.3).
pub mod features {
    #[allow(clippy::wildcard_imports)]
    use virtio_bindings::virtio_net::*;

    /// The device handles packets with partial checksums (guest to host).
    pub const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    /// The driver handles packets with partial checksums (host to guest).
    pub const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    /// The device has a MAC address in its config space.
    pub const MAC: u64 = 1 << VIRTIO_NET_F_MAC;
    /// The driver can receive TCP/IPv4 segmentation-offloaded packets.
    pub const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    /// The driver can receive TCP/IPv6 segmentation-offloaded packets.
    pub const GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
    /// The driver can receive UDP fragmentation-offloaded packets.
    pub const GUEST_UFO: u64 = 1 << VIRTIO_NET_F_GUEST_UFO;
    /// The device can receive TCP/IPv4 segmentation-offloaded packets.
    pub const HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
    /// The device can receive TCP/IPv6 segmentation-offloaded packets.
    pub const HOST_TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;
    /// The device can receive UDP fragmentation-offloaded packets.
    pub const HOST_UFO: u64 = 1 << VIRTIO_NET_F_HOST_UFO;
    /// The driver can merge receive buffers: one frame may span several chains.
    pub const MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
    /// The config space has a link status field.
    pub const STATUS: u64 = 1 << VIRTIO_NET_F_STATUS;
    /// The device has a control queue.
    pub const CTRL_VQ: u64 = 1 << VIRTIO_NET_F_CTRL_VQ;
    /// The control queue takes receive-mode and MAC-filter commands.
    pub const CTRL_RX: u64 = 1 << VIRTIO_NET_F_CTRL_RX;
    /// The control queue takes VLAN filter commands (not offered by Keel).
    pub const CTRL_VLAN: u64 = 1 << VIRTIO_NET_F_CTRL_VLAN;
    /// The control queue takes the extra receive modes (all-unicast, no-multicast,
    /// no-unicast, no-broadcast).
    pub const CTRL_RX_EXTRA: u64 = 1 << VIRTIO_NET_F_CTRL_RX_EXTRA;
    /// The driver can send gratuitous packets when the device asks (`VIRTIO_NET_S_ANNOUNCE`).
    pub const GUEST_ANNOUNCE: u64 = 1 << VIRTIO_NET_F_GUEST_ANNOUNCE;
    /// Several receive/transmit queue pairs (not offered by Keel).
    pub const MQ: u64 = 1 << VIRTIO_NET_F_MQ;
    /// The MAC address can be set through the control queue.
    pub const CTRL_MAC_ADDR: u64 = 1 << VIRTIO_NET_F_CTRL_MAC_ADDR;
}

/// Config space `status` bit: the link is up.
pub const LINK_UP: u16 = crate::virtio::half(virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP);
/// Config space `status` bit: the device asks the driver to announce itself
/// (`VIRTIO_NET_S_ANNOUNCE`).
pub const ANNOUNCE: u16 = crate::virtio::half(virtio_bindings::virtio_net::VIRTIO_NET_S_ANNOUNCE);
