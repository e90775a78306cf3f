//! Teardown leaves nothing behind: 50 boots in a row, then this process has exactly the fds,
//! threads and memory mappings it had before. Alone in its own test binary so no other test's
//! VMs are counted.

use std::time::Duration;

use testkit::{require_kvm, ProcessResources, SharedBuffer};
use vmm_core::{BootProtocol, ExitReason, MemSize, VmBuilder, VmConfig};

fn boot_once(guest: &std::path::Path) {
    let mut config = VmConfig::new(guest);
    config.vcpus = 2;
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.cmdline = "keel.cpus=2".into();
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    let reason = vm.wait_timeout(Duration::from_secs(60));
    assert_eq!(reason, Some(ExitReason::Reset), "console:\n{}", out.text());
}

#[test]
fn fifty_boots_leak_no_fds_threads_or_mappings() {
    require_kvm!();
    let guest = testkit::build_test_guest().unwrap();
    // One boot first, so one-time set-up (signal handler, allocator arenas) is not counted.
    boot_once(&guest);
    let before = ProcessResources::now().unwrap();
    for _ in 0..50 {
        boot_once(&guest);
    }
    let after = ProcessResources::now().unwrap();
    assert_eq!(before, after, "resources before and after 50 boots");
}
