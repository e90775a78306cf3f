//! Address buses that route guest port-I/O and MMIO accesses to devices.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices and finds the device that owns an
//! address. It does not know about KVM: the VMM calls [`Bus::read`] / [`Bus::write`] from its vCPU
//! exit handler, and unit tests call them directly. The same type serves the 16-bit port-I/O space
//! and the 64-bit MMIO space; [`BusKind`] only labels errors and logs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
///
/// `offset` is relative to the base of the range the device was registered at, so a device does
/// not need to know where it lives. `data.len()` is the access width (1, 2, 4 or 8 bytes for
/// port I/O and MMIO from a vCPU).
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`; fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the event loop, for serial input).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Which address space a bus serves, for error messages and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusKind {
    /// x86 port I/O (`in`/`out`), 16-bit addresses.
    Pio,
    /// Memory-mapped I/O, 64-bit guest physical addresses.
    Mmio,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusKind::Pio => f.write_str("port-I/O"),
            BusKind::Mmio => f.write_str("MMIO"),
        }
    }
}

/// A half-open address range `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange {
    /// First address of the range.
    pub base: u64,
    /// Number of addresses in the range; never zero.
    pub len: u64,
}

impl BusRange {
    /// Last address inside the range.
    fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.base, self.last())
    }
}

/// Errors from registering devices on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or runs past the end of the address space.
    #[error("{kind} range for device `{name}` is invalid: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// Bus the device was being added to.
        kind: BusKind,
        /// Name of the device being added.
        name: String,
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error(
        "{kind} range {new} for device `{name}` overlaps {existing} of device `{existing_name}`"
    )]
    Overlap {
        /// Bus the device was being added to.
        kind: BusKind,
        /// Name of the device being added.
        name: String,
        /// Range requested for it.
        new: BusRange,
        /// Name of the device already owning part of the range.
        existing_name: String,
        /// That device's range.
        existing: BusRange,
    },
}

struct Entry {
    range: BusRange,
    name: String,
    device: SharedDevice,
}

/// Routes accesses to the device that owns the address.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use devices::bus::{Bus, BusDevice, BusKind};
///
/// struct Scratch(u8);
/// impl BusDevice for Scratch {
///     fn read(&mut self, _offset: u64, data: &mut [u8]) { data.fill(self.0) }
///     fn write(&mut self, _offset: u64, data: &[u8]) { self.0 = data[0] }
/// }
///
/// let mut bus = Bus::new(BusKind::Pio);
/// bus.insert("scratch", 0x80, 1, Arc::new(Mutex::new(Scratch(0)))).unwrap();
/// assert!(bus.insert("other", 0x7f, 2, Arc::new(Mutex::new(Scratch(0)))).is_err());
/// assert!(bus.write(0x80, &[42]));
/// let mut byte = [0u8];
/// assert!(bus.read(0x80, &mut byte));
/// assert_eq!(byte, [42]);
/// assert!(!bus.read(0x81, &mut byte), "nothing lives at 0x81");
/// ```
pub struct Bus {
    kind: BusKind,
    entries: BTreeMap<u64, Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_map();
        for entry in self.entries.values() {
            list.entry(&entry.range.to_string(), &entry.name);
        }
        list.finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new(kind: BusKind) -> Self {
        Bus {
            kind,
            entries: BTreeMap::new(),
        }
    }

    /// Registers `device` at `[base, base + len)`.
    ///
    /// Fails if the range is empty, wraps around the address space, or overlaps any device
    /// already registered.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange {
                kind: self.kind,
                name: name.to_string(),
                base,
                len,
            });
        }
        let range = BusRange { base, len };
        // Only the nearest range at or below `range.last()` can overlap: ranges are disjoint.
        if let Some((_, existing)) = self.entries.range(..=range.last()).next_back() {
            if existing.range.overlaps(&range) {
                return Err(BusError::Overlap {
                    kind: self.kind,
                    name: name.to_string(),
                    new: range,
                    existing_name: existing.name.clone(),
                    existing: existing.range,
                });
            }
        }
        self.entries.insert(
            base,
            Entry {
                range,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    /// Finds the device owning `addr`, with the offset of `addr` inside its range.
    ///
    /// An access is routed only if all of `[addr, addr + width)` lies inside one device's range.
    fn resolve(&self, addr: u64, width: usize) -> Option<(&Entry, u64)> {
        let (_, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - entry.range.base;
        let end = offset.checked_add(width as u64)?;
        if width == 0 || end > entry.range.len {
            return None;
        }
        Some((entry, offset))
    }

    /// Dispatches a read. Returns `false` (leaving `data` untouched) when no device owns the
    /// whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((entry, offset)) = self.resolve(addr, data.len()) else {
            return false;
        };
        match entry.device.lock() {
            Ok(mut device) => device.read(offset, data),
            // A device whose lock was poisoned by a panic keeps answering: the guest must not
            // be able to wedge the VMM through one device.
            Err(poisoned) => poisoned.into_inner().read(offset, data),
        }
        true
    }

    /// Dispatches a write. Returns `false` when no device owns the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((entry, offset)) = self.resolve(addr, data.len()) else {
            return false;
        };
        match entry.device.lock() {
            Ok(mut device) => device.write(offset, data),
            Err(poisoned) => poisoned.into_inner().write(offset, data),
        }
        true
    }

    /// Number of devices on the bus.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no device is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access so tests can check offsets and widths.
    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = offset as u8 + i as u8;
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let shared: SharedDevice = dev.clone();
        (dev, shared)
    }

    #[test]
    fn routes_by_address_with_relative_offsets() {
        let mut bus = Bus::new(BusKind::Mmio);
        let (a, a_shared) = recorder();
        let (b, b_shared) = recorder();
        bus.insert("a", 0x1000, 0x100, a_shared).unwrap();
        bus.insert("b", 0x1100, 0x100, b_shared).unwrap();
        assert!(bus.write(0x1104, &[1, 2, 3, 4]));
        assert_eq!(b.lock().unwrap().last, Some((4, vec![1, 2, 3, 4])));
        assert!(a.lock().unwrap().last.is_none());
        let mut data = [0u8; 2];
        assert!(bus.read(0x10fe, &mut data));
        assert_eq!(data, [0xfe, 0xff]);
    }

    #[test]
    fn rejects_overlaps_on_either_side_and_inside() {
        let mut bus = Bus::new(BusKind::Pio);
        bus.insert("serial", 0x3f8, 8, recorder().1).unwrap();
        for (base, len) in [(0x3f0, 9), (0x3ff, 1), (0x3f9, 2), (0x300, 0x200)] {
            let err = bus.insert("x", base, len, recorder().1).unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { ref existing_name, .. } if existing_name == "serial"),
                "{base:#x}+{len:#x}: {err}"
            );
        }
        bus.insert("below", 0x3f0, 8, recorder().1).unwrap();
        bus.insert("above", 0x400, 8, recorder().1).unwrap();
        assert_eq!(bus.len(), 3);
    }

    #[test]
    fn rejects_empty_and_wrapping_ranges() {
        let mut bus = Bus::new(BusKind::Mmio);
        assert!(matches!(
            bus.insert("empty", 0x10, 0, recorder().1),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert("wrap", u64::MAX, 2, recorder().1),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert("top", u64::MAX, 1, recorder().1).unwrap();
    }

    #[test]
    fn accesses_straddling_a_device_end_or_unowned_are_not_routed() {
        let mut bus = Bus::new(BusKind::Mmio);
        let (dev, shared) = recorder();
        bus.insert("dev", 0x2000, 0x10, shared).unwrap();
        assert!(!bus.write(0x200e, &[0; 4]));
        assert!(!bus.write(0x1fff, &[0; 2]));
        assert!(!bus.write(0x3000, &[0]));
        assert!(!bus.write(u64::MAX, &[0; 8]));
        assert!(dev.lock().unwrap().last.is_none());
        let mut data = [0xaau8; 1];
        assert!(!bus.read(0x1000, &mut data));
        assert_eq!(data, [0xaa], "an unrouted read leaves the buffer alone");
    }
}
