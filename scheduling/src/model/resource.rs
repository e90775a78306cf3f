//! Resource classes and exact allocation ratios.

/// Resource classes every cluster knows (OpenStack's standard classes plus hugepages).
/// Other classes must be declared as custom classes named `CUSTOM_*`.
pub const STANDARD_CLASSES: &[&str] = &[
    "VCPU",
    "PCPU",
    "MEMORY_MB",
    "DISK_GB",
    "HUGEPAGES_2M",
    "HUGEPAGES_1G",
    "PGPU",
    "VGPU",
    "VGPU_DISPLAY_HEAD",
    "SRIOV_NET_VF",
    "PCI_DEVICE",
    "NET_BW_EGR_KILOBIT_PER_SEC",
    "NET_BW_IGR_KILOBIT_PER_SEC",
    "IPV4_ADDRESS",
    "FPGA",
    "MEM_ENCRYPTION_CONTEXT",
];

/// The largest quantity the model accepts: 2^53 (9,007,199,254,740,992), the largest integer every
/// JSON parser (IEEE doubles included) reads exactly.
///
/// It bounds every inventory field (`total`, `reserved`, `min_unit`, `max_unit`, `step_size`), every
/// inventory's capacity after its allocation ratio, and every host's capacity of one class summed
/// over its provider tree; larger values are refused at load with
/// [`crate::ModelError::QuantityTooLarge`], naming the provider, the class, the field and this limit.
/// With every quantity at most 2^53 the arithmetic of the hot path cannot wrap in 64 bits: a request
/// has at most 16 entries (2^57 in all), and the scores' largest product is a quantity times 1000
/// (under 2^63). Sums over many hosts or allocations (reports, consistency checks, restore) are
/// computed in 128 bits or checked.
pub const MAX_QUANTITY: u64 = 1 << 53;

/// Whether `name` is acceptable as a custom resource class name.
pub fn is_valid_custom_class(name: &str) -> bool {
    name.len() > "CUSTOM_".len()
        && name.starts_with("CUSTOM_")
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Overcommit factor stored as parts per million, so capacity checks are exact integer arithmetic.
///
/// ```
/// use scheduling::model::AllocationRatio;
/// let r = AllocationRatio::from_f64(1.5).unwrap();
/// assert_eq!(r.capacity(10, 2), 12); // (10 - 2) * 1.5
/// assert!(AllocationRatio::from_f64(0.0).is_none());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllocationRatio {
    ppm: u64,
}

impl AllocationRatio {
    /// 1:1, no overcommit.
    pub const ONE: AllocationRatio = AllocationRatio { ppm: 1_000_000 };

    /// The smallest ratio accepted (one millionth: ratios are kept in millionths).
    pub const MIN: f64 = 0.000_001;
    /// The largest ratio accepted.
    pub const MAX: f64 = 1_000_000.0;

    /// Converts a float ratio, rounding to millionths; `None` unless it is finite and within
    /// [`AllocationRatio::MIN`]`..=`[`AllocationRatio::MAX`].
    pub fn from_f64(ratio: f64) -> Option<Self> {
        if !ratio.is_finite() || !(Self::MIN..=Self::MAX).contains(&ratio) {
            return None;
        }
        let ppm = (ratio * 1_000_000.0).round() as u64;
        (ppm > 0).then_some(Self { ppm })
    }

    /// The ratio in parts per million.
    pub fn ppm(self) -> u64 {
        self.ppm
    }

    /// Allocatable amount: `floor((total - reserved) × ratio)`, zero when `reserved ≥ total`. Exact:
    /// computed in 128 bits, where it cannot overflow (2^64 × 10^12 < 2^128).
    pub fn capacity(self, total: u64, reserved: u64) -> u128 {
        let usable = u128::from(total.saturating_sub(reserved));
        usable * u128::from(self.ppm) / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_class_names() {
        assert!(is_valid_custom_class("CUSTOM_FPGA_X"));
        assert!(!is_valid_custom_class("CUSTOM_"));
        assert!(!is_valid_custom_class("custom_x"));
        assert!(!is_valid_custom_class("GPU"));
    }

    #[test]
    fn ratio_is_exact_and_floors() {
        let r = AllocationRatio::from_f64(16.0).unwrap();
        assert_eq!(r.capacity(64, 4), 960);
        let r = AllocationRatio::from_f64(0.9).unwrap();
        assert_eq!(r.capacity(10, 0), 9);
        assert_eq!(
            AllocationRatio::from_f64(1.0 / 3.0).unwrap().capacity(3, 0),
            0
        ); // 0.999999 floors to 0
        assert!(AllocationRatio::from_f64(-1.0).is_none());
        assert!(AllocationRatio::from_f64(1e-7).is_none());
        assert!(AllocationRatio::from_f64(1e300).is_none());
        assert_eq!(AllocationRatio::from_f64(1e-6).unwrap().ppm(), 1);
        let huge = AllocationRatio::from_f64(1e6).unwrap();
        assert_eq!(huge.capacity(u64::MAX, 0), u128::from(u64::MAX) * 1_000_000);
        assert!(AllocationRatio::from_f64(f64::NAN).is_none());
        assert_eq!(AllocationRatio::ONE.capacity(5, 9), 0);
    }
}
