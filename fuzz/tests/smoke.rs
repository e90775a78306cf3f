//! Smoke mode for the fuzz targets on the stable toolchain: runs every target in
//! `keel_fuzz::TARGETS` over its seeds (`seeds/<target>/`) and saved corpus
//! (`corpus/<target>/`), and then over seeded random inputs for a while. `KEEL_FUZZ_SECONDS` sets the time per target (default 3),
//! `KEEL_FUZZ_SEED` the seed (default fixed, so failures reproduce).

use std::time::{Duration, Instant};

/// xorshift64*: small, seeded, good enough to make inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_target_survives_corpus_and_random_inputs() {
    let seconds = env_u64("KEEL_FUZZ_SECONDS", 3);
    let seed = env_u64("KEEL_FUZZ_SEED", 0x6b65_656c_6675_7a7a);
    for &(name, target) in keel_fuzz::TARGETS {
        // seeds/<target>/: hand-written inputs kept in git; corpus/<target>/: what cargo fuzz
        // saved locally (ignored by git).
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut saved = 0;
        for dir in [
            root.join("seeds").join(name),
            root.join("corpus").join(name),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    target(&bytes);
                    saved += 1;
                }
            }
        }
        let mut rng = Rng(seed | 1);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        let mut input = Vec::new();
        while Instant::now() < deadline {
            let len = (rng.next() % 4096) as usize;
            input.clear();
            while input.len() < len {
                input.extend_from_slice(&rng.next().to_le_bytes());
            }
            input.truncate(len);
            target(&input);
            runs += 1;
        }
        eprintln!("{name}: {saved} saved inputs, {runs} random inputs (seed {seed:#x})");
        assert!(runs > 0, "{name} ran no input");
    }
}
