//! What the driver has set through the control queue, and carrying out checked commands.
//!
//! [`CtrlState`] holds the MAC address shown in config space (the configured one until the
//! driver sends `MAC_ADDR_SET`), whether an announcement is pending (`VIRTIO_NET_S_ANNOUNCE`),
//! and the receive filter the driver asked for ([`RxFilter`]).
//!
//! The receive filter is recorded, not enforced: the TAP device delivers every frame the host
//! sends to it, so the guest sees frames its filter would drop (as if promiscuous). The virtio
//! specification lets a device deliver more than the filter asks for, and Linux filters again
//! in its own stack; the record is there for the VMM to inspect and for a later host-side
//! filter.

use log::debug;

use super::config::MacAddress;
use super::ctrl::{Command, RxMode, VIRTIO_NET_OK};
use super::{ANNOUNCE, LINK_UP};

/// The receive filter a driver configured with `CTRL_RX` commands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RxFilter {
    /// Receive every frame (on after reset, as the device behaves).
    pub promisc: bool,
    /// Receive every multicast frame.
    pub allmulti: bool,
    /// Receive every unicast frame.
    pub alluni: bool,
    /// Receive no multicast frames.
    pub nomulti: bool,
    /// Receive no unicast frames.
    pub nouni: bool,
    /// Receive no broadcast frames.
    pub nobcast: bool,
    /// Extra unicast addresses to receive (`MAC_TABLE_SET`'s first table).
    pub unicast: Vec<[u8; 6]>,
    /// Multicast addresses to receive (`MAC_TABLE_SET`'s second table).
    pub multicast: Vec<[u8; 6]>,
}

impl Default for RxFilter {
    /// The state after reset: promiscuous (what the TAP delivers), empty MAC tables.
    fn default() -> Self {
        RxFilter {
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            unicast: Vec::new(),
            multicast: Vec::new(),
        }
    }
}

/// Control-queue state of one device.
#[derive(Debug)]
pub(crate) struct CtrlState {
    configured_mac: Option<MacAddress>,
    mac: Option<MacAddress>,
    announce_pending: bool,
    filter: RxFilter,
    /// Bumped on every change to what config space shows (MAC, status); never goes back, not
    /// even at reset, so the transport's configuration generation always moves on.
    changes: u32,
}

impl CtrlState {
    /// Initial state for a device configured with `mac`.
    pub(crate) fn new(mac: Option<MacAddress>) -> Self {
        CtrlState {
            configured_mac: mac,
            mac,
            announce_pending: false,
            filter: RxFilter::default(),
            changes: 0,
        }
    }

    /// Back to the initial state (device reset): the configured MAC, no announcement, the
    /// default filter.
    pub(crate) fn reset(&mut self) {
        let changes = self.changes.wrapping_add(1);
        *self = Self::new(self.configured_mac);
        self.changes = changes;
    }

    /// How many times what config space shows has changed (see [`VirtioDevice::config_generation`]).
    ///
    /// [`VirtioDevice::config_generation`]: crate::virtio::VirtioDevice::config_generation
    pub(crate) fn config_changes(&self) -> u32 {
        self.changes
    }

    /// The MAC address config space shows.
    pub(crate) fn mac(&self) -> Option<MacAddress> {
        self.mac
    }

    /// The config space `status` field.
    pub(crate) fn status(&self) -> u16 {
        if self.announce_pending {
            LINK_UP | ANNOUNCE
        } else {
            LINK_UP
        }
    }

    /// Whether `VIRTIO_NET_S_ANNOUNCE` is set.
    pub(crate) fn announce_pending(&self) -> bool {
        self.announce_pending
    }

    /// Sets `VIRTIO_NET_S_ANNOUNCE`.
    pub(crate) fn request_announce(&mut self) {
        self.announce_pending = true;
        self.changes = self.changes.wrapping_add(1);
    }

    /// The receive filter the driver configured.
    pub(crate) fn filter(&self) -> &RxFilter {
        &self.filter
    }

    /// Carries out a checked command; returns the ack byte. `id` names the device in logs.
    pub(crate) fn apply(&mut self, command: Command, id: &str) -> u8 {
        match command {
            Command::RxMode { mode, on } => {
                let flag = match mode {
                    RxMode::Promisc => &mut self.filter.promisc,
                    RxMode::AllMulti => &mut self.filter.allmulti,
                    RxMode::AllUni => &mut self.filter.alluni,
                    RxMode::NoMulti => &mut self.filter.nomulti,
                    RxMode::NoUni => &mut self.filter.nouni,
                    RxMode::NoBcast => &mut self.filter.nobcast,
                };
                *flag = on;
                debug!("net `{id}`: receive mode {mode:?} {}", on_off(on));
            }
            Command::MacTable { unicast, multicast } => {
                debug!(
                    "net `{id}`: MAC filter: {} unicast, {} multicast addresses",
                    unicast.len(),
                    multicast.len()
                );
                self.filter.unicast = unicast;
                self.filter.multicast = multicast;
            }
            Command::MacAddr(mac) => {
                debug!("net `{id}`: driver set MAC address {mac}");
                self.mac = Some(mac);
                self.changes = self.changes.wrapping_add(1);
            }
            Command::AnnounceAck => {
                debug!("net `{id}`: driver acknowledged the announcement");
                self.announce_pending = false;
                self.changes = self.changes.wrapping_add(1);
            }
        }
        VIRTIO_NET_OK
    }
}

/// What a NIC's control state saves in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetSnapshot {
    /// The MAC address config space shows (the driver may have set it).
    pub mac: Option<[u8; 6]>,
    /// Whether an announcement was pending.
    pub announce_pending: bool,
    /// The receive filter.
    pub filter: RxFilter,
    /// Config-space changes so far (the configuration generation's device part).
    pub config_changes: u32,
}

impl CtrlState {
    /// The state to save.
    pub(crate) fn snapshot(&self) -> NetSnapshot {
        NetSnapshot {
            mac: self.mac.map(|mac| mac.bytes()),
            announce_pending: self.announce_pending,
            filter: self.filter.clone(),
            config_changes: self.changes,
        }
    }

    /// Takes a saved state; a MAC that is not a unicast address is refused.
    pub(crate) fn restore(&mut self, saved: &NetSnapshot) -> Result<(), String> {
        self.mac = saved
            .mac
            .map(MacAddress::new)
            .transpose()
            .map_err(|err| err.to_string())?;
        self.announce_pending = saved.announce_pending;
        self.filter = saved.filter.clone();
        self.changes = saved.config_changes;
        Ok(())
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}
