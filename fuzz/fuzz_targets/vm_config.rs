//! libFuzzer entry point for [`keel_fuzz::config::vm_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::config::vm_config(data));
