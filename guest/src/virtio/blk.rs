//! virtio-blk (virtio 1.2, section 5.2): request headers and the test's data pattern.

/// Bytes per sector in requests, whatever the device's block size.
pub const SECTOR_SIZE: usize = 512;

/// Feature: the device is read-only.
pub const F_RO: u32 = 5;
/// Feature: the device understands FLUSH requests.
pub const F_FLUSH: u32 = 9;

/// Request type: read sectors.
pub const T_IN: u32 = 0;
/// Request type: write sectors.
pub const T_OUT: u32 = 1;
/// Request type: flush the device's write cache.
pub const T_FLUSH: u32 = 4;
/// Request type: read the device's identifier string.
pub const T_GET_ID: u32 = 8;

/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;

/// Length of the identifier GET_ID returns (NUL-padded, not terminated when full).
pub const ID_LEN: usize = 20;

/// Length of [`request_header`].
pub const HEADER_LEN: usize = 16;

/// The device-readable header that starts a request: type, reserved, sector (little endian).
pub fn request_header(request_type: u32, sector: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&request_type.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    header
}

/// The test pattern: byte `offset` of sector `sector` is `((sector * 31 + offset * 7) ^ 0x5a) & 0xff`.
pub fn pattern_byte(sector: u64, offset: usize) -> u8 {
    ((sector
        .wrapping_mul(31)
        .wrapping_add((offset as u64).wrapping_mul(7)))
        ^ 0x5a) as u8
}

/// Fills `buf` (whole sectors) with the pattern of the sectors starting at `first_sector`.
pub fn fill_pattern(buf: &mut [u8], first_sector: u64) {
    for (index, sector) in buf.chunks_mut(SECTOR_SIZE).enumerate() {
        let number = first_sector.wrapping_add(index as u64);
        // Step the pattern by 7 per byte instead of multiplying: cheaper where the guest is emulated.
        let mut value = (number.wrapping_mul(31)) as u8;
        for byte in sector {
            *byte = value ^ 0x5a;
            value = value.wrapping_add(7);
        }
    }
}

/// The first sector of `buf` (whole sectors starting at `first_sector`) that differs from the
/// pattern, with the offset of its first wrong byte.
pub fn check_pattern(buf: &[u8], first_sector: u64) -> Option<(u64, usize)> {
    for (index, sector) in buf.chunks(SECTOR_SIZE).enumerate() {
        let number = first_sector.wrapping_add(index as u64);
        let mut value = (number.wrapping_mul(31)) as u8;
        for (offset, byte) in sector.iter().enumerate() {
            if *byte != value ^ 0x5a {
                return Some((number, offset));
            }
            value = value.wrapping_add(7);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(
            request_header(T_GET_ID, 0x0102_0304_0506_0708),
            [8, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
    }

    #[test]
    fn pattern_matches_the_formula() {
        let mut buf = vec![0u8; 3 * SECTOR_SIZE];
        fill_pattern(&mut buf, 1000);
        for (index, byte) in buf.iter().enumerate() {
            let sector = 1000 + (index / SECTOR_SIZE) as u64;
            let offset = index % SECTOR_SIZE;
            assert_eq!(
                *byte,
                (((sector * 31 + offset as u64 * 7) ^ 0x5a) & 0xff) as u8
            );
            assert_eq!(*byte, pattern_byte(sector, offset));
        }
        assert_eq!(check_pattern(&buf, 1000), None);
        assert_eq!(check_pattern(&buf, 1001), Some((1001, 0)));
        buf[SECTOR_SIZE + 9] ^= 1;
        assert_eq!(check_pattern(&buf, 1000), Some((1001, 9)));
    }
}
