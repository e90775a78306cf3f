//! The driver side of the virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2 and 4.2.3).
//!
//! [`Transport`] wraps one register window: identification, the status handshake, feature
//! negotiation, queue set-up and notification, and the device configuration space. Every access is
//! a 32-bit (configuration space: 8- or 32-bit) volatile read or write; the window lies in the
//! uncached top GiB of the guest's identity map.

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
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
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
        }
    }
}

/// One virtio-mmio register window.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    base: u64,
}

impl Transport {
    /// The window at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be the identity-mapped address of a virtio-mmio register window of at least
    /// 0x100 bytes plus the configuration space the driver reads; nothing else may drive it.
    pub unsafe fn new(base: u64) -> Self {
        Self { base }
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: `new`'s contract: the window is mapped MMIO; a 32-bit aligned read of a register
        // has no effect on the guest's memory.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as for `read`; register writes affect only the device (and, through addresses the
        // driver hands over, DMA memory the drivers own).
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// The magic value (should be [`MAGIC`]).
    pub fn magic(&self) -> u32 {
        self.read(REG_MAGIC)
    }

    /// The interface version (should be [`VERSION_MODERN`]).
    pub fn version(&self) -> u32 {
        self.read(REG_VERSION)
    }

    /// The device type (0: no device behind this window).
    pub fn device_id(&self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    /// Resets the device (status 0) and waits, boundedly, for the reset to show.
    pub fn reset(&self) {
        self.write(REG_STATUS, 0);
        for _ in 0..1000 {
            if self.read(REG_STATUS) == 0 {
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
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = self.device_features();
        let required = required | 1 << F_VERSION_1;
        if let Some(bit) = (0..64).find(|bit| required & !offered & (1 << bit) != 0) {
            self.fail();
            return Err(DriverError::MissingFeature(bit));
        }
        let accepted = offered & (required | wanted);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, accepted as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (accepted >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(REG_STATUS, status);
        if self.read(REG_STATUS) & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err(DriverError::FeaturesRefused(accepted));
        }
        Ok(accepted)
    }

    /// The 64 feature bits the device offers.
    fn device_features(&self) -> u64 {
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read(REG_DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Sets FAILED: the driver gives up on the device.
    fn fail(&self) {
        let status = self.read(REG_STATUS);
        self.write(REG_STATUS, status | STATUS_FAILED);
    }

    /// The largest size queue `index` supports (0: the queue does not exist).
    pub fn queue_num_max(&self, index: u16) -> u16 {
        self.write(REG_QUEUE_SEL, u32::from(index));
        self.read(REG_QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16
    }

    /// Hands queue `queue` (already sized no larger than its QueueNumMax) to the device.
    pub fn enable_queue(&self, queue: &Virtqueue) -> Result<(), DriverError> {
        let index = queue.index();
        self.write(REG_QUEUE_SEL, u32::from(index));
        if self.read(REG_QUEUE_READY) != 0 {
            return Err(DriverError::QueueUnavailable(index));
        }
        self.write(REG_QUEUE_NUM, u32::from(queue.size()));
        let (desc, driver, device) = queue.addresses();
        self.write(REG_QUEUE_DESC_LOW, desc as u32);
        self.write(REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(REG_QUEUE_DRIVER_LOW, driver as u32);
        self.write(REG_QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
        self.write(REG_QUEUE_DEVICE_LOW, device as u32);
        self.write(REG_QUEUE_DEVICE_HIGH, (device >> 32) as u32);
        self.write(REG_QUEUE_READY, 1);
        Ok(())
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&self) -> Result<(), DriverError> {
        let status = self.read(REG_STATUS);
        self.write(REG_STATUS, status | STATUS_DRIVER_OK);
        self.check()
    }

    /// Fails if the device has asked for a reset.
    pub fn check(&self) -> Result<(), DriverError> {
        if self.read(REG_STATUS) & STATUS_DEVICE_NEEDS_RESET != 0 {
            Err(DriverError::NeedsReset)
        } else {
            Ok(())
        }
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        self.write(REG_QUEUE_NOTIFY, u32::from(index));
    }

    /// A byte of the configuration space.
    pub fn config_u8(&self, offset: u64) -> u8 {
        // SAFETY: as for `read`; byte access to the configuration space is allowed by the spec.
        unsafe { core::ptr::read_volatile((self.base + CONFIG + offset) as *const u8) }
    }

    /// A 64-bit field of the configuration space, read as two 32-bit halves and retried until the
    /// configuration generation shows both halves came from the same configuration.
    pub fn config_u64(&self, offset: u64) -> u64 {
        loop {
            let generation = self.read(REG_CONFIG_GENERATION);
            let low = self.read(CONFIG + offset);
            let high = self.read(CONFIG + offset + 4);
            if self.read(REG_CONFIG_GENERATION) == generation {
                return (u64::from(high) << 32) | u64::from(low);
            }
        }
    }
}
