//! End-to-end virtio over MMIO on /dev/kvm: Keel's test guest drives Keel's virtio devices and
//! the host checks the results (image file contents, entropy, exit).

mod common;

use common::{image, run};
use testkit::require_kvm;
use vmm_core::config::{DiskConfig, RngConfig, VirtioTransport};
use vmm_core::{ExitReason, VmConfig};

fn guest_config(cmdline: &str) -> VmConfig {
    common::guest_config(VirtioTransport::Mmio, cmdline)
}

#[test]
fn guest_writes_flushes_and_reads_back_blocks_that_land_in_the_image() {
    require_kvm!();
    let path = common::rw_image("rw.img");
    let mut config = guest_config("keel.blk keel.blk_start=3 keel.blk_sectors=5");
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: path.clone(),
        read_only: false,
        direct: false,
        rate_limiter: None,
    });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(!console.contains("FAIL"), "{console}");
    assert!(
        console.contains("virtio-blk dev=0 capacity=64 id=disk0"),
        "{console}"
    );
    common::assert_rw_disk_written(&console, 0, &path);
}

#[test]
fn a_read_only_disk_refuses_guest_writes() {
    require_kvm!();
    let path = image("ro.img", 16, |_| 7);
    let before = std::fs::read(&path).unwrap();
    let mut config = guest_config("keel.blk");
    config.disks.push(DiskConfig {
        id: "ro".into(),
        path: path.clone(),
        read_only: true,
        direct: false,
        rate_limiter: None,
    });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(
        console.contains("virtio-blk dev=0 read-only sector0_sum=3584"),
        "{console}"
    );
    assert!(
        console.contains("virtio-blk dev=0 write-refused status=1"),
        "{console}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "image unchanged");
}

#[test]
fn guest_reads_entropy_from_virtio_rng() {
    require_kvm!();
    let mut config = guest_config("keel.rng");
    config.rng = Some(RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    common::assert_entropy(&console);
}

#[test]
fn guest_frames_cross_a_real_tap_device_both_ways() {
    require_kvm!();
    common::net_round_trip(
        VirtioTransport::Mmio,
        &format!("keeltap{}", std::process::id() % 100_000),
    );
}

#[test]
fn guest_frames_cross_a_tap_the_caller_opened_and_passed_as_a_descriptor() {
    require_kvm!();
    common::net_round_trip_on(
        VirtioTransport::Mmio,
        &format!("keelfd{}", std::process::id() % 100_000),
        true,
    );
}

#[test]
fn vsock_connections_in_both_directions_over_unix_sockets() {
    require_kvm!();
    let console = common::vsock_both_ways(VirtioTransport::Mmio, "keel-vsock");
    assert!(
        console.contains("virtio-mmio 0xd0000000 device 19"),
        "{console}"
    );
}
