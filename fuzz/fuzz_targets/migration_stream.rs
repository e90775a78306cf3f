//! libFuzzer entry point for [`keel_fuzz::migration::migration_stream`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::migration::migration_stream(data));
