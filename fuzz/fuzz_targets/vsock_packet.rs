//! libFuzzer entry point for [`keel_fuzz::vsock::vsock_packet`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::vsock::vsock_packet(data));
