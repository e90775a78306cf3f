//! libFuzzer entry point for [`keel_fuzz::net::net_header`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::net::net_header(data));
