//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2).
//!
//! [`MmioTransport`] is a [`BusDevice`] for a 4 KiB MMIO window: it maps the virtio-mmio
//! register layout onto the transport-independent [`TransportState`] (feature negotiation, queue
//! set-up, activation on `DRIVER_OK`, notifications, reset), shared with virtio-pci. Interrupts set bits in the interrupt status register and
//! signal an eventfd that the VMM connects to an (edge-triggered) interrupt line.
//!
//! Only the modern interface is offered: a driver that does not accept `VIRTIO_F_VERSION_1`
//! fails feature negotiation.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use log::debug;
use virtio_bindings::virtio_mmio as mmio;
use vmm_sys_util::eventfd::EventFd;

use super::snapshot::SnapshotError;
pub use super::transport::TransportError;
use super::transport::{AddressHalf, QueueRing, TransportSnapshot, TransportState};
pub use super::SharedVirtioDevice;
use super::{InterruptKind, VirtioInterrupt};
use crate::bus::BusDevice;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// "virt", little endian.
const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"virt");
/// Modern virtio-mmio.
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("KEEL").
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KEEL");

const REG_MAGIC: u64 = mmio::VIRTIO_MMIO_MAGIC_VALUE as u64;
const REG_VERSION: u64 = mmio::VIRTIO_MMIO_VERSION as u64;
const REG_DEVICE_ID: u64 = mmio::VIRTIO_MMIO_DEVICE_ID as u64;
const REG_VENDOR_ID: u64 = mmio::VIRTIO_MMIO_VENDOR_ID as u64;
const REG_DEVICE_FEATURES: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const REG_DEVICE_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const REG_DRIVER_FEATURES: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const REG_DRIVER_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const REG_QUEUE_SEL: u64 = mmio::VIRTIO_MMIO_QUEUE_SEL as u64;
const REG_QUEUE_NUM_MAX: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const REG_QUEUE_NUM: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM as u64;
const REG_QUEUE_READY: u64 = mmio::VIRTIO_MMIO_QUEUE_READY as u64;
const REG_QUEUE_NOTIFY: u64 = mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the QueueNotify register, where a VMM may place an ioeventfd per queue (the
/// driver writes the queue index, 32 bits wide).
pub const QUEUE_NOTIFY_OFFSET: u64 = REG_QUEUE_NOTIFY;
const REG_INTERRUPT_STATUS: u64 = mmio::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const REG_INTERRUPT_ACK: u64 = mmio::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const REG_STATUS: u64 = mmio::VIRTIO_MMIO_STATUS as u64;
const REG_QUEUE_DESC_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const REG_QUEUE_DESC_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const REG_QUEUE_DRIVER_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const REG_QUEUE_DRIVER_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const REG_QUEUE_DEVICE_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const REG_QUEUE_DEVICE_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const REG_CONFIG_GENERATION: u64 = mmio::VIRTIO_MMIO_CONFIG_GENERATION as u64;
/// Device-specific configuration space starts here.
const CONFIG_SPACE: u64 = mmio::VIRTIO_MMIO_CONFIG as u64;

/// Interrupt status bit: a queue's used ring was updated.
pub const INT_USED_RING: u32 = mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = mmio::VIRTIO_MMIO_INT_CONFIG;

/// The interrupt side of an MMIO transport: status bits plus an eventfd to raise the line.
pub struct MmioInterrupt {
    status: AtomicU32,
    line: EventFd,
}

impl MmioInterrupt {
    /// Bits currently pending (the driver reads them from `InterruptStatus`).
    pub fn pending(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue(_) => INT_USED_RING,
            InterruptKind::Config => INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line.write(1)
    }
}

/// What a virtio-mmio transport saves in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioSnapshot {
    /// Negotiation, queues and the device.
    pub transport: TransportSnapshot,
    /// `InterruptStatus` bits pending.
    pub interrupt_status: u32,
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    state: TransportState,
    interrupt: Arc<MmioInterrupt>,
}

impl MmioTransport {
    /// Puts `device` behind an MMIO window; `interrupt_line` is signalled on interrupts.
    pub fn new(
        device: SharedVirtioDevice,
        mem: GuestMemoryMmap,
        interrupt_line: EventFd,
    ) -> Result<Self, TransportError> {
        Ok(MmioTransport {
            state: TransportState::new(device, mem, "virtio-mmio")?,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                line: interrupt_line,
            }),
        })
    }

    /// Saves the transport, its device and the pending interrupt bits (the VM is paused).
    pub fn save_state(&mut self) -> Result<MmioSnapshot, SnapshotError> {
        Ok(MmioSnapshot {
            transport: self.state.save()?,
            interrupt_status: self.interrupt.pending(),
        })
    }

    /// Puts a freshly created transport back into `saved`.
    pub fn restore_state(&mut self, saved: &MmioSnapshot) -> Result<(), SnapshotError> {
        self.interrupt.status.store(
            saved.interrupt_status & (INT_USED_RING | INT_CONFIG),
            Ordering::SeqCst,
        );
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.state.restore(&saved.transport, interrupt)
    }

    /// See [`TransportState::raise_after_restore`].
    pub fn raise_after_restore(&self) {
        self.state.raise_after_restore(self.interrupt.as_ref());
    }

    /// The interrupt state (shared with the device once activated).
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
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

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.state.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => self.state.device_features(),
            REG_QUEUE_NUM_MAX => u32::from(self.state.queue_max_size()),
            REG_QUEUE_READY => u32::from(self.state.queue_ready()),
            REG_INTERRUPT_STATUS => self.interrupt.pending(),
            REG_STATUS => u32::from(self.state.status()),
            REG_CONFIG_GENERATION => self.state.config_generation(),
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        use AddressHalf::{High, Low};
        use QueueRing::{Descriptors, Device, Driver};
        match offset {
            REG_DEVICE_FEATURES_SEL => self.state.set_device_features_select(value),
            REG_DRIVER_FEATURES_SEL => self.state.set_driver_features_select(value),
            REG_DRIVER_FEATURES => self.state.set_driver_features(value),
            REG_QUEUE_SEL => self.state.set_queue_select(value),
            REG_QUEUE_NUM => self.state.set_queue_size(value),
            REG_QUEUE_READY => self.state.set_queue_ready(value == 1),
            REG_QUEUE_DESC_LOW => self.state.set_queue_address(Descriptors, Low, value),
            REG_QUEUE_DESC_HIGH => self.state.set_queue_address(Descriptors, High, value),
            REG_QUEUE_DRIVER_LOW => self.state.set_queue_address(Driver, Low, value),
            REG_QUEUE_DRIVER_HIGH => self.state.set_queue_address(Driver, High, value),
            REG_QUEUE_DEVICE_LOW => self.state.set_queue_address(Device, Low, value),
            REG_QUEUE_DEVICE_HIGH => self.state.set_queue_address(Device, High, value),
            REG_QUEUE_NOTIFY => self.state.notify(value),
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => {
                // The device status is a byte (virtio 1.2, 2.1) and only writing zero resets
                // (4.2.2). Cut to its low byte, a write such as 0x100 would reset the device.
                let Ok(value) = u8::try_from(value) else {
                    crate::guest_warn!(
                        "virtio-mmio: status {value:#x} has bits above the low byte; ignored"
                    );
                    return;
                };
                let interrupt = self.interrupt.clone();
                if self.state.write_status(value, move || interrupt) {
                    self.interrupt.status.store(0, Ordering::SeqCst);
                }
            }
            _ => debug!("virtio-mmio: write {value:#x} to unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.state.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            debug!(
                "virtio-mmio: {}-byte read at {offset:#x} is not a register access",
                data.len()
            );
            data.fill(0xff);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.state.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::virtio::testing::Recorder;
    use crate::virtio::{status, VIRTIO_F_VERSION_1};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Driver {
        transport: MmioTransport,
        device: Arc<Mutex<Recorder>>,
        line: EventFd,
    }

    impl Driver {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let device = Arc::new(Mutex::new(Recorder::new(crate::virtio::TYPE_RNG)));
            let line = EventFd::new(EFD_NONBLOCK).unwrap();
            let transport =
                MmioTransport::new(device.clone(), mem, line.try_clone().unwrap()).unwrap();
            Driver {
                transport,
                device,
                line,
            }
        }

        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.transport.read(offset, &mut data);
            u32::from_le_bytes(data)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.transport.write(offset, &value.to_le_bytes());
        }

        /// Sets up queue `index` with `size` entries at a valid, aligned place in memory.
        fn setup_queue(&mut self, index: u32, size: u32) {
            let base = 0x10000 * u64::from(index + 1);
            self.write(REG_QUEUE_SEL, index);
            self.write(REG_QUEUE_NUM, size);
            self.write(REG_QUEUE_DESC_LOW, base as u32);
            self.write(REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
            self.write(REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
            self.write(REG_QUEUE_READY, 1);
        }

        fn negotiate(&mut self, features: u64) -> bool {
            self.write(REG_STATUS, u32::from(status::ACKNOWLEDGE));
            self.write(REG_STATUS, u32::from(status::ACKNOWLEDGE | status::DRIVER));
            self.write(REG_DRIVER_FEATURES_SEL, 0);
            self.write(REG_DRIVER_FEATURES, features as u32);
            self.write(REG_DRIVER_FEATURES_SEL, 1);
            self.write(REG_DRIVER_FEATURES, (features >> 32) as u32);
            self.write(
                REG_STATUS,
                u32::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
            );
            self.read(REG_STATUS) as u8 & status::FEATURES_OK != 0
        }

        fn driver_ok(&mut self) {
            let all =
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
            self.write(REG_STATUS, u32::from(all));
        }
    }

    #[test]
    fn a_status_write_with_bits_above_the_low_byte_is_ignored_not_a_reset() {
        let mut d = Driver::new();
        d.write(REG_STATUS, u32::from(status::ACKNOWLEDGE));
        // Its low byte is zero, the value is not.
        d.write(REG_STATUS, 0x100);
        assert_eq!(d.read(REG_STATUS), u32::from(status::ACKNOWLEDGE));
        d.write(
            REG_STATUS,
            0x100 | u32::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        assert_eq!(d.read(REG_STATUS), u32::from(status::ACKNOWLEDGE));
        d.write(REG_STATUS, 0);
        assert_eq!(d.read(REG_STATUS), 0, "zero still resets");
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let mut d = Driver::new();
        assert_eq!(d.read(REG_MAGIC), MAGIC_VALUE);
        assert_eq!(d.read(REG_VERSION), 2);
        assert_eq!(d.read(REG_DEVICE_ID), crate::virtio::TYPE_RNG);
        assert_eq!(d.read(REG_VENDOR_ID), VENDOR_ID);
        d.write(REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(d.read(REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        d.write(REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(d.read(REG_DEVICE_FEATURES), 1);
        d.write(REG_QUEUE_SEL, 1);
        assert_eq!(d.read(REG_QUEUE_NUM_MAX), 16);
        d.write(REG_QUEUE_SEL, 7);
        assert_eq!(d.read(REG_QUEUE_NUM_MAX), 0, "no queue 7");
    }

    #[test]
    fn full_driver_handshake_activates_and_routes_notifications() {
        let mut d = Driver::new();
        assert!(d.negotiate(VIRTIO_F_VERSION_1 | 1));
        assert_eq!(d.device.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1);
        d.setup_queue(0, 16);
        d.setup_queue(1, 8);
        d.driver_ok();
        assert!(d.transport.is_activated());
        assert_eq!(d.device.lock().unwrap().activated_queues, Some(2));
        d.write(REG_QUEUE_NOTIFY, 1);
        d.write(REG_QUEUE_NOTIFY, 9); // no such queue: ignored
        assert_eq!(d.device.lock().unwrap().notified, vec![1]);

        // The device interrupts; the driver sees the status bit and acknowledges it.
        let interrupt = d.device.lock().unwrap().interrupt.clone().unwrap();
        interrupt.trigger(InterruptKind::Queue(0)).unwrap();
        assert_eq!(d.line.read().unwrap(), 1);
        assert_eq!(d.read(REG_INTERRUPT_STATUS), INT_USED_RING);
        d.write(REG_INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(d.read(REG_INTERRUPT_STATUS), 0);

        // Queue set-up is frozen once running.
        d.write(REG_QUEUE_SEL, 0);
        d.write(REG_QUEUE_NUM, 4);
        d.write(REG_QUEUE_READY, 0);
        assert_eq!(d.read(REG_QUEUE_READY), 1);
    }

    #[test]
    fn features_without_version_1_or_not_offered_are_refused() {
        let mut d = Driver::new();
        assert!(!d.negotiate(1), "legacy drivers are refused");
        let mut d = Driver::new();
        assert!(
            !d.negotiate(VIRTIO_F_VERSION_1 | 1 << 5),
            "bit 5 was not offered"
        );
        d.driver_ok();
        assert!(!d.transport.is_activated());
    }

    #[test]
    fn a_ready_queue_after_a_disabled_one_is_refused() {
        // Queue 1 ready, queue 0 not: the device would get queue 1's ring as its queue 0.
        let mut d = Driver::new();
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(1, 16);
        d.driver_ok();
        assert!(!d.transport.is_activated());
        assert_ne!(d.read(REG_STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
        // Queue 0 alone is fine: later queues may stay unused.
        d.write(REG_STATUS, 0);
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 16);
        d.driver_ok();
        assert!(d.transport.is_activated());
        assert_eq!(d.device.lock().unwrap().activated_queues, Some(1));
    }

    #[test]
    fn invalid_queue_sizes_mark_the_device_as_needing_reset() {
        let mut d = Driver::new();
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        assert_eq!(d.transport.needs_reset_count(), 0);
        d.setup_queue(0, 12); // not a power of two
        d.driver_ok();
        assert!(!d.transport.is_activated());
        assert_ne!(d.read(REG_STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
        // Counted once however often the driver pokes it, and kept across the reset.
        d.driver_ok();
        assert_eq!(d.transport.needs_reset_count(), 1);
        d.write(REG_STATUS, 0);
        assert_eq!(d.read(REG_STATUS), 0);
        assert_eq!(d.transport.needs_reset_count(), 1);
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 16);
        d.driver_ok();
        assert!(d.transport.is_activated());
    }

    #[test]
    fn reset_returns_to_the_initial_state_and_config_space_is_forwarded() {
        let mut d = Driver::new();
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.setup_queue(0, 16);
        d.driver_ok();
        d.transport.write(CONFIG_SPACE + 2, &[0xab, 0xcd]);
        let mut config = [0u8; 4];
        d.transport.read(CONFIG_SPACE, &mut config);
        assert_eq!(config, [0, 0, 0xab, 0xcd]);
        assert_eq!(d.read(REG_CONFIG_GENERATION), 1);
        // A change the device makes itself moves the generation on too.
        d.device.lock().unwrap().config_changes = 1;
        assert_eq!(d.read(REG_CONFIG_GENERATION), 2);
        d.write(REG_STATUS, 0);
        assert!(!d.transport.is_activated());
        assert_eq!(d.device.lock().unwrap().resets, 1);
        d.write(REG_QUEUE_SEL, 0);
        assert_eq!(d.read(REG_QUEUE_READY), 0);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut d = Driver::new();
        let mut two = [0u8; 2];
        d.transport.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        d.transport.write(REG_STATUS + 1, &[1, 2, 3, 4]);
        d.transport.write(REG_STATUS, &[1]);
        d.transport.read(CONFIG_SPACE + 0xfff, &mut two);
        d.write(0xf00, 1);
    }
}
