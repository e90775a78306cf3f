//! The virtio-PCI transport, modern interface only (virtio 1.2, section 4.1).
//!
//! [`VirtioPciDevice`] is a [`PciDevice`]: a type-0 header (vendor 0x1AF4, device 0x1040 + the
//! virtio type, revision 1) with one 64-bit memory BAR. Vendor capabilities point the driver at
//! the structures inside BAR 0, and an MSI-X capability at the vector table and PBA there:
//!
//! ```text
//! BAR 0 offset  0x0000  common configuration (feature selects, status, queue set-up)
//!               0x1000  ISR status (read to clear)
//!               0x2000  device-specific configuration
//!               0x3000  notifications: queue n at 0x3000 + 4 n
//!               0x4000  MSI-X table
//!               0x6000  MSI-X pending bit array
//! ```
//!
//! Negotiation, status and queue handling are [`TransportState`]'s, shared with the other
//! transports' semantics. Interrupts are MSI-X only: a device raises the vector the driver
//! assigned to the queue (or to configuration changes) through [`MsixTable`], which delivers
//! through the [`MsiInterruptRoute`] the VMM injects.
//!
//! Queue notifications: `queue_notify_off` of queue n is n, so every queue has a notification
//! address of its own ([`queue_notify_offset`]) and the VMM can hang one KVM ioeventfd on each
//! (any write width, no data match) and run [`super::VirtioDevice::queue_notify`] off the vCPU
//! thread. A notification that still reaches [`PciDevice::write_bar`] (KVM refused the ioeventfd,
//! or the driver went through `VIRTIO_PCI_CAP_PCI_CFG`) is handled synchronously on the vCPU
//! thread. [`NotifyStats`] counts both paths. When the driver moves BAR 0, the PCI bus reports it
//! to its [`crate::pci::bus::BarRelocationListener`]s, so the VMM can move the ioeventfds along.
//!
//! `VIRTIO_PCI_CAP_PCI_CFG` (4.1.4.9): the driver writes `cap.bar`, `cap.offset` and
//! `cap.length`, then reading `pci_cfg_data` reads `cap.length` bytes of BAR 0 at `cap.offset`
//! into it, and writing it writes its first `cap.length` bytes there. An access with a BAR other
//! than 0, a length other than 1, 2 or 4, an offset not aligned to the length or a range beyond
//! BAR 0 is ignored: no BAR access happens and `pci_cfg_data` keeps its contents.
//!
//! Not provided: legacy (transitional) devices, INTx, shared memory regions, and per-queue reset.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::GuestMemoryMmap;
use log::debug;

use super::snapshot::SnapshotError;
use super::transport::TransportError;
use super::transport::{AddressHalf, QueueRing, TransportSnapshot, TransportState};
use super::SharedVirtioDevice;
use super::{InterruptKind, NotifyStats, VirtioInterrupt, TYPE_BLOCK, TYPE_CONSOLE, TYPE_NET};
use crate::narrow::halves;
use crate::pci::bus::PciDevice;
use crate::pci::configuration::{BarInfo, BarMove, PciConfigError, PciConfiguration, PciHeader};
use crate::pci::msix::{MsiInterruptRoute, MsixSnapshot, MsixTable, MSIX_CAPABILITY_ID};

// virtio-bindings has no virtio_pci module (the kernel header is not in its set), so the
// virtio-PCI layout (virtio 1.2, 4.1) is spelled out here.

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID Keel reports (modern devices: 0x40 and up).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x0040;
/// Revision ID of a modern (non-transitional) device.
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// "No MSI-X vector": the event raises no interrupt.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// Size of BAR 0.
pub const VIRTIO_PCI_BAR_SIZE: u64 = 0x8000;
/// Multiplier from a queue's `queue_notify_off` to its notification address.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// Capability ID of vendor-specific capabilities (the virtio structures).
const VENDOR_CAPABILITY_ID: u8 = 0x09;
/// `cfg_type` of the common configuration structure.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access capability (BAR access through config space).
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// Length of `struct virtio_pci_cfg_cap`: the generic capability plus `pci_cfg_data`.
const PCI_CFG_CAP_LEN: u8 = 20;
/// Offsets inside `struct virtio_pci_cfg_cap`.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;

/// Where the structures live in BAR 0.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Size of the common configuration structure (up to `queue_device`).
pub const COMMON_CFG_SIZE: u64 = 0x38;
/// ISR status offset.
pub const ISR_CFG_OFFSET: u64 = 0x1000;
/// Device configuration offset.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Device configuration size.
pub const DEVICE_CFG_SIZE: u64 = 0x1000;
/// Notification area offset.
pub const NOTIFY_CFG_OFFSET: u64 = 0x3000;
/// Notification area size.
pub const NOTIFY_CFG_SIZE: u64 = 0x1000;
/// MSI-X table offset.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X PBA offset.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Most queues a device may have: one vector each plus one for configuration must fit the
/// 8 KiB between table and PBA.
pub const MAX_QUEUES: usize = 511;

// Common configuration fields (virtio 1.2, 4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Offset in BAR 0 of queue `index`'s notification address. `queue_notify_off` of a queue is its
/// index, so no two queues share an address.
pub fn queue_notify_offset(index: u16) -> u64 {
    NOTIFY_CFG_OFFSET + u64::from(index) * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// ISR bit: a queue was used.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// Errors creating a virtio-PCI device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device's queues are unusable.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The device has more queues than BAR 0 has notification slots and vectors for.
    #[error("device has {queues} queues; virtio-pci supports at most {MAX_QUEUES}")]
    TooManyQueues {
        /// Queues the device declares.
        queues: usize,
    },
    /// The BAR address is unusable.
    #[error("BAR 0: {0}")]
    Config(#[from] PciConfigError),
}

/// The interrupt state shared between the transport and the running device.
struct PciInterrupt {
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    msix: Mutex<MsixTable>,
}

impl PciInterrupt {
    fn msix(&self) -> MutexGuard<'_, MsixTable> {
        self.msix
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reset_vectors(&self) {
        self.isr.store(0, Ordering::SeqCst);
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        for vector in &self.queue_vectors {
            vector.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let (bit, vector) = match kind {
            InterruptKind::Queue(index) => (
                ISR_QUEUE,
                self.queue_vectors
                    .get(usize::from(index))
                    .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst)),
            ),
            InterruptKind::Config => (ISR_CONFIG, self.config_vector.load(Ordering::SeqCst)),
        };
        self.isr.fetch_or(bit, Ordering::SeqCst);
        if vector != VIRTIO_MSI_NO_VECTOR {
            self.msix().signal(vector);
        }
        Ok(())
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    state: TransportState,
    interrupt: Arc<PciInterrupt>,
    msix_capability: usize,
    /// Config space offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability.
    pci_cfg_capability: usize,
    notify_stats: Arc<NotifyStats>,
}

/// What a virtio-PCI function saves in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciSnapshot {
    /// Config space, 64 dwords.
    pub registers: Vec<u32>,
    /// The MSI-X table.
    pub msix: MsixSnapshot,
    /// Interrupt status bits pending.
    pub isr: u8,
    /// MSI-X vector of configuration changes.
    pub config_vector: u16,
    /// MSI-X vector of each queue.
    pub queue_vectors: Vec<u16>,
    /// Negotiation, queues and the device.
    pub transport: TransportSnapshot,
}

/// The PCI class code Keel reports for a virtio device type.
pub fn class_code(device_type: u32) -> u32 {
    match device_type {
        TYPE_NET => 0x02_00_00,     // network, Ethernet
        TYPE_BLOCK => 0x01_80_00,   // mass storage, other
        TYPE_CONSOLE => 0x07_80_00, // communication controller, other
        _ => 0xff_00_00,            // unassigned class
    }
}

/// Bytes of a virtio vendor capability (`struct virtio_pci_cap`, plus the notify multiplier).
fn virtio_capability(cfg_type: u8, offset: u64, length: u64, multiplier: Option<u32>) -> Vec<u8> {
    let len = if multiplier.is_some() { 20 } else { 16 };
    let mut bytes = vec![VENDOR_CAPABILITY_ID, 0, len, cfg_type, 0, 0, 0, 0];
    bytes.extend_from_slice(&bar0_field(offset));
    bytes.extend_from_slice(&bar0_field(length));
    if let Some(multiplier) = multiplier {
        bytes.extend_from_slice(&multiplier.to_le_bytes());
    }
    bytes
}

/// An offset or length inside BAR 0, as the little-endian 32-bit field of a capability that
/// describes it. Only the device's fixed layout and its notify area (at most MAX_QUEUES slots)
/// are described, so every value lies within BAR 0's VIRTIO_PCI_BAR_SIZE (32 KiB).
fn bar0_field(value: u64) -> [u8; 4] {
    debug_assert!(value <= VIRTIO_PCI_BAR_SIZE, "{value:#x} is not in BAR 0");
    // At most VIRTIO_PCI_BAR_SIZE (above): fits a u32.
    #[allow(clippy::cast_possible_truncation)]
    let field = value as u32;
    field.to_le_bytes()
}

/// The first `N` bytes of `data`, zero-padded: the value of an access as an `N`-byte
/// register. Callers match the access's width to the register's first, so nothing is cut off.
fn le_bytes<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut bytes = [0u8; N];
    let len = data.len().min(N);
    bytes[..len].copy_from_slice(&data[..len]);
    bytes
}

impl VirtioPciDevice {
    /// Number of MSI-X vectors a device with `queues` queues gets (one per queue plus one for
    /// configuration changes); the VMM sizes its interrupt route with it.
    pub fn msix_vectors(queues: usize) -> u16 {
        // At most MAX_QUEUES + 1 (512).
        u16::try_from(queues.min(MAX_QUEUES) + 1).unwrap_or(u16::MAX)
    }

    /// Puts `device` behind a virtio-PCI function whose BAR 0 starts at `bar_address` (aligned
    /// to [`VIRTIO_PCI_BAR_SIZE`]); MSI-X messages go through `route`.
    pub fn new(
        device: SharedVirtioDevice,
        mem: GuestMemoryMmap,
        bar_address: u64,
        route: Arc<dyn MsiInterruptRoute>,
    ) -> Result<Self, VirtioPciError> {
        let state = TransportState::new(device, mem, "virtio-pci")?;
        let queues = state.num_queues();
        if queues > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues { queues });
        }
        let device_type = state.device_type();
        // The PCI device ID is 0x1040 plus the virtio device ID (virtio 1.2, 4.1.2.1). A type
        // beyond what that can express (a device of the embedder's own) used to wrap around
        // into another device's ID; it gets virtio's invalid type 0 instead, which no driver
        // binds to.
        let device_id = u16::try_from(device_type)
            .ok()
            .and_then(|device_type| VIRTIO_PCI_DEVICE_ID_BASE.checked_add(device_type))
            .unwrap_or_else(|| {
                log::warn!("virtio-pci: device type {device_type} has no PCI device ID");
                VIRTIO_PCI_DEVICE_ID_BASE
            });
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision: VIRTIO_PCI_REVISION,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_memory_bar(0, VIRTIO_PCI_BAR_SIZE, bar_address)?;
        let msix = MsixTable::new(Self::msix_vectors(queues), route);
        for capability in [
            virtio_capability(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CFG_OFFSET,
                COMMON_CFG_SIZE,
                None,
            ),
            virtio_capability(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_CFG_OFFSET,
                (queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)).max(2),
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
            virtio_capability(VIRTIO_PCI_CAP_ISR_CFG, ISR_CFG_OFFSET, 1, None),
            virtio_capability(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                DEVICE_CFG_SIZE,
                None,
            ),
        ] {
            config.add_capability(&capability)?;
        }
        let mut msix_capability = vec![MSIX_CAPABILITY_ID, 0];
        msix_capability.extend_from_slice(&msix.message_control().to_le_bytes());
        // Table and PBA in BAR 0: the BAR index is in the low 3 bits of each offset.
        msix_capability.extend_from_slice(&bar0_field(MSIX_TABLE_OFFSET));
        msix_capability.extend_from_slice(&bar0_field(MSIX_PBA_OFFSET));
        let msix_offset = config.add_capability(&msix_capability)?;
        // The driver may write the enable and function-mask bits of message control.
        config.set_writable(msix_offset / 4, 0xc000_0000);
        // The access window starts out empty: BAR 0, offset 0, length 0.
        let mut pci_cfg = virtio_capability(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, None);
        pci_cfg[2] = PCI_CFG_CAP_LEN;
        pci_cfg.extend_from_slice(&[0; 4]);
        let pci_cfg_offset = config.add_capability(&pci_cfg)?;
        // `cap.bar` (a byte of its dword), `cap.offset`, `cap.length` and `pci_cfg_data`.
        config.set_writable((pci_cfg_offset + PCI_CFG_BAR) / 4, 0xff);
        for field in [PCI_CFG_OFFSET, PCI_CFG_LENGTH, PCI_CFG_DATA] {
            config.set_writable((pci_cfg_offset + field) / 4, 0xffff_ffff);
        }
        let interrupt = Arc::new(PciInterrupt {
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            msix: Mutex::new(msix),
        });
        Ok(VirtioPciDevice {
            config,
            state,
            interrupt,
            msix_capability: msix_offset,
            pci_cfg_capability: pci_cfg_offset,
            notify_stats: Arc::new(NotifyStats::default()),
        })
    }

    /// The device's notification counters; the transport counts the notifications it handles on
    /// the vCPU thread, the VMM's ioeventfd handler the others.
    pub fn notify_stats(&self) -> Arc<NotifyStats> {
        self.notify_stats.clone()
    }

    /// Config register of `pci_cfg_data`.
    fn pci_cfg_data_register(&self) -> usize {
        (self.pci_cfg_capability + PCI_CFG_DATA) / 4
    }

    /// The BAR 0 range the `VIRTIO_PCI_CAP_PCI_CFG` window selects, as `(offset, length)`, or
    /// `None` when the driver programmed it with a BAR other than 0, a length other than 1, 2 or
    /// 4, a misaligned offset or a range beyond BAR 0.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_capability;
        let bar = self.config.read_byte(cap + PCI_CFG_BAR);
        let offset = u64::from(self.config.read_register((cap + PCI_CFG_OFFSET) / 4));
        let length = self.config.read_register((cap + PCI_CFG_LENGTH) / 4);
        let valid = bar == 0
            && matches!(length, 1 | 2 | 4)
            && offset.is_multiple_of(u64::from(length))
            && offset + u64::from(length) <= VIRTIO_PCI_BAR_SIZE;
        if !valid {
            debug!(
                "virtio-pci: PCI_CFG access with bar {bar}, offset {offset:#x}, length {length} ignored"
            );
            return None;
        }
        Some((offset, length as usize))
    }

    /// The driver reads `pci_cfg_data`: fill it from BAR 0 through the window.
    fn pci_cfg_read(&mut self) {
        let Some((offset, length)) = self.pci_cfg_window() else {
            return;
        };
        let mut data = [0u8; 4];
        self.read_bar(0, offset, &mut data[..length]);
        let reg = self.pci_cfg_data_register();
        self.config.write_register(reg, 0, &data[..length]);
    }

    /// The driver wrote `pci_cfg_data`: write its first `cap.length` bytes to BAR 0.
    fn pci_cfg_write(&mut self) {
        let Some((offset, length)) = self.pci_cfg_window() else {
            return;
        };
        let data = self
            .config
            .read_register(self.pci_cfg_data_register())
            .to_le_bytes();
        self.write_bar(0, offset, &data[..length]);
    }

    /// Saves the function (config space, MSI-X table, vectors) and its device (the VM is
    /// paused).
    pub fn save_state(&mut self) -> Result<VirtioPciSnapshot, SnapshotError> {
        Ok(VirtioPciSnapshot {
            registers: self.config.registers(),
            msix: self.interrupt.msix().snapshot(),
            isr: self.interrupt.isr.load(Ordering::SeqCst),
            config_vector: self.interrupt.config_vector.load(Ordering::SeqCst),
            queue_vectors: self
                .interrupt
                .queue_vectors
                .iter()
                .map(|vector| vector.load(Ordering::SeqCst))
                .collect(),
            transport: self.state.save()?,
        })
    }

    /// Puts a freshly created function back into `saved`: everything but the command register
    /// and the BARs, which the caller then writes through the bus
    /// ([`PciConfiguration::is_routing_register`]) so that it routes them where the guest had
    /// put them.
    pub fn restore_state(&mut self, saved: &VirtioPciSnapshot) -> Result<(), SnapshotError> {
        if saved.queue_vectors.len() != self.interrupt.queue_vectors.len() {
            return Err(SnapshotError::Mismatch(format!(
                "{} queue vectors saved, the device has {}",
                saved.queue_vectors.len(),
                self.interrupt.queue_vectors.len()
            )));
        }
        self.config.restore_registers(&saved.registers);
        self.interrupt
            .msix()
            .restore(&saved.msix)
            .map_err(SnapshotError::Mismatch)?;
        self.interrupt.isr.store(saved.isr, Ordering::SeqCst);
        self.interrupt
            .config_vector
            .store(self.checked_vector(saved.config_vector), Ordering::SeqCst);
        for (vector, &value) in self
            .interrupt
            .queue_vectors
            .iter()
            .zip(&saved.queue_vectors)
        {
            vector.store(self.checked_vector(value), Ordering::SeqCst);
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.state.restore(&saved.transport, interrupt)
    }

    /// See [`TransportState::raise_after_restore`].
    pub fn raise_after_restore(&self) {
        self.state.raise_after_restore(self.interrupt.as_ref());
    }

    /// The virtio type of the device behind the function.
    pub fn virtio_device_type(&self) -> u32 {
        self.state.device_type()
    }

    /// The device status the driver last wrote (plus `DEVICE_NEEDS_RESET` if set).
    pub fn status(&self) -> u8 {
        self.state.status()
    }

    /// How many times the device has set `DEVICE_NEEDS_RESET` (see
    /// [`TransportState::needs_reset_count`](crate::virtio::transport::TransportState::needs_reset_count)).
    pub fn needs_reset_count(&self) -> u64 {
        self.state.needs_reset_count()
    }

    /// Whether the device has been activated.
    pub fn is_activated(&self) -> bool {
        self.state.is_activated()
    }

    /// Whether the driver enabled MSI-X.
    pub fn msix_enabled(&self) -> bool {
        self.interrupt.msix().enabled()
    }

    fn vector_count(&self) -> u16 {
        self.interrupt.msix().len()
    }

    /// A vector the driver asked for, or [`VIRTIO_MSI_NO_VECTOR`] when it is out of range
    /// (which the driver reads back as a failed assignment).
    fn checked_vector(&self, vector: u16) -> u16 {
        if vector < self.vector_count() {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn selected_queue_vector(&self) -> Option<&AtomicU16> {
        self.interrupt
            .queue_vectors
            .get(self.state.queue_select() as usize)
    }

    fn read_common(&self, offset: u64, len: usize) -> Option<u64> {
        let ring = |offset: u64| match offset & !7 {
            QUEUE_DESC => QueueRing::Descriptors,
            QUEUE_DRIVER => QueueRing::Driver,
            _ => QueueRing::Device,
        };
        let value = match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(self.state.device_features_select()),
            (DEVICE_FEATURE, 4) => u64::from(self.state.device_features()),
            (DRIVER_FEATURE_SELECT, 4) => u64::from(self.state.driver_features_select()),
            (DRIVER_FEATURE, 4) => u64::from(self.state.driver_features()),
            (CONFIG_MSIX_VECTOR, 2) => {
                u64::from(self.interrupt.config_vector.load(Ordering::SeqCst))
            }
            (NUM_QUEUES, 2) => self.state.num_queues() as u64,
            (DEVICE_STATUS, 1) => u64::from(self.state.status()),
            // The caller returns the access's `len` low bytes: the low byte of the generation,
            // the low half of the selected queue (which the driver wrote as a u16 here).
            (CONFIG_GENERATION, 1) => u64::from(self.state.config_generation()),
            (QUEUE_SELECT, 2) => u64::from(self.state.queue_select()),
            (QUEUE_SIZE, 2) => u64::from(self.state.queue_size()),
            (QUEUE_MSIX_VECTOR, 2) => u64::from(
                self.selected_queue_vector()
                    .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst)),
            ),
            (QUEUE_ENABLE, 2) => u64::from(self.state.queue_ready()),
            (QUEUE_NOTIFY_OFF, 2) => {
                // Queue n notifies at n * NOTIFY_OFF_MULTIPLIER.
                if self.selected_queue_vector().is_some() {
                    u64::from(self.state.queue_select())
                } else {
                    0
                }
            }
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => self.state.queue_address(ring(offset)),
            (0x20..0x38, 4) if offset.is_multiple_of(4) => {
                let address = self.state.queue_address(ring(offset));
                if offset.is_multiple_of(8) {
                    address & 0xffff_ffff
                } else {
                    address >> 32
                }
            }
            _ => return None,
        };
        Some(value)
    }

    /// The driver writes `data` (1 to 8 bytes) at `offset` of the common configuration.
    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let ring = match offset & !7 {
            QUEUE_DESC => QueueRing::Descriptors,
            QUEUE_DRIVER => QueueRing::Driver,
            _ => QueueRing::Device,
        };
        let len = data.len();
        // The value at each register width; an arm uses the one its access width is.
        let [byte] = le_bytes(data);
        let word = u16::from_le_bytes(le_bytes(data));
        let dword = u32::from_le_bytes(le_bytes(data));
        let qword = u64::from_le_bytes(le_bytes(data));
        match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => self.state.set_device_features_select(dword),
            (DRIVER_FEATURE_SELECT, 4) => self.state.set_driver_features_select(dword),
            (DRIVER_FEATURE, 4) => self.state.set_driver_features(dword),
            (CONFIG_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(word);
                self.interrupt.config_vector.store(vector, Ordering::SeqCst);
            }
            (DEVICE_STATUS, 1) => {
                let interrupt = self.interrupt.clone();
                let reset = self
                    .state
                    .write_status(byte, || interrupt as Arc<dyn VirtioInterrupt>);
                if reset {
                    self.interrupt.reset_vectors();
                }
            }
            (QUEUE_SELECT, 2) => self.state.set_queue_select(u32::from(word)),
            (QUEUE_SIZE, 2) => self.state.set_queue_size(u32::from(word)),
            (QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(word);
                if let Some(slot) = self.selected_queue_vector() {
                    slot.store(vector, Ordering::SeqCst);
                }
            }
            (QUEUE_ENABLE, 2) => {
                // Drivers may only write 1 (disabling needs VIRTIO_F_RING_RESET).
                if word == 1 {
                    self.state.set_queue_ready(true);
                }
            }
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => {
                let (low, high) = halves(qword);
                self.state.set_queue_address(ring, AddressHalf::Low, low);
                self.state.set_queue_address(ring, AddressHalf::High, high);
            }
            (0x20..0x38, 4) if offset.is_multiple_of(4) => {
                let half = if offset.is_multiple_of(8) {
                    AddressHalf::Low
                } else {
                    AddressHalf::High
                };
                self.state.set_queue_address(ring, half, dword);
            }
            _ => debug!(
                "virtio-pci: {len}-byte write of {qword:#x} at common config {offset:#x} ignored"
            ),
        }
    }
}

fn in_region(offset: u64, len: usize, start: u64, size: u64) -> bool {
    offset >= start
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= start + size)
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_data_register() {
            self.pci_cfg_read();
        }
        self.config.read_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarMove> {
        let moves = self.config.write_register(reg, offset, data);
        if reg == self.msix_capability / 4 {
            let control = (self.config.read_register(reg) >> 16) as u16;
            self.interrupt.msix().set_message_control(control);
        } else if reg == self.pci_cfg_data_register() {
            self.pci_cfg_write();
        }
        moves
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        let len = data.len();
        if index != 0 || len == 0 || len > 8 {
            data.fill(0xff);
            return;
        }
        if in_region(offset, len, COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            match self.read_common(offset - COMMON_CFG_OFFSET, len) {
                Some(value) => data.copy_from_slice(&value.to_le_bytes()[..len]),
                None => {
                    debug!("virtio-pci: {len}-byte read at common config {offset:#x}");
                    data.fill(0);
                }
            }
        } else if in_region(offset, len, ISR_CFG_OFFSET, 4) {
            // Reading the ISR clears it (virtio 1.2, 4.1.4.5).
            data.fill(0);
            if offset == ISR_CFG_OFFSET {
                data[0] = self.interrupt.isr.swap(0, Ordering::SeqCst);
            }
        } else if in_region(offset, len, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.state.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if in_region(
            offset,
            len,
            MSIX_TABLE_OFFSET,
            MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET,
        ) {
            self.interrupt
                .msix()
                .read_table(offset - MSIX_TABLE_OFFSET, data);
        } else if in_region(
            offset,
            len,
            MSIX_PBA_OFFSET,
            VIRTIO_PCI_BAR_SIZE - MSIX_PBA_OFFSET,
        ) {
            self.interrupt
                .msix()
                .read_pba(offset - MSIX_PBA_OFFSET, data);
        } else {
            // Notification area (write-only) and gaps.
            data.fill(0);
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        let len = data.len();
        if index != 0 || len == 0 || len > 8 {
            return;
        }
        if in_region(offset, len, COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.write_common(offset - COMMON_CFG_OFFSET, data);
        } else if in_region(offset, len, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.state.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if in_region(offset, len, NOTIFY_CFG_OFFSET, NOTIFY_CFG_SIZE) {
            // The address names the queue; the value (the queue index) is not needed.
            let slot = offset - NOTIFY_CFG_OFFSET;
            let queue = u32::try_from(slot / u64::from(NOTIFY_OFF_MULTIPLIER));
            match queue {
                Ok(queue)
                    if slot.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER))
                        && (queue as usize) < self.state.num_queues() =>
                {
                    self.notify_stats.record_vcpu();
                    self.state.notify(queue);
                }
                _ => {}
            }
        } else if in_region(
            offset,
            len,
            MSIX_TABLE_OFFSET,
            MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET,
        ) {
            self.interrupt
                .msix()
                .write_table(offset - MSIX_TABLE_OFFSET, data);
        } else {
            debug!("virtio-pci: {len}-byte write at BAR 0 offset {offset:#x} ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::pci::bus::{PciBus, PciConfigMmio, PciMmioWindow};
    use crate::pci::configuration::{
        COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE, REG_BAR0, REG_CAPABILITIES_POINTER,
        REG_CLASS_REVISION, REG_COMMAND_STATUS, REG_ID, REG_SUBSYSTEM,
    };
    use crate::pci::msix::tests::RecordingRoute;
    use crate::pci::msix::{MsiMessage, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK};
    use crate::virtio::testing::Recorder;
    use crate::virtio::{status, VIRTIO_F_VERSION_1};
    use vm_memory::GuestAddress;

    const BAR: u64 = 0xc000_0000;

    /// A driver poking a virtio-PCI function the way Linux's virtio_pci_modern does.
    struct Driver {
        pci: VirtioPciDevice,
        device: Arc<Mutex<Recorder>>,
        route: Arc<RecordingRoute>,
    }

    impl Driver {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let device = Arc::new(Mutex::new(Recorder::new(TYPE_NET)));
            let route = Arc::new(RecordingRoute::default());
            let pci = VirtioPciDevice::new(device.clone(), mem, BAR, route.clone()).unwrap();
            Driver { pci, device, route }
        }

        fn read(&mut self, offset: u64, len: usize) -> u64 {
            let mut data = vec![0u8; len];
            self.pci.read_bar(0, offset, &mut data);
            u64::from_le_bytes(le_bytes(&data))
        }

        fn write(&mut self, offset: u64, len: usize, value: u64) {
            self.pci.write_bar(0, offset, &value.to_le_bytes()[..len]);
        }

        fn set_status(&mut self, value: u8) {
            self.write(DEVICE_STATUS, 1, u64::from(value));
        }

        fn negotiate(&mut self, features: u64) -> bool {
            self.set_status(status::ACKNOWLEDGE);
            self.set_status(status::ACKNOWLEDGE | status::DRIVER);
            self.write(DRIVER_FEATURE_SELECT, 4, 0);
            self.write(DRIVER_FEATURE, 4, features & 0xffff_ffff);
            self.write(DRIVER_FEATURE_SELECT, 4, 1);
            self.write(DRIVER_FEATURE, 4, features >> 32);
            self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
            self.read(DEVICE_STATUS, 1) as u8 & status::FEATURES_OK != 0
        }

        /// Sets up queue `index` with `size` entries, its rings written as two halves each.
        fn setup_queue(&mut self, index: u16, size: u16, vector: u16) {
            let base = 0x10000 * u64::from(index + 1);
            self.write(QUEUE_SELECT, 2, u64::from(index));
            self.write(QUEUE_SIZE, 2, u64::from(size));
            self.write(QUEUE_MSIX_VECTOR, 2, u64::from(vector));
            for (field, address) in [
                (QUEUE_DESC, base),
                (QUEUE_DRIVER, base + 0x1000),
                (QUEUE_DEVICE, base + 0x2000),
            ] {
                self.write(field, 4, address & 0xffff_ffff);
                self.write(field + 4, 4, address >> 32);
            }
            self.write(QUEUE_ENABLE, 2, 1);
        }

        fn driver_ok(&mut self) {
            self.set_status(
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            );
        }

        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.pci
                .write_config_register(offset / 4, (offset % 4) as u64, data);
        }

        /// Programs MSI-X entry `vector` unmasked and enables MSI-X.
        fn enable_msix(&mut self, vector: u64, data: u32) {
            let entry = MSIX_TABLE_OFFSET + vector * 16;
            self.write(entry, 4, 0xfee0_0000);
            self.write(entry + 4, 4, 0);
            self.write(entry + 8, 4, u64::from(data));
            self.write(entry + 12, 4, 0);
            let control = self.msix_control_offset();
            self.config_write(control, &MSIX_CONTROL_ENABLE.to_le_bytes());
        }

        fn msix_control_offset(&mut self) -> usize {
            capabilities(&mut self.pci)
                .into_iter()
                .find(|(_, id)| *id == MSIX_CAPABILITY_ID)
                .unwrap()
                .0
                + 2
        }
    }

    fn config_byte(pci: &mut VirtioPciDevice, offset: usize) -> u8 {
        (pci.read_config_register(offset / 4) >> ((offset % 4) * 8)) as u8
    }

    fn config_u32(pci: &mut VirtioPciDevice, offset: usize) -> u32 {
        (0..4).fold(0, |value, i| {
            value | u32::from(config_byte(pci, offset + i)) << (8 * i)
        })
    }

    /// Walks the capability list from the pointer: (offset, capability ID).
    fn capabilities(pci: &mut VirtioPciDevice) -> Vec<(usize, u8)> {
        let mut found = Vec::new();
        let mut at = config_byte(pci, REG_CAPABILITIES_POINTER * 4) as usize;
        while at != 0 && found.len() < 48 {
            found.push((at, config_byte(pci, at)));
            at = config_byte(pci, at + 1) as usize;
        }
        found
    }

    #[test]
    fn header_identifies_a_modern_virtio_device_by_type() {
        let mut d = Driver::new();
        assert_eq!(d.pci.read_config_register(REG_ID), 0x1041_1af4);
        assert_eq!(d.pci.read_config_register(REG_CLASS_REVISION), 0x0200_0001);
        assert_eq!(d.pci.read_config_register(REG_SUBSYSTEM), 0x0040_1af4);
        assert_eq!(d.pci.read_config_register(REG_BAR0), BAR as u32 | 0b100);
        assert_eq!(class_code(TYPE_BLOCK), 0x01_80_00);
        assert_eq!(class_code(crate::virtio::TYPE_RNG), 0xff_00_00);
    }

    #[test]
    fn a_device_type_beyond_the_pci_id_range_does_not_pose_as_another_device() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Cut to 16 bits, 0x1_0001 was 1, and the function a network card.
        let device = Arc::new(Mutex::new(Recorder::new(0x1_0001)));
        let route = Arc::new(RecordingRoute::default());
        let mut pci = VirtioPciDevice::new(device, mem, BAR, route).unwrap();
        assert_eq!(pci.read_config_register(REG_ID), 0x1040_1af4);
    }

    #[test]
    fn a_driver_finds_every_structure_through_the_capability_list() {
        let mut d = Driver::new();
        let mut virtio = Vec::new();
        let mut msix = None;
        for (at, id) in capabilities(&mut d.pci) {
            assert_eq!(at % 4, 0, "capabilities are dword aligned");
            match id {
                VENDOR_CAPABILITY_ID => {
                    let cfg_type = config_byte(&mut d.pci, at + 3);
                    let bar = config_byte(&mut d.pci, at + 4);
                    let offset = u64::from(config_u32(&mut d.pci, at + 8));
                    let length = u64::from(config_u32(&mut d.pci, at + 12));
                    assert_eq!(bar, 0);
                    assert!(offset + length <= VIRTIO_PCI_BAR_SIZE);
                    if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG {
                        assert_eq!(config_byte(&mut d.pci, at + 2), 20, "cap_len");
                        assert_eq!(config_u32(&mut d.pci, at + 16), NOTIFY_OFF_MULTIPLIER);
                    }
                    if cfg_type == VIRTIO_PCI_CAP_PCI_CFG {
                        assert_eq!(config_byte(&mut d.pci, at + 2), 20, "cap_len");
                    }
                    virtio.push((cfg_type, offset, length));
                }
                MSIX_CAPABILITY_ID => msix = Some(at),
                other => panic!("unexpected capability {other:#x}"),
            }
        }
        virtio.sort();
        assert_eq!(
            virtio,
            vec![
                (
                    VIRTIO_PCI_CAP_COMMON_CFG,
                    COMMON_CFG_OFFSET,
                    COMMON_CFG_SIZE
                ),
                (VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_CFG_OFFSET, 8),
                (VIRTIO_PCI_CAP_ISR_CFG, ISR_CFG_OFFSET, 1),
                (
                    VIRTIO_PCI_CAP_DEVICE_CFG,
                    DEVICE_CFG_OFFSET,
                    DEVICE_CFG_SIZE
                ),
                (VIRTIO_PCI_CAP_PCI_CFG, 0, 0),
            ]
        );
        let msix = msix.expect("an MSI-X capability");
        let control = u16::from_le_bytes([
            config_byte(&mut d.pci, msix + 2),
            config_byte(&mut d.pci, msix + 3),
        ]);
        assert_eq!(control, 2, "3 vectors: 2 queues and configuration");
        assert_eq!(config_u32(&mut d.pci, msix + 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(config_u32(&mut d.pci, msix + 8), MSIX_PBA_OFFSET as u32);
    }

    #[test]
    fn full_driver_handshake_through_common_config_activates_and_notifies() {
        let mut d = Driver::new();
        assert_eq!(d.read(NUM_QUEUES, 2), 2);
        d.write(DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(d.read(DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
        d.write(DEVICE_FEATURE_SELECT, 4, 0);
        assert_eq!(d.read(DEVICE_FEATURE, 4), 1);
        assert!(d.negotiate(VIRTIO_F_VERSION_1 | 1));
        assert_eq!(d.device.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1);
        d.write(CONFIG_MSIX_VECTOR, 2, 0);
        assert_eq!(d.read(CONFIG_MSIX_VECTOR, 2), 0);
        d.write(QUEUE_SELECT, 2, 1);
        assert_eq!(d.read(QUEUE_SIZE, 2), 16, "starts at the maximum");
        assert_eq!(d.read(QUEUE_NOTIFY_OFF, 2), 1);
        d.setup_queue(0, 16, 1);
        d.setup_queue(1, 8, 2);
        assert_eq!(d.read(QUEUE_SIZE, 2), 8);
        assert_eq!(d.read(QUEUE_DRIVER, 4), 0x21000);
        assert_eq!(d.read(QUEUE_DRIVER, 8), 0x21000);
        assert_eq!(d.read(QUEUE_ENABLE, 2), 1);
        d.driver_ok();
        assert!(d.pci.is_activated());
        assert_eq!(d.device.lock().unwrap().activated_queues, Some(2));
        assert_eq!(queue_notify_offset(1), NOTIFY_CFG_OFFSET + 4);
        d.write(queue_notify_offset(1), 2, 1);
        d.write(NOTIFY_CFG_OFFSET + 40, 2, 10); // no such queue: ignored
        d.write(NOTIFY_CFG_OFFSET + 2, 2, 0); // not a notification slot
        assert_eq!(d.device.lock().unwrap().notified, vec![1]);
        let stats = d.pci.notify_stats();
        assert_eq!(
            (stats.vcpu(), stats.ioeventfd()),
            (1, 0),
            "one trapped notify"
        );
        // Queue set-up is frozen once running.
        d.write(QUEUE_SELECT, 2, 0);
        d.write(QUEUE_SIZE, 2, 4);
        assert_eq!(d.read(QUEUE_SIZE, 2), 16);
        // Device configuration is forwarded and bumps the generation.
        d.write(DEVICE_CFG_OFFSET + 2, 2, 0xcdab);
        assert_eq!(d.read(DEVICE_CFG_OFFSET, 4), 0xcdab_0000);
        assert_eq!(d.read(CONFIG_GENERATION, 1), 1);
    }

    #[test]
    fn queue_interrupts_go_to_the_assigned_msix_vector_and_set_the_isr() {
        let mut d = Driver::new();
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 16, 1);
        d.setup_queue(1, 16, VIRTIO_MSI_NO_VECTOR);
        d.write(CONFIG_MSIX_VECTOR, 2, 0);
        d.driver_ok();
        let interrupt = d.device.lock().unwrap().interrupt.clone().unwrap();

        interrupt.trigger(InterruptKind::Queue(0)).unwrap();
        assert!(
            d.route.fired.lock().unwrap().is_empty(),
            "MSI-X not enabled yet"
        );
        d.enable_msix(1, 0x41);
        assert!(d.pci.msix_enabled());
        assert_eq!(
            d.route.updates.lock().unwrap().last().copied(),
            Some((
                1,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                },
                false
            ))
        );
        interrupt.trigger(InterruptKind::Queue(0)).unwrap();
        assert_eq!(*d.route.fired.lock().unwrap(), vec![1]);
        interrupt.trigger(InterruptKind::Queue(1)).unwrap();
        assert_eq!(
            d.route.fired.lock().unwrap().len(),
            1,
            "queue 1 has no vector"
        );
        assert_eq!(d.read(ISR_CFG_OFFSET, 1) as u8, ISR_QUEUE);
        assert_eq!(d.read(ISR_CFG_OFFSET, 1), 0, "read to clear");

        // Vector 0 (configuration) is still masked: pending until unmasked.
        interrupt.trigger(InterruptKind::Config).unwrap();
        assert_eq!(d.read(MSIX_PBA_OFFSET, 8), 1);
        d.write(MSIX_TABLE_OFFSET + 12, 4, 0);
        assert_eq!(*d.route.fired.lock().unwrap(), vec![1, 0]);
        assert_eq!(d.read(MSIX_PBA_OFFSET, 8), 0);

        // Function mask holds vector 1 too.
        let control = d.msix_control_offset();
        d.config_write(
            control,
            &(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK).to_le_bytes(),
        );
        interrupt.trigger(InterruptKind::Queue(0)).unwrap();
        assert_eq!(d.read(MSIX_PBA_OFFSET, 8), 0b10);
        d.config_write(control, &MSIX_CONTROL_ENABLE.to_le_bytes());
        assert_eq!(*d.route.fired.lock().unwrap(), vec![1, 0, 1]);
    }

    #[test]
    fn out_of_range_vectors_read_back_as_no_vector() {
        let mut d = Driver::new();
        d.write(CONFIG_MSIX_VECTOR, 2, 3);
        assert_eq!(
            d.read(CONFIG_MSIX_VECTOR, 2),
            u64::from(VIRTIO_MSI_NO_VECTOR)
        );
        d.write(QUEUE_SELECT, 2, 1);
        d.write(QUEUE_MSIX_VECTOR, 2, 2);
        assert_eq!(d.read(QUEUE_MSIX_VECTOR, 2), 2);
        d.write(QUEUE_MSIX_VECTOR, 2, 100);
        assert_eq!(
            d.read(QUEUE_MSIX_VECTOR, 2),
            u64::from(VIRTIO_MSI_NO_VECTOR)
        );
        d.write(QUEUE_SELECT, 2, 9);
        d.write(QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!(
            d.read(QUEUE_MSIX_VECTOR, 2),
            u64::from(VIRTIO_MSI_NO_VECTOR)
        );
        assert_eq!(d.read(QUEUE_SIZE, 2), 0, "no queue 9");
        assert_eq!(d.read(QUEUE_NOTIFY_OFF, 2), 0);
    }

    #[test]
    fn bad_set_up_needs_a_reset_and_reset_clears_vectors() {
        let mut d = Driver::new();
        assert!(!d.negotiate(1), "legacy drivers are refused");
        d.set_status(0);
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 12, 1); // not a power of two
        d.driver_ok();
        assert!(!d.pci.is_activated());
        assert_ne!(
            d.read(DEVICE_STATUS, 1) as u8 & status::DEVICE_NEEDS_RESET,
            0
        );
        d.set_status(0);
        assert_eq!(d.read(DEVICE_STATUS, 1), 0);
        d.write(QUEUE_SELECT, 2, 0);
        assert_eq!(
            d.read(QUEUE_MSIX_VECTOR, 2),
            u64::from(VIRTIO_MSI_NO_VECTOR)
        );
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 64, 1); // above the maximum
        d.driver_ok();
        assert!(!d.pci.is_activated());
        d.set_status(0);
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 16, 1);
        d.driver_ok();
        assert!(d.pci.is_activated());
        d.set_status(0);
        assert_eq!(d.device.lock().unwrap().resets, 1);
        assert!(!d.pci.is_activated());
    }

    /// Config space offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability.
    fn pci_cfg_capability(d: &mut Driver) -> usize {
        capabilities(&mut d.pci)
            .into_iter()
            .find(|(at, id)| {
                *id == VENDOR_CAPABILITY_ID
                    && config_byte(&mut d.pci, at + 3) == VIRTIO_PCI_CAP_PCI_CFG
            })
            .expect("a PCI_CFG capability")
            .0
    }

    impl Driver {
        /// Programs the PCI_CFG window: `cap.bar`, `cap.offset`, `cap.length`.
        fn pci_cfg_window(&mut self, bar: u8, offset: u32, length: u32) {
            let cap = pci_cfg_capability(self);
            self.config_write(cap + PCI_CFG_BAR, &[bar]);
            self.config_write(cap + PCI_CFG_OFFSET, &offset.to_le_bytes());
            self.config_write(cap + PCI_CFG_LENGTH, &length.to_le_bytes());
        }

        /// Reads `pci_cfg_data` with one dword config read (one BAR access).
        fn pci_cfg_read(&mut self) -> u32 {
            let cap = pci_cfg_capability(self);
            self.pci.read_config_register((cap + PCI_CFG_DATA) / 4)
        }

        fn pci_cfg_write(&mut self, data: &[u8]) {
            let cap = pci_cfg_capability(self);
            self.config_write(cap + PCI_CFG_DATA, data);
        }
    }

    #[test]
    fn pci_cfg_capability_reaches_bar0_through_config_space() {
        let mut d = Driver::new();
        let cap = pci_cfg_capability(&mut d);
        // The window fields read back what the driver wrote; the header is read-only.
        d.pci_cfg_window(0, DEVICE_STATUS as u32, 1);
        assert_eq!(config_byte(&mut d.pci, cap + PCI_CFG_BAR), 0);
        assert_eq!(config_u32(&mut d.pci, cap + PCI_CFG_OFFSET), 0x14);
        assert_eq!(config_u32(&mut d.pci, cap + PCI_CFG_LENGTH), 1);
        d.config_write(cap, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(config_byte(&mut d.pci, cap), VENDOR_CAPABILITY_ID);
        assert_eq!(config_byte(&mut d.pci, cap + 2), PCI_CFG_CAP_LEN);

        // A one-byte write of the device status through config space reaches the device.
        d.pci_cfg_write(&[status::ACKNOWLEDGE]);
        assert_eq!(d.read(DEVICE_STATUS, 1), u64::from(status::ACKNOWLEDGE));
        // Two-byte read: the number of queues.
        d.pci_cfg_window(0, NUM_QUEUES as u32, 2);
        assert_eq!(d.pci_cfg_read() & 0xffff, 2);
        // Four bytes of device configuration, written through the BAR and read through config.
        d.write(DEVICE_CFG_OFFSET + 4, 4, 0x1234_5678);
        d.pci_cfg_window(0, DEVICE_CFG_OFFSET as u32 + 4, 4);
        assert_eq!(d.pci_cfg_read(), 0x1234_5678);
        // Written through config, read through the BAR; bytes past cap.length are not written.
        d.pci_cfg_window(0, DEVICE_CFG_OFFSET as u32, 2);
        d.pci_cfg_write(&0xaabb_ccddu32.to_le_bytes());
        assert_eq!(d.read(DEVICE_CFG_OFFSET, 4), 0xccdd);

        // A notification through the window is handled on the vCPU thread and counted there.
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 16, 1);
        d.setup_queue(1, 16, 2);
        d.driver_ok();
        d.pci_cfg_window(0, queue_notify_offset(1) as u32, 2);
        d.pci_cfg_write(&1u16.to_le_bytes());
        assert_eq!(d.device.lock().unwrap().notified, vec![1]);
        assert_eq!(d.pci.notify_stats().vcpu(), 1);
        // Reading the ISR through the window clears it, as a BAR read does.
        d.device
            .lock()
            .unwrap()
            .interrupt
            .clone()
            .unwrap()
            .trigger(InterruptKind::Queue(0))
            .unwrap();
        d.pci_cfg_window(0, ISR_CFG_OFFSET as u32, 1);
        assert_eq!(d.pci_cfg_read() & 0xff, u32::from(ISR_QUEUE));
        assert_eq!(d.read(ISR_CFG_OFFSET, 1), 0);
    }

    #[test]
    fn pci_cfg_ignores_bad_windows_without_touching_the_bar() {
        let mut d = Driver::new();
        d.write(DEVICE_CFG_OFFSET, 4, 0x0807_0605);
        // A valid read leaves a known value in pci_cfg_data.
        d.pci_cfg_window(0, DEVICE_CFG_OFFSET as u32, 4);
        assert_eq!(d.pci_cfg_read(), 0x0807_0605);
        for (bar, offset, length) in [
            (1u8, DEVICE_STATUS as u32, 1u32), // no BAR 1
            (5, DEVICE_STATUS as u32, 1),
            (0xff, DEVICE_STATUS as u32, 1),
            (0, DEVICE_STATUS as u32, 0), // lengths other than 1, 2, 4
            (0, DEVICE_STATUS as u32, 3),
            (0, DEVICE_STATUS as u32, 8),
            (0, DEVICE_STATUS as u32, u32::MAX),
            (0, DEVICE_STATUS as u32 + 1, 2), // misaligned
            (0, DEVICE_STATUS as u32 + 2, 4),
            (0, VIRTIO_PCI_BAR_SIZE as u32, 1), // beyond BAR 0
            (0, VIRTIO_PCI_BAR_SIZE as u32 - 2, 4),
            (0, u32::MAX - 3, 4),
        ] {
            d.pci_cfg_window(bar, offset, length);
            assert_eq!(
                d.pci_cfg_read(),
                0x0807_0605,
                "bar {bar} offset {offset:#x} length {length}: data unchanged"
            );
            d.pci_cfg_write(&[status::ACKNOWLEDGE, 0, 0, 0]);
            assert_eq!(
                d.read(DEVICE_STATUS, 1),
                0,
                "bar {bar} offset {offset:#x} length {length}: nothing written"
            );
            // Restore the sentinel the write above left in pci_cfg_data.
            d.pci_cfg_write(&0x0807_0605u32.to_le_bytes());
        }
        // The last byte of BAR 0 is reachable.
        d.pci_cfg_window(0, VIRTIO_PCI_BAR_SIZE as u32 - 1, 1);
        d.pci_cfg_read();
        assert_eq!(d.device.lock().unwrap().notified, Vec::<u16>::new());
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut d = Driver::new();
        let mut data = [0u8; 16];
        d.pci.read_bar(0, 0, &mut data);
        assert_eq!(data, [0xff; 16], "wider than 8 bytes");
        let mut four = [0u8; 4];
        d.pci.read_bar(1, 0, &mut four);
        assert_eq!(four, [0xff; 4], "no BAR 1");
        d.pci.read_bar(0, VIRTIO_PCI_BAR_SIZE - 2, &mut four);
        d.pci.read_bar(0, u64::MAX - 1, &mut four);
        d.pci.read_bar(0, COMMON_CFG_SIZE - 2, &mut four);
        assert_eq!(d.read(DEVICE_STATUS, 4), 0, "wrong width reads zero");
        d.write(DEVICE_STATUS, 4, 0xff); // wrong width: ignored
        assert_eq!(d.read(DEVICE_STATUS, 1), 0);
        d.pci.write_bar(0, u64::MAX, &[1]);
        d.pci.write_bar(0, NOTIFY_CFG_OFFSET, &[]);
        d.pci.write_bar(0, MSIX_TABLE_OFFSET + 3, &[1, 2, 3]);
        d.pci.write_bar(2, 0, &[1]);
        d.pci.read_bar(0, MSIX_PBA_OFFSET + 0x100, &mut four);
        d.pci.write_config_register(1000, 0, &[1]);
        d.pci.write_config_register(REG_COMMAND_STATUS, 3, &[1, 2]);
    }

    #[test]
    fn config_space_and_bar_are_reachable_through_the_bus() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let device = Arc::new(Mutex::new(Recorder::new(TYPE_NET)));
        let pci =
            VirtioPciDevice::new(device, mem, BAR, Arc::new(RecordingRoute::default())).unwrap();
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let slot = bus
            .lock()
            .unwrap()
            .add_device("net0", Arc::new(Mutex::new(pci)))
            .unwrap();
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut id = [0u8; 4];
        ecam.read(u64::from(slot) << 15, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1041_1af4);
        let mut window = PciMmioWindow::new(bus.clone(), BAR);
        let mut queues = [0u8; 2];
        window.read(NUM_QUEUES, &mut queues);
        assert_eq!(u16::from_le_bytes(queues), 2);
        // Move the BAR above 4 GiB like a guest OS would, then find it there.
        let command = (u64::from(slot) << 15) + REG_COMMAND_STATUS as u64 * 4;
        ecam.write(command, &0u16.to_le_bytes());
        let bar0 = (u64::from(slot) << 15) + REG_BAR0 as u64 * 4;
        ecam.write(bar0, &0u32.to_le_bytes());
        ecam.write(bar0 + 4, &1u32.to_le_bytes());
        ecam.write(
            command,
            &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes(),
        );
        let mut high = PciMmioWindow::new(bus, 1 << 32);
        high.read(NUM_QUEUES, &mut queues);
        assert_eq!(u16::from_le_bytes(queues), 2);
        window.read(NUM_QUEUES, &mut queues);
        assert_eq!(queues, [0xff; 2], "nothing at the old address");
    }
}
