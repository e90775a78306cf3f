//! What a manager reaches through a VM's handle, end to end on /dev/kvm with the test guest:
//! the ACPI power button, counters, state-change callbacks, the console socket and the boot
//! timer.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{guest_config, rw_image, TIMEOUT};
use testkit::{require_kvm, SharedBuffer};
use vmm_core::config::{DiskConfig, RngConfig};
use vmm_core::console::ConsoleSocket;
use vmm_core::{
    BootTimer, ExitReason, SerialOutput, StateError, VirtioTransport, VmBuilder, VmState,
};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-handle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_power_button_makes_a_watching_guest_power_off() {
    require_kvm!();
    let config = guest_config(
        VirtioTransport::Pci,
        "keel.ticks=0 keel.tick_tsc=2000000 keel.power_button",
    );
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap();
    let handle = vm.handle();
    // Not running yet: refused, naming the state.
    match handle.power_button() {
        Err(StateError::InvalidTransition { state, .. }) => assert_eq!(state, VmState::Created),
        other => panic!("power button before start: {other:?}"),
    }
    vm.start().unwrap();
    assert!(out.wait_for("tick 2", TIMEOUT), "{}", out.text());
    handle.power_button().unwrap();
    let reason = vm
        .wait_timeout(TIMEOUT)
        .expect("guest ignored the power button");
    assert_eq!(reason, ExitReason::Shutdown, "{}", out.text());
    let console = out.text();
    assert!(console.contains("keel-guest: power button"), "{console}");
    assert!(console.contains("exit via=s5"), "{console}");
}

#[test]
fn counters_move_with_the_guest_work_and_serialize() {
    require_kvm!();
    let image = rw_image("counters.img");
    let mut config = guest_config(
        VirtioTransport::Pci,
        "keel.blk keel.blk_start=3 keel.blk_sectors=5 keel.rng",
    );
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
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap();
    let handle = vm.handle();
    let before = handle.counters();
    assert_eq!(before.device("disk0").unwrap().get("write_ops"), Some(0));
    vm.start().unwrap();
    let reason = vm.wait_timeout(TIMEOUT).expect("guest did not exit");
    assert_eq!(reason, ExitReason::Reset, "{}", out.text());
    let console = out.text();
    let counters = handle.counters();
    let disk = counters.device("disk0").unwrap();
    assert_eq!(disk.kind, "block");
    // The guest wrote 5 sectors, flushed, read them back (and sector 0 first).
    assert!(disk.get("write_ops").unwrap() >= 1, "{disk:?}");
    assert_eq!(disk.get("write_bytes"), Some(5 * 512), "{disk:?}");
    assert!(disk.get("flushes").unwrap() >= 1, "{disk:?}");
    assert!(disk.get("read_bytes").unwrap() >= 6 * 512, "{disk:?}");
    assert_eq!(disk.get("io_errors"), Some(0));
    let rng = counters.device("rng0").unwrap();
    assert!(rng.get("bytes").unwrap() >= 64, "{rng:?}");
    // Every byte on the console went through COM1.
    let serial = counters.device("com1").unwrap();
    assert_eq!(serial.get("out_bytes"), Some(console.len() as u64));
    let vcpu = counters.device("vcpu0").unwrap();
    assert!(
        vcpu.get("io_out").unwrap() >= console.len() as u64,
        "{vcpu:?}"
    );
    assert!(vcpu.get("mmio_read").unwrap() > 0, "{vcpu:?}");
    let json = serde_json::to_value(&counters).unwrap();
    assert_eq!(json["devices"][1]["id"], "disk0");
    assert_eq!(json["devices"][1]["counters"]["write_bytes"], 5 * 512);
    assert_eq!(json["vcpus"][0]["id"], "vcpu0");
}

#[test]
fn state_callbacks_see_every_change_in_order() {
    require_kvm!();
    let config = guest_config(VirtioTransport::Pci, "keel.ticks=0 keel.tick_tsc=2000000");
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap();
    let handle = vm.handle();
    let (sender, receiver) = mpsc::channel();
    handle.on_state_change(move |state| {
        let _ = sender.send(state.clone());
    });
    vm.start().unwrap();
    assert!(out.wait_for("tick 1", TIMEOUT));
    handle.pause().unwrap();
    handle.resume().unwrap();
    handle.stop();
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Stopped));
    let seen: Vec<VmState> = receiver.try_iter().collect();
    assert_eq!(
        seen,
        [
            VmState::Created,
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::Exited(ExitReason::Stopped)
        ]
    );
}

#[test]
fn a_stop_racing_pauses_and_resumes_is_never_lost() {
    require_kvm!();
    // Threads pausing and resuming while another stops: the stop must win every time (a
    // pause or resume that overwrote it left the VM running and its waiters hanging).
    for round in 0..10 {
        let config = guest_config(VirtioTransport::Pci, "keel.ticks=0 keel.tick_tsc=2000000");
        let out = SharedBuffer::new();
        let mut vm = VmBuilder::new(config)
            .serial_output(out.clone())
            .build()
            .unwrap();
        vm.start().unwrap();
        assert!(out.wait_for("tick 1", TIMEOUT));
        let handle = vm.handle();
        let togglers: Vec<_> = (0..2)
            .map(|_| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _ = handle.pause();
                        let _ = handle.resume();
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2 * round));
        handle.stop();
        assert_eq!(
            vm.wait_timeout(TIMEOUT),
            Some(ExitReason::Stopped),
            "round {round}: the stop was lost"
        );
        for toggler in togglers {
            toggler.join().unwrap();
        }
        assert!(
            handle.pause().is_err() && handle.resume().is_err(),
            "an exited VM stays exited"
        );
    }
}

/// Reads from `stream` until `needle` arrives or `timeout` passes; returns what was read.
fn read_until(stream: &mut UnixStream, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&text).contains(needle) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("console read: {err}"),
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn a_console_client_attaches_late_sees_the_banner_types_and_detaches() {
    require_kvm!();
    let path = scratch("echo.console");
    let mut config = guest_config(VirtioTransport::Pci, "keel.echo");
    config.serial.output = SerialOutput::Socket(path.clone());
    let mut vm = VmBuilder::new(config).build().unwrap();
    vm.start().unwrap();
    // Attach after the guest printed its banner: the buffer kept it.
    std::thread::sleep(Duration::from_millis(300));
    let mut client = UnixStream::connect(&path).unwrap();
    let seen = read_until(&mut client, "echo ready", TIMEOUT);
    assert!(seen.contains("keel-guest: boot protocol=pvh"), "{seen}");
    assert!(seen.contains("echo ready"), "{seen}");
    // A second client is turned away while the first is attached.
    let mut second = UnixStream::connect(&path).unwrap();
    let refused = read_until(&mut second, "busy", Duration::from_secs(5));
    assert!(refused.contains("console is busy"), "{refused}");
    client.write_all(b"hello keel\r").unwrap();
    let echoed = read_until(&mut client, "hello keel", TIMEOUT);
    assert!(echoed.contains("hello keel"), "{echoed}");
    // Detach and attach again: the console still works.
    drop(client);
    std::thread::sleep(Duration::from_millis(100));
    let mut again = UnixStream::connect(&path).unwrap();
    again.write_all(b"exit\r").unwrap();
    let done = read_until(&mut again, "echo done", TIMEOUT);
    assert!(done.contains("echo done"), "{done}");
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Reset));
    let counters = vm.handle().counters();
    assert_eq!(
        counters.device("com1").unwrap().get("console_attaches"),
        Some(2)
    );
    drop(vm);
    assert!(!path.exists(), "the socket file is removed with the VM");
}

#[test]
fn console_output_without_a_client_is_bounded_and_counted() {
    require_kvm!();
    let path = scratch("flood.console");
    let console = ConsoleSocket::bind(&path).unwrap();
    // 2000 tick lines of ~20 bytes: more than the 64 KiB buffer.
    let config = guest_config(VirtioTransport::Pci, "keel.ticks=4000 keel.tick_tsc=1");
    let mut vm = VmBuilder::new(config)
        .console_socket(console.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Reset));
    let sent = vm
        .handle()
        .counters()
        .device("com1")
        .unwrap()
        .get("out_bytes")
        .unwrap();
    let dropped = console.dropped_bytes();
    assert!(
        sent > vmm_core::console::CONSOLE_BUFFER_BYTES as u64,
        "{sent}"
    );
    assert_eq!(
        dropped,
        sent - vmm_core::console::CONSOLE_BUFFER_BYTES as u64
    );
    drop(vm);
    // The socket outlives the VM: a new VM on it serves the newest 64 KiB of the old one's
    // output first.
    let config = guest_config(VirtioTransport::Pci, "keel.cpus=1");
    let mut vm = VmBuilder::new(config)
        .console_socket(console.clone())
        .build()
        .unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    vm.start().unwrap();
    let text = read_until(&mut client, "selfcheck ok", TIMEOUT);
    let new_banner = text
        .find("keel-guest: boot protocol")
        .unwrap_or_else(|| panic!("no new banner in {} bytes", text.len()));
    let kept = &text[..new_banner];
    // The client is served once the new VM's event loop runs; the ring is full, so the first
    // bytes the new VM writes before the client has drained it push the oldest kept ones out.
    let limit = vmm_core::console::CONSOLE_BUFFER_BYTES;
    assert!(
        kept.len() <= limit && kept.len() > limit - 4096,
        "kept {} bytes",
        kept.len()
    );
    assert!(
        kept.ends_with("keel-guest: tick 4000\r\nkeel-guest: exit via=reset\r\n"),
        "{}",
        &kept[kept.len() - 80..]
    );
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Reset));
}

#[test]
fn a_console_socket_path_in_use_is_refused_naming_it() {
    let path = scratch("regular-file.console");
    std::fs::write(&path, b"not a socket").unwrap();
    let err = ConsoleSocket::bind(&path).err().unwrap();
    let text = err.to_string();
    assert!(text.contains("not a socket"), "{text}");
    assert!(text.contains("regular-file.console"), "{text}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"not a socket",
        "left untouched"
    );
}

#[test]
fn the_boot_timer_marks_every_stage_in_order() {
    require_kvm!();
    let timer = BootTimer::new();
    let config = guest_config(VirtioTransport::Pci, "");
    let mut vm = VmBuilder::new(config)
        .serial_output(SharedBuffer::new())
        .boot_timer(timer.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Reset));
    let stages: Vec<&str> = timer.stages().iter().map(|(name, _)| *name).collect();
    for want in [
        "config validated",
        "guest memory mapped",
        "KVM VM created, memory registered",
        "vCPUs created",
        "vCPU threads started",
        "first exit from the guest (boot vCPU)",
    ] {
        assert!(stages.contains(&want), "{want} missing from {stages:?}");
    }
    let times: Vec<Instant> = timer.stages().iter().map(|(_, at)| *at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{stages:?}");
}

#[test]
fn a_virtio_console_on_a_socket_carries_output_and_input_both_ways() {
    require_kvm!();
    for transport in [VirtioTransport::Pci, VirtioTransport::Mmio] {
        let path = scratch(&format!("hvc-{transport:?}.console"));
        let mut config = guest_config(transport, "keel.console");
        config.console = Some(vmm_core::ConsoleConfig {
            id: "hvc0".into(),
            output: SerialOutput::Socket(path.clone()),
            input: vmm_core::SerialInput::None,
        });
        let out = SharedBuffer::new();
        let mut vm = VmBuilder::new(config)
            .serial_output(out.clone())
            .build()
            .unwrap();
        vm.start().unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let greeting = read_until(&mut client, "hello over virtio-console\n", TIMEOUT);
        assert_eq!(
            greeting, "keel-guest: hello over virtio-console\n",
            "{transport:?}"
        );
        client.write_all(b"ping from the host\n").unwrap();
        let echo = read_until(&mut client, "ping from the host\n", TIMEOUT);
        assert_eq!(echo, "ping from the host\n");
        assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Reset));
        let console = out.text();
        assert!(
            console.contains("virtio-console received=\"ping from the host\""),
            "{transport:?}: {console}"
        );
        let counters = vm.handle().counters();
        let hvc = counters.device("hvc0").unwrap();
        assert_eq!(hvc.kind, "console");
        assert_eq!(hvc.get("in_bytes"), Some(19));
        assert_eq!(hvc.get("out_bytes"), Some(38 + 19));
        assert_eq!(hvc.get("console_attaches"), Some(1));
    }
}

#[test]
fn console_configs_that_clash_are_refused_naming_the_field() {
    // Any regular file passes the kernel check, which comes first.
    let mut config = vmm_core::VmConfig::new(std::env::current_exe().unwrap());
    config.serial.input = vmm_core::SerialInput::Stdin;
    config.console = Some(vmm_core::ConsoleConfig {
        input: vmm_core::SerialInput::Stdin,
        ..Default::default()
    });
    let err = config.validate().unwrap_err();
    assert_eq!(err.field, "console.input");
    config.serial.input = vmm_core::SerialInput::None;
    config.serial.output = SerialOutput::Socket("/tmp/same.sock".into());
    config.console = Some(vmm_core::ConsoleConfig {
        output: SerialOutput::Socket("/tmp/same.sock".into()),
        ..Default::default()
    });
    assert_eq!(config.validate().unwrap_err().field, "console.output");
}

#[test]
fn a_pollable_eventfd_and_a_caller_timeout_for_pause() {
    require_kvm!();
    let config = guest_config(VirtioTransport::Pci, "keel.ticks=0 keel.tick_tsc=2000000");
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap();
    let handle = vm.handle();
    let changes = handle.state_eventfd().unwrap();
    // The current state is signalled at once.
    assert_eq!(changes.read().unwrap(), 1);
    vm.start().unwrap();
    assert!(out.wait_for("tick 1", TIMEOUT));
    assert_eq!(changes.read().unwrap(), 1, "Created -> Running");
    handle.pause_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(handle.state(), VmState::Paused);
    handle.resume().unwrap();
    assert_eq!(changes.read().unwrap(), 2, "Paused, Running");
    handle.stop();
    assert_eq!(vm.wait_timeout(TIMEOUT), Some(ExitReason::Stopped));
    assert_eq!(changes.read().unwrap(), 1);
    assert!(changes.read().is_err(), "nothing more");
    // Too late to pause: the state is named.
    match handle.pause_timeout(Duration::from_millis(1)) {
        Err(StateError::InvalidTransition { state, .. }) => {
            assert_eq!(state, VmState::Exited(ExitReason::Stopped))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn announcements_name_the_nic_and_why_it_cannot() {
    require_kvm!();
    let config = guest_config(VirtioTransport::Pci, "");
    let vm = VmBuilder::new(config)
        .serial_output(SharedBuffer::new())
        .net(
            "uplink",
            vmm_core::backends::NullBackend,
            Some([0x52, 0x54, 0, 0, 0, 1]),
        )
        .build()
        .unwrap();
    let handle = vm.handle();
    match handle.announce("downlink") {
        Err(vmm_core::AnnounceError::UnknownNic(id)) => assert_eq!(id, "downlink"),
        other => panic!("{other:?}"),
    }
    let err = handle.announce("uplink").unwrap_err().to_string();
    assert!(
        err.contains("uplink") && err.contains("not active"),
        "{err}"
    );
}
