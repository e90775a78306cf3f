//! A deterministic integer workload whose result is known in advance.
//!
//! It proves that the vCPU computes correctly with interrupts enabled, where a VMM runs the guest
//! natively: a sieve of Eratosthenes (memory traffic and branches), then a xorshift64* stream folded through
//! 64-bit division and remainder with data-dependent divisors, 128-bit multiplication and 128-bit
//! division (a compiler-builtins call). The expected value is fixed here and checked by a host unit
//! test, so a guest that computes anything else reports a failure. Nothing here uses floating
//! point.
//!
//! The sizes are small on purpose: where KVM emulates the guest instruction by instruction (see
//! `README.md`), every thousand instructions cost about a millisecond. As sized, the check takes
//! about 20 ms there.

use core::fmt;

/// Primes below [`SIEVE_LIMIT`].
pub const PRIMES_BELOW_LIMIT: u32 = 168;

/// The sieve counts primes below this.
pub const SIEVE_LIMIT: u32 = 1_000;

/// Steps of the xorshift stream.
pub const MIX_STEPS: u32 = 200;

/// The value a correct CPU computes (see the `expected_value_is_what_the_host_computes` test).
pub const EXPECTED_VALUE: u64 = 16_019_542_240_260_378_023;

/// A result that differs from what a correct CPU computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfCheckError {
    /// The sieve found this many primes instead of [`PRIMES_BELOW_LIMIT`].
    PrimeCount(u32),
    /// The combined value differs from [`EXPECTED_VALUE`].
    Value(u64),
}

impl fmt::Display for SelfCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrimeCount(count) => {
                write!(f, "primes={count} expected={PRIMES_BELOW_LIMIT}")
            }
            Self::Value(value) => write!(f, "value={value} expected={EXPECTED_VALUE}"),
        }
    }
}

/// Runs the workload; `Ok` carries the value, which equals [`EXPECTED_VALUE`].
pub fn run() -> Result<u64, SelfCheckError> {
    let primes = count_primes_below_limit();
    if primes != PRIMES_BELOW_LIMIT {
        return Err(SelfCheckError::PrimeCount(primes));
    }
    let value = mix(u64::from(primes), MIX_STEPS);
    if value != EXPECTED_VALUE {
        return Err(SelfCheckError::Value(value));
    }
    Ok(value)
}

/// Counts primes below [`SIEVE_LIMIT`] with a sieve over odd numbers (one bit each).
fn count_primes_below_limit() -> u32 {
    const ODD_NUMBERS: usize = SIEVE_LIMIT as usize / 2;
    // Bit i stands for the odd number 2i + 1; a set bit means composite (1 counts as composite).
    let mut composite = [0u64; ODD_NUMBERS.div_ceil(64)];
    composite[0] = 1;
    let mut p = 3usize;
    while p * p < SIEVE_LIMIT as usize {
        if composite[p / 2 / 64] & (1 << (p / 2 % 64)) == 0 {
            let mut multiple = p * p;
            while multiple < SIEVE_LIMIT as usize {
                composite[multiple / 2 / 64] |= 1 << (multiple / 2 % 64);
                multiple += 2 * p;
            }
        }
        p += 2;
    }
    let odd_composites: u32 = composite.iter().map(|word| word.count_ones()).sum();
    // Bits past the last odd number below the limit stay clear; 2 is the one even prime.
    1 + ODD_NUMBERS as u32 - odd_composites
}

/// Folds `steps` values of a xorshift64* stream seeded by `seed` into one 64-bit value.
fn mix(seed: u64, steps: u32) -> u64 {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut acc = 0xcbf2_9ce4_8422_2325u64;
    for step in 0..steps {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // A divisor that the compiler cannot turn into a multiplication.
        let divisor = (x >> 40) | 1;
        acc = acc.rotate_left(7) ^ (x / divisor) ^ (x % divisor).wrapping_mul(0x100_0000_01b3);
        let wide = u128::from(x) * u128::from(acc | 1);
        acc ^= (wide >> 64) as u64 ^ wide as u64;
        if step % 16 == 0 {
            acc = acc.wrapping_add((wide / u128::from(divisor | 0x8000_0000)) as u64);
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_prime(n: u32) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn sieve_agrees_with_trial_division() {
        let by_trial = (0..SIEVE_LIMIT).filter(|n| is_prime(*n)).count() as u32;
        assert_eq!(by_trial, PRIMES_BELOW_LIMIT);
        assert_eq!(count_primes_below_limit(), PRIMES_BELOW_LIMIT);
    }

    #[test]
    fn expected_value_is_what_the_host_computes() {
        let value = mix(u64::from(PRIMES_BELOW_LIMIT), MIX_STEPS);
        assert_eq!(value, EXPECTED_VALUE, "update EXPECTED_VALUE to {value}");
        assert_eq!(run(), Ok(EXPECTED_VALUE));
    }

    #[test]
    fn mix_depends_on_every_input() {
        assert_ne!(mix(1, 100), mix(2, 100));
        assert_ne!(mix(1, 100), mix(1, 101));
    }
}
