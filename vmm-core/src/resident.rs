//! Which pages of guest memory can hold anything but zeroes.
//!
//! A page of an anonymous private mapping that the host has never given a frame (not present,
//! not swapped out) reads as zeroes. Knowing that from `/proc/self/pagemap` lets live migration
//! and snapshots skip the untouched part of a guest's memory without reading it: reading
//! would fault every such page in (mapping the shared zero page), which costs far more than
//! the copy for a mostly idle guest.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::GuestMemoryRegion;

/// A region of Keel's guest memory.
type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;

/// Host page size this module assumes (x86-64); other sizes make it answer "unknown".
const HOST_PAGE: u64 = 4096;
/// pagemap entry bits: the page is present in RAM, or swapped out.
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// pagemap entries read per `pread` (512 KiB of entries, 256 MiB of memory).
const ENTRIES_PER_READ: usize = 64 * 1024;

/// A bitmap (bit `i` of word `i / 64` for page `i`) of the pages of `region` that may hold
/// data, or `None` when that cannot be known (a file-backed region, whose pages are the
/// file's; no pagemap; a host page size other than 4 KiB). Pages the guest writes after the
/// call are not in it: callers pair it with dirty logging turned on before.
pub(crate) fn backed_pages(region: &GuestRegionMmap) -> Option<Vec<u64>> {
    if region.file_offset().is_some() {
        return None;
    }
    // SAFETY: sysconf reads a constant of the running system and touches no memory of ours.
    if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != HOST_PAGE as libc::c_long {
        return None;
    }
    let start = region.as_ptr() as u64;
    if !start.is_multiple_of(HOST_PAGE) {
        return None;
    }
    let pages = usize::try_from(region.len().div_ceil(HOST_PAGE)).ok()?;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let mut bitmap = vec![0u64; pages.div_ceil(64)];
    let mut entries = vec![0u8; ENTRIES_PER_READ.min(pages) * 8];
    let mut done = 0usize;
    while done < pages {
        let count = ENTRIES_PER_READ.min(pages - done);
        let buffer = &mut entries[..count * 8];
        let offset = (start / HOST_PAGE + done as u64) * 8;
        pagemap.read_exact_at(buffer, offset).ok()?;
        let (chunks, _) = buffer.as_chunks::<8>();
        for (i, entry) in chunks.iter().enumerate() {
            if u64::from_ne_bytes(*entry) & (PRESENT | SWAPPED) != 0 {
                let page = done + i;
                bitmap[page / 64] |= 1 << (page % 64);
            }
        }
        done += count;
    }
    Some(bitmap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn only_pages_written_are_backed() {
        let memory = crate::memory::create_guest_memory(8 << 20).unwrap();
        memory
            .write_slice(b"x", GuestAddress(3 * HOST_PAGE + 17))
            .unwrap();
        memory
            .write_slice(b"y", GuestAddress(1000 * HOST_PAGE))
            .unwrap();
        let region = memory.iter().next().unwrap();
        let bitmap = backed_pages(region).expect("pagemap readable");
        let set: Vec<usize> = (0..2048)
            .filter(|page| bitmap[page / 64] & (1 << (page % 64)) != 0)
            .collect();
        assert_eq!(set, [3, 1000]);
    }
}
