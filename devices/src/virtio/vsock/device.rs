//! The virtio-vsock device: queues, config space and the event-loop glue around the muxer.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;

use super::config::{VsockConfig, VsockConfigError};
use super::muxer::{MuxerError, VsockMuxer};
use super::packet::{validate_tx, HDR_LEN, MAX_PAYLOAD};
use crate::counters::Counter;
use crate::narrow::len_u32;
use crate::virtio::chain::{ChainBuffers, Direction};
use crate::virtio::config_space::{read_config_bytes, VsockConfigSpace};
use crate::virtio::queue_ops::{drain_queue, notify_used, pop_or_enable_notification};
use crate::virtio::snapshot::{
    restore_plain, DeviceExtra, QueueSnapshot, SnapshotError, VirtioDeviceState,
};
use crate::virtio::{
    ActivateError, VirtioDevice, VirtioInterrupt, TYPE_VSOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Index of the receive queue (device to guest packets).
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue (guest to device packets).
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue (unused: no transport resets are sent).
pub const EVENT_QUEUE: u16 = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: every connection is gone.
const TRANSPORT_RESET_EVENT: u32 = 0;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] VsockConfigError),
    /// The Unix-socket backend could not start.
    #[error("vsock `{id}`: field `uds_path`: {source}")]
    Backend {
        /// The device.
        id: String,
        /// What failed.
        source: MuxerError,
    },
}

/// Counters of what the device did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VsockMetrics {
    /// Packets from the guest handed to the muxer.
    pub tx_packets: u64,
    /// Packets from the guest dropped as malformed (chain or header).
    pub tx_malformed: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Receive chains returned unused because they were malformed.
    pub rx_malformed_chains: u64,
    /// Payload bytes from the guest handed to the muxer.
    pub tx_bytes: u64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    /// The event queue: used only to tell the driver its connections were reset (after a
    /// restore).
    event: Queue,
}

/// A virtio-vsock device with a Unix-socket backend.
///
/// Transmit and receive run when the driver notifies a queue; host sockets are watched by the
/// VMM's event loop through `event_manager::MutEventSubscriber` (one descriptor: the muxer's
/// epoll set).
///
/// ```no_run
/// use devices::virtio::vsock::{Vsock, VsockConfig};
///
/// let vsock = Vsock::new(VsockConfig {
///     id: "vsock0".into(),
///     guest_cid: 3,
///     uds_path: "/run/keel/vm1.vsock".into(),
/// })
/// .unwrap();
/// // A host process then connects to /run/keel/vm1.vsock and writes "CONNECT 52\n".
/// # drop(vsock);
/// ```
pub struct Vsock {
    id: String,
    guest_cid: u64,
    muxer: VsockMuxer,
    acked_features: u64,
    active: Option<Active>,
    packet: Vec<u8>,
    metrics: VsockMetrics,
}

impl Vsock {
    /// Validates `config` and starts listening on its Unix socket.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        config.validate()?;
        let muxer = VsockMuxer::new(config.guest_cid, &config.uds_path).map_err(|source| {
            VsockError::Backend {
                id: config.id.clone(),
                source,
            }
        })?;
        Ok(Vsock {
            id: config.id,
            guest_cid: config.guest_cid,
            muxer,
            acked_features: 0,
            active: None,
            packet: vec![0; HDR_LEN + MAX_PAYLOAD],
            metrics: VsockMetrics::default(),
        })
    }

    /// What the device has done so far.
    pub fn metrics(&self) -> &VsockMetrics {
        &self.metrics
    }

    /// The muxer (connections and host sockets).
    pub fn muxer(&self) -> &VsockMuxer {
        &self.muxer
    }

    /// Handles ready host sockets and delivers what they produced. The event loop calls this
    /// when the muxer's descriptor is readable; VMMs that poll may call it directly.
    pub fn handle_host_events(&mut self) {
        self.muxer.process_host_events();
        self.process_rx();
    }

    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (id, guest_cid, mem) = (&self.id, self.guest_cid, &active.mem);
        let (packet, muxer, metrics) = (&mut self.packet, &mut self.muxer, &mut self.metrics);
        let tag = format_args!("vsock `{id}` tx");
        let returned = drain_queue(&mut active.tx, mem, tag, |chain| {
            let parsed = ChainBuffers::new(mem, chain, Direction::DeviceReads, packet.len())
                .map_err(|err| err.to_string())
                .and_then(|buffers| {
                    let read = buffers
                        .read_at(mem, 0, packet)
                        .map_err(|err| err.to_string())?;
                    Ok((buffers.len(), read))
                });
            match parsed {
                Ok((chain_len, read)) => match validate_tx(&packet[..read], chain_len, guest_cid) {
                    Ok(header) => {
                        let data = &packet[HDR_LEN..HDR_LEN + header.len as usize];
                        muxer.send_pkt(&header, data);
                        metrics.tx_packets += 1;
                        metrics.tx_bytes += u64::from(header.len);
                    }
                    Err(err) => {
                        debug!("vsock `{id}`: tx packet dropped: {err}");
                        metrics.tx_malformed += 1;
                        if err.warrants_reset() {
                            if let Some(header) =
                                super::packet::PacketHeader::parse(&packet[..read])
                            {
                                muxer.queue_reset(&header);
                            }
                        }
                    }
                },
                Err(err) => {
                    debug!("vsock `{id}`: tx chain dropped: {err}");
                    metrics.tx_malformed += 1;
                }
            }
            Some(0)
        });
        if returned > 0 {
            notify_used(
                &mut active.tx,
                mem,
                active.interrupt.as_ref(),
                TX_QUEUE,
                tag,
            );
        }
        // Requests, resets and credit updates the packets caused.
        self.process_rx();
    }

    /// Puts `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` in the driver's first event buffer.
    fn send_transport_reset(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(chain) = pop_or_enable_notification(&mut active.event, &active.mem) else {
            crate::guest_warn!(
                "vsock `{}`: no event buffer for the transport reset",
                self.id
            );
            return;
        };
        let head = chain.head_index();
        let written = match ChainBuffers::new(&active.mem, chain, Direction::DeviceWrites, 64) {
            Ok(buffers) => buffers
                .write_at(&active.mem, 0, &TRANSPORT_RESET_EVENT.to_le_bytes())
                .unwrap_or(0),
            Err(err) => {
                crate::guest_warn!("vsock `{}`: event buffer unusable: {err}", self.id);
                0
            }
        };
        if let Err(err) = active.event.add_used(&active.mem, head, len_u32(written)) {
            crate::guest_warn!("vsock `{}`: event queue: {err}", self.id);
        }
        let tag = format_args!("vsock `{}` event", self.id);
        notify_used(
            &mut active.event,
            &active.mem,
            active.interrupt.as_ref(),
            EVENT_QUEUE,
            tag,
        );
    }

    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let id = &self.id;
        let mut completed = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = pop_or_enable_notification(&mut active.rx, &active.mem) else {
                break;
            };
            let head = chain.head_index();
            let buffers =
                match ChainBuffers::new(&active.mem, chain, Direction::DeviceWrites, usize::MAX) {
                    Ok(buffers) if buffers.len() >= HDR_LEN => buffers,
                    result => {
                        debug!(
                            "vsock `{id}`: rx chain {head} unusable: {:?}",
                            result.map(|b| b.len())
                        );
                        self.metrics.rx_malformed_chains += 1;
                        if let Err(err) = active.rx.add_used(&active.mem, head, 0) {
                            crate::guest_warn!("vsock `{id}`: rx queue: {err}");
                        }
                        completed = true;
                        continue;
                    }
                };
            let room = (buffers.len() - HDR_LEN).min(MAX_PAYLOAD);
            let Some(header) = self
                .muxer
                .recv_pkt(&mut self.packet[HDR_LEN..HDR_LEN + room])
            else {
                // Nothing after all (a socket had no data): the chain stays with the driver.
                active.rx.go_to_previous_position();
                break;
            };
            self.packet[..HDR_LEN].copy_from_slice(&header.to_bytes());
            let len = HDR_LEN + header.len as usize;
            let written = match buffers.write_at(&active.mem, 0, &self.packet[..len]) {
                Ok(written) => written,
                Err(err) => {
                    crate::guest_warn!("vsock `{id}`: rx copy failed: {err}");
                    0
                }
            };
            if let Err(err) = active.rx.add_used(&active.mem, head, len_u32(written)) {
                crate::guest_warn!("vsock `{id}`: rx queue: {err}");
            }
            self.metrics.rx_packets += 1;
            self.metrics.rx_bytes += u64::from(header.len);
            completed = true;
        }
        if completed {
            let tag = format_args!("vsock `{id}` rx");
            notify_used(
                &mut active.rx,
                &active.mem,
                active.interrupt.as_ref(),
                RX_QUEUE,
                tag,
            );
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = VsockConfigSpace {
            guest_cid: self.guest_cid.into(),
        };
        read_config_bytes(config.as_slice(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([mut rx, mut tx, mut event]) = <[Queue; 3]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 3, got });
        };
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        event.set_event_idx(event_idx);
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
            event,
        });
        self.process_tx();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            EVENT_QUEUE => {}
            _ => debug!("vsock `{}`: notify for unknown queue {index}", self.id),
        }
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.muxer.reset();
        true
    }

    fn save_state(&mut self) -> Result<VirtioDeviceState, SnapshotError> {
        Ok(VirtioDeviceState {
            device_type: TYPE_VSOCK,
            acked_features: self.acked_features,
            activated: self.active.is_some(),
            queues: self
                .active
                .iter()
                .flat_map(|active| [&active.rx, &active.tx, &active.event].map(QueueSnapshot::of))
                .collect(),
            extra: DeviceExtra::None,
            rate_limiters: Vec::new(),
        })
    }

    /// Host connections do not survive a snapshot (their sockets belong to the old process):
    /// after reactivating, the device sends the transport-reset event, on which the driver
    /// drops its connections and reads the CID again (virtio 1.2, 5.10.6.6).
    fn restore_state(
        &mut self,
        state: &VirtioDeviceState,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), SnapshotError> {
        restore_plain(self, state, mem, interrupt)?;
        self.send_transport_reset();
        Ok(())
    }

    fn counters(&self) -> Vec<Counter> {
        let m = &self.metrics;
        vec![
            Counter::count("tx_packets", "packets from the guest", m.tx_packets),
            Counter::count("tx_bytes", "payload bytes from the guest", m.tx_bytes),
            Counter::count(
                "tx_malformed",
                "guest packets dropped as malformed",
                m.tx_malformed,
            ),
            Counter::count("rx_packets", "packets delivered to the guest", m.rx_packets),
            Counter::count(
                "rx_bytes",
                "payload bytes delivered to the guest",
                m.rx_bytes,
            ),
            Counter::count(
                "rx_malformed_chains",
                "receive chains returned unused as malformed",
                m.rx_malformed_chains,
            ),
            Counter::count(
                "connections_opened",
                "connections established, either direction",
                self.muxer.connections_opened(),
            ),
            Counter::gauge(
                "connections",
                "connections open now",
                self.muxer.connection_count() as u64,
            ),
        ]
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new_raw(self.muxer.epoll_fd(), EventSet::IN)) {
            error!("vsock `{}`: cannot register host sockets: {err:?}", self.id);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.muxer.epoll_fd() {
            self.handle_host_events();
        } else {
            crate::guest_warn!(
                "vsock `{}`: event for unknown descriptor {}",
                self.id,
                events.fd()
            );
        }
    }
}

impl AsRawFd for Vsock {
    /// The muxer's epoll descriptor, for VMMs that register it themselves.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.muxer.epoll_fd()
    }
}
