//! The driver side of the virtio transports: virtio-mmio version 2 (virtio 1.2, section 4.2.2 and
//! 4.2.3) and virtio-pci, modern interface (section 4.1.4 and 4.1.5).
//!
//! [`Transport`] wraps one device: the status handshake, feature negotiation, queue set-up and
//! notification, and the device configuration space, the same operations for both transports
//! (plus identification for virtio-mmio; PCI devices are identified by their configuration space,
//! see `pci.rs`). virtio-mmio registers are read and written 32 bits at a time; virtio-pci's common
//! configuration with each field's own width (8, 16 or 32 bits; queue addresses as two 32-bit
//! halves). Configuration space reads are 8- or 32-bit. Everything lies in the uncached top GiB of
//! the guest's identity map.

use core::fmt;

use super::queue::Virtqueue;

/// "virt", little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) interface.
pub const VERSION_MODERN: u32 = 2;

/// Feature: the device complies with virtio 1.0 or later (the modern interface).
pub const F_VERSION_1: u32 = 32;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
/// The low halves; each high half follows at +4.
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// The device-specific configuration space.
const CONFIG: u64 = 0x100;

/// Status: the guest has noticed the device.
const STATUS_ACKNOWLEDGE: u32 = 1;
/// Status: the guest knows how to drive the device.
const STATUS_DRIVER: u32 = 2;
/// Status: the driver is ready.
const STATUS_DRIVER_OK: u32 = 4;
/// Status: feature negotiation is complete.
const STATUS_FEATURES_OK: u32 = 8;
/// Status: the device has hit an error it cannot recover from alone.
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Status: the driver has given up on the device.
const STATUS_FAILED: u32 = 0x80;

/// What went wrong while bringing a device up or talking to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The device does not offer a feature the driver needs.
    MissingFeature(u32),
    /// The device cleared FEATURES_OK: it refused the accepted features.
    FeaturesRefused(u64),
    /// The queue is not available (QueueNumMax 0) or already in use.
    QueueUnavailable(u16),
    /// The guest's DMA area is too small for what the driver wants to set up.
    OutOfDmaMemory,
    /// No free descriptors for a buffer (a driver bug: the drivers size their queues).
    QueueFull(u16),
    /// Nothing came back on a queue within the wait; the text says what was awaited.
    Timeout(&'static str),
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// A packet longer than the driver's buffer for it.
    TooLong(usize),
    /// The device did something the virtio spec forbids; the text says what.
    Misbehaved(&'static str),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingFeature(bit) => write!(f, "device lacks feature bit {bit}"),
            Self::FeaturesRefused(features) => {
                write!(
                    f,
                    "device refused features {features:#x} (FEATURES_OK cleared)"
                )
            }
            Self::QueueUnavailable(index) => write!(f, "queue {index} unavailable"),
            Self::OutOfDmaMemory => f.write_str("guest DMA area exhausted"),
            Self::QueueFull(index) => write!(f, "queue {index} has no free descriptors"),
            Self::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Self::NeedsReset => f.write_str("device set DEVICE_NEEDS_RESET"),
            Self::TooLong(len) => write!(f, "packet of {len} bytes too long for the buffer"),
            Self::Misbehaved(what) => write!(f, "device misbehaved: {what}"),
        }
    }
}

/// Where a virtio-pci device's structures are (identity-mapped addresses inside its BARs), as the
/// vendor capabilities of its configuration space say (virtio 1.2, 4.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciLayout {
    /// `struct virtio_pci_common_cfg`.
    pub common: u64,
    /// The notification area: queue `q` is notified at `notify + queue_notify_off(q) * multiplier`.
    pub notify: u64,
    /// Bytes of the notification area.
    pub notify_len: u64,
    /// `notify_off_multiplier`.
    pub notify_multiplier: u32,
    /// The ISR status byte (never read: the drivers poll).
    pub isr: u64,
    /// The device-specific configuration.
    pub device: u64,
}

/// Queues whose notification offsets a PCI transport reads once, when it is created; others are
/// looked up at each notification.
const CACHED_NOTIFY_OFFSETS: usize = 4;

// Common configuration fields (virtio 1.2, 4.1.4.3), offsets and widths.
const PCI_DEVICE_FEATURE_SELECT: u64 = 0x00; // 32
const PCI_DEVICE_FEATURE: u64 = 0x04; // 32
const PCI_DRIVER_FEATURE_SELECT: u64 = 0x08; // 32
const PCI_DRIVER_FEATURE: u64 = 0x0c; // 32
const PCI_CONFIG_MSIX_VECTOR: u64 = 0x10; // 16
const PCI_NUM_QUEUES: u64 = 0x12; // 16
const PCI_DEVICE_STATUS: u64 = 0x14; // 8
const PCI_CONFIG_GENERATION: u64 = 0x15; // 8
const PCI_QUEUE_SELECT: u64 = 0x16; // 16
const PCI_QUEUE_SIZE: u64 = 0x18; // 16
const PCI_QUEUE_MSIX_VECTOR: u64 = 0x1a; // 16
const PCI_QUEUE_ENABLE: u64 = 0x1c; // 16
const PCI_QUEUE_NOTIFY_OFF: u64 = 0x1e; // 16
const PCI_QUEUE_DESC: u64 = 0x20; // 2 x 32
const PCI_QUEUE_DRIVER: u64 = 0x28; // 2 x 32
const PCI_QUEUE_DEVICE: u64 = 0x30; // 2 x 32

/// "No MSI-X vector": the guest polls, so no event raises an interrupt.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A virtio-mmio register window at `base`.
    Mmio { base: u64 },
    /// A virtio-pci function's structures.
    Pci {
        layout: PciLayout,
        num_queues: u16,
        /// `queue_notify_off` of the first queues.
        notify_offsets: [u16; CACHED_NOTIFY_OFFSETS],
    },
}

/// One virtio device's transport: a virtio-mmio register window or a virtio-pci function. The
/// drivers see the same operations either way.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    kind: Kind,
}

fn read32(address: u64) -> u32 {
    // SAFETY: the constructors' contracts: the address is mapped device memory of the transport; an
    // aligned read of a register has no effect on the guest's memory.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn read16(address: u64) -> u16 {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::read_volatile(address as *const u16) }
}

fn read8(address: u64) -> u8 {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::read_volatile(address as *const u8) }
}

fn write32(address: u64, value: u32) {
    // SAFETY: as for `read32`; register writes affect only the device (and, through addresses the
    // driver hands over, DMA memory the drivers own).
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

fn write16(address: u64, value: u16) {
    // SAFETY: as for `write32`.
    unsafe { core::ptr::write_volatile(address as *mut u16, value) }
}

fn write8(address: u64, value: u8) {
    // SAFETY: as for `write32`.
    unsafe { core::ptr::write_volatile(address as *mut u8, value) }
}

impl Transport {
    /// The virtio-mmio window at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be the identity-mapped address of a virtio-mmio register window of at least
    /// 0x100 bytes plus the configuration space the driver reads; nothing else may drive it.
    pub unsafe fn new(base: u64) -> Self {
        Self {
            kind: Kind::Mmio { base },
        }
    }

    /// The virtio-pci function whose structures `layout` locates. Reads `num_queues` and the
    /// first queues' notification offsets.
    ///
    /// # Safety
    ///
    /// Every address of `layout` must be identity-mapped, uncached device memory of one virtio-pci
    /// function whose memory decoding is enabled (the common configuration's 0x38 bytes, the
    /// notification area's `notify_len` bytes, the device configuration the driver reads);
    /// nothing else may drive it.
    pub unsafe fn pci(layout: PciLayout) -> Self {
        let num_queues = read16(layout.common + PCI_NUM_QUEUES);
        let mut notify_offsets = [0; CACHED_NOTIFY_OFFSETS];
        for (index, offset) in (0..num_queues).zip(notify_offsets.iter_mut()) {
            write16(layout.common + PCI_QUEUE_SELECT, index);
            *offset = read16(layout.common + PCI_QUEUE_NOTIFY_OFF);
        }
        Self {
            kind: Kind::Pci {
                layout,
                num_queues,
                notify_offsets,
            },
        }
    }

    fn read(&self, offset: u64) -> u32 {
        match self.kind {
            Kind::Mmio { base } => read32(base + offset),
            Kind::Pci { .. } => unreachable!("virtio-mmio register read on a PCI transport"),
        }
    }

    /// The magic value (should be [`MAGIC`]; virtio-mmio only).
    pub fn magic(&self) -> u32 {
        self.read(REG_MAGIC)
    }

    /// The interface version (should be [`VERSION_MODERN`]; virtio-mmio only).
    pub fn version(&self) -> u32 {
        self.read(REG_VERSION)
    }

    /// The device type (0: no device behind this window; virtio-mmio only).
    pub fn device_id(&self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    fn status(&self) -> u32 {
        match self.kind {
            Kind::Mmio { base } => read32(base + REG_STATUS),
            Kind::Pci { layout, .. } => u32::from(read8(layout.common + PCI_DEVICE_STATUS)),
        }
    }

    fn set_status(&self, status: u32) {
        match self.kind {
            Kind::Mmio { base } => write32(base + REG_STATUS, status),
            Kind::Pci { layout, .. } => write8(layout.common + PCI_DEVICE_STATUS, status as u8),
        }
    }

    /// Writes the status register as it is (the hostile-guest catalogue breaks the handshake's
    /// order with it).
    pub fn write_status(&self, status: u32) {
        self.set_status(status);
    }

    /// Reads the status register.
    pub fn read_status(&self) -> u32 {
        self.status()
    }

    /// Accepts the 64 feature bits `features`, offered or not.
    pub fn write_driver_features(&self, features: u64) {
        self.set_driver_features(0, features as u32);
        self.set_driver_features(1, (features >> 32) as u32);
    }

    /// Reads the 32-bit register at `offset` of a virtio-mmio window (below the 0x200 bytes
    /// every window has; `None` for other offsets and for virtio-pci).
    pub fn mmio_read(&self, offset: u64) -> Option<u32> {
        match self.kind {
            Kind::Mmio { base } if offset < 0x200 && offset.is_multiple_of(4) => {
                Some(read32(base + offset))
            }
            _ => None,
        }
    }

    /// Writes the 32-bit register at `offset` of a virtio-mmio window (as for
    /// [`mmio_read`](Self::mmio_read)); returns whether it did.
    pub fn mmio_write(&self, offset: u64, value: u32) -> bool {
        match self.kind {
            Kind::Mmio { base } if offset < 0x200 && offset.is_multiple_of(4) => {
                write32(base + offset, value);
                true
            }
            _ => false,
        }
    }

    /// virtio-pci: sets the configuration's MSI-X vector and queue `index`'s to `vector` and
    /// returns what they read back (`None` on virtio-mmio).
    pub fn set_msix_vectors(&self, index: u16, vector: u16) -> Option<(u16, u16)> {
        match self.kind {
            Kind::Mmio { .. } => None,
            Kind::Pci { layout, .. } => {
                let common = layout.common;
                write16(common + PCI_CONFIG_MSIX_VECTOR, vector);
                write16(common + PCI_QUEUE_SELECT, index);
                write16(common + PCI_QUEUE_MSIX_VECTOR, vector);
                Some((
                    read16(common + PCI_CONFIG_MSIX_VECTOR),
                    read16(common + PCI_QUEUE_MSIX_VECTOR),
                ))
            }
        }
    }

    /// Resets the device (status 0) and waits, boundedly, for the reset to show.
    pub fn reset(&self) {
        self.set_status(0);
        for _ in 0..1000 {
            if self.status() == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Resets the device, negotiates VERSION_1 plus the `wanted` features the device offers
    /// (`required` must all be offered) and returns the accepted features. The device is left in
    /// FEATURES_OK, ready for queue set-up and [`driver_ok`](Self::driver_ok).
    pub fn negotiate(&self, required: u64, wanted: u64) -> Result<u64, DriverError> {
        self.reset();
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = self.device_features();
        let required = required | 1 << F_VERSION_1;
        if let Some(bit) = (0..64).find(|bit| required & !offered & (1 << bit) != 0) {
            self.fail();
            return Err(DriverError::MissingFeature(bit));
        }
        let accepted = offered & (required | wanted);
        self.set_driver_features(0, accepted as u32);
        self.set_driver_features(1, (accepted >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.set_status(status);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err(DriverError::FeaturesRefused(accepted));
        }
        if let Kind::Pci { layout, .. } = self.kind {
            // No interrupt for configuration changes: the drivers poll.
            write16(layout.common + PCI_CONFIG_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
        }
        Ok(accepted)
    }

    /// The 32 feature bits of word `select` the device offers.
    fn device_feature_word(&self, select: u32) -> u32 {
        match self.kind {
            Kind::Mmio { base } => {
                write32(base + REG_DEVICE_FEATURES_SEL, select);
                read32(base + REG_DEVICE_FEATURES)
            }
            Kind::Pci { layout, .. } => {
                write32(layout.common + PCI_DEVICE_FEATURE_SELECT, select);
                read32(layout.common + PCI_DEVICE_FEATURE)
            }
        }
    }

    /// Accepts the 32 feature bits `value` of word `select`.
    fn set_driver_features(&self, select: u32, value: u32) {
        match self.kind {
            Kind::Mmio { base } => {
                write32(base + REG_DRIVER_FEATURES_SEL, select);
                write32(base + REG_DRIVER_FEATURES, value);
            }
            Kind::Pci { layout, .. } => {
                write32(layout.common + PCI_DRIVER_FEATURE_SELECT, select);
                write32(layout.common + PCI_DRIVER_FEATURE, value);
            }
        }
    }

    /// The 64 feature bits the device offers.
    fn device_features(&self) -> u64 {
        let high = self.device_feature_word(1);
        let low = self.device_feature_word(0);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Sets FAILED: the driver gives up on the device.
    fn fail(&self) {
        let status = self.status();
        self.set_status(status | STATUS_FAILED);
    }

    /// The largest size queue `index` supports (0: the queue does not exist).
    pub fn queue_num_max(&self, index: u16) -> u16 {
        match self.kind {
            Kind::Mmio { base } => {
                write32(base + REG_QUEUE_SEL, u32::from(index));
                read32(base + REG_QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16
            }
            Kind::Pci {
                layout, num_queues, ..
            } => {
                if index >= num_queues {
                    return 0;
                }
                // After a reset, queue_size reads as the maximum the device supports.
                write16(layout.common + PCI_QUEUE_SELECT, index);
                read16(layout.common + PCI_QUEUE_SIZE)
            }
        }
    }

    /// Hands queue `queue` (already sized no larger than its QueueNumMax) to the device.
    pub fn enable_queue(&self, queue: &Virtqueue) -> Result<(), DriverError> {
        self.enable_queue_as(queue, queue.size())
    }

    /// [`enable_queue`](Self::enable_queue), telling the device the queue has `size` entries
    /// whatever it really has (the hostile-guest catalogue lies about it).
    pub fn enable_queue_as(&self, queue: &Virtqueue, size: u16) -> Result<(), DriverError> {
        let index = queue.index();
        let (desc, driver, device) = queue.addresses();
        match self.kind {
            Kind::Mmio { base } => {
                write32(base + REG_QUEUE_SEL, u32::from(index));
                if read32(base + REG_QUEUE_READY) != 0 {
                    return Err(DriverError::QueueUnavailable(index));
                }
                write32(base + REG_QUEUE_NUM, u32::from(size));
                for (register, address) in [
                    (REG_QUEUE_DESC_LOW, desc),
                    (REG_QUEUE_DRIVER_LOW, driver),
                    (REG_QUEUE_DEVICE_LOW, device),
                ] {
                    write32(base + register, address as u32);
                    write32(base + register + 4, (address >> 32) as u32);
                }
                write32(base + REG_QUEUE_READY, 1);
            }
            Kind::Pci { layout, .. } => {
                let common = layout.common;
                write16(common + PCI_QUEUE_SELECT, index);
                if read16(common + PCI_QUEUE_ENABLE) != 0 {
                    return Err(DriverError::QueueUnavailable(index));
                }
                write16(common + PCI_QUEUE_SIZE, size);
                write16(common + PCI_QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
                for (field, address) in [
                    (PCI_QUEUE_DESC, desc),
                    (PCI_QUEUE_DRIVER, driver),
                    (PCI_QUEUE_DEVICE, device),
                ] {
                    write32(common + field, address as u32);
                    write32(common + field + 4, (address >> 32) as u32);
                }
                write16(common + PCI_QUEUE_ENABLE, 1);
            }
        }
        Ok(())
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&self) -> Result<(), DriverError> {
        let status = self.status();
        self.set_status(status | STATUS_DRIVER_OK);
        self.check()
    }

    /// Fails if the device has asked for a reset.
    pub fn check(&self) -> Result<(), DriverError> {
        if self.status() & STATUS_DEVICE_NEEDS_RESET != 0 {
            Err(DriverError::NeedsReset)
        } else {
            Ok(())
        }
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        match self.kind {
            Kind::Mmio { base } => write32(base + REG_QUEUE_NOTIFY, u32::from(index)),
            Kind::Pci {
                layout,
                notify_offsets,
                ..
            } => {
                let offset = match notify_offsets.get(usize::from(index)) {
                    Some(offset) => *offset,
                    None => {
                        write16(layout.common + PCI_QUEUE_SELECT, index);
                        read16(layout.common + PCI_QUEUE_NOTIFY_OFF)
                    }
                };
                let slot = u64::from(offset) * u64::from(layout.notify_multiplier);
                // A 16-bit write of the queue index (no VIRTIO_F_NOTIFICATION_DATA); a slot outside
                // the notification area would be a device bug, and is not written.
                if slot + 2 <= layout.notify_len {
                    write16(layout.notify + slot, index);
                }
            }
        }
    }

    /// The address of byte `offset` of the device configuration space.
    fn config_address(&self, offset: u64) -> u64 {
        match self.kind {
            Kind::Mmio { base } => base + CONFIG + offset,
            Kind::Pci { layout, .. } => layout.device + offset,
        }
    }

    fn config_generation(&self) -> u32 {
        match self.kind {
            Kind::Mmio { base } => read32(base + REG_CONFIG_GENERATION),
            Kind::Pci { layout, .. } => u32::from(read8(layout.common + PCI_CONFIG_GENERATION)),
        }
    }

    /// A byte of the configuration space.
    pub fn config_u8(&self, offset: u64) -> u8 {
        read8(self.config_address(offset))
    }

    /// A 64-bit field of the configuration space, read as two 32-bit halves and retried until the
    /// configuration generation shows both halves came from the same configuration.
    pub fn config_u64(&self, offset: u64) -> u64 {
        loop {
            let generation = self.config_generation();
            let low = read32(self.config_address(offset));
            let high = read32(self.config_address(offset + 4));
            if self.config_generation() == generation {
                return (u64::from(high) << 32) | u64::from(low);
            }
        }
    }
}
