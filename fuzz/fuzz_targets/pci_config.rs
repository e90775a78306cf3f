//! libFuzzer entry point for [`keel_fuzz::transport::pci_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::transport::pci_config(data));
