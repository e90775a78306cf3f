//! End-to-end tests on /dev/kvm: Keel boots its own test guest (`guest/`) through both entry
//! protocols and checks what the guest reports on its serial console.
//!
//! These need a usable /dev/kvm; without one each test prints `KEEL-KVM-SKIP` and returns
//! (`.ci/run` fails if that happens on a machine that has /dev/kvm).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use testkit::{require_kvm, SharedBuffer};
use vmm_core::{BootProtocol, ExitReason, MemSize, Vm, VmBuilder, VmConfig, VmState};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn guest() -> std::path::PathBuf {
    static GUEST: OnceLock<std::path::PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| match testkit::build_test_guest() {
            Ok(path) => path,
            Err(err) => panic!("{err}"),
        })
        .clone()
}

fn config(vcpus: u32, protocol: BootProtocol, cmdline: &str) -> VmConfig {
    let mut config = VmConfig::new(guest());
    config.vcpus = vcpus;
    config.memory = MemSize::mib(128);
    config.boot_protocol = protocol;
    config.cmdline = cmdline.to_string();
    config
}

fn build(config: VmConfig) -> (Vm, SharedBuffer) {
    let out = SharedBuffer::new();
    let vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("build failed: {err}"));
    (vm, out)
}

fn run_to_exit(config: VmConfig) -> (ExitReason, String) {
    let (mut vm, out) = build(config);
    vm.start().unwrap();
    let reason = vm
        .wait_timeout(BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("guest did not exit; console:\n{}", out.text()));
    (reason, out.text())
}

/// Checks the banner, AP reports, self-check and exit path of one boot.
fn check_boot(vcpus: u32, protocol: BootProtocol, name: &str) {
    let (reason, console) = run_to_exit(config(vcpus, protocol, &format!("keel.cpus={vcpus}")));
    assert_eq!(reason, ExitReason::Reset, "console:\n{console}");
    assert!(!console.contains("FAIL"), "console:\n{console}");
    assert!(
        console.contains(&format!("keel-guest: boot protocol={name} ")),
        "console:\n{console}"
    );
    assert!(console.contains("mem_mib=128 "), "console:\n{console}");
    assert!(
        console.contains(&format!("keel-guest: cpus={vcpus} expected={vcpus}")),
        "console:\n{console}"
    );
    for apic_id in 1..vcpus {
        assert!(
            console.contains(&format!("keel-guest: ap apic_id={apic_id} online")),
            "AP {apic_id} did not report; console:\n{console}"
        );
    }
    assert_eq!(console.matches(" online").count(), vcpus as usize - 1);
    assert!(
        console.contains("keel-guest: selfcheck ok"),
        "console:\n{console}"
    );
    assert!(
        console.contains("keel-guest: exit via=reset"),
        "console:\n{console}"
    );
}

#[test]
fn boots_through_pvh_with_1_2_and_4_vcpus() {
    require_kvm!();
    for vcpus in [1, 2, 4] {
        check_boot(vcpus, BootProtocol::Pvh, "pvh");
    }
}

#[test]
fn boots_through_the_linux_64_bit_protocol_with_1_2_and_4_vcpus() {
    require_kvm!();
    for vcpus in [1, 2, 4] {
        check_boot(vcpus, BootProtocol::Linux64, "linux64");
    }
}

#[test]
fn auto_protocol_picks_pvh_for_an_elf_with_the_note() {
    require_kvm!();
    let (vm, _) = build(config(1, BootProtocol::Auto, ""));
    assert_eq!(
        vm.boot_layout().expect("a booted VM").entry.protocol,
        vmm_core::boot::EntryProtocol::Pvh
    );
}

#[test]
fn serial_input_is_echoed_by_the_guest() {
    require_kvm!();
    let (host, guest_end) = UnixStream::pair().unwrap();
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config(1, BootProtocol::Pvh, "keel.echo"))
        .serial_output(out.clone())
        .serial_input(guest_end)
        .build()
        .unwrap();
    vm.start().unwrap();
    assert!(
        out.wait_for("keel-guest: echo ready", BOOT_TIMEOUT),
        "console:\n{}",
        out.text()
    );
    // More than the UART's 64-byte FIFO, to exercise input flow control.
    let long_line = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(4);
    let mut host = host;
    host.write_all(format!("{long_line}\nexit\n").as_bytes())
        .unwrap();
    let reason = vm.wait_timeout(BOOT_TIMEOUT);
    let console = out.text();
    assert_eq!(reason, Some(ExitReason::Reset), "console:\n{console}");
    assert!(
        console.contains(&long_line),
        "echo missing; console:\n{console}"
    );
    assert!(
        console.contains("keel-guest: echo done"),
        "console:\n{console}"
    );
}

fn tick_count(console: &str) -> usize {
    console.matches("keel-guest: tick ").count()
}

#[test]
fn pause_resume_and_stop_a_running_guest_from_another_thread() {
    require_kvm!();
    let (mut vm, out) = build(config(2, BootProtocol::Pvh, "keel.cpus=2 keel.ticks=0"));
    let handle = vm.handle();
    let states = handle.subscribe();
    assert_eq!(states.recv().unwrap(), VmState::Created);
    vm.start().unwrap();
    assert!(
        out.wait_for("keel-guest: tick 3", BOOT_TIMEOUT),
        "{}",
        out.text()
    );

    let controller = std::thread::spawn({
        let handle = handle.clone();
        let out = out.clone();
        move || {
            handle.pause().unwrap();
            assert_eq!(handle.state(), VmState::Paused);
            let frozen = tick_count(&out.text());
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(tick_count(&out.text()), frozen, "guest ran while paused");
            handle.resume().unwrap();
            let resumed_at = format!("keel-guest: tick {}", frozen + 3);
            assert!(out.wait_for(&resumed_at, BOOT_TIMEOUT), "{}", out.text());
            handle.stop();
        }
    });
    controller.join().unwrap();
    assert_eq!(vm.wait(), ExitReason::Stopped);
    let seen: Vec<VmState> = states.try_iter().collect();
    assert_eq!(
        seen,
        vec![
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::Exited(ExitReason::Stopped)
        ]
    );
    assert!(handle.pause().is_err(), "an exited VM cannot be paused");
}

#[test]
fn a_triple_fault_is_reported_as_such() {
    require_kvm!();
    let (reason, console) = run_to_exit(config(1, BootProtocol::Pvh, "keel.fault=triple"));
    assert!(
        matches!(reason, ExitReason::TripleFault { vcpu: 0 }),
        "{reason:?}; console:\n{console}"
    );
}

#[test]
fn dropping_a_running_vm_stops_it() {
    require_kvm!();
    let (mut vm, out) = build(config(2, BootProtocol::Linux64, "keel.cpus=2 keel.ticks=0"));
    let handle = vm.handle();
    vm.start().unwrap();
    assert!(
        out.wait_for("keel-guest: tick 1", BOOT_TIMEOUT),
        "{}",
        out.text()
    );
    drop(vm);
    assert_eq!(handle.state(), VmState::Exited(ExitReason::Stopped));
}

#[test]
fn acpi_power_off_ends_the_vm_with_shutdown() {
    require_kvm!();
    // The guest writes SLP_EN | SLP_TYP=5 to the FADT's sleep control register (port 0x600).
    let (reason, console) = run_to_exit(config(1, BootProtocol::Pvh, "keel.exit=s5"));
    assert_eq!(reason, ExitReason::Shutdown, "console:\n{console}");
    assert!(
        console.contains("keel-guest: exit via=s5"),
        "console:\n{console}"
    );
}
