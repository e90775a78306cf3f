//! A tiny seeded pseudo-random generator (SplitMix64).
//!
//! Placement must be reproducible from a seed (tie-breaking, sampling start, the workload generator), and the
//! crate needs nothing cryptographic, so a 10-line SplitMix64 replaces a dependency on `rand`. It is the
//! generator Java's `SplittableRandom` uses and passes BigCrush; it is not suitable for secrets.

/// SplitMix64: a fast 64-bit generator with a single `u64` of state. Public (as
/// `scheduling::generator::SplitMix64`) only with the `generator` feature, for seeding workloads.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

// The decider only draws with `below`; the rest serves the workload generator.
#[cfg_attr(not(feature = "generator"), allow(dead_code))]
impl SplitMix64 {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (returns 0 when `bound` is 0). Uses Lemire's multiply-shift, whose bias is
    /// below 2^-32 for the bounds used here.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A value in `lo..=hi` (returns `lo` when `hi < lo`).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// `true` with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A float in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_first_value_for_seed_zero() {
        // Reference value of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(1);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.below(5) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
    }
}
