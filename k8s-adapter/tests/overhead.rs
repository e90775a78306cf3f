//! The overhead the launcher pod requests (`k8s_adapter::overhead`) against a measurement: the
//! real `keel` program running Keel's test guest on KVM, with 1 and 2 vCPUs.
//!
//! What is measured is the process's private memory (anonymous and shared-memory pages: heap,
//! stacks, buffers, and the guest pages the guest touched). Its code pages are file-backed and
//! shared by every `keel` process on a node, so they are a per-node cost, not a per-VM one
//! (`benches/k8s.rs` prints both).

#[macro_use]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_adapter::overhead::memory_overhead_bytes;
use testkit::require_kvm;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn private_bytes_of_a_running_guest(vcpus: u32) -> u64 {
    let dir = harness::scratch(&format!("overhead-{vcpus}"));
    let api = dir.join("api.sock");
    let mut child = Command::new(harness::keel_binary())
        .arg("--api-socket")
        .arg(&api)
        .arg("--kernel")
        .arg(harness::test_guest())
        .args([
            "--cpus",
            &format!("boot={vcpus}"),
            "--memory",
            "size=64M",
            "--serial",
            "null",
        ])
        .args([
            "--cmdline",
            &format!("keel.cpus={vcpus} keel.ticks=0 keel.tick_tsc=2000000 keel.power_button"),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("start keel");
    let client = keel::client::Client::new(&api).expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(
        client.ping().map(|p| p.state),
        Ok(keel::api::ApiVmState::Running)
    ) {
        assert!(Instant::now() < deadline, "keel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it tick a while (the API answered, the console relays, the guest ran).
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let private = (status_kib(pid, "RssAnon:") + status_kib(pid, "RssShmem:")) * 1024;
    eprintln!(
        "keel with {vcpus} vCPU(s), 64 MiB: RSS {} KiB (anonymous {} KiB, file {} KiB, shmem {} KiB)",
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "RssAnon:"),
        status_kib(pid, "RssFile:"),
        status_kib(pid, "RssShmem:")
    );
    let _ = client.power_button();
    let _ = child.wait();
    private
}

#[test]
fn the_measured_vmm_overhead_fits_the_formula() {
    require_kvm!();
    for vcpus in [1, 2] {
        let measured = private_bytes_of_a_running_guest(vcpus);
        let formula = memory_overhead_bytes(vcpus, 64 << 20);
        assert!(
            measured > 0 && measured <= formula,
            "{vcpus} vCPUs: measured {measured} bytes of private memory, the formula books {formula}"
        );
    }
}
