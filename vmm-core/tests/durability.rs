//! Durability: the guest writes blocks and flushes them; the VMM process is SIGKILLed right
//! after the guest reports the flush complete; the image file then holds the flushed data.
//!
//! The VMM runs in a child process: this test binary re-executes itself with
//! `KEEL_DURABILITY_CHILD` set, and the child boots the VM (see `child_vmm`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::require_kvm;
use vmm_core::config::{DiskConfig, VirtioTransport};
use vmm_core::{BootProtocol, MemSize, VmBuilder, VmConfig};

mod common;

const CHILD_ENV: &str = "KEEL_DURABILITY_CHILD";

/// The child: boots the test guest on the image named by the environment, console on stdout.
/// Ignored in normal runs; the parent tests start it with `--ignored`.
#[test]
#[ignore = "the VMM child process of the durability tests, started by them"]
fn child_vmm() {
    let spec = std::env::var_os(CHILD_ENV).expect("started by a durability test");
    let spec = spec.to_string_lossy().to_string();
    let (image, direct) = spec.split_once(';').unwrap();
    let mut config = VmConfig::new(testkit::build_test_guest().unwrap());
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.cmdline =
        "keel.cpus=1 keel.blk keel.blk_start=2 keel.blk_sectors=16 keel.ticks=0".into();
    config.virtio_transport = VirtioTransport::Mmio;
    config.virtio_mmio_cmdline = true;
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: image.into(),
        read_only: false,
        direct: direct == "direct",
        rate_limiter: None,
    });
    let vm = VmBuilder::new(config)
        .serial_output(std::io::stdout())
        .build()
        .unwrap();
    // Runs until killed: keel.ticks=0 keeps the guest alive after the disk test.
    let _ = vm.run();
}

fn kill_after_flush(image: &Path, direct: bool) {
    let exe = std::env::current_exe().unwrap();
    let spec = format!(
        "{};{}",
        image.display(),
        if direct { "direct" } else { "buffered" }
    );
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "child_vmm",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut console = String::new();
    let mut flushed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        console.push_str(&line);
        console.push('\n');
        if line.contains("flushed") {
            // SIGKILL: no destructor, no exit handler, nothing in the VMM gets to run.
            child.kill().unwrap();
            flushed = true;
            break;
        }
        assert!(Instant::now() < deadline, "no flush reported:\n{console}");
    }
    let status = child.wait().unwrap();
    assert!(flushed, "the guest never reported its flush:\n{console}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{console}");
    // Every flushed sector, and the zeroed sector after them, as the image holds it after SIGKILL.
    common::assert_pattern_written(image, 2..18, |_| 0);
}

fn image(name: &str) -> PathBuf {
    // Under the target directory rather than /tmp: tmpfs does not support O_DIRECT.
    let dir = testkit::workspace_root()
        .join("target")
        .join(format!("keel-durability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; 64 * 512]).unwrap();
    path
}

#[test]
fn flushed_blocks_survive_sigkill_of_the_vmm() {
    require_kvm!();
    let path = image("buffered.img");
    kill_after_flush(&path, false);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn flushed_blocks_survive_sigkill_with_o_direct() {
    require_kvm!();
    let path = image("direct.img");
    kill_after_flush(&path, true);
    std::fs::remove_file(&path).unwrap();
}
