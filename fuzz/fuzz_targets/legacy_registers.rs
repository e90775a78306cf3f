//! libFuzzer entry point for [`keel_fuzz::legacy::legacy_registers`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::legacy::legacy_registers(data));
