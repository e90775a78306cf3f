//! The shape of a node agent: several VMs in one process, each controlled from a thread of its
//! own, all their state changes watched from one place. Checks that control of one VM never
//! touches another (vCPU kicks are per thread, not per process), that every VM reports the same
//! state sequence, and that the process is back to its resources once all are gone.

use std::sync::mpsc;
use std::time::Duration;

use testkit::{require_kvm, ProcessResources, SharedBuffer};
use vmm_core::{ExitReason, MemSize, VmBuilder, VmConfig, VmState};

const VMS: usize = 6;
const TIMEOUT: Duration = Duration::from_secs(60);

fn ticks(out: &SharedBuffer) -> usize {
    out.text().matches("keel-guest: tick ").count()
}

/// Waits until the guest printed `more` ticks beyond `from`.
fn wait_ticks(out: &SharedBuffer, from: usize, more: usize) {
    let needle = format!("keel-guest: tick {}", from + more);
    assert!(out.wait_for(&needle, TIMEOUT), "{}", out.text());
}

#[test]
fn six_vms_in_one_process_are_controlled_independently_and_watched_together() {
    require_kvm!();
    let guest = testkit::build_test_guest().unwrap();
    let before = ProcessResources::now().unwrap();
    {
        let mut vms = Vec::new();
        let (events_tx, events) = mpsc::channel::<(usize, VmState)>();
        let mut forwarders = Vec::new();
        for index in 0..VMS {
            let mut config = VmConfig::new(&guest);
            // Odd VMs get 2 vCPUs: kicks must reach every vCPU thread of the right VM.
            config.vcpus = 1 + (index % 2) as u32;
            config.memory = MemSize::mib(64);
            config.cmdline = format!("keel.cpus={} keel.ticks=0", config.vcpus);
            let out = SharedBuffer::new();
            let vm = VmBuilder::new(config)
                .serial_output(out.clone())
                .build()
                .unwrap_or_else(|err| panic!("build VM {index}: {err}"));
            // The watcher: one channel per VM, merged into one stream of (VM, state).
            let states = vm.handle().subscribe();
            let tx = events_tx.clone();
            forwarders.push(std::thread::spawn(move || {
                for state in states.iter() {
                    let done = matches!(state, VmState::Exited(_));
                    if tx.send((index, state)).is_err() || done {
                        break;
                    }
                }
            }));
            vms.push((vm, out));
        }
        drop(events_tx);
        for (vm, out) in &mut vms {
            vm.start().unwrap();
            wait_ticks(out, 0, 2);
        }

        // Pause VM 0 and check that all others keep running while it is frozen.
        let (handle0, out0) = (vms[0].0.handle(), vms[0].1.clone());
        handle0.pause().unwrap();
        let frozen = ticks(&out0);
        for (vm, out) in &vms[1..] {
            assert_eq!(vm.handle().state(), VmState::Running);
            wait_ticks(out, ticks(out), 2);
        }
        assert_eq!(ticks(&out0), frozen, "VM 0 ran while paused");
        handle0.resume().unwrap();
        wait_ticks(&out0, frozen, 2);

        // Every VM paused, resumed and stopped by a controller thread of its own, all at once.
        let controllers: Vec<_> = vms
            .iter()
            .enumerate()
            .skip(1)
            .map(|(index, (vm, out))| {
                let (handle, out) = (vm.handle(), out.clone());
                std::thread::spawn(move || {
                    handle.pause().unwrap();
                    let frozen = ticks(&out);
                    std::thread::sleep(Duration::from_millis(200));
                    assert_eq!(ticks(&out), frozen, "VM {index} ran while paused");
                    handle.resume().unwrap();
                    wait_ticks(&out, frozen, 2);
                    handle.stop();
                    handle.wait_timeout(TIMEOUT)
                })
            })
            .collect();
        for (index, controller) in controllers.into_iter().enumerate() {
            let reason = controller.join().unwrap();
            assert_eq!(reason, Some(ExitReason::Stopped), "VM {}", index + 1);
        }
        for (vm, _) in &mut vms[1..] {
            assert_eq!(vm.wait(), ExitReason::Stopped);
        }
        // VM 0 is still running after all the others stopped; dropping it stops it.
        assert_eq!(handle0.state(), VmState::Running);
        drop(vms);
        assert_eq!(handle0.state(), VmState::Exited(ExitReason::Stopped));

        for forwarder in forwarders {
            forwarder.join().unwrap();
        }
        let mut seen = vec![Vec::new(); VMS];
        for (index, state) in events.try_iter() {
            seen[index].push(state);
        }
        let expected = vec![
            VmState::Created,
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::Exited(ExitReason::Stopped),
        ];
        for (index, states) in seen.iter().enumerate() {
            assert_eq!(states, &expected, "state changes of VM {index}");
        }
    }
    let after = ProcessResources::now().unwrap();
    assert_eq!(
        (before.fds, before.threads),
        (after.fds, after.threads),
        "file descriptors and threads after six VMs"
    );
}
