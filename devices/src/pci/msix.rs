//! MSI-X (PCI Local Bus 3.0, section 6.8.2): the vector table, the pending bit array and the
//! capability's enable and function-mask bits.
//!
//! [`MsixTable`] is the state machine behind a function's MSI-X table and PBA. Delivering a
//! message is left to an injected [`MsiInterruptRoute`] so this module stays free of KVM: the
//! VMM implements it with one irqfd and one GSI route per vector; tests record calls.
//!
//! A vector fires only when MSI-X is enabled; while the function or the vector is masked its
//! pending bit is set instead, and the message is sent when it is unmasked.
//! It deliberately does not model INTx fallback: with MSI-X disabled a function cannot interrupt.

use std::sync::Arc;

use log::debug;

use crate::narrow::halves;

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message control bit: MSI-X enabled.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control bit: all vectors masked.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit: this vector is masked.
const VECTOR_CONTROL_MASKED: u32 = 1;
/// Most vectors a table may have (the table-size field is 11 bits).
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// An MSI message: where the function writes and what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (on x86, the LAPIC window 0xfee0_0000 plus destination bits).
    pub address: u64,
    /// Message data (vector and delivery mode).
    pub data: u32,
}

/// Delivers MSI-X messages for one function; implemented by the VMM.
pub trait MsiInterruptRoute: Send + Sync {
    /// Sends the message currently programmed for `vector`.
    fn fire(&self, vector: u16) -> std::io::Result<()>;
    /// The driver changed `vector`'s message or mask; `masked` includes the function mask.
    fn update(&self, vector: u16, message: MsiMessage, masked: bool) -> std::io::Result<()>;
}

/// An MSI-X table as a snapshot saves it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixSnapshot {
    /// Per vector: message address, message data, vector control.
    pub entries: Vec<[u64; 3]>,
    /// Pending bits, 64 vectors a word.
    pub pending: Vec<u64>,
    /// MSI-X enabled.
    pub enabled: bool,
    /// All vectors masked.
    pub function_masked: bool,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    message: MsiMessage,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        Entry {
            message: MsiMessage::default(),
            control: VECTOR_CONTROL_MASKED,
        }
    }
}

/// The MSI-X table and PBA of one function.
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    route: Arc<dyn MsiInterruptRoute>,
}

impl MsixTable {
    /// A table of `vectors` entries (1..=[`MSIX_MAX_VECTORS`]; clamped), all masked, with MSI-X
    /// disabled.
    pub fn new(vectors: u16, route: Arc<dyn MsiInterruptRoute>) -> Self {
        let vectors = vectors.clamp(1, MSIX_MAX_VECTORS);
        MsixTable {
            entries: vec![Entry::default(); usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
            route,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        // The table is built from a u16 count (at most MSIX_MAX_VECTORS) and never resized.
        u16::try_from(self.entries.len()).unwrap_or(MSIX_MAX_VECTORS)
    }

    /// Always false: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The value of the capability's message control register (table size, enable, mask).
    pub fn message_control(&self) -> u16 {
        let mut control = self.len() - 1;
        if self.enabled {
            control |= MSIX_CONTROL_ENABLE;
        }
        if self.function_masked {
            control |= MSIX_CONTROL_FUNCTION_MASK;
        }
        control
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let vector = usize::from(vector);
        self.pending
            .get(vector / 64)
            .is_some_and(|word| word & (1 << (vector % 64)) != 0)
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        if let Some(word) = self.pending.get_mut(vector / 64) {
            if pending {
                *word |= 1 << (vector % 64);
            } else {
                *word &= !(1 << (vector % 64));
            }
        }
    }

    fn masked(&self, vector: usize) -> bool {
        self.function_masked || self.entries[vector].control & VECTOR_CONTROL_MASKED != 0
    }

    /// The driver wrote the capability's message control register.
    pub fn set_message_control(&mut self, control: u16) {
        let was_masked: Vec<bool> = (0..self.len())
            .map(|v| self.masked(usize::from(v)))
            .collect();
        self.enabled = control & MSIX_CONTROL_ENABLE != 0;
        self.function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        for (vector, was) in (0..self.len()).zip(was_masked) {
            if was != self.masked(usize::from(vector)) {
                self.update_route(vector);
            }
            self.deliver_if_unmasked(vector);
        }
    }

    /// The function wants to send `vector`: sends it now, or marks it pending while masked.
    /// Returns whether it was sent. Out-of-range vectors and a disabled MSI-X drop it.
    pub fn signal(&mut self, vector: u16) -> bool {
        let index = usize::from(vector);
        if !self.enabled || index >= self.entries.len() {
            debug!("msi-x: vector {vector} dropped (enabled {})", self.enabled);
            return false;
        }
        if self.masked(index) {
            self.set_pending(index, true);
            return false;
        }
        self.fire(vector)
    }

    fn fire(&self, vector: u16) -> bool {
        match self.route.fire(vector) {
            Ok(()) => true,
            Err(err) => {
                crate::guest_warn!("msi-x: cannot send vector {vector}: {err}");
                false
            }
        }
    }

    fn deliver_if_unmasked(&mut self, vector: u16) {
        let index = usize::from(vector);
        if self.enabled && !self.masked(index) && self.is_pending(vector) {
            self.set_pending(index, false);
            self.fire(vector);
        }
    }

    fn update_route(&self, vector: u16) {
        let index = usize::from(vector);
        let entry = self.entries[index];
        if let Err(err) = self.route.update(vector, entry.message, self.masked(index)) {
            crate::guest_warn!("msi-x: cannot update the route of vector {vector}: {err}");
        }
    }

    /// Reads the table at byte `offset` (4- or 8-byte aligned accesses of that width);
    /// anything else reads as all ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            data.fill(0xff);
            return;
        }
        let mut value = 0u64;
        for dword in 0..data.len() / 4 {
            let Some(v) = self.read_table_dword(offset + dword as u64 * 4) else {
                data.fill(0xff);
                return;
            };
            value |= u64::from(v) << (32 * dword);
        }
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn read_table_dword(&self, offset: u64) -> Option<u32> {
        let entry = self.entries.get((offset / MSIX_ENTRY_SIZE) as usize)?;
        let (address_low, address_high) = halves(entry.message.address);
        Some(match offset % MSIX_ENTRY_SIZE {
            0 => address_low,
            4 => address_high,
            8 => entry.message.data,
            _ => entry.control,
        })
    }

    /// Writes the table at byte `offset` (4- or 8-byte aligned accesses); others are ignored.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            debug!(
                "msi-x: {}-byte table write at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.write_table_dword(offset + i as u64 * 4, value);
        }
    }

    fn write_table_dword(&mut self, offset: u64, value: u32) {
        let Some(vector) = u16::try_from(offset / MSIX_ENTRY_SIZE)
            .ok()
            .filter(|&vector| vector < self.len())
        else {
            debug!("msi-x: write beyond the table at {offset:#x} ignored");
            return;
        };
        let index = usize::from(vector);
        let was_masked = self.masked(index);
        let entry = &mut self.entries[index];
        let before = entry.message;
        match offset % MSIX_ENTRY_SIZE {
            0 => entry.message.address = (entry.message.address & !0xffff_ffff) | u64::from(value),
            4 => {
                entry.message.address =
                    (entry.message.address & 0xffff_ffff) | (u64::from(value) << 32)
            }
            8 => entry.message.data = value,
            _ => entry.control = value & VECTOR_CONTROL_MASKED,
        }
        let changed = before != entry.message || was_masked != self.masked(index);
        if changed {
            self.update_route(vector);
        }
        self.deliver_if_unmasked(vector);
    }

    /// Reads the PBA at byte `offset` (4- or 8-byte aligned); anything else reads all ones.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let Some(word) = self.pending.get((offset / 8) as usize) else {
            data.fill(0xff);
            return;
        };
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            data.fill(0xff);
            return;
        }
        let shift = (offset % 8) * 8;
        let value = word >> shift;
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    /// The table, the pending bits and the enable and function-mask bits, for a snapshot.
    pub fn snapshot(&self) -> MsixSnapshot {
        MsixSnapshot {
            entries: self
                .entries
                .iter()
                .map(|entry| {
                    [
                        entry.message.address,
                        u64::from(entry.message.data),
                        u64::from(entry.control),
                    ]
                })
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Puts a saved table back and points every vector's route at its saved message. A table of
    /// another size is refused.
    pub fn restore(&mut self, saved: &MsixSnapshot) -> Result<(), String> {
        if saved.entries.len() != self.entries.len() || saved.pending.len() != self.pending.len() {
            return Err(format!(
                "MSI-X table of {} vectors saved, the device has {}",
                saved.entries.len(),
                self.entries.len()
            ));
        }
        for (entry, &[address, data, control]) in self.entries.iter_mut().zip(&saved.entries) {
            entry.message = MsiMessage {
                address,
                data: u32::try_from(data)
                    .map_err(|_| format!("MSI data {data:#x} over 32 bits"))?,
            };
            entry.control = u32::try_from(control).unwrap_or(0) & VECTOR_CONTROL_MASKED;
        }
        self.pending.copy_from_slice(&saved.pending);
        self.enabled = saved.enabled;
        self.function_masked = saved.function_masked;
        for vector in 0..self.len() {
            self.update_route(vector);
        }
        Ok(())
    }

    /// Returns to the reset state: disabled, unmasked function, all vectors masked, nothing
    /// pending.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        self.pending.fill(0);
        for vector in 0..self.len() {
            self.entries[usize::from(vector)] = Entry::default();
            self.update_route(vector);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records fired vectors and route updates.
    #[derive(Default)]
    pub(crate) struct RecordingRoute {
        pub(crate) fired: Mutex<Vec<u16>>,
        pub(crate) updates: Mutex<Vec<(u16, MsiMessage, bool)>>,
    }

    impl MsiInterruptRoute for RecordingRoute {
        fn fire(&self, vector: u16) -> std::io::Result<()> {
            self.fired.lock().unwrap().push(vector);
            Ok(())
        }
        fn update(&self, vector: u16, message: MsiMessage, masked: bool) -> std::io::Result<()> {
            self.updates.lock().unwrap().push((vector, message, masked));
            Ok(())
        }
    }

    fn table(vectors: u16) -> (MsixTable, Arc<RecordingRoute>) {
        let route = Arc::new(RecordingRoute::default());
        (MsixTable::new(vectors, route.clone()), route)
    }

    fn write(t: &mut MsixTable, offset: u64, value: u32) {
        t.write_table(offset, &value.to_le_bytes());
    }

    fn read(t: &MsixTable, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read_table(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn pba(t: &MsixTable) -> u64 {
        let mut data = [0u8; 8];
        t.read_pba(0, &mut data);
        u64::from_le_bytes(data)
    }

    #[test]
    fn entries_start_masked_and_program_like_a_driver_does() {
        let (mut t, route) = table(3);
        assert_eq!(t.message_control(), 2, "table size is N-1");
        assert_eq!(read(&t, 12), 1);
        write(&mut t, 16, 0xfee0_1000);
        write(&mut t, 20, 0);
        write(&mut t, 24, 0x4041);
        write(&mut t, 28, 0);
        assert_eq!(read(&t, 16), 0xfee0_1000);
        assert_eq!(read(&t, 24), 0x4041);
        let last = *route.updates.lock().unwrap().last().unwrap();
        assert_eq!(
            last,
            (
                1,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x4041
                },
                false
            )
        );
        // 8-byte access to address and data.
        let mut qword = [0u8; 8];
        t.read_table(16, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0xfee0_1000);
    }

    #[test]
    fn masked_vectors_go_pending_and_fire_on_unmask() {
        let (mut t, route) = table(2);
        assert!(!t.signal(0), "MSI-X disabled: dropped");
        assert_eq!(pba(&t), 0);
        t.set_message_control(MSIX_CONTROL_ENABLE);
        assert!(!t.signal(0), "vector 0 is masked");
        assert!(t.is_pending(0));
        assert_eq!(pba(&t), 1);
        assert!(route.fired.lock().unwrap().is_empty());
        write(&mut t, 12, 0); // unmask
        assert_eq!(*route.fired.lock().unwrap(), vec![0]);
        assert!(!t.is_pending(0));
        assert!(t.signal(0));
        assert_eq!(*route.fired.lock().unwrap(), vec![0, 0]);
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let (mut t, route) = table(2);
        write(&mut t, 12, 0);
        write(&mut t, 28, 0);
        t.set_message_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert!(!t.signal(1));
        assert!(!t.signal(0));
        assert_eq!(pba(&t), 0b11);
        t.set_message_control(MSIX_CONTROL_ENABLE);
        assert_eq!(*route.fired.lock().unwrap(), vec![0, 1]);
        assert_eq!(pba(&t), 0);
        assert_eq!(t.message_control(), MSIX_CONTROL_ENABLE | 1);
    }

    #[test]
    fn out_of_range_and_odd_accesses_do_not_panic() {
        let (mut t, route) = table(2);
        t.set_message_control(MSIX_CONTROL_ENABLE);
        assert!(!t.signal(2));
        assert!(!t.signal(u16::MAX));
        write(&mut t, 32, 0); // beyond the table
        write(&mut t, 2, 0); // unaligned
        t.write_table(0, &[1, 2]);
        let mut two = [0u8; 2];
        t.read_table(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        let mut four = [0u8; 4];
        t.read_table(0x1000, &mut four);
        assert_eq!(four, [0xff; 4]);
        t.read_pba(0x100, &mut four);
        assert_eq!(four, [0xff; 4]);
        let mut eight = [0u8; 8];
        t.read_table(28, &mut eight);
        assert_eq!(eight, [0xff; 8], "misaligned qword");
        assert!(route.fired.lock().unwrap().is_empty());
    }
}
