//! The control queue's wire format and its parser (virtio 1.2, section 5.1.6.5).
//!
//! A control request is one descriptor chain laid out as `struct virtio_net_ctrl`: the driver's
//! part (device-readable) holds a class byte, a command byte and the command's data; the
//! device's part (device-writable) is the one `ack` byte the device answers with
//! [`VIRTIO_NET_OK`] or [`VIRTIO_NET_ERR`].
//!
//! Everything in a chain is guest-controlled, so parsing is split in two pure steps that never
//! panic and allocate at most [`MAX_COMMAND_LEN`] bytes:
//! - [`parse_request`] checks the chain's shape (readable descriptors before writable ones,
//!   every buffer in guest memory, at most [`MAX_DESCRIPTORS`] descriptors and
//!   [`MAX_COMMAND_LEN`] readable bytes, exactly one writable byte), locates the ack byte and
//!   reads the driver's bytes;
//! - [`Command::parse`] turns those bytes into a typed [`Command`], checking the class and
//!   command against the negotiated features and every length against the command.
//!
//! When a chain is rejected, [`Rejected::ack`] says where the device may still write
//! [`VIRTIO_NET_ERR`]: the first device-writable byte, if the chain has one in guest memory.
//! Executing a command is the device's job ([`super::Net`]).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::config::MacAddress;
use super::features;
use crate::virtio::byte;
use virtio_bindings::virtio_net;

/// Ack byte: the command was carried out.
pub const VIRTIO_NET_OK: u8 = byte(virtio_net::VIRTIO_NET_OK);
/// Ack byte: the command was malformed, unknown, not negotiated or failed.
pub const VIRTIO_NET_ERR: u8 = byte(virtio_net::VIRTIO_NET_ERR);

/// Class: receive modes (`VIRTIO_NET_F_CTRL_RX`, `VIRTIO_NET_F_CTRL_RX_EXTRA`).
pub const CLASS_RX: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX);
/// Receive-mode command: promiscuous mode on/off.
pub const RX_PROMISC: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX_PROMISC);
/// Receive-mode command: receive all multicast on/off.
pub const RX_ALLMULTI: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX_ALLMULTI);
/// Receive-mode command: receive all unicast on/off (`CTRL_RX_EXTRA`).
pub const RX_ALLUNI: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX_ALLUNI);
/// Receive-mode command: suppress multicast on/off (`CTRL_RX_EXTRA`).
pub const RX_NOMULTI: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX_NOMULTI);
/// Receive-mode command: suppress unicast on/off (`CTRL_RX_EXTRA`).
pub const RX_NOUNI: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX_NOUNI);
/// Receive-mode command: suppress broadcast on/off (`CTRL_RX_EXTRA`).
pub const RX_NOBCAST: u8 = byte(virtio_net::VIRTIO_NET_CTRL_RX_NOBCAST);

/// Class: MAC addresses.
pub const CLASS_MAC: u8 = byte(virtio_net::VIRTIO_NET_CTRL_MAC);
/// MAC command: set the unicast and multicast filter tables (`VIRTIO_NET_F_CTRL_RX`).
pub const MAC_TABLE_SET: u8 = byte(virtio_net::VIRTIO_NET_CTRL_MAC_TABLE_SET);
/// MAC command: set the device's MAC address (`VIRTIO_NET_F_CTRL_MAC_ADDR`).
pub const MAC_ADDR_SET: u8 = byte(virtio_net::VIRTIO_NET_CTRL_MAC_ADDR_SET);

/// Class: VLAN filtering (`VIRTIO_NET_F_CTRL_VLAN`, not offered by Keel).
pub const CLASS_VLAN: u8 = byte(virtio_net::VIRTIO_NET_CTRL_VLAN);

/// Class: gratuitous announcements (`VIRTIO_NET_F_GUEST_ANNOUNCE`).
pub const CLASS_ANNOUNCE: u8 = byte(virtio_net::VIRTIO_NET_CTRL_ANNOUNCE);
/// Announce command: the driver has announced itself; clear `VIRTIO_NET_S_ANNOUNCE`.
pub const ANNOUNCE_ACK: u8 = byte(virtio_net::VIRTIO_NET_CTRL_ANNOUNCE_ACK);

/// Class: multiqueue (`VIRTIO_NET_F_MQ`, not offered by Keel).
pub const CLASS_MQ: u8 = byte(virtio_net::VIRTIO_NET_CTRL_MQ);

/// Length of the class and command bytes that start every request.
pub const HEADER_LEN: usize = 2;
/// Most device-readable bytes one request may carry: a MAC table of over 10,000 addresses,
/// far more than a driver sends, while bounding what a hostile chain makes the device copy.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;
/// Most descriptors in one request (Linux uses four: header, two MAC tables, ack).
pub const MAX_DESCRIPTORS: usize = 64;
/// Length of the device-writable part: the ack byte.
pub const ACK_LEN: usize = 1;
/// Length of one MAC address in a MAC table.
const MAC_LEN: usize = 6;
/// Length of a MAC table's entry count (`le32 entries`).
const TABLE_COUNT_LEN: usize = 4;

/// A receive-mode switch of the [`CLASS_RX`] class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxMode {
    /// Receive every frame.
    Promisc,
    /// Receive every multicast frame.
    AllMulti,
    /// Receive every unicast frame.
    AllUni,
    /// Receive no multicast frames.
    NoMulti,
    /// Receive no unicast frames.
    NoUni,
    /// Receive no broadcast frames.
    NoBcast,
}

impl RxMode {
    /// The mode a command byte names, and whether it needs `CTRL_RX_EXTRA`.
    fn from_command(command: u8) -> Option<(Self, bool)> {
        Some(match command {
            RX_PROMISC => (RxMode::Promisc, false),
            RX_ALLMULTI => (RxMode::AllMulti, false),
            RX_ALLUNI => (RxMode::AllUni, true),
            RX_NOMULTI => (RxMode::NoMulti, true),
            RX_NOUNI => (RxMode::NoUni, true),
            RX_NOBCAST => (RxMode::NoBcast, true),
            _ => return None,
        })
    }
}

/// A checked control command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Switch a receive mode on or off.
    RxMode {
        /// Which mode.
        mode: RxMode,
        /// On (the driver sent a non-zero byte) or off.
        on: bool,
    },
    /// Replace the receive filter's MAC tables.
    MacTable {
        /// Unicast addresses the driver wants to receive.
        unicast: Vec<[u8; 6]>,
        /// Multicast addresses the driver wants to receive.
        multicast: Vec<[u8; 6]>,
    },
    /// Set the device's MAC address (shown in config space).
    MacAddr(MacAddress),
    /// The driver has sent its gratuitous announcement.
    AnnounceAck,
}

/// Which MAC table of a `MAC_TABLE_SET` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacTableKind {
    /// The first table.
    Unicast,
    /// The second table.
    Multicast,
}

impl std::fmt::Display for MacTableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MacTableKind::Unicast => "unicast",
            MacTableKind::Multicast => "multicast",
        })
    }
}

/// Why a control request was rejected (answered with [`VIRTIO_NET_ERR`] where possible).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// The chain has no descriptors.
    #[error("empty descriptor chain")]
    Empty,
    /// The chain ended early: a loop, a bad `next` index or the queue-size bound.
    #[error("descriptor chain is not terminated")]
    Unterminated,
    /// More descriptors than [`MAX_DESCRIPTORS`].
    #[error("descriptor chain has more than {0} descriptors")]
    TooManyDescriptors(usize),
    /// A device-readable descriptor follows a device-writable one.
    #[error("descriptor {0} is device-readable but follows a device-writable one")]
    ReadableAfterWritable(usize),
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor {index} ({addr:#x}+{len}) is outside guest memory")]
    OutsideMemory {
        /// Position in the chain.
        index: usize,
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// More readable bytes than [`MAX_COMMAND_LEN`].
    #[error("request exceeds {MAX_COMMAND_LEN} bytes")]
    TooLong,
    /// Guest memory could not be read.
    #[error("guest memory read at {0:#x} failed")]
    MemoryRead(u64),
    /// The device-writable part is not exactly the one ack byte.
    #[error("device-writable part is {0} bytes, not the 1-byte ack")]
    AckLength(u64),
    /// Fewer than the two bytes of class and command.
    #[error("request is {0} bytes, shorter than its class and command")]
    HeaderTooShort(usize),
    /// A class Keel does not offer (VLAN, multiqueue, ...) or does not know.
    #[error("class {0} is not supported")]
    UnsupportedClass(u8),
    /// A command the class does not have.
    #[error("class {class} has no command {command}")]
    UnknownCommand {
        /// Class byte.
        class: u8,
        /// Command byte.
        command: u8,
    },
    /// The command needs a feature the driver did not accept.
    #[error("class {class} command {command} needs feature {feature}, not negotiated")]
    NotNegotiated {
        /// Class byte.
        class: u8,
        /// Command byte.
        command: u8,
        /// The missing feature.
        feature: &'static str,
    },
    /// The command's data has the wrong length.
    #[error("class {class} command {command} takes {expected} data bytes, got {got}")]
    DataLength {
        /// Class byte.
        class: u8,
        /// Command byte.
        command: u8,
        /// Bytes the command takes.
        expected: usize,
        /// Bytes the driver sent.
        got: usize,
    },
    /// A MAC table's entry count is cut off.
    #[error("{table} MAC table: entry count truncated ({available} bytes left)")]
    TableCountTruncated {
        /// Which table.
        table: MacTableKind,
        /// Bytes left where the count should be.
        available: usize,
    },
    /// A MAC table claims more entries than the request carries.
    #[error("{table} MAC table claims {entries} entries, {available} bytes follow")]
    TableEntries {
        /// Which table.
        table: MacTableKind,
        /// The claimed count.
        entries: u32,
        /// Bytes left for its entries.
        available: usize,
    },
    /// Bytes after the second MAC table.
    #[error("{0} bytes after the MAC tables")]
    TrailingBytes(usize),
    /// `MAC_ADDR_SET` with a group (multicast) address.
    #[error("MAC_ADDR_SET with multicast address {0:02x?}")]
    MulticastAddress([u8; 6]),
}

/// A control request whose ack byte is known and whose command checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Guest address of the ack byte.
    pub ack: GuestAddress,
}

/// A rejected request: why, and where to write [`VIRTIO_NET_ERR`] if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// What is wrong.
    pub error: CtrlError,
    /// Guest address of the first device-writable byte, if the chain has one in guest memory;
    /// `None` when the chain can only be returned with nothing written.
    pub ack: Option<GuestAddress>,
}

fn in_memory<M: GuestMemory>(mem: &M, desc: &Descriptor, access: Permissions) -> bool {
    let len = desc.len() as usize;
    len == 0 || mem.check_range(desc.addr(), len, access)
}

/// Parses one control request from the descriptors of its chain (in chain order), with
/// `acked` the features the driver accepted. Reads at most [`MAX_DESCRIPTORS`] + 1
/// descriptors, so an endless iterator is harmless.
pub fn parse_request<M, I>(descriptors: I, mem: &M, acked: u64) -> Result<Request, Rejected>
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    let descs: Vec<Descriptor> = descriptors
        .into_iter()
        .take(MAX_DESCRIPTORS.saturating_add(1))
        .collect();
    // Where an error can be reported: the first non-empty writable buffer, if in memory.
    let ack = descs
        .iter()
        .find(|desc| desc.is_write_only() && desc.len() > 0)
        .filter(|desc| mem.check_range(desc.addr(), ACK_LEN, Permissions::Write))
        .map(|desc| desc.addr());
    let reject = |error| Rejected { error, ack };

    let Some(last) = descs.last() else {
        return Err(reject(CtrlError::Empty));
    };
    if descs.len() > MAX_DESCRIPTORS {
        return Err(reject(CtrlError::TooManyDescriptors(MAX_DESCRIPTORS)));
    }
    if last.has_next() {
        return Err(reject(CtrlError::Unterminated));
    }

    let mut readable_len = 0usize;
    let mut writable_len = 0u64;
    let mut seen_writable = false;
    for (index, desc) in descs.iter().enumerate() {
        if desc.is_write_only() {
            if !in_memory(mem, desc, Permissions::Write) {
                return Err(reject(outside(index, desc)));
            }
            seen_writable = true;
            writable_len += u64::from(desc.len());
            continue;
        }
        if seen_writable {
            return Err(reject(CtrlError::ReadableAfterWritable(index)));
        }
        if !in_memory(mem, desc, Permissions::Read) {
            return Err(reject(outside(index, desc)));
        }
        readable_len = readable_len
            .checked_add(desc.len() as usize)
            .filter(|&total| total <= MAX_COMMAND_LEN)
            .ok_or_else(|| reject(CtrlError::TooLong))?;
    }
    let Some(ack_addr) = ack.filter(|_| writable_len == ACK_LEN as u64) else {
        return Err(reject(CtrlError::AckLength(writable_len)));
    };

    let mut bytes = vec![0u8; readable_len];
    let mut filled = 0usize;
    for desc in descs.iter().take_while(|desc| !desc.is_write_only()) {
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        let Some(slot) = bytes.get_mut(filled..filled + len) else {
            return Err(reject(CtrlError::TooLong));
        };
        mem.read_slice(slot, desc.addr())
            .map_err(|_| reject(CtrlError::MemoryRead(desc.addr().raw_value())))?;
        filled += len;
    }
    Command::parse(&bytes, acked)
        .map(|command| Request {
            command,
            ack: ack_addr,
        })
        .map_err(reject)
}

fn outside(index: usize, desc: &Descriptor) -> CtrlError {
    CtrlError::OutsideMemory {
        index,
        addr: desc.addr().raw_value(),
        len: desc.len(),
    }
}

impl Command {
    /// Parses the driver's bytes of one request (class, command, data) against the
    /// negotiated features `acked`.
    pub fn parse(bytes: &[u8], acked: u64) -> Result<Command, CtrlError> {
        let [class, command, data @ ..] = bytes else {
            return Err(CtrlError::HeaderTooShort(bytes.len()));
        };
        let (class, command) = (*class, *command);
        let need = |feature: u64, name: &'static str| {
            if acked & feature == 0 {
                Err(CtrlError::NotNegotiated {
                    class,
                    command,
                    feature: name,
                })
            } else {
                Ok(())
            }
        };
        let exact = |expected: usize| {
            if data.len() == expected {
                Ok(())
            } else {
                Err(CtrlError::DataLength {
                    class,
                    command,
                    expected,
                    got: data.len(),
                })
            }
        };
        let unknown = CtrlError::UnknownCommand { class, command };
        match class {
            CLASS_RX => {
                need(features::CTRL_RX, "CTRL_RX")?;
                let (mode, extra) = RxMode::from_command(command).ok_or(unknown)?;
                if extra {
                    need(features::CTRL_RX_EXTRA, "CTRL_RX_EXTRA")?;
                }
                exact(1)?;
                Ok(Command::RxMode {
                    mode,
                    on: data[0] != 0,
                })
            }
            CLASS_MAC => match command {
                MAC_TABLE_SET => {
                    need(features::CTRL_RX, "CTRL_RX")?;
                    let (unicast, rest) = take_table(data, MacTableKind::Unicast)?;
                    let (multicast, rest) = take_table(rest, MacTableKind::Multicast)?;
                    if !rest.is_empty() {
                        return Err(CtrlError::TrailingBytes(rest.len()));
                    }
                    Ok(Command::MacTable { unicast, multicast })
                }
                MAC_ADDR_SET => {
                    need(features::CTRL_MAC_ADDR, "CTRL_MAC_ADDR")?;
                    let Ok(bytes) = <[u8; MAC_LEN]>::try_from(data) else {
                        return Err(CtrlError::DataLength {
                            class,
                            command,
                            expected: MAC_LEN,
                            got: data.len(),
                        });
                    };
                    MacAddress::new(bytes)
                        .map(Command::MacAddr)
                        .map_err(|_| CtrlError::MulticastAddress(bytes))
                }
                _ => Err(unknown),
            },
            CLASS_ANNOUNCE => {
                need(features::GUEST_ANNOUNCE, "GUEST_ANNOUNCE")?;
                if command != ANNOUNCE_ACK {
                    return Err(unknown);
                }
                exact(0)?;
                Ok(Command::AnnounceAck)
            }
            _ => Err(CtrlError::UnsupportedClass(class)),
        }
    }
}

/// Splits one `le32 entries; u8 macs[entries][6]` table off the front of `data`, checking the
/// count against the bytes that are actually there.
fn take_table(data: &[u8], table: MacTableKind) -> Result<(Vec<[u8; 6]>, &[u8]), CtrlError> {
    let Some((count, rest)) = data.split_first_chunk::<TABLE_COUNT_LEN>() else {
        return Err(CtrlError::TableCountTruncated {
            table,
            available: data.len(),
        });
    };
    let entries = u32::from_le_bytes(*count);
    let too_many = CtrlError::TableEntries {
        table,
        entries,
        available: rest.len(),
    };
    let len = usize::try_from(entries)
        .ok()
        .and_then(|n| n.checked_mul(MAC_LEN))
        .filter(|&len| len <= rest.len())
        .ok_or(too_many)?;
    let (macs, rest) = rest.split_at(len);
    let (addresses, remainder) = macs.as_chunks::<MAC_LEN>();
    debug_assert!(remainder.is_empty());
    Ok((addresses.to_vec(), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = features::CTRL_VQ
        | features::CTRL_RX
        | features::CTRL_RX_EXTRA
        | features::CTRL_MAC_ADDR
        | features::GUEST_ANNOUNCE;

    fn table(entries: u32, macs: &[[u8; 6]]) -> Vec<u8> {
        let mut out = entries.to_le_bytes().to_vec();
        for mac in macs {
            out.extend_from_slice(mac);
        }
        out
    }

    fn mac_table(unicast: &[[u8; 6]], multicast: &[[u8; 6]]) -> Vec<u8> {
        let mut out = vec![CLASS_MAC, MAC_TABLE_SET];
        out.extend(table(unicast.len() as u32, unicast));
        out.extend(table(multicast.len() as u32, multicast));
        out
    }

    #[test]
    fn every_command_parses() {
        for (command, mode) in [
            (RX_PROMISC, RxMode::Promisc),
            (RX_ALLMULTI, RxMode::AllMulti),
            (RX_ALLUNI, RxMode::AllUni),
            (RX_NOMULTI, RxMode::NoMulti),
            (RX_NOUNI, RxMode::NoUni),
            (RX_NOBCAST, RxMode::NoBcast),
        ] {
            assert_eq!(
                Command::parse(&[CLASS_RX, command, 7], ALL),
                Ok(Command::RxMode { mode, on: true })
            );
            assert_eq!(
                Command::parse(&[CLASS_RX, command, 0], ALL),
                Ok(Command::RxMode { mode, on: false })
            );
        }
        let uc = [0x52, 0x54, 0, 0, 0, 1];
        let mc = [0x33, 0x33, 0, 0, 0, 1];
        assert_eq!(
            Command::parse(&mac_table(&[uc], &[mc, mc]), ALL),
            Ok(Command::MacTable {
                unicast: vec![uc],
                multicast: vec![mc, mc]
            })
        );
        assert_eq!(
            Command::parse(&mac_table(&[], &[]), ALL),
            Ok(Command::MacTable {
                unicast: vec![],
                multicast: vec![]
            })
        );
        let mut set = vec![CLASS_MAC, MAC_ADDR_SET];
        set.extend_from_slice(&uc);
        assert_eq!(
            Command::parse(&set, ALL),
            Ok(Command::MacAddr(MacAddress::new(uc).unwrap()))
        );
        assert_eq!(
            Command::parse(&[CLASS_ANNOUNCE, ANNOUNCE_ACK], ALL),
            Ok(Command::AnnounceAck)
        );
    }

    #[test]
    fn unknown_and_unnegotiated_commands_are_errors() {
        for bytes in [&[][..], &[CLASS_RX][..]] {
            assert_eq!(
                Command::parse(bytes, ALL),
                Err(CtrlError::HeaderTooShort(bytes.len()))
            );
        }
        for class in [CLASS_VLAN, CLASS_MQ, 5, 6, 8, 0xff] {
            assert_eq!(
                Command::parse(&[class, 0, 0, 0], ALL),
                Err(CtrlError::UnsupportedClass(class))
            );
        }
        for (class, command) in [(CLASS_RX, 6), (CLASS_MAC, 2), (CLASS_ANNOUNCE, 1)] {
            assert_eq!(
                Command::parse(&[class, command, 0], ALL),
                Err(CtrlError::UnknownCommand { class, command })
            );
        }
        let only_vq = features::CTRL_VQ;
        assert!(matches!(
            Command::parse(&[CLASS_RX, RX_PROMISC, 1], only_vq),
            Err(CtrlError::NotNegotiated {
                feature: "CTRL_RX",
                ..
            })
        ));
        assert!(matches!(
            Command::parse(&[CLASS_RX, RX_NOBCAST, 1], only_vq | features::CTRL_RX),
            Err(CtrlError::NotNegotiated {
                feature: "CTRL_RX_EXTRA",
                ..
            })
        ));
        assert!(matches!(
            Command::parse(&mac_table(&[], &[]), only_vq | features::CTRL_MAC_ADDR),
            Err(CtrlError::NotNegotiated {
                feature: "CTRL_RX",
                ..
            })
        ));
        assert!(matches!(
            Command::parse(&[CLASS_MAC, MAC_ADDR_SET, 2, 0, 0, 0, 0, 1], only_vq),
            Err(CtrlError::NotNegotiated {
                feature: "CTRL_MAC_ADDR",
                ..
            })
        ));
        assert!(matches!(
            Command::parse(&[CLASS_ANNOUNCE, ANNOUNCE_ACK], only_vq),
            Err(CtrlError::NotNegotiated {
                feature: "GUEST_ANNOUNCE",
                ..
            })
        ));
    }

    #[test]
    fn data_lengths_are_exact() {
        for data in [&[][..], &[1, 1][..]] {
            let mut bytes = vec![CLASS_RX, RX_PROMISC];
            bytes.extend_from_slice(data);
            assert!(matches!(
                Command::parse(&bytes, ALL),
                Err(CtrlError::DataLength { expected: 1, .. })
            ));
        }
        for len in [0, 5, 7] {
            let mut bytes = vec![CLASS_MAC, MAC_ADDR_SET];
            bytes.extend(std::iter::repeat_n(2, len));
            assert_eq!(
                Command::parse(&bytes, ALL),
                Err(CtrlError::DataLength {
                    class: CLASS_MAC,
                    command: MAC_ADDR_SET,
                    expected: 6,
                    got: len
                })
            );
        }
        assert_eq!(
            Command::parse(&[CLASS_MAC, MAC_ADDR_SET, 1, 0, 0, 0, 0, 1], ALL),
            Err(CtrlError::MulticastAddress([1, 0, 0, 0, 0, 1]))
        );
        assert!(matches!(
            Command::parse(&[CLASS_ANNOUNCE, ANNOUNCE_ACK, 0], ALL),
            Err(CtrlError::DataLength { expected: 0, .. })
        ));
    }

    #[test]
    fn mac_table_counts_are_checked_against_the_data() {
        let mac = [2, 0, 0, 0, 0, 1];
        // Counts that claim more entries than are there, up to u32::MAX.
        for entries in [2, 1000, u32::MAX / 6 + 1, u32::MAX] {
            let mut bytes = vec![CLASS_MAC, MAC_TABLE_SET];
            bytes.extend(table(entries, &[mac]));
            bytes.extend(table(0, &[]));
            assert!(
                matches!(
                    Command::parse(&bytes, ALL),
                    Err(CtrlError::TableEntries {
                        table: MacTableKind::Unicast,
                        entries: e,
                        ..
                    }) if e == entries
                ),
                "{entries}"
            );
        }
        // The second table lies, or is missing, or is cut off.
        let mut bytes = vec![CLASS_MAC, MAC_TABLE_SET];
        bytes.extend(table(1, &[mac]));
        bytes.extend(table(3, &[mac, mac]));
        assert!(matches!(
            Command::parse(&bytes, ALL),
            Err(CtrlError::TableEntries {
                table: MacTableKind::Multicast,
                entries: 3,
                available: 12
            })
        ));
        let mut bytes = vec![CLASS_MAC, MAC_TABLE_SET];
        bytes.extend(table(1, &[mac]));
        assert_eq!(
            Command::parse(&bytes, ALL),
            Err(CtrlError::TableCountTruncated {
                table: MacTableKind::Multicast,
                available: 0
            })
        );
        bytes.extend([0, 0]);
        assert_eq!(
            Command::parse(&bytes, ALL),
            Err(CtrlError::TableCountTruncated {
                table: MacTableKind::Multicast,
                available: 2
            })
        );
        assert_eq!(
            Command::parse(&[CLASS_MAC, MAC_TABLE_SET, 0], ALL),
            Err(CtrlError::TableCountTruncated {
                table: MacTableKind::Unicast,
                available: 1
            })
        );
        // Fewer entries claimed than sent: the extra bytes are trailing garbage.
        let mut bytes = mac_table(&[mac], &[]);
        bytes.extend_from_slice(&mac);
        assert_eq!(
            Command::parse(&bytes, ALL),
            Err(CtrlError::TrailingBytes(6))
        );
    }
}
