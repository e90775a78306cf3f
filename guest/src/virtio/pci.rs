//! Reading a virtio-pci function's configuration space (virtio 1.2, section 4.1): which functions
//! are modern virtio devices, where their BARs are, and what their vendor capabilities say.
//!
//! Everything takes a `read(register offset) -> u32` closure over the function's configuration
//! space (dword-aligned offsets), so the port I/O stays in the driver and this stays testable.

/// PCI vendor ID of virtio devices.
pub const VENDOR_VIRTIO: u32 = 0x1af4;
/// Modern (non-transitional) virtio devices have device ID 0x1040 + the virtio device type.
pub const MODERN_DEVICE_BASE: u32 = 0x1040;
/// Last modern virtio device ID.
pub const MODERN_DEVICE_LAST: u32 = 0x107f;

/// Configuration space: vendor ID (bits 15:0) and device ID (31:16).
pub const REG_ID: u8 = 0x00;
/// Configuration space: command (bits 15:0) and status (31:16).
pub const REG_COMMAND: u8 = 0x04;
/// Configuration space: BAR 0; BAR `n` is at `REG_BAR0 + 4 n`.
pub const REG_BAR0: u8 = 0x10;
/// Configuration space: the capabilities pointer (bits 7:0).
pub const REG_CAPABILITIES: u8 = 0x34;

/// Command bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command bit: the function may master the bus (DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status bit: the capabilities pointer is valid.
const STATUS_CAPABILITIES: u32 = 1 << 4;

/// Capability ID of vendor-specific capabilities, which virtio uses for its structures.
const CAP_VENDOR: u32 = 0x09;
/// `cfg_type` values of the virtio structures.
pub const CFG_COMMON: u8 = 1;
/// Notifications.
pub const CFG_NOTIFY: u8 = 2;
/// ISR status.
pub const CFG_ISR: u8 = 3;
/// Device-specific configuration.
pub const CFG_DEVICE: u8 = 4;
/// Capabilities followed at most (a 256-byte space holds no more than 48 of 4 bytes or more).
const MAX_CAPABILITIES: usize = 48;

/// The virtio device type of a function whose ID register (offset 0) reads `id`, if it is a
/// modern virtio device.
pub fn virtio_type(id: u32) -> Option<u32> {
    let device = id >> 16;
    (id & 0xffff == VENDOR_VIRTIO && (MODERN_DEVICE_BASE..=MODERN_DEVICE_LAST).contains(&device))
        .then(|| device - MODERN_DEVICE_BASE)
}

/// One virtio structure: `offset` and `length` bytes in BAR `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Structure {
    /// BAR index (0–5).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// The virtio structures a function's capability list points to (the first capability of each
/// type, as the specification asks drivers to prefer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Structures {
    /// `VIRTIO_PCI_CAP_COMMON_CFG`.
    pub common: Option<Structure>,
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG`.
    pub notify: Option<Structure>,
    /// Its `notify_off_multiplier`.
    pub notify_multiplier: u32,
    /// `VIRTIO_PCI_CAP_ISR_CFG`.
    pub isr: Option<Structure>,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`.
    pub device: Option<Structure>,
}

impl Structures {
    /// The name of the first required structure missing, if any.
    pub fn missing(&self) -> Option<&'static str> {
        [
            (self.common, "common"),
            (self.notify, "notify"),
            (self.isr, "isr"),
            (self.device, "device"),
        ]
        .into_iter()
        .find_map(|(structure, name)| structure.is_none().then_some(name))
    }
}

/// Walks the capability list and collects the virtio structures. Capabilities with a BAR index
/// above 5 are skipped (reserved); the walk stops at a null pointer, a pointer into the header, or
/// after [`MAX_CAPABILITIES`] entries (a loop).
pub fn structures(read: impl Fn(u8) -> u32) -> Structures {
    let mut found = Structures::default();
    if (read(REG_COMMAND) >> 16) & STATUS_CAPABILITIES == 0 {
        return found;
    }
    let mut pointer = (read(REG_CAPABILITIES) & 0xfc) as u8;
    for _ in 0..MAX_CAPABILITIES {
        if pointer < 0x40 {
            break;
        }
        let header = read(pointer);
        if header & 0xff == CAP_VENDOR && pointer <= 0xf0 {
            let cfg_type = (header >> 24) as u8;
            let bar = read(pointer + 4) as u8;
            let structure = Structure {
                bar,
                offset: read(pointer + 8),
                length: read(pointer + 12),
            };
            let slot = match cfg_type {
                CFG_COMMON => Some(&mut found.common),
                CFG_NOTIFY => Some(&mut found.notify),
                CFG_ISR => Some(&mut found.isr),
                CFG_DEVICE => Some(&mut found.device),
                _ => None,
            };
            if let Some(slot) = slot.filter(|slot| slot.is_none() && bar <= 5) {
                if cfg_type == CFG_NOTIFY {
                    if pointer > 0xec {
                        pointer = ((header >> 8) & 0xfc) as u8;
                        continue;
                    }
                    found.notify_multiplier = read(pointer + 16);
                }
                *slot = Some(structure);
            }
        }
        pointer = ((header >> 8) & 0xfc) as u8;
    }
    found
}

/// What BAR `index` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// A memory BAR at this address (64-bit BARs combine two registers).
    Memory(u64),
    /// An I/O BAR, or a 64-bit BAR whose upper half would lie beyond BAR 5.
    Unsupported,
}

/// Reads BAR `index` (0–5).
pub fn bar(read: impl Fn(u8) -> u32, index: u8) -> Bar {
    if index > 5 {
        return Bar::Unsupported;
    }
    let register = REG_BAR0 + 4 * index;
    let low = read(register);
    if low & 1 != 0 {
        return Bar::Unsupported;
    }
    let base = u64::from(low & !0xf);
    match (low >> 1) & 3 {
        0 => Bar::Memory(base),
        2 if index < 5 => Bar::Memory(base | u64::from(read(register + 4)) << 32),
        _ => Bar::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration space laid out like Keel's virtio-pci functions.
    fn keel_like() -> [u32; 64] {
        let mut space = [0u32; 64];
        space[0] = 0x1042_1af4;
        space[1] = 0x0010_0000; // capabilities list
        space[4] = 0xc000_0004; // 64-bit memory BAR
        space[5] = 0;
        space[0x34 / 4] = 0x40;
        let caps: [(u8, u8, u32, u32, Option<u32>); 4] = [
            (0x40, CFG_COMMON, 0, 0x38, None),
            (0x50, CFG_NOTIFY, 0x3000, 4, Some(4)),
            (0x64, CFG_ISR, 0x1000, 1, None),
            (0x74, CFG_DEVICE, 0x2000, 0x1000, None),
        ];
        for (index, (at, cfg_type, offset, length, multiplier)) in caps.iter().enumerate() {
            let next = caps.get(index + 1).map_or(0x84, |cap| cap.0);
            let len = if multiplier.is_some() { 20 } else { 16 };
            let at = usize::from(*at) / 4;
            space[at] = 0x09 | u32::from(next) << 8 | len << 16 | u32::from(*cfg_type) << 24;
            space[at + 1] = 0;
            space[at + 2] = *offset;
            space[at + 3] = *length;
            if let Some(multiplier) = multiplier {
                space[at + 4] = *multiplier;
            }
        }
        space[0x84 / 4] = 0x11; // MSI-X, end of list
        space
    }

    fn reader(space: &[u32; 64]) -> impl Fn(u8) -> u32 + '_ {
        |reg| space[usize::from(reg / 4)]
    }

    #[test]
    fn modern_virtio_functions_are_recognised() {
        assert_eq!(virtio_type(0x1042_1af4), Some(2));
        assert_eq!(virtio_type(0x1053_1af4), Some(19));
        assert_eq!(virtio_type(0x1001_1af4), None); // transitional
        assert_eq!(virtio_type(0x1042_8086), None);
        assert_eq!(virtio_type(0xffff_ffff), None);
    }

    #[test]
    fn the_capability_list_gives_all_four_structures() {
        let space = keel_like();
        let found = structures(reader(&space));
        assert_eq!(found.missing(), None);
        assert_eq!(
            found.common,
            Some(Structure {
                bar: 0,
                offset: 0,
                length: 0x38
            })
        );
        assert_eq!(found.notify.unwrap().offset, 0x3000);
        assert_eq!(found.notify_multiplier, 4);
        assert_eq!(found.isr.unwrap().offset, 0x1000);
        assert_eq!(found.device.unwrap().length, 0x1000);
        assert_eq!(bar(reader(&space), 0), Bar::Memory(0xc000_0000));
    }

    #[test]
    fn broken_lists_end_the_walk() {
        let mut space = keel_like();
        space[1] = 0; // no capabilities bit
        assert_eq!(structures(reader(&space)).missing(), Some("common"));
        let mut space = keel_like();
        space[0x50 / 4] = 0x09 | 0x50 << 8 | 2 << 24; // notify pointing at itself
        let found = structures(reader(&space));
        assert!(found.common.is_some() && found.notify.is_some());
        assert_eq!(found.missing(), Some("isr"));
    }

    #[test]
    fn bars_decode() {
        let mut space = keel_like();
        space[5] = 0x1;
        assert_eq!(bar(reader(&space), 0), Bar::Memory(0x1_c000_0000));
        space[4] = 0xfeb0_0000; // 32-bit
        assert_eq!(bar(reader(&space), 0), Bar::Memory(0xfeb0_0000));
        space[4] = 0xc001; // I/O
        assert_eq!(bar(reader(&space), 0), Bar::Unsupported);
        space[9] = 0xc000_0004; // 64-bit in BAR 5
        assert_eq!(bar(reader(&space), 5), Bar::Unsupported);
    }
}
