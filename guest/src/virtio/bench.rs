//! Hardware-free parts of the benchmark modes (`keel.blk_bench`, `keel.net_bench`,
//! `keel.vsock_bench`): where benchmark data lives, the random read offsets, the write chunks.

/// Guest-physical base of the memory the benchmarks hand to devices as data buffers (4 MiB: above
/// the image, the AP trampoline and every AP stack). The guest never looks at what is there.
pub const BENCH_MEMORY_BASE: u64 = 4 << 20;

/// Bytes of benchmark memory: one [`WRITE_CHUNK`] per descriptor of a 64-entry queue. The VMM must
/// give RAM from [`BENCH_MEMORY_BASE`] to 8 MiB for any benchmark.
pub const BENCH_MEMORY_SIZE: u64 = 4 << 20;

/// Entries of the queues the benchmarks use (a page still holds all three rings).
pub const BENCH_QUEUE_SIZE: u16 = 64;

/// Bytes per random read.
pub const READ_SIZE: u64 = 4096;

/// Disks the two-disk benchmark (`randread2`) drives at once. Each gets an equal part of the
/// benchmark memory for its read buffers ([`read_buffer_offset`]).
pub const BENCH_DISKS: u64 = 2;

/// Bytes per sequential write (the last one may be shorter).
pub const WRITE_CHUNK: u64 = 64 * 1024;

/// Payload bytes per vsock RW packet: the largest payload Linux's and Keel's vsock devices take.
pub const VSOCK_PACKET: u32 = 64 * 1024;

/// A xorshift64 sequence of 4 KiB block numbers: cheap (a few shifts and one division per
/// offset) and the same on every run.
#[derive(Clone, Copy, Debug)]
pub struct RandomBlocks {
    state: u64,
    blocks: u64,
}

impl RandomBlocks {
    /// Block numbers below `blocks` (which must not be 0).
    pub fn new(blocks: u64) -> Self {
        Self::for_disk(blocks, 0)
    }

    /// The sequence of disk `disk` in the two-disk benchmark: disk 0's is [`new`](Self::new)'s,
    /// the others start from other (nonzero) seeds, so the disks do not read the same blocks in
    /// lockstep.
    pub fn for_disk(blocks: u64, disk: u64) -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15 ^ disk.wrapping_mul(0xd1b5_4a32_d192_ed03),
            blocks: blocks.max(1),
        }
    }

    /// The first sector (512 bytes) of the next random 4 KiB block.
    pub fn next_sector(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        (x % self.blocks) * (READ_SIZE / 512)
    }
}

/// Reads disk `disk` (of [`BENCH_DISKS`]) does when `total` are shared among `disks` disks: equal
/// parts, the first `total % disks` disks one more.
pub fn disk_share(total: u64, disks: u64, disk: u64) -> u64 {
    let disks = disks.max(1);
    total / disks + u64::from(disk < total % disks)
}

/// Offset in the benchmark memory of the read buffer of request `head` (a head descriptor of a
/// [`BENCH_QUEUE_SIZE`] queue) on disk `disk`: each disk has its own part of the memory.
pub fn read_buffer_offset(disk: u64, head: u16) -> u64 {
    disk * (BENCH_MEMORY_SIZE / BENCH_DISKS) + u64::from(head) * READ_SIZE
}

/// The `index`th sequential write of a `total`-byte region: (first sector, bytes).
pub fn write_chunk(index: u64, total: u64) -> (u64, u64) {
    let offset = index * WRITE_CHUNK;
    (offset / 512, (total - offset).min(WRITE_CHUNK))
}

/// Sequential writes needed for `total` bytes.
pub fn write_count(total: u64) -> u64 {
    total.div_ceil(WRITE_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_blocks_stay_in_range_and_spread() {
        let mut random = RandomBlocks::new(100);
        let mut seen = [false; 100];
        for _ in 0..2000 {
            let sector = random.next_sector();
            assert_eq!(sector % 8, 0);
            seen[(sector / 8) as usize] = true;
        }
        assert!(seen.iter().filter(|s| **s).count() > 90);
        let mut one = RandomBlocks::new(0);
        assert_eq!(one.next_sector(), 0);
    }

    #[test]
    fn each_disk_has_its_own_sequence() {
        let (mut plain, mut first, mut second) = (
            RandomBlocks::new(16384),
            RandomBlocks::for_disk(16384, 0),
            RandomBlocks::for_disk(16384, 1),
        );
        let mut same = 0;
        for _ in 0..100 {
            let sector = plain.next_sector();
            assert_eq!(first.next_sector(), sector);
            let other = second.next_sector();
            assert!(other < 16384 * 8 && other % 8 == 0);
            same += usize::from(other == sector);
        }
        assert!(same < 5);
    }

    #[test]
    fn disks_share_the_reads_and_keep_their_buffers_apart() {
        assert_eq!(
            (disk_share(2000, 2, 0), disk_share(2000, 2, 1)),
            (1000, 1000)
        );
        assert_eq!((disk_share(7, 2, 0), disk_share(7, 2, 1)), (4, 3));
        assert_eq!((disk_share(1, 2, 0), disk_share(1, 2, 1)), (1, 0));
        assert_eq!(disk_share(5, 0, 0), 5);
        let last = BENCH_QUEUE_SIZE - 1;
        assert_eq!(read_buffer_offset(0, 0), 0);
        assert!(read_buffer_offset(0, last) + READ_SIZE <= read_buffer_offset(1, 0));
        assert!(read_buffer_offset(BENCH_DISKS - 1, last) + READ_SIZE <= BENCH_MEMORY_SIZE);
    }

    #[test]
    fn writes_cover_the_region() {
        assert_eq!(write_count(WRITE_CHUNK * 3), 3);
        assert_eq!(write_count(WRITE_CHUNK * 3 + 512), 4);
        assert_eq!(write_chunk(0, 200 * 1024), (0, WRITE_CHUNK));
        assert_eq!(write_chunk(2, 200 * 1024), (256, WRITE_CHUNK));
        assert_eq!(write_chunk(3, 200 * 1024), (384, 8 * 1024));
        assert!(BENCH_QUEUE_SIZE as u64 * WRITE_CHUNK <= BENCH_MEMORY_SIZE);
    }
}
