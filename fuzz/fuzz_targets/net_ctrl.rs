//! libFuzzer entry point for [`keel_fuzz::net_ctrl::net_ctrl`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::net_ctrl::net_ctrl(data));
