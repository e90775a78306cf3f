//! libFuzzer entry point for [`keel_fuzz::flags::keel_flags`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::flags::keel_flags(data));
