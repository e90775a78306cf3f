//! libFuzzer entry point for [`keel_fuzz::rng::rng`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::rng::rng(data));
