//! Scenarios shared by the virtio end-to-end tests, run over each transport: the test guest
//! drives a device and the host plays the other side (a TAP interface, Unix sockets).
#![allow(dead_code)] // each test binary uses the scenarios it needs

use std::path::PathBuf;
use std::time::Duration;

use testkit::{PacketSocket, SharedBuffer, ETHERTYPE_TEST};
use vmm_core::{BootProtocol, ExitReason, MemSize, VirtioTransport, VmBuilder, VmConfig};

/// How long a guest may take (all guest code is emulated on nested PVM hosts).
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// The test guest with one vCPU, set up to find its devices on `transport`.
pub fn guest_config(transport: VirtioTransport, cmdline: &str) -> VmConfig {
    let mut config = VmConfig::new(testkit::build_test_guest().unwrap());
    config.vcpus = 1;
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.virtio_transport = transport;
    match transport {
        VirtioTransport::Mmio => {
            config.cmdline = format!("keel.cpus=1 {cmdline}");
            config.virtio_mmio_cmdline = true;
        }
        VirtioTransport::Pci => config.cmdline = format!("keel.cpus=1 keel.pci {cmdline}"),
    }
    config
}

/// Boots `config` to its exit; returns the exit reason and the console.
pub fn run(config: VmConfig) -> (ExitReason, String) {
    let (reason, console, ()) = run_then(config, |_| ());
    (reason, console)
}

/// [`run`], and what `inspect` reads from the exited VM before it is dropped.
pub fn run_then<T>(
    config: VmConfig,
    inspect: impl FnOnce(&vmm_core::Vm) -> T,
) -> (ExitReason, String, T) {
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("build: {err}"));
    vm.start().unwrap();
    let reason = vm
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("guest did not exit:\n{}", out.text()));
    let inspected = inspect(&vm);
    (reason, out.text(), inspected)
}

/// A raw image of `sectors` sectors filled by `fill(byte index)`.
pub fn image(name: &str, sectors: usize, fill: impl Fn(usize) -> u8) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..sectors * 512).map(fill).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Checks that `image` holds the guest's pattern in `sectors` and, in the sector after them,
/// still the original fill (`fill(byte index)`, as given to [`image`]).
pub fn assert_pattern_written(
    image: &std::path::Path,
    sectors: std::ops::Range<u64>,
    fill: impl Fn(usize) -> u8,
) {
    let bytes = std::fs::read(image).unwrap();
    for sector in sectors.clone() {
        for offset in 0..512u64 {
            assert_eq!(
                bytes[(sector * 512 + offset) as usize],
                pattern(sector, offset),
                "sector {sector} byte {offset}"
            );
        }
    }
    let after = (sectors.end * 512) as usize;
    assert_eq!(
        bytes[after],
        fill(after),
        "sector {} untouched",
        sectors.end
    );
}

/// The fill of the read-write test disks: byte `i` of the image is `i mod 251`, so every
/// sector differs and a misplaced write shows.
pub fn rw_fill(i: usize) -> u8 {
    (i % 251) as u8
}

/// A read-write test disk of 64 sectors filled with [`rw_fill`].
pub fn rw_image(name: &str) -> PathBuf {
    image(name, 64, rw_fill)
}

/// The guest (`keel.blk_start=3 keel.blk_sectors=5`) wrote, flushed and read back sectors
/// 3..8 of its disk `dev`, reporting the original sector 0, and `image` holds the writes.
pub fn assert_rw_disk_written(console: &str, dev: u32, image: &std::path::Path) {
    let sector0_sum: u32 = (0..512).map(|i| u32::from(rw_fill(i))).sum();
    let line =
        format!("virtio-blk dev={dev} wrote=5 start=3 flushed verified sector0_sum={sector0_sum}");
    assert!(console.contains(&line), "no `{line}` in:\n{console}");
    assert_pattern_written(image, 3..8, rw_fill);
}

/// The guest read 64 bytes from virtio-rng and they look random: 64 random bytes have ~56
/// distinct values; a broken source (zeros, a stuck counter) far fewer.
pub fn assert_entropy(console: &str) {
    let line = console
        .lines()
        .find(|l| l.contains("virtio-rng bytes="))
        .unwrap_or_else(|| panic!("no virtio-rng line in:\n{console}"));
    let distinct: u32 = line
        .rsplit("distinct=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no distinct= count in {line}"));
    assert!(line.contains("bytes=64"), "{line}");
    assert!(distinct > 30, "{line}");
}

/// The pattern the guest writes (guest/README.md): byte `offset` of sector `sector`.
pub fn pattern(sector: u64, offset: u64) -> u8 {
    (((sector * 31 + offset * 7) ^ 0x5a) & 0xff) as u8
}

/// Frames cross a real TAP device both ways: three from the guest, one from the host.
/// Returns the console, or `None` (with a printed reason) where /dev/net/tun is missing.
pub fn net_round_trip(transport: VirtioTransport, tap: &str) -> Option<String> {
    net_round_trip_on(transport, tap, false)
}

/// [`net_round_trip`], with the TAP given as a descriptor this test opened
/// (`VmBuilder::tap_fd`, a duplicate) when `by_fd`; the test's own descriptor must still be
/// open after the VM is gone.
pub fn net_round_trip_on(transport: VirtioTransport, tap: &str, by_fd: bool) -> Option<String> {
    use std::os::fd::AsRawFd;
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("KEEL-TAP-SKIP: /dev/net/tun is missing");
        return None;
    }
    let tap = tap.to_string();
    let mut config = guest_config(transport, "keel.net keel.net_frames=3");
    let held = by_fd.then(|| devices::virtio::net::Tap::open(&tap).unwrap());
    config.nets.push(vmm_core::config::NetConfig {
        id: "net0".into(),
        tap: if by_fd { String::new() } else { tap.clone() },
        mac: Some("52:54:00:12:34:56".into()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    });
    let out = SharedBuffer::new();
    let mut builder = VmBuilder::new(config).serial_output(out.clone());
    if let Some(held) = &held {
        // The VM owns what it is given: hand it a duplicate and keep the original.
        use std::os::fd::AsFd;
        builder = builder.tap_fd("net0", held.as_fd().try_clone_to_owned().unwrap());
    }
    let mut vm = builder.build().unwrap_or_else(|err| panic!("build: {err}"));
    let up = std::process::Command::new("ip")
        .args(["link", "set", "dev", &tap, "up"])
        .status()
        .unwrap();
    assert!(up.success(), "ip link set {tap} up");
    let socket = PacketSocket::open(&tap, ETHERTYPE_TEST, Duration::from_secs(1), None).unwrap();
    vm.start().unwrap();

    // Guest -> host: three broadcast frames from the configured MAC.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(frame) = socket.recv() {
            assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
            assert_eq!(
                &frame[6..12],
                &[0x52, 0x54, 0, 0x12, 0x34, 0x56],
                "source MAC"
            );
            let payload = String::from_utf8_lossy(&frame[14..])
                .trim_end_matches('\0')
                .to_string();
            seen.push(payload);
        }
    }
    assert_eq!(
        seen,
        ["KEEL-GUEST 0", "KEEL-GUEST 1", "KEEL-GUEST 2"],
        "{}",
        out.text()
    );

    // Host -> guest.
    let mut frame = vec![
        0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5,
    ];
    frame.extend_from_slice(b"KEEL-HOST hello from host");
    let expected = "virtio-net rx len=39 payload=KEEL-HOST hello from host";
    while !out.wait_for(expected, Duration::from_millis(500)) {
        assert!(std::time::Instant::now() < deadline, "{}", out.text());
        socket.send(&frame).unwrap();
    }
    let reason = vm.wait_timeout(TIMEOUT);
    assert_eq!(reason, Some(ExitReason::Reset), "{}", out.text());
    let console = out.text();
    assert!(
        console.contains("virtio-net mac=52:54:00:12:34:56 sent=3"),
        "{console}"
    );
    assert!(!console.contains("FAIL"), "{console}");
    drop(vm);
    if let Some(held) = held {
        // SAFETY: F_GETFD takes no pointer; it only asks whether the descriptor is open.
        let open = unsafe { libc::fcntl(held.as_raw_fd(), libc::F_GETFD) } >= 0;
        assert!(open, "Keel closed the caller's TAP descriptor");
    }
    Some(console)
}

/// vsock connections in both directions over Unix sockets (Firecracker's host-side model).
/// Returns the console.
pub fn vsock_both_ways(transport: VirtioTransport, dir_name: &str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = std::env::temp_dir().join(format!("{dir_name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    // Guest-initiated connections to host port 5000 arrive on `<uds>_5000`.
    let listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    let mut config = guest_config(
        transport,
        "keel.vsock keel.vsock_port=5000 keel.vsock_listen=6000",
    );
    config.vsock = Some(vmm_core::config::VsockConfig {
        id: "vsock0".into(),
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("build: {err}"));
    vm.start().unwrap();

    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).to_string();
        stream.write_all(b"hi guest").unwrap();
        got
    });
    assert!(
        out.wait_for("virtio-vsock connect port=5000", TIMEOUT),
        "{}",
        out.text()
    );
    assert_eq!(server.join().unwrap(), "hello from guest");
    assert!(
        out.wait_for("virtio-vsock connect port=5000 reply=hi guest", TIMEOUT),
        "{}",
        out.text()
    );

    // Host-initiated: CONNECT through the device's socket, as with Firecracker.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"CONNECT 6000\n").unwrap();
    let mut line = String::new();
    BufReader::new(host.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("OK "),
        "{line:?}; console:\n{}",
        out.text()
    );
    host.write_all(b"ping from host").unwrap();
    let mut echo = [0u8; 14];
    host.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"PING FROM HOST");
    drop(host);

    let reason = vm.wait_timeout(TIMEOUT);
    let console = out.text();
    assert_eq!(reason, Some(ExitReason::Reset), "{console}");
    assert!(console.contains("virtio-vsock cid=3"), "{console}");
    assert!(
        console.contains("virtio-vsock accepted port=6000 got=ping from host"),
        "{console}"
    );
    assert!(!console.contains("FAIL"), "{console}");
    std::fs::remove_dir_all(&dir).unwrap();
    console
}
