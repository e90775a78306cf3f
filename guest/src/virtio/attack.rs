//! The hostile-guest catalogue (`keel.attack=NAME`): ways a driver can misbehave on purpose, so
//! the host's tests can check that the VMM survives each one and its device stays usable.
//!
//! Every attack but the `blk_*` ones targets the first virtio-rng device (one queue of
//! device-writable buffers, the simplest to abuse); `blk_*` target the first virtio-blk device.
//! The `msix_*` and `bar*` ones need the device on virtio-pci (`keel.pci`); `vsock_*` target
//! the first virtio-vsock device instead, `console_*` the first virtio-console device's
//! transmit queue (whose chains go through the validation virtio-net and virtio-vsock share),
//! `net_tx_*` the first virtio-net device's transmit queue, `net_rx_*` its receive queue (the
//! host test sends frames meanwhile).
//! After the attack the guest resets the device and sends one well-formed request, which must
//! be served. The guest prints `attack NAME outcome=... then=served`, or a `FAIL attack` line.

/// One misbehaviour of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Two descriptors whose `next` fields point at each other.
    DescLoop,
    /// A chain longer than the queue: every descriptor of the table chained, the last back to
    /// the first.
    ChainTooLong,
    /// A descriptor whose `next` is beyond the queue size.
    NextOutOfRange,
    /// An indirect descriptor whose table is the queue's own descriptor table (itself
    /// indirect: nested and self-referencing).
    IndirectSelf,
    /// A buffer 1 TiB up, beyond guest memory.
    AddrBeyondMemory,
    /// A buffer on the I/O APIC's page in the MMIO hole below 4 GiB.
    AddrMmioHole,
    /// A buffer whose address plus length wraps around 2^64.
    AddrOverflow,
    /// A buffer of zero bytes.
    ZeroLength,
    /// A buffer of 4 GiB - 1 bytes.
    HugeLength,
    /// A device-writable buffer of 1 GiB inside guest memory (the VM needs 1.5 GiB).
    RngGib,
    /// Queue size 0, then DRIVER_OK.
    QueueSizeZero,
    /// Queue size 12 (not a power of two), then DRIVER_OK.
    QueueSizeOdd,
    /// Queue size 1024, over the device's maximum, then DRIVER_OK.
    QueueSizeTooBig,
    /// The available index moved by 1000, more than the queue size.
    AvailJump,
    /// The available index moved back by one after a request was served.
    AvailBackwards,
    /// An available ring entry naming descriptor 300 of a 16-entry queue.
    HeadOutOfRange,
    /// Notifications of a queue before it is set up and of queues the device does not have.
    NotifyUnconfigured,
    /// `keel.attack_count` notifications of a live, empty queue.
    NotifyStorm,
    /// Writes over the whole configuration window past the registers, and to the read-only
    /// registers.
    ConfigWriteOob,
    /// DRIVER_OK before FEATURES_OK, then FEATURES_OK with features the device does not offer.
    StatusOutOfOrder,
    /// A block read at the last sector number there is (2^64 - 1).
    BlkSectorOverflow,
    /// A block request whose header is 4 bytes long.
    BlkShortHeader,
    /// A block read whose chain has no status byte (nothing device-writable after the data).
    BlkNoStatus,
    /// `keel.attack_count` chains whose head is out of range, each notified: a warning on the
    /// host per chain unless the VMM limits them.
    WarnFlood,
    /// virtio-vsock: `keel.attack_count` connection requests to a host port nobody listens on,
    /// without reading the receive queue meanwhile.
    VsockResetFlood,
    /// virtio-vsock: `keel.attack_count` connection requests to a host port whose peer accepts
    /// every connection, the replies read as they come.
    VsockConnectionFlood,
    /// virtio-vsock: a connection whose guest sends data with no regard for the credit the
    /// device gives (the host side never reads).
    VsockCreditOverflow,
    /// virtio-console: a transmit descriptor marked device-writable.
    ConsoleWritableTx,
    /// virtio-console: two transmit descriptors whose `next` point at each other.
    ConsoleDescLoop,
    /// virtio-console: a transmit chain of 1 MiB (16 descriptors of 64 KiB), over the
    /// device's 64 KiB per chain.
    ConsoleHugeChain,
    /// virtio-console: a transmit buffer at 1 TiB, beyond guest memory.
    ConsoleAddrBeyondMemory,
    /// virtio-net: a transmit descriptor marked device-writable.
    NetTxWritable,
    /// virtio-net: a transmit chain of 4 bytes, shorter than the virtio-net header.
    NetTxShort,
    /// virtio-net: a transmit chain of 1 MiB (16 descriptors of 64 KiB), over the largest
    /// frame.
    NetTxOversize,
    /// virtio-net: two transmit descriptors whose `next` point at each other.
    NetTxLoop,
    /// virtio-net, while the host sends frames: a receive buffer the device may only read.
    NetRxReadOnly,
    /// virtio-net, while the host sends frames: a 4-byte receive buffer (the header is 12).
    NetRxShort,
    /// virtio-net, while the host sends frames: a receive buffer at 1 TiB, beyond memory.
    NetRxBeyondMemory,
    /// virtio-net, while the host sends frames: two receive descriptors whose `next` point
    /// at each other.
    NetRxLoop,
    /// virtio-pci: MSI-X vector 0x800 (past the device's table) for the configuration and
    /// for queue 0.
    MsixVectorOutOfRange,
    /// virtio-pci: every MSI-X table entry and 16 past the table's end pointed at a non-APIC
    /// address with vector 0, unmasked; all ones written over the pending-bit array; MSI-X
    /// enabled and a request served so the device signals through that garbage.
    MsixTableAbuse,
    /// virtio-pci: BAR 0 of the entropy device moved onto guest RAM (1 MiB, the guest's own
    /// image), then back.
    BarOverRam,
    /// virtio-pci: BAR 0 of the entropy device moved onto the block device's BAR 0, then back.
    BarsOverlap,
}

impl Attack {
    /// Every attack, in the catalogue's order.
    pub const ALL: [Attack; 43] = [
        Attack::DescLoop,
        Attack::ChainTooLong,
        Attack::NextOutOfRange,
        Attack::IndirectSelf,
        Attack::AddrBeyondMemory,
        Attack::AddrMmioHole,
        Attack::AddrOverflow,
        Attack::ZeroLength,
        Attack::HugeLength,
        Attack::RngGib,
        Attack::QueueSizeZero,
        Attack::QueueSizeOdd,
        Attack::QueueSizeTooBig,
        Attack::AvailJump,
        Attack::AvailBackwards,
        Attack::HeadOutOfRange,
        Attack::NotifyUnconfigured,
        Attack::NotifyStorm,
        Attack::ConfigWriteOob,
        Attack::StatusOutOfOrder,
        Attack::BlkSectorOverflow,
        Attack::BlkShortHeader,
        Attack::BlkNoStatus,
        Attack::WarnFlood,
        Attack::VsockResetFlood,
        Attack::VsockConnectionFlood,
        Attack::VsockCreditOverflow,
        Attack::ConsoleWritableTx,
        Attack::ConsoleDescLoop,
        Attack::ConsoleHugeChain,
        Attack::ConsoleAddrBeyondMemory,
        Attack::NetTxWritable,
        Attack::NetTxShort,
        Attack::NetTxOversize,
        Attack::NetTxLoop,
        Attack::NetRxReadOnly,
        Attack::NetRxShort,
        Attack::NetRxBeyondMemory,
        Attack::NetRxLoop,
        Attack::MsixVectorOutOfRange,
        Attack::MsixTableAbuse,
        Attack::BarOverRam,
        Attack::BarsOverlap,
    ];

    /// The name on the command line and in the `attack` line.
    pub fn name(self) -> &'static str {
        match self {
            Attack::DescLoop => "desc_loop",
            Attack::ChainTooLong => "chain_too_long",
            Attack::NextOutOfRange => "next_out_of_range",
            Attack::IndirectSelf => "indirect_self",
            Attack::AddrBeyondMemory => "addr_beyond_memory",
            Attack::AddrMmioHole => "addr_mmio_hole",
            Attack::AddrOverflow => "addr_overflow",
            Attack::ZeroLength => "zero_length",
            Attack::HugeLength => "huge_length",
            Attack::RngGib => "rng_1gib",
            Attack::QueueSizeZero => "queue_size_zero",
            Attack::QueueSizeOdd => "queue_size_odd",
            Attack::QueueSizeTooBig => "queue_size_too_big",
            Attack::AvailJump => "avail_jump",
            Attack::AvailBackwards => "avail_backwards",
            Attack::HeadOutOfRange => "head_out_of_range",
            Attack::NotifyUnconfigured => "notify_unconfigured",
            Attack::NotifyStorm => "notify_storm",
            Attack::ConfigWriteOob => "config_write_oob",
            Attack::StatusOutOfOrder => "status_out_of_order",
            Attack::BlkSectorOverflow => "blk_sector_overflow",
            Attack::BlkShortHeader => "blk_short_header",
            Attack::BlkNoStatus => "blk_no_status",
            Attack::WarnFlood => "warn_flood",
            Attack::VsockResetFlood => "vsock_reset_flood",
            Attack::VsockConnectionFlood => "vsock_connection_flood",
            Attack::VsockCreditOverflow => "vsock_credit_overflow",
            Attack::ConsoleWritableTx => "console_writable_tx",
            Attack::ConsoleDescLoop => "console_desc_loop",
            Attack::ConsoleHugeChain => "console_huge_chain",
            Attack::ConsoleAddrBeyondMemory => "console_addr_beyond_memory",
            Attack::NetTxWritable => "net_tx_writable",
            Attack::NetTxShort => "net_tx_short",
            Attack::NetTxOversize => "net_tx_oversize",
            Attack::NetTxLoop => "net_tx_loop",
            Attack::NetRxReadOnly => "net_rx_read_only",
            Attack::NetRxShort => "net_rx_short",
            Attack::NetRxBeyondMemory => "net_rx_beyond_memory",
            Attack::NetRxLoop => "net_rx_loop",
            Attack::MsixVectorOutOfRange => "msix_vector_out_of_range",
            Attack::MsixTableAbuse => "msix_table_abuse",
            Attack::BarOverRam => "bar_over_ram",
            Attack::BarsOverlap => "bars_overlap",
        }
    }

    /// The attack called `name`.
    pub fn from_name(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|attack| attack.name() == name)
    }

    /// Whether it needs the virtio-pci transport (`keel.pci`).
    pub fn needs_pci(self) -> bool {
        matches!(
            self,
            Attack::MsixVectorOutOfRange
                | Attack::MsixTableAbuse
                | Attack::BarOverRam
                | Attack::BarsOverlap
        )
    }

    /// Whether it targets the socket device.
    pub fn on_vsock(self) -> bool {
        matches!(
            self,
            Attack::VsockResetFlood | Attack::VsockConnectionFlood | Attack::VsockCreditOverflow
        )
    }

    /// Whether it targets the console device's transmit queue.
    pub fn on_console(self) -> bool {
        matches!(
            self,
            Attack::ConsoleWritableTx
                | Attack::ConsoleDescLoop
                | Attack::ConsoleHugeChain
                | Attack::ConsoleAddrBeyondMemory
        )
    }

    /// Whether it targets the network device (its transmit queue, or with
    /// [`on_net_rx`](Self::on_net_rx) its receive queue).
    pub fn on_net(self) -> bool {
        matches!(
            self,
            Attack::NetTxWritable | Attack::NetTxShort | Attack::NetTxOversize | Attack::NetTxLoop
        ) || self.on_net_rx()
    }

    /// Whether it targets the network device's receive queue (the host sends frames).
    pub fn on_net_rx(self) -> bool {
        matches!(
            self,
            Attack::NetRxReadOnly
                | Attack::NetRxShort
                | Attack::NetRxBeyondMemory
                | Attack::NetRxLoop
        )
    }

    /// Whether it targets a block device (else the entropy device).
    pub fn on_block(self) -> bool {
        matches!(
            self,
            Attack::BlkSectorOverflow | Attack::BlkShortHeader | Attack::BlkNoStatus
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for attack in Attack::ALL {
            assert_eq!(Attack::from_name(attack.name()), Some(attack));
        }
        let mut names: Vec<_> = Attack::ALL.iter().map(|a| a.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Attack::ALL.len());
        assert_eq!(Attack::from_name("nope"), None);
        assert!(Attack::BlkNoStatus.on_block() && !Attack::DescLoop.on_block());
    }
}
