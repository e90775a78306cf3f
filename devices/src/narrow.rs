//! Narrowing conversions that cannot lose information, for the shapes device code needs.

/// The low and high 32-bit halves of `value`: a 64-bit address, mask or feature word that 32-bit
/// registers show half at a time.
pub(crate) fn halves(value: u64) -> (u32, u32) {
    let [b0, b1, b2, b3, b4, b5, b6, b7] = value.to_le_bytes();
    (
        u32::from_le_bytes([b0, b1, b2, b3]),
        u32::from_le_bytes([b4, b5, b6, b7]),
    )
}

/// A byte count as a 32-bit length field: a used-ring length, a vsock header length or credit
/// counter. Every caller's count is bounded by a buffer far below 4 GiB (a frame, a packet,
/// console input, an entropy request); a count that were not would saturate, never wrap to a
/// small number.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_split_a_word_and_lengths_saturate() {
        assert_eq!(halves(0x1122_3344_5566_7788), (0x5566_7788, 0x1122_3344));
        assert_eq!(len_u32(4096), 4096);
        assert_eq!(len_u32(usize::MAX), u32::MAX);
    }
}
