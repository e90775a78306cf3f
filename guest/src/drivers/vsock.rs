//! stub
use super::transport::Transport;
use crate::console::report;
use keel_test_guest::cmdline::VirtioOptions;
pub fn test(_transport: &Transport, _options: &VirtioOptions) {
    report!("FAIL virtio-vsock not implemented");
}
