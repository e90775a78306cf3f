//! libFuzzer entry point for [`keel_fuzz::block::block_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::block::block_request(data));
