//! Hardware-free parts of the guest's virtio drivers: finding virtio-mmio devices on the command
//! line and reading virtio-pci configuration spaces (`pci`), and the byte layouts and test data of
//! the block, network and vsock tests.
//!
//! The drivers themselves (`src/drivers/` of the binary) touch the MMIO registers and the rings;
//! everything here is plain computation so that host unit tests can check it.

pub mod attack;
pub mod bench;
pub mod blk;
pub mod discovery;
pub mod net;
pub mod pci;
pub mod vsock;

/// Sum of bytes modulo 2^32: the checksum the block test prints for sector 0.
pub fn byte_sum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |sum, byte| sum.wrapping_add(u32::from(*byte)))
}

/// How many different byte values occur in `bytes`.
pub fn distinct_bytes(bytes: &[u8]) -> u32 {
    let mut seen = [0u64; 4];
    for byte in bytes {
        if let Some(word) = seen.get_mut(usize::from(byte >> 6)) {
            *word |= 1 << (byte & 63);
        }
    }
    seen.iter().map(|word| word.count_ones()).sum()
}

/// Shows bytes as text on one output line: the bytes up to the first NUL, at most `limit` of them,
/// any byte other than printable ASCII or space shown as `.` (so a line never breaks). The guest
/// prints such text only as the last field of a line.
pub struct Printable<'a> {
    /// The bytes to show.
    pub bytes: &'a [u8],
    /// At most this many are shown.
    pub limit: usize,
}

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        for byte in self.bytes.iter().take(self.limit) {
            match byte {
                0 => break,
                b' '..=b'~' => f.write_char(char::from(*byte))?,
                _ => f.write_char('.')?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sum_wraps() {
        assert_eq!(byte_sum(&[]), 0);
        assert_eq!(byte_sum(&[1, 2, 255]), 258);
        assert_eq!(
            byte_sum(&vec![0xff; 1 << 25]),
            0xffu32.wrapping_mul(1 << 25)
        );
    }

    #[test]
    fn distinct_bytes_counts_values() {
        assert_eq!(distinct_bytes(&[]), 0);
        assert_eq!(distinct_bytes(&[7, 7, 7]), 1);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(distinct_bytes(&all), 256);
        assert_eq!(distinct_bytes(&[0, 63, 64, 127, 128, 191, 192, 255, 0]), 8);
    }

    #[test]
    fn printable_stops_at_nul_and_limit() {
        let show = |bytes: &[u8], limit| format!("{}", Printable { bytes, limit });
        assert_eq!(show(b"keeldisk\0\0\0", 20), "keeldisk");
        assert_eq!(show(b"KEEL-HOST 1", 32), "KEEL-HOST 1");
        assert_eq!(show(b"abcdef", 3), "abc");
        assert_eq!(show(b"a\x01b\xff\n", 8), "a.b..");
    }
}
