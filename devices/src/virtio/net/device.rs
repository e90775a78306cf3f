//! The virtio-net device: queues, feature negotiation, config space and the event-loop glue.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{ByteValued, Bytes};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::counters::Counter;
use crate::narrow::len_u32;
use crate::rate_limiter::{RateLimit, RateLimitError, RateLimitTarget, Throttle};

use super::backend::{NetBackend, OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO};
use super::config::{MacAddress, NetConfig, NetConfigError, TapSource};
use super::ctrl::{self, VIRTIO_NET_ERR};
use super::ctrl_state::{CtrlState, RxFilter};
use super::features;
use super::header::{VirtioNetHeader, NUM_BUFFERS_OFFSET, VIRTIO_NET_HDR_LEN};
use super::tap::{Tap, TapError};
use crate::virtio::chain::{ChainBuffers, Direction};
use crate::virtio::config_space::{read_config_bytes, NetConfigSpace};
use crate::virtio::queue_ops::{
    drain_queue, drain_queue_until, notify_used, pop_or_enable_notification, Served,
};
use crate::virtio::snapshot::{
    restore_plain, DeviceExtra, QueueSnapshot, SnapshotError, VirtioDeviceState,
};
use crate::virtio::{
    ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Index of the control queue (used only when the driver accepts `CTRL_VQ`).
pub const CTRL_QUEUE: u16 = 2;
/// Size of the receive and transmit queues.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the control queue (drivers keep one request in flight).
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// Largest size of each queue: receive, transmit, control.
const QUEUE_MAX_SIZES: [u16; 3] = [QUEUE_SIZE, QUEUE_SIZE, CTRL_QUEUE_SIZE];
/// Largest frame in either direction, virtio-net header included: a 64 KiB segmentation-offload
/// packet plus its Ethernet header (virtio's 65562-byte buffer requirement).
pub const MAX_FRAME_LEN: usize = VIRTIO_NET_HDR_LEN + 65_550;
/// Shortest transmit chain: the header plus an Ethernet header.
const MIN_TX_LEN: usize = VIRTIO_NET_HDR_LEN + 14;
/// Frames moved per event before returning to the event loop (fairness across devices).
const RX_BATCH: usize = 64;

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] NetConfigError),
    /// The TAP interface could not be set up.
    #[error("net `{id}`: TAP device: {source}")]
    Tap {
        /// The device.
        id: String,
        /// What failed.
        source: TapError,
    },
    /// The receive-kick eventfd could not be created.
    #[error("net `{id}`: cannot create eventfd: {source}")]
    EventFd {
        /// The device.
        id: String,
        /// What failed.
        source: io::Error,
    },
}

impl NetMetrics {
    /// The metrics as named counters (see [`crate::counters`]).
    pub fn counters(&self) -> Vec<Counter> {
        vec![
            Counter::count("tx_frames", "frames sent by the guest", self.tx_frames),
            Counter::count(
                "tx_bytes",
                "bytes sent by the guest, headers included",
                self.tx_bytes,
            ),
            Counter::count(
                "tx_malformed",
                "transmit chains dropped as malformed",
                self.tx_malformed,
            ),
            Counter::count(
                "tx_backend_errors",
                "transmit frames the backend refused",
                self.tx_backend_errors,
            ),
            Counter::count("rx_frames", "frames delivered to the guest", self.rx_frames),
            Counter::count(
                "rx_bytes",
                "bytes delivered to the guest, headers included",
                self.rx_bytes,
            ),
            Counter::count(
                "rx_dropped",
                "received frames dropped (too large for the guest's buffers)",
                self.rx_dropped,
            ),
            Counter::count(
                "rx_malformed_chains",
                "receive chains returned unused as malformed",
                self.rx_malformed_chains,
            ),
            Counter::count(
                "rx_stalls",
                "times receiving stopped for lack of guest buffers",
                self.rx_stalls,
            ),
            Counter::count(
                "rx_backend_errors",
                "backend read errors",
                self.rx_backend_errors,
            ),
            Counter::count("ctrl_ok", "control requests carried out", self.ctrl_ok),
            Counter::count(
                "ctrl_rejected",
                "control requests rejected",
                self.ctrl_rejected,
            ),
        ]
    }
}

/// Counters of what the device did; every dropped frame or chain is counted once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Bytes handed to the backend, headers included.
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed (direction, range, length or header).
    pub tx_malformed: u64,
    /// Transmit frames the backend refused.
    pub tx_backend_errors: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest, headers included.
    pub rx_bytes: u64,
    /// Frames dropped because they could never fit the guest's buffers.
    pub rx_dropped: u64,
    /// Receive chains returned unused because they were malformed.
    pub rx_malformed_chains: u64,
    /// Times receive stopped because the guest had no buffers.
    pub rx_stalls: u64,
    /// Backend read errors.
    pub rx_backend_errors: u64,
    /// Control requests carried out (acknowledged with `VIRTIO_NET_OK`).
    pub ctrl_ok: u64,
    /// Control requests rejected (answered with `VIRTIO_NET_ERR`, or returned unanswered when
    /// they had no ack byte).
    pub ctrl_rejected: u64,
}

/// Why [`Net::request_announce`] could not ask the guest to announce itself.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The driver has not started the device.
    #[error("net `{0}`: device is not active")]
    NotActive(String),
    /// The driver did not accept a feature an announcement needs.
    #[error("net `{id}`: driver did not negotiate {feature}")]
    NotNegotiated {
        /// The device.
        id: String,
        /// The missing feature.
        feature: &'static str,
    },
    /// The configuration-change interrupt could not be raised.
    #[error("net `{id}`: cannot raise the configuration interrupt: {source}")]
    Interrupt {
        /// The device.
        id: String,
        /// What failed.
        source: io::Error,
    },
}

/// Whether receive can continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxState {
    /// The backend has no more frames for now; poll it again when it becomes readable.
    BackendDrained,
    /// The backend may have more frames but the guest has no free buffers (or the device is
    /// not active); stop polling the backend until the driver notifies the receive queue.
    WaitingForBuffers,
    /// The receive rate limit is reached; stop polling the backend until the limiter's timer
    /// fires (the device's event subscriber does that).
    Throttled,
}

/// What happened to one received frame.
enum Delivery {
    Delivered,
    Dropped,
    NoBuffers,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    /// The control queue, when the driver accepted `CTRL_VQ` and set it up.
    ctrl: Option<Queue>,
}

/// A virtio-net device.
///
/// Created from a [`NetConfig`] (opening the TAP) or around any [`NetBackend`]. Once active,
/// transmit runs when the driver notifies queue 1 and control requests when it notifies queue
/// 2 (with `CTRL_VQ`); receive runs from the VMM's event loop: the
/// device is an `event_manager::MutEventSubscriber` that watches the backend and an internal
/// eventfd kicked when the driver adds receive buffers.
///
/// ```no_run
/// use std::sync::{Arc, Mutex};
/// use devices::virtio::net::{MacAddress, Net, NetConfig, TapSource};
/// use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
///
/// let mac: MacAddress = "52:54:00:12:34:56".parse().unwrap();
/// let net = Net::new(NetConfig {
///     id: "eth0".into(),
///     tap: TapSource::Name("tap0".into()),
///     mac: Some(mac.bytes()),
/// })
/// .unwrap();
/// let net = Arc::new(Mutex::new(net));
/// let mut event_loop = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
/// event_loop.add_subscriber(net.clone());
/// // ... put `net` behind a virtio-mmio transport, then run `event_loop.run()` in a thread.
/// ```
pub struct Net {
    id: String,
    ctrl: CtrlState,
    backend: Box<dyn NetBackend>,
    avail_features: u64,
    acked_features: u64,
    active: Option<Active>,
    /// One frame read from the backend, waiting for receive buffers when `rx_pending` is set.
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    tx_frame: Vec<u8>,
    rx_kick: EventFd,
    backend_armed: bool,
    metrics: NetMetrics,
    /// The receive rate limiter.
    rx_throttle: Throttle,
    /// The pending frame has been charged to the receive limiter (it waits for buffers now).
    rx_admitted: bool,
    /// The transmit rate limiter.
    tx_throttle: Throttle,
}

impl Net {
    /// Validates `config` and opens its TAP interface.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        config.validate()?;
        let tap = match config.tap {
            TapSource::Name(name) => Tap::open(&name),
            TapSource::Fd(fd) => Tap::from_fd(fd),
        }
        .map_err(|source| NetError::Tap {
            id: config.id.clone(),
            source,
        })?;
        // `validate` has checked the address.
        let mac = config.mac.and_then(|mac| MacAddress::new(mac).ok());
        Self::with_backend(config.id, mac, Box::new(tap))
    }

    /// Creates the device around `backend` (a TAP, or a test double).
    pub fn with_backend(
        id: String,
        mac: Option<MacAddress>,
        backend: Box<dyn NetBackend>,
    ) -> Result<Self, NetError> {
        let rx_kick = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::EventFd {
            id: id.clone(),
            source,
        })?;
        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | features::STATUS
            | features::MRG_RXBUF
            | features::CSUM
            | features::GUEST_CSUM
            | features::GUEST_TSO4
            | features::GUEST_TSO6
            | features::GUEST_UFO
            | features::HOST_TSO4
            | features::HOST_TSO6
            | features::HOST_UFO
            | features::CTRL_VQ
            | features::CTRL_RX
            | features::CTRL_RX_EXTRA
            | features::CTRL_MAC_ADDR
            | features::GUEST_ANNOUNCE;
        if mac.is_some() {
            avail_features |= features::MAC;
        }
        Ok(Net {
            id,
            ctrl: CtrlState::new(mac),
            backend,
            avail_features,
            acked_features: 0,
            active: None,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            tx_frame: vec![0; MAX_FRAME_LEN],
            rx_kick,
            backend_armed: false,
            metrics: NetMetrics::default(),
            rx_throttle: Throttle::new(),
            rx_admitted: false,
            tx_throttle: Throttle::new(),
        })
    }

    /// The device's identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the device has done so far.
    pub fn metrics(&self) -> &NetMetrics {
        &self.metrics
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The MAC address config space shows: the configured one, or what the driver set with
    /// `MAC_ADDR_SET` since the last reset.
    pub fn mac(&self) -> Option<MacAddress> {
        self.ctrl.mac()
    }

    /// The receive filter the driver configured through the control queue (recorded, not
    /// enforced: the TAP delivers every frame).
    pub fn rx_filter(&self) -> &RxFilter {
        self.ctrl.filter()
    }

    /// Whether an announcement is pending (`VIRTIO_NET_S_ANNOUNCE` set, not yet acknowledged).
    pub fn announce_pending(&self) -> bool {
        self.ctrl.announce_pending()
    }

    /// Asks the guest to announce itself (gratuitous ARP and IPv6 neighbour advertisements),
    /// as a VMM does after a live migration: sets `VIRTIO_NET_S_ANNOUNCE` in config `status`
    /// and raises a configuration-change interrupt. The driver clears the bit with
    /// `ANNOUNCE_ACK` on the control queue once it has sent its packets.
    ///
    /// Needs a running device whose driver accepted `GUEST_ANNOUNCE`, `CTRL_VQ` and `STATUS`.
    /// On an interrupt failure the bit stays set, so the driver still sees it on its next
    /// configuration read.
    pub fn request_announce(&mut self) -> Result<(), AnnounceError> {
        let Some(active) = self.active.as_ref() else {
            return Err(AnnounceError::NotActive(self.id.clone()));
        };
        for (feature, name) in [
            (features::GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
            (features::CTRL_VQ, "CTRL_VQ"),
            (features::STATUS, "STATUS"),
        ] {
            if self.acked_features & feature == 0 {
                return Err(AnnounceError::NotNegotiated {
                    id: self.id.clone(),
                    feature: name,
                });
            }
        }
        if active.ctrl.is_none() {
            return Err(AnnounceError::NotNegotiated {
                id: self.id.clone(),
                feature: "CTRL_VQ (control queue not set up)",
            });
        }
        self.ctrl.request_announce();
        debug!("net `{}`: asking the guest to announce itself", self.id);
        active
            .interrupt
            .trigger(InterruptKind::Config)
            .map_err(|source| AnnounceError::Interrupt {
                id: self.id.clone(),
                source,
            })
    }

    /// The offloads the backend may use, from what the driver accepted. TSO and UFO depend on
    /// checksum offload (virtio 1.2, 5.1.3.1), so they are only enabled together with it.
    fn backend_offloads(acked: u64) -> u32 {
        if acked & features::GUEST_CSUM == 0 {
            return 0;
        }
        let mut flags = OFFLOAD_CSUM;
        if acked & features::GUEST_TSO4 != 0 {
            flags |= OFFLOAD_TSO4;
        }
        if acked & features::GUEST_TSO6 != 0 {
            flags |= OFFLOAD_TSO6;
        }
        if acked & features::GUEST_UFO != 0 {
            flags |= OFFLOAD_UFO;
        }
        flags
    }

    /// Sends the frames the driver queued on the transmit queue to the backend, as many as the
    /// transmit rate limit allows (the rest stay queued until the limiter's timer fires).
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.tx_throttle.is_waiting() {
            // A notification while throttled: the timer says when to look again.
            return;
        }
        let (id, acked, frame) = (&self.id, self.acked_features, &mut self.tx_frame);
        let (backend, metrics) = (self.backend.as_mut(), &mut self.metrics);
        let throttle = &mut self.tx_throttle;
        let tag = format_args!("net `{id}` tx");
        let returned = drain_queue_until(&mut active.tx, &active.mem, tag, |chain| {
            if let Some(len) = read_tx_chain(id, &active.mem, chain, acked, frame, metrics) {
                if !throttle.admit(len as u64) {
                    return Served::Stop;
                }
                send_frame(id, &frame[..len], backend, metrics);
            }
            Served::Used(0)
        })
        .returned;
        if returned > 0 {
            notify_used(
                &mut active.tx,
                &active.mem,
                active.interrupt.as_ref(),
                TX_QUEUE,
                tag,
            );
        }
    }

    /// Answers every request the driver queued on the control queue.
    fn process_ctrl(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.ctrl.as_mut() else {
            debug!(
                "net `{}`: notify for the control queue, which is not in use",
                self.id
            );
            return;
        };
        let (id, acked, mem) = (&self.id, self.acked_features, &active.mem);
        let (ctrl, metrics) = (&mut self.ctrl, &mut self.metrics);
        let tag = format_args!("net `{id}` ctrl");
        let returned = drain_queue(queue, mem, tag, |chain| {
            let head = chain.head_index();
            let (ack_addr, ack) = match ctrl::parse_request(chain, mem, acked) {
                Ok(request) => {
                    metrics.ctrl_ok += 1;
                    (Some(request.ack), ctrl.apply(request.command, id))
                }
                Err(rejected) => {
                    debug!(
                        "net `{id}`: control request {head} rejected: {}",
                        rejected.error
                    );
                    metrics.ctrl_rejected += 1;
                    (rejected.ack, VIRTIO_NET_ERR)
                }
            };
            match ack_addr.map(|addr| mem.write_obj(ack, addr)) {
                Some(Ok(())) => Some(1),
                Some(Err(err)) => {
                    crate::guest_warn!("net `{id}`: ctrl ack not written: {err}");
                    Some(0)
                }
                None => Some(0),
            }
        });
        if returned > 0 {
            notify_used(queue, mem, active.interrupt.as_ref(), CTRL_QUEUE, tag);
        }
    }

    /// Moves frames from the backend into the guest's receive buffers until the backend has
    /// none left or the guest has no room. The event loop calls this when the backend is
    /// readable or the driver added buffers; VMMs that poll may call it directly.
    pub fn receive(&mut self) -> RxState {
        if self.active.is_none() {
            return RxState::WaitingForBuffers;
        }
        if self.rx_throttle.is_waiting() {
            return RxState::Throttled;
        }
        for _ in 0..RX_BATCH {
            if let Some(len) = self.rx_pending {
                if let Some(state) = self.deliver_pending(len) {
                    return state;
                }
            }
            match self.backend.recv(&mut self.rx_frame) {
                Ok(len) if len < VIRTIO_NET_HDR_LEN => {
                    debug!(
                        "net `{}`: backend delivered a {len}-byte frame; dropped",
                        self.id
                    );
                    self.metrics.rx_dropped += 1;
                }
                Ok(len) => self.rx_pending = Some(len),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return RxState::BackendDrained
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    crate::guest_warn!("net `{}`: backend read failed: {err}", self.id);
                    self.metrics.rx_backend_errors += 1;
                    return RxState::BackendDrained;
                }
            }
        }
        // Batch exhausted: deliver what we hold if we can, and come back on the next event.
        if let Some(len) = self.rx_pending {
            if let Some(state) = self.deliver_pending(len) {
                return state;
            }
        }
        RxState::BackendDrained
    }

    /// Delivers the pending frame of `len` bytes once the receive limiter allows it (charged
    /// once, however long it then waits for buffers). `Some` when receiving must stop.
    fn deliver_pending(&mut self, len: usize) -> Option<RxState> {
        if !self.rx_admitted {
            if !self.rx_throttle.admit(len as u64) {
                return Some(RxState::Throttled);
            }
            self.rx_admitted = true;
        }
        match self.deliver_frame(len) {
            Delivery::NoBuffers => {
                self.metrics.rx_stalls += 1;
                Some(RxState::WaitingForBuffers)
            }
            Delivery::Delivered | Delivery::Dropped => {
                self.rx_pending = None;
                self.rx_admitted = false;
                None
            }
        }
    }

    /// Copies the pending frame of `len` bytes into receive chains, merging several when the
    /// driver negotiated `MRG_RXBUF`.
    fn deliver_frame(&mut self, len: usize) -> Delivery {
        let Some(active) = self.active.as_mut() else {
            return Delivery::NoBuffers;
        };
        let id = &self.id;
        let mergeable = self.acked_features & features::MRG_RXBUF != 0;
        // Chains popped since the first usable one: rolled back together if the frame waits.
        let mut chains: Vec<ChainBuffers> = Vec::new();
        let mut deferred_bad: Vec<u16> = Vec::new();
        let mut popped_since_first = 0u16;
        let mut capacity = 0usize;
        let mut signal = false;
        let outcome = loop {
            if capacity >= len {
                break Delivery::Delivered;
            }
            let Some(chain) = pop_or_enable_notification(&mut active.rx, &active.mem) else {
                break Delivery::NoBuffers;
            };
            let head = chain.head_index();
            if !chains.is_empty() {
                popped_since_first += 1;
            }
            let usable =
                match ChainBuffers::new(&active.mem, chain, Direction::DeviceWrites, MAX_FRAME_LEN)
                {
                    Ok(buffers) if chains.is_empty() && buffers.len() < VIRTIO_NET_HDR_LEN => {
                        debug!(
                            "net `{id}`: rx chain {head} has {} bytes, less than a header",
                            buffers.len()
                        );
                        None
                    }
                    Ok(buffers) if buffers.is_empty() => None,
                    Ok(buffers) => Some(buffers),
                    Err(err) => {
                        debug!("net `{id}`: rx chain {head} unusable: {err}");
                        None
                    }
                };
            match usable {
                None => {
                    self.metrics.rx_malformed_chains += 1;
                    if chains.is_empty() {
                        // Nothing of this frame is in flight yet: return the chain right away.
                        if let Err(err) = active.rx.add_used(&active.mem, head, 0) {
                            crate::guest_warn!("net `{id}`: rx queue: {err}");
                        }
                        signal = true;
                    } else {
                        deferred_bad.push(head);
                    }
                }
                Some(buffers) => {
                    if chains.is_empty() {
                        popped_since_first = 1;
                    }
                    capacity += buffers.len();
                    chains.push(buffers);
                    if !mergeable && capacity < len {
                        debug!(
                            "net `{id}`: {len}-byte frame does not fit a {capacity}-byte buffer"
                        );
                        break Delivery::Dropped;
                    }
                    if capacity < len && popped_since_first >= active.rx.size() {
                        debug!("net `{id}`: {len}-byte frame does not fit the whole receive ring");
                        break Delivery::Dropped;
                    }
                }
            }
        };

        if matches!(outcome, Delivery::Delivered) {
            // At most the receive queue's size, a u16: chains stop being taken at it.
            let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
            self.rx_frame[NUM_BUFFERS_OFFSET..VIRTIO_NET_HDR_LEN]
                .copy_from_slice(&count.to_le_bytes());
            let mut offset = 0usize;
            for buffers in &chains {
                let written = match buffers.write_at(&active.mem, 0, &self.rx_frame[offset..len]) {
                    Ok(written) => written,
                    Err(err) => {
                        crate::guest_warn!("net `{id}`: rx copy failed: {err}");
                        0
                    }
                };
                offset += written;
                if let Err(err) = active
                    .rx
                    .add_used(&active.mem, buffers.head(), len_u32(written))
                {
                    crate::guest_warn!("net `{id}`: rx queue: {err}");
                }
            }
            for head in deferred_bad {
                if let Err(err) = active.rx.add_used(&active.mem, head, 0) {
                    crate::guest_warn!("net `{id}`: rx queue: {err}");
                }
            }
            self.metrics.rx_frames += 1;
            self.metrics.rx_bytes += len as u64;
            signal = true;
        } else {
            // Give the chains back for a later frame (the driver still owns them).
            for _ in 0..popped_since_first {
                active.rx.go_to_previous_position();
            }
            if matches!(outcome, Delivery::Dropped) {
                self.metrics.rx_dropped += 1;
            }
        }
        if signal {
            let tag = format_args!("net `{id}` rx");
            notify_used(
                &mut active.rx,
                &active.mem,
                active.interrupt.as_ref(),
                RX_QUEUE,
                tag,
            );
        }
        outcome
    }

    /// Runs both rate limiters on `clock` (tests move time by hand).
    #[cfg(test)]
    pub(crate) fn set_rate_limit_clock(&mut self, clock: Arc<dyn crate::rate_limiter::Clock>) {
        self.rx_throttle.set_clock(clock.clone());
        self.tx_throttle.set_clock(clock);
    }

    /// What the event subscriber does when the limiters' timers fire, without an event loop.
    #[cfg(test)]
    pub(crate) fn rate_limit_timers_fired(&mut self) -> RxState {
        self.tx_throttle.timer_fired();
        self.process_tx();
        self.rx_throttle.timer_fired();
        self.receive()
    }

    fn set_backend_armed(&mut self, ops: &mut EventOps, armed: bool) {
        let Some(fd) = self.backend.ready_fd() else {
            return;
        };
        if armed == self.backend_armed {
            return;
        }
        let events = Events::new_raw(fd, EventSet::IN);
        let result = if armed {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.backend_armed = armed,
            Err(err) => error!(
                "net `{}`: cannot {} backend polling: {err:?}",
                self.id,
                if armed { "resume" } else { "pause" }
            ),
        }
    }

    fn kick_rx(&self) {
        if let Err(err) = self.rx_kick.write(1) {
            error!("net `{}`: cannot kick receive: {err}", self.id);
        }
    }
}

/// Gathers one transmit chain into `frame` and checks it; returns its length (virtio-net header
/// included). Malformed chains are counted and give `None`; the caller completes the chain
/// either way.
pub(crate) fn read_tx_chain(
    id: &str,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    acked_features: u64,
    frame: &mut [u8],
    metrics: &mut NetMetrics,
) -> Option<usize> {
    let buffers = match ChainBuffers::new(mem, chain, Direction::DeviceReads, frame.len()) {
        Ok(buffers) if buffers.len() >= MIN_TX_LEN => buffers,
        Ok(buffers) => {
            debug!(
                "net `{id}`: {}-byte tx chain is shorter than a header and an Ethernet header",
                buffers.len()
            );
            metrics.tx_malformed += 1;
            return None;
        }
        Err(err) => {
            debug!("net `{id}`: tx chain dropped: {err}");
            metrics.tx_malformed += 1;
            return None;
        }
    };
    let len = match buffers.read_at(mem, 0, frame) {
        Ok(len) => len,
        Err(err) => {
            debug!("net `{id}`: tx chain dropped: {err}");
            metrics.tx_malformed += 1;
            return None;
        }
    };
    // At least MIN_TX_LEN bytes were read, so the header parses.
    let Some(header) = VirtioNetHeader::parse(&frame[..len]) else {
        metrics.tx_malformed += 1;
        return None;
    };
    if let Err(err) = header.validate_tx(len - VIRTIO_NET_HDR_LEN, acked_features) {
        debug!("net `{id}`: tx frame dropped: {err}");
        metrics.tx_malformed += 1;
        return None;
    }
    Some(len)
}

/// Hands a checked frame to `backend`, counting what happened.
fn send_frame(id: &str, frame: &[u8], backend: &mut dyn NetBackend, metrics: &mut NetMetrics) {
    let len = frame.len();
    match backend.send(frame) {
        Ok(()) => {
            metrics.tx_frames += 1;
            metrics.tx_bytes += len as u64;
        }
        Err(err) => {
            debug!("net `{id}`: backend refused a {len}-byte frame: {err}");
            metrics.tx_backend_errors += 1;
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    /// Always three queues, so the transport can set up the control queue; a driver without
    /// `CTRL_VQ` leaves the third one alone.
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn config_generation(&self) -> u32 {
        self.ctrl.config_changes()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = NetConfigSpace {
            mac: self.ctrl.mac().map(|mac| mac.bytes()).unwrap_or_default(),
            status: self.ctrl.status().into(),
        };
        read_config_bytes(config.as_slice(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        // The transport hands over the queues the driver enabled: rx and tx, plus the control
        // queue if the driver set it up. It is used only if `CTRL_VQ` was negotiated.
        let got = queues.len();
        let mut queues = queues.into_iter();
        let (Some(mut rx), Some(mut tx), ctrl, None) =
            (queues.next(), queues.next(), queues.next(), queues.next())
        else {
            let expected = if got < 2 { 2 } else { 3 };
            return Err(ActivateError::QueueCount { expected, got });
        };
        let ctrl_negotiated = self.acked_features & features::CTRL_VQ != 0;
        let mut ctrl = match ctrl {
            Some(queue) if ctrl_negotiated => Some(queue),
            Some(_) => {
                debug!(
                    "net `{}`: third queue set up without CTRL_VQ; ignored",
                    self.id
                );
                None
            }
            None if ctrl_negotiated => {
                crate::guest_warn!(
                    "net `{}`: CTRL_VQ negotiated but no control queue set up",
                    self.id
                );
                None
            }
            None => None,
        };
        let offloads = Self::backend_offloads(self.acked_features);
        self.backend.set_offload(offloads).map_err(|err| {
            ActivateError::Backend(format!(
                "net `{}`: TUNSETOFFLOAD {offloads:#x}: {err}",
                self.id
            ))
        })?;
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        if let Some(queue) = ctrl.as_mut() {
            queue.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
            ctrl,
        });
        // The driver may have queued frames and requests before DRIVER_OK; and receive can
        // start.
        self.process_tx();
        self.process_ctrl();
        self.kick_rx();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.kick_rx(),
            TX_QUEUE => self.process_tx(),
            CTRL_QUEUE => self.process_ctrl(),
            _ => debug!("net `{}`: notify for unknown queue {index}", self.id),
        }
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.rx_pending = None;
        self.rx_admitted = false;
        // Nothing waits any more; the budgets stay spent (a reset does not refill them).
        self.rx_throttle.timer_fired();
        self.tx_throttle.timer_fired();
        self.acked_features = 0;
        self.ctrl.reset();
        if let Err(err) = self.backend.set_offload(0) {
            crate::guest_warn!("net `{}`: cannot clear offloads on reset: {err}", self.id);
        }
        true
    }

    fn save_state(&mut self) -> Result<VirtioDeviceState, SnapshotError> {
        Ok(VirtioDeviceState {
            device_type: TYPE_NET,
            acked_features: self.acked_features,
            activated: self.active.is_some(),
            queues: self
                .active
                .iter()
                .flat_map(|active| {
                    [Some(&active.rx), Some(&active.tx), active.ctrl.as_ref()]
                        .into_iter()
                        .flatten()
                        .map(QueueSnapshot::of)
                })
                .collect(),
            extra: DeviceExtra::Net(self.ctrl.snapshot()),
            rate_limiters: vec![
                (RateLimitTarget::Receive, self.rx_throttle.state()),
                (RateLimitTarget::Transmit, self.tx_throttle.state()),
            ],
        })
    }

    /// A frame read from the backend but not yet delivered is not saved: the network may
    /// drop it like any other.
    fn restore_state(
        &mut self,
        state: &VirtioDeviceState,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), SnapshotError> {
        let DeviceExtra::Net(saved) = &state.extra else {
            return Err(SnapshotError::Mismatch("no NIC state saved".into()));
        };
        self.ctrl.restore(saved).map_err(SnapshotError::Mismatch)?;
        for (target, saved) in &state.rate_limiters {
            match target {
                RateLimitTarget::Receive => self.rx_throttle.restore(saved),
                RateLimitTarget::Transmit => self.tx_throttle.restore(saved),
                RateLimitTarget::Requests => {}
            }
        }
        restore_plain(self, state, mem, interrupt)
    }

    fn set_rate_limit(
        &mut self,
        target: RateLimitTarget,
        limit: RateLimit,
    ) -> Result<(), RateLimitError> {
        match target {
            RateLimitTarget::Receive => self.rx_throttle.set_limit(limit),
            RateLimitTarget::Transmit => self.tx_throttle.set_limit(limit),
            RateLimitTarget::Requests => Err(RateLimitError::Unsupported { target }),
        }
    }

    fn rate_limits(&self) -> Vec<(RateLimitTarget, RateLimit)> {
        vec![
            (RateLimitTarget::Receive, self.rx_throttle.limit()),
            (RateLimitTarget::Transmit, self.tx_throttle.limit()),
        ]
    }

    fn counters(&self) -> Vec<Counter> {
        let mut counters = self.metrics.counters();
        counters.push(Counter::count(
            "rx_rate_limited",
            "times a received frame waited for the rate limiter",
            self.rx_throttle.throttled(),
        ));
        counters.push(Counter::count(
            "tx_rate_limited",
            "times a sent frame waited for the rate limiter",
            self.tx_throttle.throttled(),
        ));
        counters
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.rx_kick, EventSet::IN)) {
            error!("net `{}`: cannot register receive kick: {err:?}", self.id);
        }
        for fd in [self.rx_throttle.timer_fd(), self.tx_throttle.timer_fd()]
            .into_iter()
            .flatten()
        {
            if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                error!(
                    "net `{}`: cannot register a rate limiter timer: {err:?}",
                    self.id
                );
            }
        }
        self.set_backend_armed(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if Some(fd) == self.tx_throttle.timer_fd() {
            self.tx_throttle.timer_fired();
            self.process_tx();
            return;
        }
        if Some(fd) == self.rx_throttle.timer_fd() {
            self.rx_throttle.timer_fired();
        } else if fd == self.rx_kick.as_raw_fd() {
            // Drain the counter; a failed read only means it was already zero.
            let _ = self.rx_kick.read();
        } else if Some(fd) != self.backend.ready_fd() {
            crate::guest_warn!("net `{}`: event for unknown descriptor {fd}", self.id);
            return;
        }
        let state = self.receive();
        self.set_backend_armed(ops, state == RxState::BackendDrained);
    }
}
