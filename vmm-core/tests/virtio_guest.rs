//! End-to-end virtio over MMIO on /dev/kvm: Keel's test guest drives Keel's virtio devices and
//! the host checks the results (image file contents, entropy, exit).

use std::path::PathBuf;
use std::time::Duration;

use testkit::{require_kvm, SharedBuffer};
use vmm_core::config::{DiskConfig, RngConfig, VirtioTransport};
use vmm_core::{BootProtocol, ExitReason, MemSize, VmBuilder, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(60);

fn guest_config(cmdline: &str) -> VmConfig {
    let mut config = VmConfig::new(testkit::build_test_guest().unwrap());
    config.vcpus = 1;
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.cmdline = format!("keel.cpus=1 {cmdline}");
    config.virtio_transport = VirtioTransport::Mmio;
    config.virtio_mmio_cmdline = true;
    config
}

fn run(config: VmConfig) -> (ExitReason, String) {
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("build: {err}"));
    vm.start().unwrap();
    let reason = vm
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("guest did not exit:\n{}", out.text()));
    (reason, out.text())
}

fn image(name: &str, sectors: usize, fill: impl Fn(usize) -> u8) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..sectors * 512).map(fill).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The pattern the guest writes (guest/README.md): byte `i` of sector `s`.
fn pattern(sector: u64, offset: u64) -> u8 {
    (((sector * 31 + offset * 7) ^ 0x5a) & 0xff) as u8
}

#[test]
fn guest_writes_flushes_and_reads_back_blocks_that_land_in_the_image() {
    require_kvm!();
    let path = image("rw.img", 64, |i| (i % 251) as u8);
    let mut config = guest_config("keel.blk keel.blk_start=3 keel.blk_sectors=5");
    config.disks.push(DiskConfig {
        id: "disk0".into(),
        path: path.clone(),
        read_only: false,
        direct: false,
    });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(!console.contains("FAIL"), "{console}");
    assert!(
        console.contains("virtio-blk dev=0 capacity=64 id=disk0"),
        "{console}"
    );
    let sector0_sum: u32 = (0..512u32).map(|i| i % 251).sum();
    assert!(
        console.contains(&format!(
            "wrote=5 start=3 flushed verified sector0_sum={sector0_sum}"
        )),
        "{console}"
    );
    let bytes = std::fs::read(&path).unwrap();
    for sector in 3..8u64 {
        for offset in 0..512u64 {
            assert_eq!(
                bytes[(sector * 512 + offset) as usize],
                pattern(sector, offset),
                "sector {sector} byte {offset}"
            );
        }
    }
    assert_eq!(
        bytes[8 * 512],
        ((8 * 512) % 251) as u8,
        "sector 8 untouched"
    );
}

#[test]
fn a_read_only_disk_refuses_guest_writes() {
    require_kvm!();
    let path = image("ro.img", 16, |_| 7);
    let before = std::fs::read(&path).unwrap();
    let mut config = guest_config("keel.blk");
    config.disks.push(DiskConfig {
        id: "ro".into(),
        path: path.clone(),
        read_only: true,
        direct: false,
    });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    assert!(
        console.contains("virtio-blk dev=0 read-only sector0_sum=3584"),
        "{console}"
    );
    assert!(
        console.contains("virtio-blk dev=0 write-refused status=1"),
        "{console}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "image unchanged");
}

#[test]
fn guest_reads_entropy_from_virtio_rng() {
    require_kvm!();
    let mut config = guest_config("keel.rng");
    config.rng = Some(RngConfig { id: "rng0".into() });
    let (reason, console) = run(config);
    assert_eq!(reason, ExitReason::Reset, "{console}");
    let line = console
        .lines()
        .find(|l| l.contains("virtio-rng bytes="))
        .unwrap_or_else(|| panic!("{console}"));
    let distinct: u32 = line
        .rsplit("distinct=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(line.contains("bytes=64"), "{line}");
    // 64 random bytes have ~56 distinct values; a broken source (zeros, a counter stuck) far fewer.
    assert!(distinct > 30, "{line}");
}

/// A raw AF_PACKET socket on one interface, for EtherType 0x88b5 frames (test-side peer).
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

const ETHERTYPE_TEST: u16 = 0x88b5;

impl PacketSocket {
    fn open(ifname: &str) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: plain socket creation; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETHERTYPE_TEST.to_be()),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE_TEST.to_be();
        addr.sll_ifindex = ifindex;
        use std::os::fd::AsRawFd;
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid option value of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(PacketSocket { fd, ifindex })
    }

    fn recv(&self) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 2048];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE_TEST.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[test]
fn guest_frames_cross_a_real_tap_device_both_ways() {
    require_kvm!();
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("KEEL-TAP-SKIP: /dev/net/tun is missing");
        return;
    }
    let tap = format!("keeltap{}", std::process::id() % 100_000);
    let mut config = guest_config("keel.net keel.net_frames=3");
    config.nets.push(vmm_core::config::NetConfig {
        id: "net0".into(),
        tap: tap.clone(),
        mac: Some("52:54:00:12:34:56".into()),
    });
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("build: {err}"));
    let up = std::process::Command::new("ip")
        .args(["link", "set", "dev", &tap, "up"])
        .status()
        .unwrap();
    assert!(up.success(), "ip link set {tap} up");
    let socket = PacketSocket::open(&tap).unwrap();
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
    assert!(
        out.text()
            .contains("virtio-net mac=52:54:00:12:34:56 sent=3"),
        "{}",
        out.text()
    );
}

#[test]
fn vsock_connections_in_both_directions_over_unix_sockets() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    require_kvm!();
    let dir = std::env::temp_dir().join(format!("keel-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    // Guest-initiated connections to host port 5000 arrive on `<uds>_5000`.
    let listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    let mut config = guest_config("keel.vsock keel.vsock_port=5000 keel.vsock_listen=6000");
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
}
