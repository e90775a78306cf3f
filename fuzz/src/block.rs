//! virtio-blk: the request parser on its own, then the whole device over an in-memory disk.

use std::io;
use std::path::Path;

use devices::virtio::block::request::{
    Request, RequestKind, HEADER_LEN, SECTOR_SIZE, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use devices::virtio::block::{DiskBackend, VirtioBlock};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{GuestMemory, Permissions};

use crate::support::{follow, Guest, Input};

/// Size of the fuzzed disk.
const DISK_SIZE: usize = 64 * 1024;
/// Request types the header may be rewritten to, so random inputs reach every handler.
const TYPES: [u32; 8] = [
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
    2,
    u32::MAX,
];

/// A disk in a `Vec`; checks that the device stays inside it.
struct MemDisk(Vec<u8>);

impl MemDisk {
    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(len).filter(|&end| end <= self.0.len());
        // The parser promised in-bounds requests: anything else is a bug worth crashing on.
        let end = end.unwrap_or_else(|| panic!("device asked for {len} bytes at {offset}"));
        Ok(start..end)
    }
}

impl DiskBackend for MemDisk {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0[range]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        self.0[range].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.range(offset, len).map(|_| ())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let range = self.range(offset, len)?;
        self.0[range].fill(0);
        Ok(())
    }
}

/// Feeds one input to the parser and to the device; panics only on a bug.
pub fn block_request(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.byte();
    let Some(guest) = Guest::from_input(&mut input) else {
        return;
    };
    let mut block = match VirtioBlock::with_backend(
        MemDisk(vec![0u8; DISK_SIZE]),
        Path::new("fuzz"),
        *b"keel-fuzz-disk\0\0\0\0\0\0",
        control & 0x40 != 0,
    ) {
        Ok(block) => block,
        Err(err) => panic!("in-memory disk refused: {err}"),
    };

    // Give some chains a well-formed header so every request type is reached.
    if control & 0x01 != 0 {
        for desc in guest.descriptors.iter().step_by(2) {
            let mut header = [0u8; HEADER_LEN as usize];
            let pick = (desc.len() as usize ^ desc.next() as usize) % TYPES.len();
            header[..4].copy_from_slice(&TYPES[pick].to_le_bytes());
            header[8..].copy_from_slice(&u64::from(desc.next() % 160).to_le_bytes());
            guest.poke(desc.addr(), &header);
        }
    }

    // The parser alone, on each chain as the table links it.
    let limits = *block.limits();
    for head in 0..guest.descriptors.len() as u16 {
        let chain = follow(&guest.descriptors, head, usize::from(u16::MAX));
        if let Ok(request) = Request::parse(chain, &guest.mem, &limits) {
            check(&request, &guest, limits.capacity);
        }
    }

    // The device, through the queue.
    let mut features = VIRTIO_F_VERSION_1;
    if control & 0x02 != 0 {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    block.set_acked_features(features);
    let Some(queue) = guest.queue() else {
        return;
    };
    if block
        .activate(guest.mem.clone(), Guest::interrupt(), vec![queue])
        .is_err()
    {
        return;
    }
    block.queue_notify(0);
    block.queue_notify(0);
    let _ = block.reset();
}

/// What a parsed request promises.
fn check(request: &Request, guest: &Guest, capacity: u64) {
    assert!(guest.mem.check_range(request.status, 1, Permissions::Write));
    match &request.kind {
        RequestKind::In { sector, segments } | RequestKind::Out { sector, segments } => {
            let bytes: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
            assert!(sector + bytes / SECTOR_SIZE <= capacity);
            for s in segments {
                assert!(s.len > 0 && u64::from(s.len) % SECTOR_SIZE == 0);
                assert!(guest
                    .mem
                    .check_range(s.addr, s.len as usize, Permissions::Read));
            }
        }
        RequestKind::Discard(ranges) | RequestKind::WriteZeroes(ranges) => {
            for r in ranges {
                assert!(r.num_sectors > 0 && r.sector + u64::from(r.num_sectors) <= capacity);
            }
        }
        RequestKind::GetId { segments } => {
            assert!(segments.iter().all(|s| s.len > 0));
        }
        RequestKind::Flush => {}
    }
}
