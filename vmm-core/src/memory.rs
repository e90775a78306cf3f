//! Guest RAM: anonymous host mappings laid out around the 32-bit device hole.

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use devices::GuestMemoryMmap;

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
    let error = |detail: String| MemoryError { bytes, detail };
    let ranges = layout::ram_regions(bytes)
        .into_iter()
        .map(|(start, len)| match usize::try_from(len) {
            Ok(len) => Ok((start, len)),
            Err(_) => Err(error(format!("a region of {len} bytes does not fit the address space"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|err| error(err.to_string()))
}

/// Total bytes of RAM in `mem`.
pub fn total_ram(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(GuestMemoryRegion::len).sum()
}

/// Bytes of guest RAM currently backed by host memory (pages the guest or the VMM touched).
///
/// Useful for accounting what a VM really costs its host, and for separating guest RAM from
/// the VMM's own footprint in RSS measurements.
#[cfg(any(test, feature = "testing"))]
pub fn resident_bytes(mem: &GuestMemoryMmap) -> std::io::Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).map_err(|_| std::io::Error::last_os_error())?;
    let mut resident = 0;
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let too_large = |_| std::io::Error::other("a region larger than the address space");
        let len = usize::try_from(region.len()).map_err(too_large)?;
        let pages = usize::try_from(region.len().div_ceil(page)).map_err(too_large)?;
        let mut residency = vec![0u8; pages];
        // SAFETY: `host..host + len` is one live mapping owned by `mem` (borrowed for this
        // call), page-aligned as mmap returns it; `residency` has one byte per page of it.
        let rc = unsafe {
            libc::mincore(
                host.cast::<libc::c_void>(),
                len,
                residency.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        resident += residency.iter().filter(|b| **b & 1 != 0).count() as u64 * page;
    }
    Ok(resident)
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

    #[test]
    fn residency_counts_touched_pages_only() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(resident_bytes(&mem).unwrap(), 0);
        for page in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(page * 4096 * 3)).unwrap();
        }
        assert_eq!(resident_bytes(&mem).unwrap(), 10 * 4096);
    }
}
