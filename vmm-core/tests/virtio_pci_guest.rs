//! End-to-end virtio over PCI on /dev/kvm: Keel's test guest scans PCI bus 0 through ports
//! 0xCF8/0xCFC (`keel.pci`), drives Keel's virtio-pci functions with its polling drivers (common
//! configuration, notification area, device configuration in BAR 0; MSI-X vectors set to "none")
//! and the host checks the results, as `virtio_guest.rs` does for virtio-mmio.
//!
//! Queue notifications: the guest's writes to the notification addresses must be caught by KVM
//! ioeventfds (counted by the VM as `ioeventfd`, never as `vcpu` exits), also after the guest
//! moved BAR 0 of every function (`keel.pci_move_bar`).

mod common;

use common::{image, run};
use testkit::require_kvm;
use vmm_core::config::{DiskConfig, RngConfig};
use vmm_core::device_manager::pci::VirtioNotifyCount;
use vmm_core::{ExitReason, VirtioTransport, VmConfig};

fn guest_config(cmdline: &str) -> VmConfig {
    common::guest_config(VirtioTransport::Pci, cmdline)
}

/// The `virtio-pci 00:<dd>.0 device <type> bar0=<hex>` lines: (slot, type, BAR 0).
fn pci_devices(console: &str) -> Vec<(u8, u32, u64)> {
    console
        .lines()
        .filter_map(|line| line.split("keel-guest: virtio-pci 00:").nth(1))
        .map(|rest| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let slot = u8::from_str_radix(fields[0].trim_end_matches(".0"), 16).unwrap();
            assert_eq!(fields[1], "device", "{rest}");
            let kind = fields[2].parse().unwrap();
            let bar = fields[3].strip_prefix("bar0=0x").unwrap();
            (slot, kind, u64::from_str_radix(bar, 16).unwrap())
        })
        .collect()
}

#[test]
fn guest_drives_blk_and_rng_over_virtio_pci() {
    require_kvm!();
    let path = common::rw_image("rw.img");
    let ro_path = image("ro.img", 16, |_| 7);
    let ro_before = std::fs::read(&ro_path).unwrap();
    let mut config = guest_config("keel.blk keel.rng keel.blk_start=3 keel.blk_sectors=5");
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: path.clone(),
        read_only: false,
        direct: false,
        rate_limiter: None,
    });
    config.disks.push(DiskConfig {
        id: "ro".into(),
        path: ro_path.clone(),
        read_only: true,
        direct: false,
        rate_limiter: None,
    });
    config.rng = Some(RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(!console.contains("FAIL"), "{console}");
    assert!(!console.contains("virtio-mmio"), "{console}");

    // Three functions on bus 0 (the host bridge is 00:00.0), BARs pre-assigned in the 32-bit
    // window, all different.
    let devices = pci_devices(&console);
    let mut kinds: Vec<u32> = devices.iter().map(|d| d.1).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, [2, 2, 4], "{console}");
    for (slot, _, bar) in &devices {
        assert!(*slot > 0, "{console}");
        assert!((0xc000_0000..0xd000_0000).contains(bar), "{console}");
    }
    let mut bars: Vec<u64> = devices.iter().map(|d| d.2).collect();
    bars.sort_unstable();
    bars.dedup();
    assert_eq!(bars.len(), 3, "{console}");

    // Block: written, flushed, read back, and in the image.
    assert!(
        console.contains("virtio-blk dev=0 capacity=64 id=disk0"),
        "{console}"
    );
    common::assert_rw_disk_written(&console, 0, &path);

    // The read-only disk refuses the write.
    assert!(
        console.contains("virtio-blk dev=1 capacity=16 id=ro"),
        "{console}"
    );
    assert!(
        console.contains("virtio-blk dev=1 read-only sector0_sum=3584"),
        "{console}"
    );
    assert!(
        console.contains("virtio-blk dev=1 write-refused status=1"),
        "{console}"
    );
    assert_eq!(
        std::fs::read(&ro_path).unwrap(),
        ro_before,
        "image unchanged"
    );

    common::assert_entropy(&console);
    assert!(console.contains("virtio done"), "{console}");
}

#[test]
fn guest_frames_cross_a_real_tap_device_over_virtio_pci() {
    require_kvm!();
    let tap = format!("keelpci{}", std::process::id() % 100_000);
    if let Some(console) = common::net_round_trip(VirtioTransport::Pci, &tap) {
        let types: Vec<u32> = pci_devices(&console).iter().map(|d| d.1).collect();
        assert_eq!(types, [1], "one virtio-net function; console:\n{console}");
    }
}

#[test]
fn vsock_connections_in_both_directions_over_virtio_pci() {
    require_kvm!();
    let console = common::vsock_both_ways(VirtioTransport::Pci, "keel-vsock-pci");
    let types: Vec<u32> = pci_devices(&console).iter().map(|d| d.1).collect();
    assert_eq!(
        types,
        [19],
        "one virtio-vsock function; console:\n{console}"
    );
}

/// Boots `config` to its exit; returns the exit reason, the console and the virtio-pci
/// notification counts at the end.
fn run_counting(config: VmConfig) -> (ExitReason, String, Vec<VirtioNotifyCount>) {
    common::run_then(config, vmm_core::Vm::virtio_pci_notify_counts)
}

/// A read-write disk (64 sectors, `rw.img` pattern) and an entropy device, with `options`.
fn blk_and_rng(options: &str, image_name: &str) -> (VmConfig, std::path::PathBuf) {
    let path = common::rw_image(image_name);
    let mut config = guest_config(&format!(
        "keel.blk keel.rng keel.blk_start=3 keel.blk_sectors=5 {options}"
    ));
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: path.clone(),
        read_only: false,
        direct: false,
        rate_limiter: None,
    });
    config.rng = Some(RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    (config, path)
}

/// The guest's block and entropy tests passed and every notification took the ioeventfd path.
fn assert_devices_worked_through_ioeventfds(
    console: &str,
    image: &std::path::Path,
    counts: &[VirtioNotifyCount],
) {
    assert!(!console.contains("FAIL"), "{console}");
    common::assert_rw_disk_written(console, 0, image);
    assert!(console.contains("virtio-rng bytes=64"), "{console}");
    let ids: Vec<&str> = counts.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["disk0", "rng0"], "{counts:?}");
    for count in counts {
        assert!(
            count.ioeventfd > 0,
            "{}: no notification arrived through an ioeventfd: {counts:?}",
            count.id
        );
        assert_eq!(
            count.vcpu, 0,
            "{}: notifications exited to the VMM instead of hitting an ioeventfd: {counts:?}",
            count.id
        );
    }
}

#[test]
fn queue_notifications_reach_the_devices_through_ioeventfds_without_vcpu_exits() {
    require_kvm!();
    let (config, path) = blk_and_rng("", "ioeventfd.img");
    let (reason, console, counts) = run_counting(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(!console.contains("moved bar0"), "{console}");
    assert_devices_worked_through_ioeventfds(&console, &path, &counts);
}

#[test]
fn devices_keep_working_through_ioeventfds_after_the_guest_moves_their_bars() {
    require_kvm!();
    let (config, path) = blk_and_rng("keel.pci_move_bar", "moved-bar.img");
    let (reason, console, counts) = run_counting(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    // Both functions moved from their pre-assigned BARs, 128 MiB up, still inside the window.
    let moves: Vec<(u64, u64)> = console
        .lines()
        .filter_map(|line| line.split("keel-guest: virtio-pci moved bar0 of ").nth(1))
        .map(|rest| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let hex = |text: &str| u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap();
            assert_eq!((fields[1], fields[3]), ("from", "to"), "{rest}");
            (hex(fields[2]), hex(fields[4]))
        })
        .collect();
    assert_eq!(moves.len(), 2, "{console}");
    for (from, to) in &moves {
        assert_eq!(to - from, 0x0800_0000, "{console}");
        assert!((0xc800_0000..0xd000_0000).contains(to), "{console}");
    }
    assert_devices_worked_through_ioeventfds(&console, &path, &counts);
}
