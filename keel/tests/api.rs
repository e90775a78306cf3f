//! The `keel` program end to end: the real binary, its real API socket and console socket,
//! the test guest on /dev/kvm.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::{eventually, guest, read_console_until, scratch, Keel};
use keel::api::{ApiVmState, Endpoint};
use keel::client::ClientError;
use testkit::require_kvm;
use vmm_core::{MemSize, SerialOutput, VmConfig};

/// The status and error text of a refused call.
fn refused(result: Result<(), ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, error, .. }) => (status, error.error),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn a_running_guest_is_paused_resumed_counted_watched_and_powered_off_over_the_api() {
    require_kvm!();
    let dir = scratch("lifecycle");
    let console = dir.join("console.sock");
    let guest = guest();
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.ticks=0 keel.tick_tsc=3000000 keel.power_button",
            "--serial",
            &format!("socket={}", console.display()),
        ],
    );
    let ping = client.ping().unwrap();
    assert_eq!(ping.state, ApiVmState::Running);
    assert_eq!(ping.pid, keel.child.id());

    // Attach to the console: the banner was buffered, ticks arrive.
    let mut attached = UnixStream::connect(&console).unwrap();
    let text = read_console_until(&mut attached, "tick 2");
    assert!(text.contains("keel-guest: boot protocol=pvh"), "{text}");
    let info = client.info().unwrap();
    assert_eq!(info.console_socket.as_deref(), console.to_str());
    assert_eq!(info.boots, 1);

    client.pause().unwrap();
    assert_eq!(client.info().unwrap().state, ApiVmState::Paused);
    let paused = client.counters().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let still = client.counters().unwrap();
    let out_bytes = |c: &keel::client::Counters| c.device("com1").unwrap().get("out_bytes");
    assert_eq!(
        out_bytes(&paused),
        out_bytes(&still),
        "a paused guest prints nothing"
    );
    // Pausing a paused VM and resuming a running one are harmless (idempotent); booting a
    // booted one is refused.
    client.pause().unwrap();
    client.resume().unwrap();
    client.resume().unwrap();
    let (status, error) = refused(client.boot());
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("vm.boot: the VM is running"), "{error}");
    eventually("ticks after resume", || {
        out_bytes(&client.counters().unwrap()) > out_bytes(&still)
    });
    let counters = client.counters().unwrap();
    assert!(counters.device("vcpu0").unwrap().get("io_out").unwrap() > 0);
    let metrics = client.metrics().unwrap();
    assert!(
        metrics.contains("# TYPE keel_serial_out_bytes_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keel_vcpu_io_out_total{device=\"vcpu0\"}"),
        "{metrics}"
    );

    // The power button: the guest powers off, the process ends with status 0.
    client.power_button().unwrap();
    let status = keel.wait();
    assert!(status.success(), "{status}: {}", keel.stderr());
    assert!(
        keel.stderr().contains("VM exited: guest shutdown"),
        "{}",
        keel.stderr()
    );
    let text = read_console_until(&mut attached, "exit via=s5");
    assert!(text.contains("power button"), "{text}");
    assert!(!keel.api.exists(), "the API socket is removed");
    assert!(!console.exists(), "the console socket is removed");
}

#[test]
fn bad_requests_get_a_4xx_naming_the_problem_and_the_vm_keeps_running() {
    require_kvm!();
    let dir = scratch("bad-requests");
    let guest = guest();
    let (_keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.ticks=0 keel.tick_tsc=3000000",
            "--serial",
            "null",
        ],
    );
    let json = Some("application/json");
    let check =
        |method: &str, path: &str, ctype: Option<&str>, body: &[u8], want: u16, says: &str| {
            let response = client.raw(method, path, ctype, body.to_vec()).unwrap();
            let text = String::from_utf8_lossy(&response.body).into_owned();
            assert_eq!(response.status, want, "{method} {path}: {text}");
            assert_eq!(response.content_type.as_deref(), Some("application/json"));
            let error: serde_json::Value = serde_json::from_str(&text).unwrap();
            let message = error["error"].as_str().unwrap();
            assert!(message.contains(says), "{method} {path}: {message}");
            response
        };
    check(
        "GET",
        "/api/v1/vm.nope",
        None,
        b"",
        404,
        "no endpoint at /api/v1/vm.nope",
    );
    let wrong = check(
        "GET",
        "/api/v1/vm.pause",
        None,
        b"",
        405,
        "vm.pause takes PUT, not GET",
    );
    assert_eq!(wrong.allow.as_deref(), Some("PUT"));
    check("DELETE", "/api/v1/vm.info", None, b"", 405, "takes GET");
    check(
        "PUT",
        "/api/v1/vm.create",
        json,
        b"{\"kernel\": ",
        400,
        "invalid VmConfig body",
    );
    check(
        "PUT",
        "/api/v1/vm.create",
        json,
        br#"{"kernel": "/k", "vcpu": 2}"#,
        400,
        "unknown field `vcpu`",
    );
    check(
        "PUT",
        "/api/v1/vm.create",
        Some("text/plain"),
        b"kernel",
        415,
        "must be application/json",
    );
    check(
        "PUT",
        "/api/v1/vm.create",
        json,
        b"",
        400,
        "a JSON VmConfig body is required",
    );
    check(
        "PUT",
        "/api/v1/vm.create",
        json,
        &vec![b' '; 70 * 1024],
        413,
        "larger than 65536 bytes",
    );
    check(
        "PUT",
        "/api/v1/vm.pause",
        json,
        b"{\"now\": true}",
        400,
        "vm.pause takes no body",
    );
    // A valid config while a VM runs: refused by state.
    let config = serde_json::to_vec(&VmConfig::new(guest.clone())).unwrap();
    check(
        "PUT",
        "/api/v1/vm.create",
        json,
        &config,
        409,
        "the VM is running",
    );
    check("PUT", "/api/v1/vm.boot", None, b"", 409, "already booted");
    // The VM was not disturbed.
    let before = client
        .counters()
        .unwrap()
        .device("com1")
        .unwrap()
        .get("out_bytes");
    eventually("the guest to keep ticking", || {
        client
            .counters()
            .unwrap()
            .device("com1")
            .unwrap()
            .get("out_bytes")
            > before
    });
    assert_eq!(client.ping().unwrap().state, ApiVmState::Running);
    // Stopped by request: the VMM stays up; pausing a stopped VM is refused.
    client.shutdown().unwrap();
    let info = client.info().unwrap();
    assert_eq!(info.state, ApiVmState::Exited);
    assert_eq!(info.exit.unwrap().reason, "stopped");
    let (status, error) = refused(client.pause());
    assert_eq!(status, 409);
    assert!(error.contains("vm.pause: the VM is exited"), "{error}");
    let (status, _) = refused(client.shutdown());
    assert_eq!(status, 409);
}

#[test]
fn an_api_only_vmm_creates_boots_reboots_deletes_and_shuts_down() {
    require_kvm!();
    let dir = scratch("api-only");
    let (mut keel, client) = Keel::with_api(&dir, &[]);
    assert_eq!(client.ping().unwrap().state, ApiVmState::NotCreated);
    let (status, error) = refused(client.boot());
    assert_eq!(status, 409);
    assert!(error.contains("vm.create first"), "{error}");
    let (status, _) = refused(client.pause());
    assert_eq!(status, 409);

    // A config that does not validate names its field and creates nothing.
    let mut bad = VmConfig::new(guest());
    bad.vcpus = 0;
    match client.create(&bad) {
        Err(ClientError::Api { status, error, .. }) => {
            assert_eq!(status, 400);
            assert_eq!(error.field.as_deref(), Some("vcpus"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.info().unwrap().state, ApiVmState::NotCreated);

    let serial = dir.join("serial.log");
    let mut config = VmConfig::new(guest());
    config.memory = MemSize::mib(64);
    config.cmdline = "keel.cpus=1 keel.ticks=0 keel.tick_tsc=3000000".into();
    config.serial.output = SerialOutput::File(serial.clone());
    client.create(&config).unwrap();
    let info = client.info().unwrap();
    assert_eq!(info.state, ApiVmState::Created);
    assert_eq!(info.config.as_ref(), Some(&config));
    client.boot().unwrap();
    eventually("the first tick", || {
        std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .contains("tick 1")
    });
    client.reboot().unwrap();
    assert_eq!(client.info().unwrap().boots, 2);
    eventually("the reboot's banner", || {
        std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .matches("keel-guest: boot protocol")
            .count()
            == 2
    });
    client.delete().unwrap();
    assert_eq!(client.info().unwrap().state, ApiVmState::NotCreated);
    // The remote subcommand against the same socket.
    let remote = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["remote", "--api-socket", keel.api.to_str().unwrap(), "ping"])
        .output()
        .unwrap();
    assert!(remote.status.success());
    let ping: serde_json::Value = serde_json::from_slice(&remote.stdout).unwrap();
    assert_eq!(ping["state"], "not_created");
    client.shutdown_vmm().unwrap();
    let status = keel.wait();
    assert!(status.success(), "{status}: {}", keel.stderr());
    assert!(!keel.api.exists());
}

#[test]
fn keel_remote_drives_a_vm_and_attaches_its_console() {
    require_kvm!();
    let dir = scratch("remote");
    let console = dir.join("console.sock");
    let guest = guest();
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.echo",
            "--serial",
            &format!("socket={}", console.display()),
        ],
    );
    let remote = |args: &[&str]| {
        let mut all = vec!["remote", "--api-socket", keel.api.to_str().unwrap()];
        all.extend_from_slice(args);
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(all)
            .output()
            .unwrap()
    };
    assert!(remote(&["pause"]).status.success());
    let info = remote(&["info"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["state"], "paused");
    let failed = remote(&["pause-all"]);
    assert!(!failed.status.success());
    let resumed = remote(&["resume"]);
    assert!(resumed.status.success());
    let refused = remote(&["boot"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("vm.boot"),
        "{stderr}"
    );
    let counters = remote(&["counters"]);
    let counters: serde_json::Value = serde_json::from_slice(&counters.stdout).unwrap();
    assert_eq!(counters["devices"][0]["id"], "com1");

    // `keel remote console` with piped input: types into the guest, shows its output until
    // the VM is gone (it finds the console socket through vm.info).
    let mut attach = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "remote",
            "--api-socket",
            keel.api.to_str().unwrap(),
            "console",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = attach.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    input.write_all(b"over the socket\rexit\r").unwrap();
    drop(input);
    assert!(keel.wait().success(), "{}", keel.stderr());
    let output = attach.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("echo ready"), "{text}");
    assert!(text.contains("over the socket"), "{text}");
    assert!(text.contains("echo done"), "{text}");
    drop(client);
}

#[test]
fn curl_on_the_unix_socket_speaks_the_same_api() {
    require_kvm!();
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("KEEL_REQUIRE_TOOLS").is_none(),
            "KEEL_REQUIRE_TOOLS is set but curl is missing"
        );
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = scratch("curl");
    let (mut keel, _client) = Keel::with_api(&dir, &[]);
    let curl = |args: &[&str]| {
        let output = std::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                keel.api.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let ping = curl(&["http://localhost/api/v1/vmm.ping"]);
    assert!(
        ping.contains("\"state\":\"not_created\"") && ping.ends_with("200"),
        "{ping}"
    );
    let config = format!(
        r#"{{"kernel": "{}", "cmdline": "keel.cpus=1", "serial": {{"output": "null"}}}}"#,
        guest().display()
    );
    let created = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "-d",
        &config,
        "http://localhost/api/v1/vm.create",
    ]);
    assert!(created.ends_with("204"), "{created}");
    let wrong = curl(&["-X", "POST", "http://localhost/api/v1/vm.boot"]);
    assert!(wrong.ends_with("405"), "{wrong}");
    // The guest boots, resets and the process ends (no --keep-alive).
    let booted = curl(&["-X", "PUT", "http://localhost/api/v1/vm.boot"]);
    assert!(booted.ends_with("204"), "{booted}");
    assert!(keel.wait().success(), "{}", keel.stderr());
    assert!(keel.stderr().contains("VM exited: guest reset"));
}

#[test]
fn keep_alive_and_on_reset_reboot_keep_the_vmm_after_a_guest_exit() {
    require_kvm!();
    let dir = scratch("keep-alive");
    let guest = guest();
    let serial = dir.join("serial.log");
    let serial_arg = format!("file={}", serial.display());
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1",
            "--serial",
            &serial_arg,
            "--keep-alive",
        ],
    );
    eventually("the guest to exit", || {
        client.info().unwrap().state == ApiVmState::Exited
    });
    let info = client.info().unwrap();
    assert_eq!(info.exit.unwrap().reason, "reset");
    // Boot it again: a fresh VM from the same config.
    client.boot().unwrap();
    eventually("the second exit", || {
        let info = client.info().unwrap();
        info.state == ApiVmState::Exited && info.boots == 2
    });
    client.shutdown_vmm().unwrap();
    assert!(keel.wait().success());
    drop(keel);

    // --on-reset reboot: the guest's reset boots it again, and again.
    let dir = scratch("on-reset");
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1",
            "--serial",
            "null",
            "--on-reset",
            "reboot",
        ],
    );
    eventually("three boots", || client.info().unwrap().boots >= 3);
    client.act(Endpoint::VmmShutdown).unwrap();
    assert!(keel.wait().success());
}

#[test]
fn sigterm_stops_the_vm_and_cleans_up() {
    require_kvm!();
    let dir = scratch("sigterm");
    let guest = guest();
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.ticks=0",
            "--serial",
            "null",
        ],
    );
    assert_eq!(client.ping().unwrap().state, ApiVmState::Running);
    // SAFETY: kill(2) takes no pointers and touches no memory of ours. The pid is our own
    // child's, which has not been waited for yet, so it cannot have been reused by another
    // process.
    unsafe { libc::kill(keel.child.id() as i32, libc::SIGTERM) };
    let status = keel.wait();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        keel.stderr()
    );
    assert!(
        keel.stderr().contains("stopped by signal 15"),
        "{}",
        keel.stderr()
    );
    assert!(!keel.api.exists());
}

#[test]
fn flags_and_config_files_boot_and_bad_ones_are_refused_naming_the_flag() {
    require_kvm!();
    let dir = scratch("flags");
    let guest = guest();
    // YAML config file.
    let yaml = dir.join("vm.yaml");
    std::fs::write(
        &yaml,
        format!(
            "kernel: {}\nvcpus: 2\nmemory: 96M\ncmdline: keel.cpus=2\nserial:\n  output: stdout\n",
            guest.display()
        ),
    )
    .unwrap();
    let mut keel = Keel::spawn(&dir, &["--config", yaml.to_str().unwrap()]);
    assert!(keel.wait().success(), "{}", keel.stderr());
    let out = keel.stdout();
    assert!(out.contains("cpus=2 expected=2"), "{out}");
    assert!(out.contains("mem_mib=96"), "{out}");

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .output()
            .unwrap()
    };
    let kernel = guest.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--kernel", kernel, "--disk", "path=/x,readonly=yes"],
            "--disk: key `readonly`: `yes` is not on or off",
        ),
        (
            vec!["--kernel", kernel, "--cpus", "boot=2,max=4"],
            "--cpus: unknown key `max`",
        ),
        (
            vec!["--kernel", kernel, "--memory", "size=1Q"],
            "--memory: key `size`",
        ),
        (
            vec!["--kernel", kernel, "--cpus", "0"],
            "invalid VM config field `vcpus`",
        ),
        (
            vec!["--kernel", "/no/kernel"],
            "invalid VM config field `kernel`",
        ),
        (
            vec!["--cpus", "2"],
            "--cpus: describes a VM, but there is no --kernel",
        ),
        (vec![], "nothing to run"),
    ] {
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // --boot-timer prints every stage up to the guest's first exit.
    let output = run(&["--kernel", kernel, "--serial", "null", "--boot-timer"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("keel-boot-timer:"), "{stderr}");
    assert!(stderr.contains("first exit from the guest"), "{stderr}");
}

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api/openapi.json"),
    )
    .expect("keel/api/openapi.json is committed");
    let generated = keel::openapi::document_json();
    assert!(
        committed == generated,
        "keel/api/openapi.json is out of date: run `cargo run -p keel --bin keel-openapi > keel/api/openapi.json`"
    );
    // And it describes every endpoint the server routes.
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for endpoint in Endpoint::ALL {
        let method = endpoint.method().as_str().to_ascii_lowercase();
        assert!(
            doc["paths"][endpoint.path()][&method].is_object(),
            "{} {} missing",
            method,
            endpoint.path()
        );
    }
    assert!(doc["components"]["schemas"]["VmConfig"].is_object());
    assert!(doc["components"]["schemas"]["DiskConfig"].is_object());
}

#[test]
fn a_virtio_console_is_reached_with_keel_remote_console_virtio() {
    require_kvm!();
    let dir = scratch("virtio-console");
    let hvc = dir.join("hvc.sock");
    let guest = guest();
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.pci keel.console",
            "--console",
            &format!("socket={}", hvc.display()),
        ],
    );
    let info = client.info().unwrap();
    assert_eq!(info.virtio_console_socket.as_deref(), hvc.to_str());
    assert_eq!(info.config.unwrap().console.unwrap().id, "console0");
    let mut attach = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "remote",
            "--api-socket",
            keel.api.to_str().unwrap(),
            "console",
            "--virtio",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = attach.stdin.take().unwrap();
    input.write_all(b"typed into hvc0\n").unwrap();
    drop(input);
    assert!(keel.wait().success(), "{}", keel.stderr());
    let output = attach.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("keel-guest: hello over virtio-console"),
        "{text}"
    );
    assert!(text.contains("typed into hvc0"), "{text}");
    let serial = keel.stdout();
    assert!(
        serial.contains("virtio-console received=\"typed into hvc0\""),
        "{serial}"
    );
    assert!(!hvc.exists(), "the console socket is removed");
}

#[test]
fn a_snapshot_taken_over_the_api_is_restored_in_another_keel_process() {
    require_kvm!();
    let dir = scratch("snapshot");
    let guest = guest();
    let console = dir.join("console.sock");
    let snapshot = dir.join("snap");
    let args = [
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "keel.cpus=1 keel.ticks=0 keel.tick_tsc=3000000 keel.power_button",
        "--rng",
    ];
    let mut with_console = args.to_vec();
    let serial = format!("socket={}", console.display());
    with_console.extend(["--serial", &serial]);
    let (mut first, client) = Keel::with_api(&dir, &with_console);
    let mut attached = UnixStream::connect(&console).unwrap();
    read_console_until(&mut attached, "tick 3");

    // Only a paused VM is snapshotted.
    let (status, error) = refused(client.snapshot(snapshot.to_str().unwrap()));
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("vm.pause it first"), "{error}");
    client.pause().unwrap();
    client.snapshot(snapshot.to_str().unwrap()).unwrap();
    assert!(snapshot.join("state").exists() && snapshot.join("memory").exists());
    client.shutdown_vmm().unwrap();
    assert!(first.wait().success(), "{}", first.stderr());
    drop(attached);

    // A second keel: restored over its API (with the saved config), then resumed.
    let second_dir = dir.join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let (mut second, client) = Keel::with_api(&second_dir, &["--keep-alive"]);
    let (status, error) =
        refused(client.restore(second_dir.join("nope").to_str().unwrap(), None, false));
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("nope/state"), "{error}");
    let mut other_shape = vmm_core::saved_config(&snapshot).unwrap();
    other_shape.vcpus = 2;
    let (status, error) =
        refused(client.restore(snapshot.to_str().unwrap(), Some(&other_shape), false));
    assert!(status >= 400 && error.contains("vCPUs"), "{status} {error}");
    let mut config = vmm_core::saved_config(&snapshot).unwrap();
    let console2 = second_dir.join("console.sock");
    config.serial.output = SerialOutput::Socket(console2.clone());
    client
        .restore(snapshot.to_str().unwrap(), Some(&config), true)
        .unwrap();
    assert_eq!(client.info().unwrap().state, ApiVmState::Running);
    let mut attached = UnixStream::connect(&console2).unwrap();
    let text = read_console_until(&mut attached, "tick 6");
    assert!(!text.contains("boot protocol"), "no second boot: {text}");
    client.power_button().unwrap();
    eventually("the restored guest powers off", || {
        client
            .info()
            .map(|info| info.state == ApiVmState::Exited)
            .unwrap_or(false)
    });
    let text = read_console_until(&mut attached, "exit via=s5");
    assert!(text.contains("power button"), "{text}");
    client.shutdown_vmm().unwrap();
    assert!(second.wait().success(), "{}", second.stderr());
}

#[test]
fn a_vm_migrates_live_between_two_keel_processes() {
    require_kvm!();
    let dir = scratch("migrate");
    let guest = guest();
    let console = dir.join("console.sock");
    let serial = format!("socket={}", console.display());
    let (mut source, source_api) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.ticks=0 keel.tick_tsc=3000000 keel.power_button",
            "--rng",
            "--serial",
            &serial,
        ],
    );
    let mut attached = UnixStream::connect(&console).unwrap();
    read_console_until(&mut attached, "tick 3");

    let dest_dir = dir.join("dest");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let (mut destination, dest_api) = Keel::with_api(&dest_dir, &["--keep-alive"]);
    let migration_socket = dest_dir.join("migration.sock");
    let listen = format!("unix:{}", migration_socket.display());
    // Bad addresses are refused by name.
    let (status, error) = refused(dest_api.receive_migration("carrier-pigeon:x", None));
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("listen: `carrier-pigeon:x`"), "{error}");
    let mut config = source_api.info().unwrap().config.unwrap();
    let dest_console = dest_dir.join("console.sock");
    config.serial.output = SerialOutput::Socket(dest_console.clone());
    dest_api.receive_migration(&listen, Some(&config)).unwrap();
    let (status, error) = refused(source_api.send_migration("unix:/nonexistent/sock", None));
    assert_eq!(status, 400, "{error}");

    source_api.send_migration(&listen, Some(50)).unwrap();
    // The source ends once the VM runs at the destination.
    let status = source.wait();
    assert!(status.success(), "{status}: {}", source.stderr());
    eventually("the VM runs at the destination", || {
        dest_api
            .info()
            .map(|info| info.state == ApiVmState::Running)
            .unwrap_or(false)
    });
    let mut attached = UnixStream::connect(&dest_console).unwrap();
    let text = read_console_until(&mut attached, "tick");
    assert!(!text.contains("boot protocol"), "no second boot: {text}");
    dest_api.power_button().unwrap();
    eventually("the migrated guest powers off", || {
        dest_api
            .info()
            .map(|info| info.state == ApiVmState::Exited)
            .unwrap_or(false)
    });
    dest_api.shutdown_vmm().unwrap();
    assert!(destination.wait().success(), "{}", destination.stderr());
}

#[test]
fn rate_limits_from_flags_change_over_the_api_and_keel_remote() {
    require_kvm!();
    let dir = scratch("rate-limit");
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let guest = guest();
    let (mut keel, client) = Keel::with_api(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "keel.cpus=1 keel.echo",
            "--disk",
            &format!(
                "path={},id=disk0,ops_size=10,ops_refill_time=100",
                image.display()
            ),
            "--rng",
            "bw_size=4096,bw_refill_time=1000",
            "--serial",
            "null",
        ],
    );
    let info = client.info().unwrap();
    let config = info.config.unwrap();
    let ops = config.disks[0].rate_limiter.unwrap().ops.unwrap();
    assert_eq!((ops.size, ops.refill_time_ms), (10, 100));

    let remote = |args: &[&str]| {
        let mut all = vec!["remote", "--api-socket", keel.api.to_str().unwrap()];
        all.extend_from_slice(args);
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(all)
            .output()
            .unwrap()
    };
    let changed = remote(&["rate-limit", "disk0", "bw_size=1048576,bw_refill_time=100"]);
    assert!(changed.status.success(), "{changed:?}");
    let config = client.info().unwrap().config.unwrap();
    let limiter = config.disks[0].rate_limiter.unwrap();
    assert_eq!(limiter.bandwidth.unwrap().size, 1 << 20);
    assert!(limiter.ops.is_none(), "replaced, not merged");
    // Removing the entropy device's limit takes it out of the config.
    assert!(remote(&["rate-limit", "rng0", "none"]).status.success());
    let config = client.info().unwrap().config.unwrap();
    assert!(config.rng.unwrap().rate_limiter.is_none());

    // Mistakes are named: the field for the device's kind, the device, the bucket's field.
    let wrong = remote(&[
        "rate-limit",
        "disk0",
        "ops_size=1,ops_refill_time=1",
        "--direction",
        "rx",
    ]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("400") && stderr.contains("`rx_rate_limiter`"),
        "{stderr}"
    );
    let update = |id: &str, size| vmm_core::config::RateLimitUpdate {
        id: id.into(),
        rate_limiter: Some(vmm_core::config::RateLimiterConfig {
            bandwidth: None,
            ops: Some(vmm_core::config::TokenBucketConfig {
                size,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
        }),
        ..Default::default()
    };
    match client.set_rate_limit(&update("disk9", 1)) {
        Err(ClientError::Api { status, error, .. }) => {
            assert_eq!(
                (status, error.field.as_deref()),
                (400, Some("id")),
                "{error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    match client.set_rate_limit(&update("disk0", 0)) {
        Err(ClientError::Api { status, error, .. }) => {
            assert_eq!(
                (status, error.field.as_deref()),
                (400, Some("rate_limiter.ops.size")),
                "{error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let local = remote(&["rate-limit", "disk0", "bw_size=5"]);
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(stderr.contains("`bw_refill_time`"), "{stderr}");
    // The limit a flag set is refused when it cannot work, naming the flag's field.
    client.shutdown_vmm().unwrap();
    assert!(keel.wait().success(), "{}", keel.stderr());
    let mut bad = Keel::spawn(
        &dir,
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--disk",
            &format!("path={},ops_size=0,ops_refill_time=100", image.display()),
        ],
    );
    assert_eq!(bad.wait().code(), Some(2));
    assert!(
        bad.stderr().contains("disks.rate_limiter.ops.size"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn limits_from_the_flag_refuse_vms_over_the_api_naming_the_field() {
    require_kvm!();
    let dir = scratch("limits");
    let cpus = std::thread::available_parallelism().unwrap().get() as u32;
    let (mut keel, client) = Keel::with_api(&dir, &["--limits", "max_vcpus_per_host_cpu=1"]);
    let refused_field = |config: &VmConfig| match client.create(config) {
        Err(ClientError::Api { status, error, .. }) => {
            assert_eq!(status, 400, "{error:?}");
            (error.field.unwrap_or_default(), error.error)
        }
        other => panic!("{other:?}"),
    };
    let mut config = VmConfig::new(guest());
    config.vcpus = cpus + 1;
    let (field, error) = refused_field(&config);
    assert_eq!(field, "vcpus");
    assert!(
        error.starts_with("max_vcpus_per_host_cpu exceeded"),
        "{error}"
    );
    // The host's own memory holds whatever the flag says.
    let host = vmm_core::config::HostResources::detect();
    config.vcpus = 1;
    config.memory = MemSize::bytes((host.memory >> 30) * (1 << 30) + (2 << 30));
    let (field, error) = refused_field(&config);
    assert_eq!(field, "memory");
    assert!(error.starts_with("host memory exceeded"), "{error}");
    assert_eq!(client.info().unwrap().state, ApiVmState::NotCreated);
    // Within the limits the VM is created.
    config.vcpus = cpus;
    config.memory = MemSize::mib(64);
    client.create(&config).unwrap();
    client.shutdown_vmm().unwrap();
    assert!(keel.wait().success(), "{}", keel.stderr());

    // From flags alone: the status is 2 and the message names the limit.
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let kernel = guest();
    let kernel = kernel.to_str().unwrap();
    let (code, stderr) = run(&[
        "--kernel",
        kernel,
        "--cpus",
        &format!("boot={}", 2 * cpus + 1),
        "--limits",
        "max_vcpus_per_host_cpu=2",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("max_vcpus_per_host_cpu exceeded"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--kernel", kernel, "--limits", "max_queue_size=big"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--limits: key `max_queue_size`"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--kernel", kernel, "--limits", "max_ram=1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--limits: unknown key `max_ram`"),
        "{stderr}"
    );
    let (code, stderr) = run(&[
        "--kernel",
        kernel,
        "--serial",
        "null",
        "--limits",
        "max_queue_size=256,max_devices=1",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
}
