//! Guest RAM: anonymous host mappings laid out around the 32-bit device hole.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout;

/// Errors from creating guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {bytes} bytes of guest memory: {detail}")]
pub struct MemoryError {
    /// Requested size.
    pub bytes: u64,
    /// Cause from the mapping.
    pub detail: String,
}

/// Maps `bytes` of guest RAM (private, anonymous, not reserved up front: pages cost host
/// memory only once the guest touches them).
pub fn create_guest_memory(bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<_> = layout::ram_regions(bytes)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|err| MemoryError {
        bytes,
        detail: err.to_string(),
    })
}

/// Total bytes of RAM in `mem`.
pub fn total_ram(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(GuestMemoryRegion::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn memory_above_three_gib_is_split_around_the_hole() {
        let mem = create_guest_memory(4 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(total_ram(&mem), 4 << 30);
        assert!(mem
            .write_obj(1u8, GuestAddress(layout::MMIO_GAP_START))
            .is_err());
        mem.write_obj(1u8, GuestAddress(layout::MMIO_GAP_END))
            .unwrap();
    }
}
