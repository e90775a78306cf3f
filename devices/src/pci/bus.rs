//! PCI segment 0, bus 0: up to 32 single-function devices, a host bridge at 00:00.0, and the
//! three ways the guest reaches them.
//!
//! - [`PciConfigIo`]: the legacy configuration mechanism #1, ports 0xCF8 (address) and
//!   0xCFC..0xCFF (data).
//! - [`PciConfigMmio`]: ECAM (enhanced configuration access), a 1 MiB window for bus 0 where
//!   `offset = device << 15 | function << 12 | register`.
//! - [`PciMmioWindow`]: a window of guest physical addresses that BARs are placed in; it routes
//!   each access to the BAR that decodes it, so a driver may move BARs without the VMM's MMIO
//!   bus being rebuilt.
//!
//! All three share one [`PciBus`] behind a mutex. Functions other than 0, buses other than 0
//! and empty slots read as all ones, as on real hardware. It deliberately does not model
//! bridges, multi-function devices, I/O BARs or INTx routing.
//!
//! When the guest moves a BAR, the bus re-routes it and tells every
//! [`BarRelocationListener`] where the BAR was and now is decoded ([`BarRelocation`]), so the
//! VMM can move what it keeps at BAR addresses outside the bus (KVM ioeventfds on a virtio
//! notification area). The bus keeps decoding a BAR at its last applied address while the
//! driver has memory decoding turned off (see [`PciConfiguration::take_bar_moves`]); listeners
//! therefore see exactly the bus's own address map, and an address is never decoded for two
//! BARs.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use devices::bus::BusDevice;
//! use devices::pci::bus::{PciBus, PciConfigIo};
//!
//! let bus = Arc::new(Mutex::new(PciBus::new()));
//! let mut io = PciConfigIo::new(bus);
//! io.write(0, &0x8000_0000u32.to_le_bytes()); // 00:00.0, register 0
//! let mut id = [0u8; 4];
//! io.read(4, &mut id);
//! assert_eq!(u32::from_le_bytes(id) & 0xffff, 0x1b36, "the host bridge answers");
//! io.write(0, &0x8000_0800u32.to_le_bytes()); // 00:01.0: nobody there
//! io.read(4, &mut id);
//! assert_eq!(id, [0xff; 4]);
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;

use super::configuration::{BarInfo, BarMove, PciConfiguration, PciHeader, NUM_REGISTERS};
use crate::bus::BusDevice;

/// Device slots on a bus.
pub const MAX_DEVICES: usize = 32;
/// First port of the configuration mechanism #1 (address register).
pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports covered by [`PciConfigIo`] (0xCF8..=0xCFF).
pub const PCI_CONFIG_IO_PORT_LEN: u64 = 8;
/// Size of the ECAM window for one bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// Bytes of config space per function in ECAM (conventional 256 plus extended).
const ECAM_FUNCTION_SIZE: u64 = 0x1000;
/// Address register bit: the data port accesses config space.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;

/// Vendor ID of the host bridge (Red Hat, Inc., as QEMU's generic PCIe host bridge).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
/// Class code of a host bridge.
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// A function on the PCI bus.
pub trait PciDevice: Send {
    /// Reads dword register `reg` of config space (0..1024; extended space reads as zero).
    fn read_config_register(&mut self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` of dword register `reg`; returns the BARs the write moved.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarMove>;
    /// The memory BARs at the addresses they are decoded at.
    fn bars(&self) -> Vec<BarInfo>;
    /// Reads `data.len()` bytes at `offset` inside BAR `index`.
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` inside BAR `index`.
    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]);
}

/// A PCI function shared between the bus and its owner.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The bus re-routed a BAR the guest moved: where it was decoded before and where it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRelocation {
    /// Device number (slot) of the function on bus 0.
    pub slot: u8,
    /// BAR index.
    pub index: usize,
    /// BAR size in bytes.
    pub size: u64,
    /// Address the bus decoded the BAR at until now; `None` when it decoded it nowhere (an
    /// earlier move put it on top of another BAR).
    pub old_address: Option<u64>,
    /// Address the bus decodes the BAR at from now on; `None` when the new address overlaps
    /// another BAR or wraps around, so that nothing decodes it.
    pub new_address: Option<u64>,
}

/// Learns about every BAR relocation on a bus (the VMM's side of BAR moves; the bus itself knows
/// nothing of KVM).
///
/// Called on the vCPU thread whose config write moved the BAR, with the bus locked and before
/// that write completes: the guest cannot reach the BAR at its new address through the bus
/// until the listener returns. A listener must not lock the bus.
pub trait BarRelocationListener: Send + Sync {
    /// The BAR described by `relocation` moved.
    fn bar_relocated(&self, relocation: &BarRelocation);
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The host bridge at 00:00.0: identity only, no BARs.
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// A host bridge header.
    pub fn new() -> Self {
        PciHostBridge {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision: 0,
                class_code: CLASS_HOST_BRIDGE,
                subsystem_vendor_id: HOST_BRIDGE_VENDOR_ID,
                subsystem_id: 0x1100,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config.read_register(reg)
    }
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarMove> {
        self.config.write_register(reg, offset, data)
    }
    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }
    fn read_bar(&mut self, _index: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _index: usize, _offset: u64, _data: &[u8]) {}
}

/// Errors adding a device to the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciBusError {
    /// All 32 slots are taken.
    #[error("PCI device `{name}`: no free slot on bus 0 ({MAX_DEVICES} devices at most)")]
    NoFreeSlot {
        /// Device name.
        name: String,
    },
    /// A BAR overlaps one already on the bus.
    #[error(
        "PCI device `{name}`: BAR {index} at {address:#x} (size {size:#x}) overlaps another BAR"
    )]
    BarOverlap {
        /// Device name.
        name: String,
        /// BAR index.
        index: usize,
        /// BAR address.
        address: u64,
        /// BAR size.
        size: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct BarMapping {
    size: u64,
    slot: u8,
    index: usize,
}

struct Slot {
    name: String,
    device: SharedPciDevice,
}

/// Bus 0 of segment 0: devices by slot and the address map of their BARs.
pub struct PciBus {
    slots: Vec<Option<Slot>>,
    bars: BTreeMap<u64, BarMapping>,
    listeners: Vec<Arc<dyn BarRelocationListener>>,
    /// The address ranges the VMM routes to this bus (empty: not declared, anything goes).
    windows: Vec<std::ops::Range<u64>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with only the host bridge, at slot 0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Slot>> = (0..MAX_DEVICES).map(|_| None).collect();
        slots[0] = Some(Slot {
            name: "host-bridge".to_string(),
            device: Arc::new(Mutex::new(PciHostBridge::new())),
        });
        PciBus {
            slots,
            bars: BTreeMap::new(),
            listeners: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// Declares a range of guest addresses the VMM routes to this bus (one per
    /// [`PciMmioWindow`]). Once any is declared, a BAR the guest moves outside every window is
    /// not decoded: the VMM would never route accesses there, and relocation listeners must not
    /// act on an address that belongs to RAM or another device.
    pub fn add_bar_window(&mut self, window: std::ops::Range<u64>) {
        self.windows.push(window);
    }

    /// Whether `size` bytes at `address` lie inside one declared window (or none is declared).
    fn inside_windows(&self, address: u64, size: u64) -> bool {
        let Some(end) = address.checked_add(size) else {
            return false;
        };
        self.windows.is_empty()
            || self
                .windows
                .iter()
                .any(|w| w.start <= address && end <= w.end)
    }

    /// Tells `listener` about every BAR the bus re-routes from now on.
    pub fn add_relocation_listener(&mut self, listener: Arc<dyn BarRelocationListener>) {
        self.listeners.push(listener);
    }

    /// Puts `device` in the first free slot and maps its BARs; returns the slot (device number).
    pub fn add_device(&mut self, name: &str, device: SharedPciDevice) -> Result<u8, PciBusError> {
        // The bus has MAX_DEVICES (32) slots, so the index of a free one is a device number.
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .and_then(|index| u8::try_from(index).ok())
            .ok_or_else(|| PciBusError::NoFreeSlot {
                name: name.to_string(),
            })?;
        let bars = lock(&device).bars();
        for bar in &bars {
            if self.overlapping(bar.address, bar.size).is_some() {
                return Err(PciBusError::BarOverlap {
                    name: name.to_string(),
                    index: bar.index,
                    address: bar.address,
                    size: bar.size,
                });
            }
        }
        for bar in bars {
            self.map_bar(slot, bar.index, bar.address, bar.size);
        }
        self.slots[usize::from(slot)] = Some(Slot {
            name: name.to_string(),
            device,
        });
        Ok(slot)
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| s.device.clone())
    }

    /// The BAR mappings as `(address, size, slot, bar index)`, in address order.
    pub fn bar_map(&self) -> Vec<(u64, u64, u8, usize)> {
        self.bars
            .iter()
            .map(|(address, m)| (*address, m.size, m.slot, m.index))
            .collect()
    }

    fn overlapping(&self, address: u64, size: u64) -> Option<u64> {
        let last = address.checked_add(size.checked_sub(1)?)?;
        let (base, mapping) = self.bars.range(..=last).next_back()?;
        (base + (mapping.size - 1) >= address).then_some(*base)
    }

    fn map_bar(&mut self, slot: u8, index: usize, address: u64, size: u64) {
        self.bars.insert(address, BarMapping { size, slot, index });
    }

    fn apply_moves(&mut self, slot: u8, moves: Vec<BarMove>) {
        for bar_move in moves {
            let name = self
                .slots
                .get(usize::from(slot))
                .and_then(Option::as_ref)
                .map_or("?", |s| s.name.as_str());
            debug!(
                "pci: {name} BAR {} moved {:#x} -> {:#x}",
                bar_move.index, bar_move.old_address, bar_move.new_address
            );
            let old_address = match self.bars.get(&bar_move.old_address) {
                Some(mapping) if mapping.slot == slot && mapping.index == bar_move.index => {
                    self.bars.remove(&bar_move.old_address);
                    Some(bar_move.old_address)
                }
                _ => None,
            };
            let new_address = if bar_move.new_address.checked_add(bar_move.size).is_none()
                || !self.inside_windows(bar_move.new_address, bar_move.size)
                || self
                    .overlapping(bar_move.new_address, bar_move.size)
                    .is_some()
            {
                crate::guest_warn!(
                    "pci: {name} BAR {} moved to {:#x}, which overlaps another BAR, wraps or lies outside the PCI windows; it is not decoded",
                    bar_move.index, bar_move.new_address
                );
                None
            } else {
                self.map_bar(slot, bar_move.index, bar_move.new_address, bar_move.size);
                Some(bar_move.new_address)
            };
            if old_address == new_address {
                continue;
            }
            let relocation = BarRelocation {
                slot,
                index: bar_move.index,
                size: bar_move.size,
                old_address,
                new_address,
            };
            for listener in &self.listeners {
                listener.bar_relocated(&relocation);
            }
        }
    }

    /// Reads dword register `reg` of `device.function`; absent functions read all ones.
    pub fn read_config(&self, device: u8, function: u8, reg: usize) -> u32 {
        if function != 0 {
            return 0xffff_ffff;
        }
        match self.device(device) {
            Some(d) => lock(&d).read_config_register(reg),
            None => 0xffff_ffff,
        }
    }

    /// Writes `data` at byte `offset` of register `reg` of `device.function`, then re-routes
    /// any BAR the write moved. Writes to absent functions are dropped.
    pub fn write_config(&mut self, device: u8, function: u8, reg: usize, offset: u64, data: &[u8]) {
        if function != 0 {
            return;
        }
        let Some(shared) = self.device(device) else {
            return;
        };
        let moves = lock(&shared).write_config_register(reg, offset, data);
        if !moves.is_empty() {
            self.apply_moves(device, moves);
        }
    }

    /// The device, BAR and offset that decode `[address, address + len)`.
    pub fn resolve_bar(&self, address: u64, len: usize) -> Option<(SharedPciDevice, usize, u64)> {
        let (base, mapping) = self.bars.range(..=address).next_back()?;
        let offset = address - base;
        if offset.checked_add(len as u64)? > mapping.size {
            return None;
        }
        let device = self
            .slots
            .get(usize::from(mapping.slot))?
            .as_ref()?
            .device
            .clone();
        Some((device, mapping.index, offset))
    }
}

/// Reads `data.len()` bytes at byte `offset` of a dword register value.
fn extract(value: u32, offset: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    data.copy_from_slice(&bytes[offset..offset + data.len()]);
}

/// The byte of the selected dword that an access at `offset` (4..=7, the data port) starts at:
/// `offset - 4`, computed as `offset % 4`, which is below 4 whatever `offset` is.
fn data_port_byte(offset: u64) -> usize {
    (offset % 4) as usize
}

/// Whether a config access of `len` bytes at byte `offset` of a dword is well formed.
fn valid_access(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) && offset + len <= 4
}

/// Configuration mechanism #1 on ports 0xCF8..=0xCFF.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

impl PciConfigIo {
    /// Config access to `bus` through ports (register it at [`PCI_CONFIG_IO_PORT`]).
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    /// `(device, function, register)` selected by the address register, if enabled and on
    /// bus 0.
    fn target(&self) -> Option<(u8, u8, usize)> {
        if self.address & CONFIG_ADDRESS_ENABLE == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        Some((
            ((self.address >> 11) & 0x1f) as u8,
            ((self.address >> 8) & 0x7) as u8,
            ((self.address >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => {
                let byte = data_port_byte(offset);
                match self.target() {
                    Some((device, function, reg)) if valid_access(byte, data.len()) => {
                        let value = lock(&self.bus).read_config(device, function, reg);
                        extract(value, byte, data);
                    }
                    _ => data.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => {
                // Only dword writes select a register; byte writes to 0xCF8..0xCFB are other
                // chipset registers (Linux probes with `outb 0xCFB`).
                if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                    self.address = u32::from_le_bytes(bytes);
                }
            }
            4..=7 => {
                let byte = data_port_byte(offset);
                if let Some((device, function, reg)) = self.target() {
                    if valid_access(byte, data.len()) {
                        lock(&self.bus).write_config(device, function, reg, byte as u64, data);
                    }
                }
            }
            _ => debug!("pci config io: write at offset {offset} ignored"),
        }
    }
}

/// ECAM for bus 0: a 1 MiB MMIO window ([`ECAM_BUS_SIZE`]).
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    /// ECAM access to `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciConfigMmio { bus }
    }

    /// `(device, function, register, byte)` of an ECAM offset on bus 0.
    fn decode(offset: u64, len: usize) -> Option<(u8, u8, usize, usize)> {
        if offset >= ECAM_BUS_SIZE {
            return None;
        }
        let in_function = usize::try_from(offset % ECAM_FUNCTION_SIZE).ok()?;
        let byte = in_function % 4;
        if !valid_access(byte, len) {
            return None;
        }
        Some((
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            in_function / 4,
            byte,
        ))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some((device, function, reg, byte)) = Self::decode(offset, data.len()) else {
            data.fill(0xff);
            return;
        };
        let bus = lock(&self.bus);
        let value = if reg >= NUM_REGISTERS && bus.read_config(device, function, 0) != 0xffff_ffff {
            // Extended config space of a present function: nothing there.
            0
        } else {
            bus.read_config(device, function, reg)
        };
        extract(value, byte, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((device, function, reg, byte)) = Self::decode(offset, data.len()) {
            if reg < NUM_REGISTERS {
                lock(&self.bus).write_config(device, function, reg, byte as u64, data);
            }
        }
    }
}

/// A range of guest physical addresses that PCI BARs live in (register one per MMIO window);
/// accesses are routed to the BAR decoding them, the rest read all ones.
pub struct PciMmioWindow {
    bus: Arc<Mutex<PciBus>>,
    base: u64,
}

impl PciMmioWindow {
    /// A window starting at guest physical address `base`.
    pub fn new(bus: Arc<Mutex<PciBus>>, base: u64) -> Self {
        PciMmioWindow { bus, base }
    }

    fn resolve(&self, offset: u64, len: usize) -> Option<(SharedPciDevice, usize, u64)> {
        let address = self.base.checked_add(offset)?;
        // The bus lock is released before the device is locked: a device's BAR handler may
        // take a while (virtio queue processing) and must not stall config accesses.
        lock(&self.bus).resolve_bar(address, len)
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.resolve(offset, data.len()) {
            Some((device, index, bar_offset)) => lock(&device).read_bar(index, bar_offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((device, index, bar_offset)) = self.resolve(offset, data.len()) {
            lock(&device).write_bar(index, bar_offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::{COMMAND_MEMORY_SPACE, REG_BAR0, REG_COMMAND_STATUS};

    /// An endpoint with one 64-bit BAR that records BAR accesses.
    struct Endpoint {
        config: PciConfiguration,
        last_write: Option<(usize, u64, Vec<u8>)>,
    }

    impl Endpoint {
        fn shared(bar_address: u64) -> Arc<Mutex<Endpoint>> {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1af4,
                device_id: 0x1044,
                revision: 1,
                class_code: 0xff_00_00,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x40,
            });
            config.add_memory_bar(0, 0x1000, bar_address).unwrap();
            Arc::new(Mutex::new(Endpoint {
                config,
                last_write: None,
            }))
        }
    }

    impl PciDevice for Endpoint {
        fn read_config_register(&mut self, reg: usize) -> u32 {
            self.config.read_register(reg)
        }
        fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarMove> {
            self.config.write_register(reg, offset, data)
        }
        fn bars(&self) -> Vec<BarInfo> {
            self.config.bars()
        }
        fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
            data.fill(index as u8 + offset as u8);
        }
        fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((index, offset, data.to_vec()));
        }
    }

    fn address(device: u32, function: u32, reg: u32) -> [u8; 4] {
        (CONFIG_ADDRESS_ENABLE | device << 11 | function << 8 | reg << 2).to_le_bytes()
    }

    fn io_read(io: &mut PciConfigIo, device: u32, reg: u32, port_offset: u64, len: usize) -> u32 {
        io.write(0, &address(device, 0, reg));
        let mut data = vec![0u8; len];
        io.read(4 + port_offset, &mut data);
        data.resize(4, 0);
        u32::from_le_bytes(data.try_into().unwrap())
    }

    #[test]
    fn cf8_cfc_reads_identity_by_byte_word_and_dword() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let slot = lock(&bus)
            .add_device("ep", Endpoint::shared(0xc000_0000))
            .unwrap();
        assert_eq!(slot, 1);
        let mut io = PciConfigIo::new(bus);
        assert_eq!(io_read(&mut io, 1, 0, 0, 4), 0x1044_1af4);
        assert_eq!(io_read(&mut io, 1, 0, 2, 2), 0x1044);
        assert_eq!(io_read(&mut io, 1, 0, 1, 1), 0x1a);
        assert_eq!(io_read(&mut io, 1, 2, 3, 1), 0xff, "class code base byte");
        assert_eq!(io_read(&mut io, 0, 2, 0, 4) >> 8, CLASS_HOST_BRIDGE);
        // The address register reads back.
        let mut back = [0u8; 4];
        io.read(0, &mut back);
        assert_eq!(back, address(0, 0, 2));
    }

    #[test]
    fn absent_devices_functions_and_buses_read_all_ones() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let mut io = PciConfigIo::new(bus);
        assert_eq!(io_read(&mut io, 5, 0, 0, 4), 0xffff_ffff);
        io.write(0, &address(0, 1, 0));
        let mut data = [0u8; 4];
        io.read(4, &mut data);
        assert_eq!(data, [0xff; 4], "function 1");
        io.write(0, &(CONFIG_ADDRESS_ENABLE | 1 << 16).to_le_bytes());
        io.read(4, &mut data);
        assert_eq!(data, [0xff; 4], "bus 1");
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut data);
        assert_eq!(data, [0xff; 4], "enable bit clear");
        // Misaligned or crossing accesses.
        io.write(0, &address(0, 0, 0));
        let mut word = [0u8; 2];
        io.read(7, &mut word);
        assert_eq!(word, [0xff; 2]);
        io.write(5, &[1, 2, 3, 4]);
        io.write(1, &[1]); // byte write to 0xCF9 does not touch the address register
        io.read(0, &mut data);
        assert_eq!(data, address(0, 0, 0));
    }

    #[test]
    fn ecam_reaches_the_same_registers_and_extended_space_reads_zero() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        lock(&bus)
            .add_device("ep", Endpoint::shared(0xc000_0000))
            .unwrap();
        let mut ecam = PciConfigMmio::new(bus.clone());
        let ecam_offset = |dev: u64, func: u64, reg: u64| dev << 15 | func << 12 | reg;
        let mut data = [0u8; 4];
        ecam.read(ecam_offset(1, 0, 0), &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x1044_1af4);
        ecam.read(ecam_offset(1, 0, 0x100), &mut data);
        assert_eq!(data, [0; 4], "extended space of a present function");
        ecam.read(ecam_offset(2, 0, 0x100), &mut data);
        assert_eq!(data, [0xff; 4], "absent device");
        ecam.read(ecam_offset(1, 3, 0), &mut data);
        assert_eq!(data, [0xff; 4], "function 3");
        let mut word = [0u8; 2];
        ecam.read(ecam_offset(1, 0, 2), &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x1044);
        let mut eight = [0u8; 8];
        ecam.read(0, &mut eight);
        assert_eq!(eight, [0xff; 8], "8-byte config accesses are not supported");
        // Writes land in the device: enable memory decoding through ECAM.
        ecam.write(
            ecam_offset(1, 0, REG_COMMAND_STATUS as u64 * 4),
            &COMMAND_MEMORY_SPACE.to_le_bytes(),
        );
        let mut io = PciConfigIo::new(bus);
        assert_eq!(
            io_read(&mut io, 1, REG_COMMAND_STATUS as u32, 0, 2),
            u32::from(COMMAND_MEMORY_SPACE)
        );
    }

    #[test]
    fn bar_accesses_follow_the_bar_when_the_driver_moves_it() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let endpoint = Endpoint::shared(0xc000_1000);
        lock(&bus).add_device("ep", endpoint.clone()).unwrap();
        let mut window = PciMmioWindow::new(bus.clone(), 0xc000_0000);
        let mut data = [0u8; 4];
        window.read(0x1004, &mut data);
        assert_eq!(data, [4; 4]);
        window.read(0x0ffe, &mut data);
        assert_eq!(data, [0xff; 4], "straddles the BAR start");
        window.write(0x1008, &[7]);
        assert_eq!(endpoint.lock().unwrap().last_write, Some((0, 8, vec![7])));

        let mut io = PciConfigIo::new(bus.clone());
        let write = |io: &mut PciConfigIo, reg: u32, value: u32| {
            io.write(0, &address(1, 0, reg));
            io.write(4, &value.to_le_bytes());
        };
        write(&mut io, REG_BAR0 as u32, 0xc000_5000);
        window.read(0x5000, &mut data);
        assert_eq!(data, [0xff; 4], "not decoded while memory decoding is off");
        write(
            &mut io,
            REG_COMMAND_STATUS as u32,
            u32::from(COMMAND_MEMORY_SPACE),
        );
        window.read(0x5000, &mut data);
        assert_eq!(data, [0; 4]);
        window.read(0x1000, &mut data);
        assert_eq!(data, [0xff; 4], "the old range is gone");
        assert_eq!(lock(&bus).bar_map(), vec![(0xc000_5000, 0x1000, 1, 0)]);
    }

    /// Records every relocation the bus reports.
    #[derive(Default)]
    struct RecordingListener(Mutex<Vec<BarRelocation>>);

    impl BarRelocationListener for RecordingListener {
        fn bar_relocated(&self, relocation: &BarRelocation) {
            self.0.lock().unwrap().push(*relocation);
        }
    }

    impl RecordingListener {
        fn take(&self) -> Vec<BarRelocation> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn write_config(bus: &Arc<Mutex<PciBus>>, device: u32, reg: usize, value: u32) {
        let mut io = PciConfigIo::new(bus.clone());
        io.write(0, &address(device, 0, reg as u32));
        io.write(4, &value.to_le_bytes());
    }

    /// Moves BAR 0 of `device` the way Linux does: decoding off, both halves, decoding on.
    fn move_bar0(bus: &Arc<Mutex<PciBus>>, device: u32, to: u64) {
        write_config(bus, device, REG_COMMAND_STATUS, 0);
        write_config(bus, device, REG_BAR0, to as u32);
        write_config(bus, device, REG_BAR0 + 1, (to >> 32) as u32);
        write_config(
            bus,
            device,
            REG_COMMAND_STATUS,
            u32::from(COMMAND_MEMORY_SPACE),
        );
    }

    #[test]
    fn listeners_learn_where_a_moved_bar_was_and_is_decoded() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let listener = Arc::new(RecordingListener::default());
        {
            let mut bus = lock(&bus);
            bus.add_device("a", Endpoint::shared(0xc000_0000)).unwrap();
            bus.add_device("b", Endpoint::shared(0xc000_1000)).unwrap();
            bus.add_relocation_listener(listener.clone());
        }
        // Enabling decoding at the firmware address, and size probing, move nothing.
        write_config(&bus, 1, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY_SPACE));
        write_config(&bus, 1, REG_BAR0, 0xffff_ffff);
        write_config(&bus, 1, REG_BAR0, 0xc000_0000);
        assert_eq!(listener.take(), vec![]);

        move_bar0(&bus, 1, 0x1_0000_0000);
        assert_eq!(
            listener.take(),
            vec![BarRelocation {
                slot: 1,
                index: 0,
                size: 0x1000,
                old_address: Some(0xc000_0000),
                new_address: Some(0x1_0000_0000),
            }]
        );
        // Toggling decoding without a new address reports nothing.
        write_config(&bus, 1, REG_COMMAND_STATUS, 0);
        write_config(&bus, 1, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(listener.take(), vec![]);

        // Onto device 2's BAR: no longer decoded anywhere.
        move_bar0(&bus, 1, 0xc000_1000);
        let lost = listener.take();
        assert_eq!(lost.len(), 1);
        assert_eq!(
            (lost[0].old_address, lost[0].new_address),
            (Some(0x1_0000_0000), None)
        );
        assert_eq!(lock(&bus).bar_map(), vec![(0xc000_1000, 0x1000, 2, 0)]);
        // From nowhere to an address that wraps: still nowhere, nothing to report.
        move_bar0(&bus, 1, 0xffff_ffff_ffff_f000);
        assert_eq!(listener.take(), vec![]);
        // Back to a free address: decoded again, from nowhere.
        move_bar0(&bus, 1, 0xc000_4000);
        assert_eq!(
            listener.take(),
            vec![BarRelocation {
                slot: 1,
                index: 0,
                size: 0x1000,
                old_address: None,
                new_address: Some(0xc000_4000),
            }]
        );
        // Device 2 moves: the listener is told its slot.
        move_bar0(&bus, 2, 0xc000_8000);
        let moved = listener.take();
        assert_eq!(
            moved
                .iter()
                .map(|r| (r.slot, r.old_address, r.new_address))
                .collect::<Vec<_>>(),
            vec![(2, Some(0xc000_1000), Some(0xc000_8000))]
        );
        let map = lock(&bus).bar_map();
        assert_eq!(
            map,
            vec![(0xc000_4000, 0x1000, 1, 0), (0xc000_8000, 0x1000, 2, 0)]
        );
    }

    #[test]
    fn a_bar_moved_outside_the_declared_windows_is_not_decoded() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let listener = Arc::new(RecordingListener::default());
        {
            let mut bus = lock(&bus);
            bus.add_device("a", Endpoint::shared(0xc000_0000)).unwrap();
            bus.add_bar_window(0xc000_0000..0xd000_0000);
            bus.add_relocation_listener(listener.clone());
        }
        write_config(&bus, 1, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY_SPACE));
        // Into guest RAM (1 MiB): outside every window, so nowhere; listeners hear it left.
        move_bar0(&bus, 1, 0x10_0000);
        let lost = listener.take();
        assert_eq!(
            lost.iter()
                .map(|r| (r.old_address, r.new_address))
                .collect::<Vec<_>>(),
            vec![(Some(0xc000_0000), None)]
        );
        assert_eq!(lock(&bus).bar_map(), vec![]);
        // Just past the window's end: still nowhere, and nothing new to report.
        move_bar0(&bus, 1, 0xd000_0000);
        assert_eq!(listener.take(), vec![]);
        // Back inside: decoded again.
        move_bar0(&bus, 1, 0xc800_0000);
        assert_eq!(lock(&bus).bar_map(), vec![(0xc800_0000, 0x1000, 1, 0)]);
    }

    #[test]
    fn overlapping_bars_and_full_buses_are_refused() {
        let mut bus = PciBus::new();
        bus.add_device("a", Endpoint::shared(0xc000_0000)).unwrap();
        assert!(matches!(
            bus.add_device("b", Endpoint::shared(0xc000_0000)),
            Err(PciBusError::BarOverlap { ref name, .. }) if name == "b"
        ));
        for i in 1..31u64 {
            bus.add_device("x", Endpoint::shared(0xd000_0000 + i * 0x1000))
                .unwrap();
        }
        assert!(matches!(
            bus.add_device("last", Endpoint::shared(0xe000_0000)),
            Err(PciBusError::NoFreeSlot { .. })
        ));
    }
}
