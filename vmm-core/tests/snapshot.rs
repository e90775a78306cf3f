//! Snapshot and restore with Keel's test guest on KVM: the guest counts, is snapshotted while
//! paused, and a VM restored from the snapshot (a fresh VM, as in a new process) goes on
//! counting from where it stopped, with its devices still working; damaged or mismatched
//! snapshots are refused by name and leave the snapshot's files untouched.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{guest_config, image, TIMEOUT};
use testkit::{require_kvm, SharedBuffer};
use vmm_core::config::{DiskConfig, RngConfig};
use vmm_core::{Error, ExitReason, VirtioTransport, VmBuilder, VmConfig, VmState};

const COUNTING: &str = "keel.rng keel.ticks=0 keel.tick_tsc=2000000 keel.power_button";

fn snapshot_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-snapshot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn counting_config(disk: &Path, transport: VirtioTransport) -> VmConfig {
    let mut config = guest_config(transport, COUNTING);
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: disk.to_path_buf(),
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

/// The last `tick N` line in `text`.
fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("keel-guest: tick ")?.parse().ok())
}

fn wait_for_tick(out: &SharedBuffer, at_least: u64) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(tick) = last_tick(&out.text()).filter(|&t| t >= at_least) {
            return tick;
        }
        assert!(
            Instant::now() < deadline,
            "no tick {at_least}:\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restored_vm_goes_on_counting_with_its_devices_on_mmio() {
    require_kvm!();
    counts_on_across_a_restore(VirtioTransport::Mmio);
}

#[test]
fn a_restored_vm_goes_on_counting_with_its_devices_on_pci() {
    require_kvm!();
    counts_on_across_a_restore(VirtioTransport::Pci);
}

fn counts_on_across_a_restore(transport: VirtioTransport) {
    let name = format!("{transport:?}").to_lowercase();
    let disk = image(&format!("snapshot-disk-{name}.img"), 64, |_| 0);
    let dir = snapshot_dir(&name);
    let config = counting_config(&disk, transport);

    // Run, pause at some tick, snapshot, stop.
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config.clone())
        .serial_output(out.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    wait_for_tick(&out, 5);
    let handle = vm.handle();
    handle.pause().unwrap();
    let at_pause = out.text();
    let paused_at = last_tick(&at_pause).unwrap();
    handle.snapshot(&dir).unwrap();
    assert_eq!(handle.state(), VmState::Paused, "the VM stays paused");
    // It can go on after a snapshot, too.
    handle.resume().unwrap();
    wait_for_tick(&out, paused_at + 2);
    handle.stop();
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Stopped));
    drop(vm);
    let memory_file = std::fs::metadata(dir.join("memory")).unwrap();
    assert_eq!(memory_file.len(), 128 << 20);
    // Sparse: the memory the guest never touched is a hole, not 128 MiB of zeroes on disk.
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&memory_file) * 512;
    assert!(on_disk < (32 << 20), "{on_disk} bytes on disk");

    // Restore into a fresh VM: the count goes on from the tick it was paused at.
    let restored_out = SharedBuffer::new();
    let mut restored = VmBuilder::new(config.clone())
        .restore(&dir)
        .serial_output(restored_out.clone())
        .build()
        .unwrap_or_else(|err| panic!("restore: {err}"));
    assert_eq!(restored.state(), VmState::Created);
    restored.start().unwrap();
    let resumed = wait_for_tick(&restored_out, paused_at + 3);
    let text = restored_out.text();
    assert!(!text.contains("boot protocol"), "no second boot:\n{text}");
    // The restored guest's output continues the old one mid-line if need be: together they
    // count on without a gap or a repeat.
    let joined = format!("{at_pause}{text}");
    let ticks: Vec<u64> = joined
        .lines()
        .filter_map(|line| line.trim().strip_prefix("keel-guest: tick ")?.parse().ok())
        .collect();
    let expected: Vec<u64> = (1..=resumed).collect();
    assert_eq!(ticks, expected, "{joined}");
    // The devices came back: the power button reaches the guest, which powers off.
    let handle = restored.handle();
    let counters = handle.counters();
    assert!(counters.device("disk0").is_some() && counters.device("rng0").is_some());
    handle.power_button().unwrap();
    assert_eq!(restored.wait_timeout(TIMEOUT), Some(ExitReason::Shutdown));
    assert!(restored_out.text().contains("keel-guest: power button"));
    drop(restored);

    // The snapshot can be restored again: its memory file was never written to.
    let again = SharedBuffer::new();
    let mut vm = VmBuilder::new(config.clone())
        .restore(&dir)
        .serial_output(again.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    wait_for_tick(&again, paused_at + 1);

    // A restored VM snapshotted into the directory it was restored from: its memory is a
    // private mapping of the old memory file, which the new one replaces without cutting it
    // short under the running VM.
    let handle = vm.handle();
    handle.pause().unwrap();
    let second_pause = last_tick(&again.text()).unwrap();
    handle.snapshot(&dir).unwrap();
    handle.resume().unwrap();
    wait_for_tick(&again, second_pause + 3);
    handle.stop();
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Stopped));
    drop(vm);
    let third = SharedBuffer::new();
    let mut vm = VmBuilder::new(counting_config(&disk, transport))
        .restore(&dir)
        .serial_output(third.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    wait_for_tick(&third, second_pause + 1);
    vm.handle().stop();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snapshots_of_another_shape_or_damaged_are_refused_and_left_alone() {
    require_kvm!();
    let disk = image("snapshot-shape.img", 64, |_| 0);
    let dir = snapshot_dir("shape");
    let config = counting_config(&disk, VirtioTransport::Pci);
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config.clone())
        .serial_output(out.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    wait_for_tick(&out, 2);
    let handle = vm.handle();
    let running = handle.snapshot(&dir).unwrap_err();
    assert!(running.to_string().contains("not paused"), "{running}");
    handle.pause().unwrap();
    handle.snapshot(&dir).unwrap();
    handle.stop();
    drop(vm);
    let state_before = std::fs::read(dir.join("state")).unwrap();

    let refuse = |config: VmConfig, needle: &str| {
        let err = match VmBuilder::new(config).restore(&dir).build() {
            Ok(_) => panic!("restored into the wrong VM"),
            Err(err) => err,
        };
        assert!(matches!(err, Error::Snapshot(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
    };
    let mut more_memory = config.clone();
    more_memory.memory = vmm_core::MemSize::mib(256);
    refuse(more_memory, "memory: the snapshot has 128M");
    let mut two_vcpus = config.clone();
    two_vcpus.vcpus = 2;
    refuse(two_vcpus, "vCPUs: the snapshot has 1, this VM 2");
    let mut no_rng = config.clone();
    no_rng.rng = None;
    refuse(no_rng, "virtio devices");

    // A damaged state file is refused by its checksum; the files stay as they were.
    let mut damaged = state_before.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x55;
    std::fs::write(dir.join("state"), &damaged).unwrap();
    refuse(config.clone(), "checksum");
    assert_eq!(std::fs::read(dir.join("state")).unwrap(), damaged);
    std::fs::write(dir.join("state"), b"not a snapshot").unwrap();
    refuse(config.clone(), "not a Keel snapshot");
    std::fs::write(dir.join("state"), &state_before).unwrap();
    // A truncated memory file too.
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("memory"))
        .unwrap();
    memory.set_len(64 << 20).unwrap();
    refuse(config, "the snapshot's RAM is");
    std::fs::remove_dir_all(&dir).unwrap();
}
