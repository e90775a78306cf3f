//! A VM is held to what its host has and to the operator's [`Limits`]: on /dev/kvm, with the
//! test guest, each limit refuses what exceeds it with an error naming it, and what fits runs.
//! `RLIMIT_NOFILE` is lowered in a child process (this test binary run again for one ignored
//! test), so the lowered limit cannot touch the other tests.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use testkit::{require_kvm, SharedBuffer};
use vmm_core::config::{
    descriptors_needed, DiskConfig, HostResources, LimitError, Limits, RngConfig,
};
use vmm_core::{BootProtocol, Error, ExitReason, MemSize, VmBuilder, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(90);
/// Set in the child process to the test it runs.
const CHILD: &str = "KEEL_LIMITS_CHILD";

fn guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| testkit::build_test_guest().unwrap_or_else(|err| panic!("{err}")))
        .clone()
}

fn config(vcpus: u32, cmdline: &str) -> VmConfig {
    let mut config = VmConfig::new(guest());
    config.vcpus = vcpus;
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.cmdline = format!("keel.cpus={vcpus} {cmdline}");
    config.virtio_transport = vmm_core::VirtioTransport::Mmio;
    config.virtio_mmio_cmdline = true;
    config
}

fn limit_error(builder: VmBuilder) -> LimitError {
    match builder.build() {
        Ok(_) => panic!("a VM over a limit was built"),
        Err(Error::Limit(err)) => err,
        Err(other) => panic!("expected a limit error, got {other}"),
    }
}

fn run(builder: VmBuilder) -> (ExitReason, String) {
    let out = SharedBuffer::new();
    let mut vm = builder
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("build: {err}"));
    vm.start().unwrap();
    let reason = vm
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("guest did not exit:\n{}", out.text()));
    (reason, out.text())
}

/// A kiB field of `/proc/self/status` in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn guest_memory_beyond_the_host_is_refused_with_both_numbers_before_it_is_mapped() {
    require_kvm!();
    let host = HostResources::detect();
    let gib = 1u64 << 30;
    let asked = (host.memory / gib + 1) * gib + gib;
    assert!(asked <= 1 << 40, "this host has over 1 TiB: {host:?}");
    let mut too_big = config(1, "");
    too_big.memory = MemSize::bytes(asked);
    let peak_before = status_bytes("VmPeak:");
    let err = limit_error(VmBuilder::new(too_big.clone()));
    let peak_after = status_bytes("VmPeak:");
    assert_eq!((err.limit, err.field.as_str()), ("host memory", "memory"));
    let host_size = MemSize::bytes(host.memory & !0xfffff).to_string();
    assert!(
        err.reason.contains(&too_big.memory.to_string()) && err.reason.contains(&host_size),
        "both numbers: {err}"
    );
    // Mapping the guest's memory, even lazily, would have raised the peak by its size.
    assert!(
        peak_after - peak_before < asked / 2,
        "the process's address space grew by {} bytes",
        peak_after - peak_before
    );
    // What fits still runs.
    let (reason, console) = run(VmBuilder::new(config(1, "")));
    assert_eq!(reason, ExitReason::Reset, "{console}");
}

#[test]
fn more_vcpus_than_host_cpus_run_unless_capped_per_host_cpu() {
    require_kvm!();
    let cpus = HostResources::detect().cpus;
    let capped = |ratio| Limits {
        max_vcpus_per_host_cpu: Some(ratio),
        ..Limits::default()
    };
    let err = limit_error(VmBuilder::new(config(cpus + 1, "")).limits(capped(1)));
    assert_eq!(
        (err.limit, err.field.as_str()),
        ("max_vcpus_per_host_cpu", "vcpus")
    );
    assert!(
        err.reason
            .contains(&format!("{} vCPUs on {cpus} host CPUs", cpus + 1)),
        "{err}"
    );
    // Overcommitted within the cap: warned about, and all of them come up.
    let vcpus = (2 * cpus).min(8);
    let (reason, console) = run(VmBuilder::new(config(vcpus, "")).limits(capped(2)));
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(
        console.contains(&format!("cpus={vcpus} expected={vcpus}")),
        "{console}"
    );
}

#[test]
fn queue_sizes_and_device_counts_are_capped_naming_the_device() {
    require_kvm!();
    let image = std::env::temp_dir().join(format!("keel-limits-{}.img", std::process::id()));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut with_disk = config(1, "keel.blk keel.blk_start=1 keel.blk_sectors=2");
    with_disk.disks.push(DiskConfig {
        id: "disk0".into(),
        path: image.clone(),
        read_only: false,
        direct: false,
        rate_limiter: None,
    });
    let queues = |max| Limits {
        max_queue_size: Some(max),
        ..Limits::default()
    };
    // virtio-blk offers 256 entries.
    let err = limit_error(VmBuilder::new(with_disk.clone()).limits(queues(128)));
    assert_eq!((err.limit, err.field.as_str()), ("max_queue_size", "disk0"));
    assert!(
        err.reason.contains("queue 0 with 256 entries, at most 128"),
        "{err}"
    );
    let (reason, console) = run(VmBuilder::new(with_disk.clone()).limits(queues(256)));
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(
        console.contains("wrote=2 start=1 flushed verified"),
        "{console}"
    );

    // The embedder's devices count with the config's.
    let devices = |max| Limits {
        max_devices: Some(max),
        ..Limits::default()
    };
    let builder = || {
        VmBuilder::new(with_disk.clone())
            .virtio_device("rng0", devices::virtio::rng::VirtioRng::new())
    };
    let err = limit_error(builder().limits(devices(1)));
    assert_eq!(err.limit, "max_devices");
    assert!(err.reason.contains("2 virtio devices, at most 1"), "{err}");
    let (reason, console) = run(builder().limits(devices(2)));
    assert_eq!(reason, ExitReason::Reset, "{console}");
    std::fs::remove_file(&image).unwrap();
}

/// Runs `test` (an ignored test of this file) alone in a child process with `CHILD` set to
/// `mode`; returns its output after checking it exited 0 (not by a signal or a panic).
fn in_child(test: &str, mode: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        output.status.signal(),
        None,
        "the child was killed:\n{text}"
    );
    assert!(output.status.success(), "{}:\n{text}", output.status);
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    text
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_open_files_limit(limit: u64) {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit structure, which `now` is.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut now), 0);
        now.rlim_cur = limit;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &now), 0);
    }
}

/// Two vCPUs, a disk the guest writes and reads, the entropy device.
fn devices_config() -> VmConfig {
    let image = std::env::temp_dir().join(format!("keel-limits-fd-{}.img", std::process::id()));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut config = config(2, "keel.blk keel.blk_start=1 keel.blk_sectors=2 keel.rng");
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: image,
        read_only: false,
        direct: false,
        rate_limiter: None,
    });
    config.rng = Some(RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    config
}

#[test]
#[ignore = "run in a child process by open_files_are_checked_in_a_child_with_a_low_rlimit"]
fn child_with_a_lowered_open_files_limit() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let config = devices_config();
    let image = config.disks[0].path.clone();
    let needed = descriptors_needed(&config, 0);
    let _ = guest(); // built before the limit is lowered (cargo needs descriptors)
    let open = open_descriptors();
    match mode.as_str() {
        "short" => {
            set_open_files_limit(open + needed / 2);
            let err = limit_error(VmBuilder::new(config));
            assert_eq!(err.limit, "RLIMIT_NOFILE");
            println!("KEEL-LIMIT-REFUSED {err}");
        }
        "enough" => {
            // Exactly what the estimate says: a VM that opened more would fail here.
            set_open_files_limit(open + needed);
            let out = SharedBuffer::new();
            let mut vm = VmBuilder::new(config)
                .serial_output(out.clone())
                .build()
                .unwrap_or_else(|err| panic!("build: {err}"));
            vm.start().unwrap();
            let mut peak = open_descriptors();
            while vm.wait_timeout(Duration::from_millis(20)).is_none() {
                peak = peak.max(open_descriptors());
            }
            let console = out.text();
            assert_eq!(vm.wait(), ExitReason::Reset, "{console}");
            assert!(
                console.contains("wrote=2 start=1 flushed verified")
                    && console.contains("virtio-rng bytes=64"),
                "{console}"
            );
            println!(
                "KEEL-LIMIT-FITS opened={} needed={needed}",
                peak.saturating_sub(open)
            );
        }
        other => panic!("unknown mode {other}"),
    }
    std::fs::remove_file(&image).unwrap();
}

#[test]
fn open_files_are_checked_in_a_child_with_a_low_rlimit() {
    require_kvm!();
    let _ = guest();
    let refused = in_child("child_with_a_lowered_open_files_limit", "short");
    assert!(
        refused.contains("KEEL-LIMIT-REFUSED RLIMIT_NOFILE exceeded: the VM needs up to"),
        "{refused}"
    );
    assert!(refused.contains("raise it (ulimit -n)"), "{refused}");
    let fits = in_child("child_with_a_lowered_open_files_limit", "enough");
    let line = fits
        .split("KEEL-LIMIT-FITS")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("{fits}"));
    println!("descriptors:{line}");
}
