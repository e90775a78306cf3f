//! libFuzzer entry point for [`keel_fuzz::console::console`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::console::console(data));
