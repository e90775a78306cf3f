//! The guest resources devices are placed in: MMIO windows for virtio-mmio, the PCI host
//! bridge's BAR windows, legacy interrupt lines and GSIs for MSI routes.
//!
//! Each comes from a rust-vmm `vm-allocator` allocator, so nothing is handed out twice and what
//! a device held can be given back (the `free_*` calls; device removal will use them).

use std::ops::Range;

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::layout;

/// First virtio-mmio window, in the 32-bit device hole below the IOAPIC.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Room for virtio-mmio windows (the PCI ECAM window follows).
pub const MMIO_DEVICES_SIZE: u64 = 0x10_0000;
/// Size of one virtio-mmio window.
pub use devices::virtio::mmio::MMIO_WINDOW_SIZE;
/// Interrupt line of the ACPI Generic Event Device (the power button), edge-triggered.
pub const GED_IRQ: u32 = 23;
/// ISA/IOAPIC lines handed to devices: 5 to 22, except 8 (RTC). 0 timer, 1 keyboard,
/// 2 cascade, 3-4 serial and [`GED_IRQ`] are outside the range.
const LEGACY_IRQS: Range<u32> = 5..23;
/// Lines inside [`LEGACY_IRQS`] that are taken by legacy devices.
const RESERVED_IRQS: [u32; 1] = [8];
/// GSIs 0..24 are the IOAPIC's pins; MSI routes start after them.
pub const MSI_GSI_START: u32 = 24;
/// Most GSI routes KVM accepts.
pub const MAX_GSI_ROUTES: u32 = 4096;

/// The host bridge's resources, for the ACPI tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHostInfo {
    /// ECAM window for bus 0.
    pub ecam: Range<u64>,
    /// 32-bit BAR window.
    pub mmio32: Range<u64>,
    /// 64-bit BAR window.
    pub mmio64: Range<u64>,
}

impl PciHostInfo {
    /// Keel's windows for a VM with `memory_bytes` of RAM.
    pub fn for_memory(memory_bytes: u64) -> Self {
        PciHostInfo {
            ecam: layout::PCI_ECAM_START..layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE,
            mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE,
            mmio64: layout::pci_mmio64_window(memory_bytes),
        }
    }
}

/// Why a resource could not be handed out or given back.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// An allocator could not be set up over its range (an empty or wrapping window).
    #[error("cannot manage {what} {start:#x}..{end:#x}: {source}")]
    Range {
        /// Which resource.
        what: &'static str,
        /// Start of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
        /// Cause.
        source: vm_allocator::Error,
    },
    /// Something given back belongs to a built-in device.
    #[error("{what} {start:#x} belongs to a built-in device and is never handed out")]
    Reserved {
        /// Which resource.
        what: &'static str,
        /// It.
        start: u64,
    },
    /// Something given back was not handed out.
    #[error("{what} {start:#x}+{len:#x} was not allocated: {source}")]
    NotAllocated {
        /// Which resource.
        what: &'static str,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
        /// Cause.
        source: vm_allocator::Error,
    },
}

/// One allocator over `range`, naming what it hands out in errors.
#[derive(Debug)]
struct Pool {
    what: &'static str,
    allocator: AddressAllocator,
}

impl Pool {
    fn new(what: &'static str, range: Range<u64>) -> Result<Self, ResourceError> {
        let allocator = AddressAllocator::new(range.start, range.end.saturating_sub(range.start))
            .map_err(|source| ResourceError::Range {
                what,
                start: range.start,
                end: range.end,
                source,
            })?;
        Ok(Pool { what, allocator })
    }

    /// `len` units aligned to `align` (a power of two), at the lowest free place.
    fn take(&mut self, len: u64, align: u64) -> Option<u64> {
        self.allocator
            .allocate(len, align, AllocPolicy::FirstMatch)
            .ok()
            .map(|range| range.start())
    }

    /// Exactly `start..start + len`.
    fn reserve(&mut self, start: u64, len: u64) -> Result<(), ResourceError> {
        self.allocator
            .allocate(len, 1, AllocPolicy::ExactMatch(start))
            .map(drop)
            .map_err(|source| self.not_allocated(start, len, source))
    }

    fn give_back(&mut self, start: u64, len: u64) -> Result<(), ResourceError> {
        let end = start.saturating_add(len.saturating_sub(1));
        let range = RangeInclusive::new(start, end)
            .map_err(|source| self.not_allocated(start, len, source))?;
        self.allocator
            .free(&range)
            .map_err(|source| self.not_allocated(start, len, source))
    }

    fn not_allocated(&self, start: u64, len: u64, source: vm_allocator::Error) -> ResourceError {
        ResourceError::NotAllocated {
            what: self.what,
            start,
            len,
            source,
        }
    }
}

/// Every resource a VM's devices draw from.
#[derive(Debug)]
pub struct Resources {
    host: PciHostInfo,
    mmio_windows: Pool,
    legacy_irqs: Pool,
    msi_gsis: Pool,
    bars: [Pool; 2],
}

impl Resources {
    /// The resources of a VM with `memory_bytes` of RAM.
    pub fn new(memory_bytes: u64) -> Result<Self, ResourceError> {
        let host = PciHostInfo::for_memory(memory_bytes);
        let mut legacy_irqs = Pool::new(
            "interrupt line",
            u64::from(LEGACY_IRQS.start)..u64::from(LEGACY_IRQS.end),
        )?;
        for irq in RESERVED_IRQS {
            legacy_irqs.reserve(u64::from(irq), 1)?;
        }
        Ok(Resources {
            mmio_windows: Pool::new(
                "virtio-mmio window",
                MMIO_DEVICES_START..MMIO_DEVICES_START + MMIO_DEVICES_SIZE,
            )?,
            legacy_irqs,
            msi_gsis: Pool::new(
                "MSI GSI",
                u64::from(MSI_GSI_START)..u64::from(MAX_GSI_ROUTES),
            )?,
            bars: [
                Pool::new("32-bit BAR space", host.mmio32.clone())?,
                Pool::new("64-bit BAR space", host.mmio64.clone())?,
            ],
            host,
        })
    }

    /// The PCI host bridge's windows.
    pub fn pci_host(&self) -> &PciHostInfo {
        &self.host
    }

    /// A virtio-mmio window of [`MMIO_WINDOW_SIZE`] bytes.
    pub fn mmio_window(&mut self) -> Option<u64> {
        self.mmio_windows
            .take(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE)
    }

    /// An edge-triggered interrupt line of the IOAPIC (and, below 16, the PICs).
    pub fn legacy_irq(&mut self) -> Option<u32> {
        self.legacy_irqs
            .take(1, 1)
            .and_then(|irq| u32::try_from(irq).ok())
    }

    /// A naturally aligned BAR of `size` bytes (a power of two), from the 32-bit window while
    /// it has room, then from the 64-bit one.
    pub fn bar(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        self.bars.iter_mut().find_map(|pool| pool.take(size, size))
    }

    /// `count` consecutive GSIs for a device's MSI-X vectors.
    pub fn msi_gsis(&mut self, count: u16) -> Option<Range<u32>> {
        let start = self.msi_gsis.take(u64::from(count.max(1)), 1)?;
        let start = u32::try_from(start).ok()?;
        Some(start..start + u32::from(count))
    }

    /// Gives back a virtio-mmio window.
    #[allow(dead_code)] // device removal; exercised by the tests
    pub fn free_mmio_window(&mut self, base: u64) -> Result<(), ResourceError> {
        self.mmio_windows.give_back(base, MMIO_WINDOW_SIZE)
    }

    /// Gives back an interrupt line.
    #[allow(dead_code)] // device removal; exercised by the tests
    pub fn free_legacy_irq(&mut self, irq: u32) -> Result<(), ResourceError> {
        if RESERVED_IRQS.contains(&irq) {
            return Err(ResourceError::Reserved {
                what: self.legacy_irqs.what,
                start: u64::from(irq),
            });
        }
        self.legacy_irqs.give_back(u64::from(irq), 1)
    }

    /// Gives back a BAR.
    #[allow(dead_code)] // device removal; exercised by the tests
    pub fn free_bar(&mut self, address: u64, size: u64) -> Result<(), ResourceError> {
        let in_low = self.host.mmio32.contains(&address);
        self.bars[usize::from(!in_low)].give_back(address, size)
    }

    /// Gives back GSIs (a device's MSI routes).
    pub fn free_msi_gsis(&mut self, gsis: Range<u32>) -> Result<(), ResourceError> {
        let len = u64::from(gsis.end.saturating_sub(gsis.start)).max(1);
        self.msi_gsis.give_back(u64::from(gsis.start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> Resources {
        Resources::new(512 << 20).unwrap()
    }

    #[test]
    fn interrupt_lines_skip_the_rtc_and_come_back_when_freed() {
        let mut res = resources();
        let lines: Vec<u32> = std::iter::from_fn(|| res.legacy_irq()).collect();
        assert_eq!(lines, [5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]);
        res.free_legacy_irq(10).unwrap();
        assert_eq!(res.legacy_irq(), Some(10), "a freed line is handed out again");
        assert!(res.free_legacy_irq(8).is_err(), "the RTC's line is never given");
        assert!(res.free_legacy_irq(4).is_err(), "outside the range");
    }

    #[test]
    fn bars_are_aligned_and_spill_into_the_64_bit_window() {
        let mut res = resources();
        let host = res.pci_host().clone();
        let low = host.mmio32.end - host.mmio32.start;
        let first = res.bar(0x8000).unwrap();
        assert_eq!(first, host.mmio32.start);
        assert_eq!(res.bar(0x1000), Some(host.mmio32.start + 0x8000));
        // The rest of the low window in one piece, then the next one spills over.
        let rest = res.bar(low / 2).unwrap();
        assert_eq!(rest % (low / 2), 0);
        let high = res.bar(low / 2).unwrap();
        assert!(host.mmio64.contains(&high), "{high:#x}");
        assert_eq!(res.bar(0x3000), None, "not a power of two");
        res.free_bar(first, 0x8000).unwrap();
        assert_eq!(res.bar(0x8000), Some(first), "a freed BAR is reused");
        assert!(res.free_bar(first + 0x10_0000, 0x8000).is_err());
    }

    #[test]
    fn gsi_ranges_are_consecutive_and_bounded() {
        let mut res = resources();
        let first = res.msi_gsis(3).unwrap();
        let second = res.msi_gsis(2).unwrap();
        assert_eq!((first.clone(), second), (24..27, 27..29));
        assert!(res.msi_gsis(5000).is_none());
        res.free_msi_gsis(first).unwrap();
        assert_eq!(res.msi_gsis(3), Some(24..27));
    }

    #[test]
    fn mmio_windows_stay_below_the_ecam_window() {
        let mut res = resources();
        let windows: Vec<u64> = std::iter::from_fn(|| res.mmio_window()).collect();
        assert_eq!(windows.len() as u64, MMIO_DEVICES_SIZE / MMIO_WINDOW_SIZE);
        assert_eq!(windows[1], MMIO_DEVICES_START + MMIO_WINDOW_SIZE);
        let last = windows.last().unwrap() + MMIO_WINDOW_SIZE;
        assert!(last <= res.pci_host().ecam.start);
        res.free_mmio_window(windows[3]).unwrap();
        assert_eq!(res.mmio_window(), Some(windows[3]));
    }

    #[test]
    fn windows_avoid_ram_the_ioapic_and_virtio_mmio() {
        for memory in [128u64 << 20, 3 << 30, 8 << 30] {
            let host = PciHostInfo::for_memory(memory);
            let ram_end = layout::ram_regions(memory)
                .iter()
                .map(|(start, size)| start.0 + size)
                .max()
                .unwrap();
            assert!(host.mmio64.start >= ram_end.max(layout::MMIO_GAP_END));
            assert!(host.mmio32.start >= layout::MMIO_GAP_START);
            assert!(host.mmio32.end <= MMIO_DEVICES_START);
            assert!(host.ecam.start >= MMIO_DEVICES_START + MMIO_DEVICES_SIZE);
            assert!(host.ecam.end <= layout::IOAPIC_START);
        }
    }
}
