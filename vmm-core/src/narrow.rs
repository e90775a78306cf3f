//! Narrowing that cannot lose information.

/// The low and high 32-bit halves of `value`: a 64-bit address or descriptor that 32-bit
/// fields (boot protocol, MSI routes, segment limits) hold half at a time.
pub(crate) fn halves(value: u64) -> (u32, u32) {
    let [b0, b1, b2, b3, b4, b5, b6, b7] = value.to_le_bytes();
    (
        u32::from_le_bytes([b0, b1, b2, b3]),
        u32::from_le_bytes([b4, b5, b6, b7]),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn halves_split_a_word() {
        assert_eq!(
            super::halves(0x1122_3344_5566_7788),
            (0x5566_7788, 0x1122_3344)
        );
    }
}
