//! libFuzzer entry point for [`keel_fuzz::snapshot::snapshot_state`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::snapshot::snapshot_state(data));
