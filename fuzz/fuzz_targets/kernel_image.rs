//! libFuzzer entry point for [`keel_fuzz::kernel::kernel_image`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::kernel::kernel_image(data));
