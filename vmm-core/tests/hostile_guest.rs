//! The hostile-guest catalogue: the test guest misbehaves on purpose (`keel.attack=NAME`) towards
//! a virtio device of a real VM on /dev/kvm, and Keel must survive it. For every attack: the VM
//! runs to its normal exit (no hang, no crash), the device answers the attack as designed (the
//! outcome the guest reports, compared with the catalogue below; the device's `needs_reset`
//! counter moves exactly when the outcome is `needs_reset`), then serves a well-formed request
//! after a reset, and the VMM's peak memory stays bounded.
//!
//! One test per attack checks all that but the memory bound (other tests' VMs share the
//! process). `every_attack_in_a_row_beside_a_bystander_vm` runs them all again, one after
//! another in a child process (so no other test's VMs are measured), next to a bystander VM in
//! the same process that must keep running throughout: it checks each attack's peak memory and
//! the warnings it put in the host's log, and prints them with the VMM's CPU time per kick of
//! the storm. `the_catalogue_table_is_current` checks the table in `docs/hostile-guest.md`
//! against the catalogue (`KEEL_BLESS=1` rewrites it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use testkit::{require_kvm, PacketSocket, SharedBuffer, ETHERTYPE_TEST};
use vmm_core::config::{DiskConfig, NetConfig, RngConfig, VsockConfig};
use vmm_core::{
    BootProtocol, ConsoleConfig, ExitReason, MemSize, SerialOutput, VirtioTransport, VmBuilder,
    VmConfig,
};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Notifications in `notify_storm`.
const STORM_KICKS: u64 = 1_000_000;
/// Connection requests in `vsock_reset_flood`.
const VSOCK_REQUESTS: u64 = 2000;
/// Bad chains in `warn_flood`.
const FLOOD_CHAINS: u64 = 100_000;
/// Most warnings an attack may put in the host's log per 5 s window its run touches (the
/// devices allow 10 per call site per window, and a flood reaches a few call sites).
const LOG_BOUND_PER_WINDOW: u64 = 50;
/// Most the process's peak resident memory may grow over what it was before the VM was built:
/// the guest touches a few MiB; an attack that made the VMM allocate or fault in per byte it
/// names (1 GiB for `rng_1gib`, 4 GiB for `huge_length`) would exceed it by far.
const MEMORY_BOUND: u64 = 32 << 20;
/// Set in the child process that measures the catalogue.
const CHILD: &str = "KEEL_HOSTILE_CHILD";

/// One attack: its name, the device it targets, what the device does about it (the outcome the
/// guest prints), and the catalogue's words for it.
struct Case {
    name: &'static str,
    device: &'static str,
    outcome: &'static str,
    abuse: &'static str,
    answer: &'static str,
}

const CATALOGUE: &[Case] = &[
    Case {
        name: "desc_loop",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "two descriptors whose `next` point at each other",
        answer: "chain rejected (it never ends), returned empty",
    },
    Case {
        name: "chain_too_long",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "every descriptor chained, the last back to the first",
        answer: "chain rejected, returned empty",
    },
    Case {
        name: "next_out_of_range",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "`next` = 500 in a 16-entry queue",
        answer: "chain rejected, returned empty",
    },
    Case {
        name: "indirect_self",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "an indirect descriptor whose table is the descriptor table itself (nested)",
        answer: "chain rejected, returned empty",
    },
    Case {
        name: "addr_beyond_memory",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "a buffer at 1 TiB",
        answer: "buffer outside guest memory: returned empty",
    },
    Case {
        name: "addr_mmio_hole",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "a buffer on the I/O APIC page (MMIO hole)",
        answer: "not RAM: returned empty",
    },
    Case {
        name: "addr_overflow",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "address + length wraps past 2^64",
        answer: "returned empty",
    },
    Case {
        name: "zero_length",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "a buffer of 0 bytes",
        answer: "returned empty",
    },
    Case {
        name: "huge_length",
        device: "rng",
        outcome: "returned_len=0",
        abuse: "a buffer of 4 GiB - 1 bytes",
        answer: "beyond guest memory: returned empty, nothing allocated",
    },
    Case {
        name: "rng_1gib",
        device: "rng",
        outcome: "returned_len=65536",
        abuse: "a 1 GiB device-writable buffer inside guest memory (1.5 GiB VM)",
        answer: "filled up to the 64 KiB cap per request",
    },
    Case {
        name: "queue_size_zero",
        device: "rng",
        outcome: "needs_reset",
        abuse: "queue size 0, then DRIVER_OK",
        answer: "DEVICE_NEEDS_RESET, device not started, counted in `needs_reset`",
    },
    Case {
        name: "queue_size_odd",
        device: "rng",
        outcome: "needs_reset",
        abuse: "queue size 12 (not a power of two), then DRIVER_OK",
        answer: "DEVICE_NEEDS_RESET, device not started, counted in `needs_reset`",
    },
    Case {
        name: "queue_size_too_big",
        device: "rng",
        outcome: "needs_reset",
        abuse: "queue size 1024 (the device offers 256), then DRIVER_OK",
        answer: "DEVICE_NEEDS_RESET, device not started, counted in `needs_reset`",
    },
    Case {
        name: "avail_jump",
        device: "rng",
        outcome: "not_returned",
        abuse: "available index moved by 1000 (more than the queue size)",
        answer: "ring ignored (warning, rate-limited), no spinning",
    },
    Case {
        name: "avail_backwards",
        device: "rng",
        outcome: "not_returned",
        abuse: "available index moved back by one after a served request",
        answer: "ring ignored (warning, rate-limited), no spinning",
    },
    Case {
        name: "head_out_of_range",
        device: "rng",
        outcome: "not_returned",
        abuse: "available ring entry names descriptor 300 of 16",
        answer: "chain skipped (warning), nothing written",
    },
    Case {
        name: "notify_unconfigured",
        device: "rng",
        outcome: "ignored count=4000",
        abuse: "kicks of a queue before set-up, of queues 5, 7 and 65535 that do not exist",
        answer: "ignored",
    },
    Case {
        name: "notify_storm",
        device: "rng",
        outcome: "ignored count=1000000",
        abuse: "1,000,000 kicks of a live, empty queue",
        answer: "each kick one look at the ring (CPU per kick measured)",
    },
    Case {
        name: "config_write_oob",
        device: "rng",
        outcome: "ignored count=127",
        abuse:
            "0xffffffff written to every register and the (absent) config space of a live device",
        answer: "read-only registers kept, live queue kept, config writes dropped",
    },
    Case {
        name: "status_out_of_order",
        device: "rng",
        outcome: "features_refused",
        abuse: "DRIVER_OK before FEATURES_OK; FEATURES_OK with all 64 feature bits",
        answer: "not started; FEATURES_OK refused",
    },
    Case {
        name: "blk_sector_overflow",
        device: "blk",
        outcome: "status=1",
        abuse: "a read at sector 2^64 - 1",
        answer: "VIRTIO_BLK_S_IOERR, counted in `malformed`",
    },
    Case {
        name: "blk_short_header",
        device: "blk",
        outcome: "status=1",
        abuse: "a request header of 4 bytes",
        answer: "VIRTIO_BLK_S_IOERR, counted in `malformed`",
    },
    Case {
        name: "blk_no_status",
        device: "blk",
        outcome: "returned_len=0",
        abuse: "a read whose chain has no status byte",
        answer: "returned empty, nothing read, counted in `malformed`",
    },
    Case {
        name: "warn_flood",
        device: "rng",
        outcome: "ignored count=100000",
        abuse: "100,000 chains with an out-of-range head, each kicked",
        answer: "each skipped; warnings rate-limited to 10 per call site per 5 s (at most 50 \
                 per 5 s checked; 20-40 measured, 43,493 before the fix)",
    },
    Case {
        name: "vsock_reset_flood",
        device: "vsock",
        outcome: "resets<=260",
        abuse: "2,000 connection requests to a host port nobody listens on, the receive queue \
                left unread meanwhile",
        answer: "each refused with a reset; at most 256 resets wait for receive buffers, the \
                 rest are dropped (260 arrive: 4 posted buffers + 256)",
    },
    Case {
        name: "vsock_connection_flood",
        device: "vsock",
        outcome: "accepted<=1024",
        abuse: "2,000 connection requests to a host port whose peer accepts every one",
        answer: "at most 1,024 connections at once (one host descriptor each), the rest \
                 refused with a reset",
    },
    Case {
        name: "vsock_credit_overflow",
        device: "vsock",
        outcome: "reset_after<=1048576",
        abuse: "a connection whose guest sends with no regard for its credit (host never reads)",
        answer: "connection reset once the guest overruns the 256 KiB the device buffers for it \
                 (353,780 bytes sent here, what the host socket took included)",
    },
    Case {
        name: "console_writable_tx",
        device: "console",
        outcome: "returned_len=0",
        abuse: "a transmit descriptor marked device-writable",
        answer: "chain dropped unread, counted in `malformed`",
    },
    Case {
        name: "console_desc_loop",
        device: "console",
        outcome: "returned_len=0",
        abuse: "two transmit descriptors whose `next` point at each other",
        answer: "chain dropped unread as unterminated, counted in `malformed` (before the fix \
                 the device wrote out the 16 descriptors virtio-queue walks: 512 bytes from 64)",
    },
    Case {
        name: "console_huge_chain",
        device: "console",
        outcome: "returned_len=0",
        abuse: "a 1 MiB transmit chain (16 × 64 KiB)",
        answer: "over the 64 KiB per chain: dropped unread, counted in `malformed`",
    },
    Case {
        name: "console_addr_beyond_memory",
        device: "console",
        outcome: "returned_len=0",
        abuse: "a transmit buffer at 1 TiB",
        answer: "dropped, counted in `malformed`",
    },
    Case {
        name: "net_tx_writable",
        device: "net",
        outcome: "returned_len=0",
        abuse: "a transmit descriptor marked device-writable",
        answer: "frame dropped unsent, counted in `tx_malformed`",
    },
    Case {
        name: "net_tx_short",
        device: "net",
        outcome: "returned_len=0",
        abuse: "a 4-byte transmit chain (the virtio-net header alone is 12)",
        answer: "frame dropped unsent, counted in `tx_malformed`",
    },
    Case {
        name: "net_tx_oversize",
        device: "net",
        outcome: "returned_len=0",
        abuse: "a 1 MiB transmit chain (16 × 64 KiB)",
        answer: "over the largest frame: dropped unsent, counted in `tx_malformed`",
    },
    Case {
        name: "net_tx_loop",
        device: "net",
        outcome: "returned_len=0",
        abuse: "two transmit descriptors whose `next` point at each other",
        answer: "dropped unsent as unterminated, counted in `tx_malformed`",
    },
    Case {
        name: "net_rx_read_only",
        device: "net",
        outcome: "returned_len=0",
        abuse: "a receive buffer the device may only read, while the host sends frames",
        answer: "returned unused, nothing written, counted in `rx_malformed_chains`; the frame \
                 waits for the next buffer",
    },
    Case {
        name: "net_rx_short",
        device: "net",
        outcome: "returned_len=0",
        abuse: "a 4-byte receive buffer (the virtio-net header alone is 12), while the host \
                sends frames",
        answer: "returned unused, nothing written, counted in `rx_malformed_chains`",
    },
    Case {
        name: "net_rx_beyond_memory",
        device: "net",
        outcome: "returned_len=0",
        abuse: "a receive buffer at 1 TiB, beyond guest memory, while the host sends frames",
        answer: "returned unused, counted in `rx_malformed_chains`",
    },
    Case {
        name: "net_rx_loop",
        device: "net",
        outcome: "returned_len=0",
        abuse: "two receive descriptors whose `next` point at each other, while the host sends \
                frames",
        answer: "returned unused as unterminated, nothing written, counted in \
                 `rx_malformed_chains`",
    },
    Case {
        name: "msix_vector_out_of_range",
        device: "rng (PCI)",
        outcome: "vectors=0xffff,0xffff",
        abuse: "MSI-X vector 0x800 (the table has 2) for the configuration and queue 0",
        answer: "refused: both read back VIRTIO_MSI_NO_VECTOR",
    },
    Case {
        name: "msix_table_abuse",
        device: "rng (PCI)",
        outcome: "ignored count=18",
        abuse: "every MSI-X entry and 16 past the table: address 0xffffffff_deadb000, vector 0, \
                unmasked; PBA overwritten; MSI-X on and a request served",
        answer: "writes past the table and to the PBA ignored; the 2 real entries routed to KVM \
                 as written, which delivers nothing to that address; the request is served",
    },
    Case {
        name: "bar_over_ram",
        device: "rng (PCI)",
        outcome: "bar0=0x100000",
        abuse: "BAR 0 moved onto guest RAM (1 MiB, the guest's own code), a kick, then back",
        answer: "register takes it; outside the PCI window: decoded nowhere (warning), its \
                 ioeventfds moved off; decoded again once back",
    },
    Case {
        name: "bars_overlap",
        device: "rng (PCI)",
        outcome: "bar0=0xc0000000",
        abuse: "BAR 0 moved onto the disk's BAR 0, a kick, then back",
        answer: "register takes it; overlap: decoded nowhere (warning), the disk keeps its \
                 window; both devices serve again",
    },
];

/// Attacks that need the virtio-pci transport.
const PCI_ATTACKS: &[&str] = &[
    "msix_vector_out_of_range",
    "msix_table_abuse",
    "bar_over_ram",
    "bars_overlap",
];

fn guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| testkit::build_test_guest().unwrap_or_else(|err| panic!("{err}")))
        .clone()
}

fn case(name: &str) -> &'static Case {
    CATALOGUE
        .iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("no attack {name} in the catalogue"))
}

/// The VM an attack runs in: one vCPU, an entropy device and a disk on virtio-mmio.
fn attack_config(name: &str) -> VmConfig {
    let image =
        std::env::temp_dir().join(format!("keel-hostile-{}-{name}.img", std::process::id()));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut config = VmConfig::new(guest());
    config.vcpus = 1;
    config.memory = MemSize::mib(if name == "rng_1gib" { 1536 } else { 128 });
    config.boot_protocol = BootProtocol::Pvh;
    let count = match name {
        "notify_storm" => STORM_KICKS,
        "vsock_reset_flood" | "vsock_connection_flood" => VSOCK_REQUESTS,
        _ => FLOOD_CHAINS,
    };
    config.cmdline = format!("keel.cpus=1 keel.attack={name} keel.attack_count={count}");
    if PCI_ATTACKS.contains(&name) {
        config.virtio_transport = VirtioTransport::Pci;
        config.cmdline.push_str(" keel.pci");
    } else {
        config.virtio_transport = VirtioTransport::Mmio;
        config.virtio_mmio_cmdline = true;
    }
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
    config.console = Some(ConsoleConfig {
        output: SerialOutput::File(console_path(name)),
        ..ConsoleConfig::default()
    });
    if name.starts_with("net_") {
        // A TAP device of its own (created by Keel, gone with the VM).
        config.nets.push(NetConfig {
            id: "net0".into(),
            tap: vm_tap(name),
            mac: Some("52:54:00:12:34:56".into()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        });
    }
    config.vsock = Some(VsockConfig {
        id: "vsock0".into(),
        guest_cid: 3,
        uds_path: vsock_path(name),
    });
    config
}

/// The TAP device of attack `name`'s NIC.
fn vm_tap(name: &str) -> String {
    let index = CATALOGUE
        .iter()
        .position(|case| case.name == name)
        .unwrap_or(0);
    format!("kh{}x{index}", std::process::id() % 100_000)
}

/// Brings the TAP Keel created up, so the host can send through it.
fn link_up(tap: &str) -> String {
    let up = std::process::Command::new("ip")
        .args(["link", "set", "dev", tap, "up"])
        .status()
        .unwrap();
    assert!(up.success(), "ip link set {tap} up");
    tap.to_owned()
}

/// The host side of a `net_rx_*` attack: a frame for the guest into the TAP every 2 ms until
/// `stop` is set; returns how many went in.
fn host_frames(tap: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let socket = PacketSocket::open(tap, ETHERTYPE_TEST, Duration::from_millis(100), None).unwrap();
    std::thread::spawn(move || {
        let mut frame = vec![
            0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5,
        ];
        frame.extend_from_slice(b"KEEL-HOSTILE-RX");
        frame.resize(60, 0);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            if socket.send(&frame).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    })
}

/// Where the virtio console's output of attack `name` goes.
fn console_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "keel-hostile-{}-{name}.console",
        std::process::id()
    ))
}

/// The vsock device's socket for attack `name`; guest connections to port P go to `<it>_P`.
fn vsock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("keel-hostile-{}-{name}.vsock", std::process::id()))
}

/// A host peer on port 5000 for `vsock_credit_overflow` and `vsock_connection_flood`: accepts
/// connections and never reads them, until `stop` is set; returns how many it accepted.
fn silent_peer(name: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let path = PathBuf::from(format!("{}_5000", vsock_path(name).display()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = std::fs::remove_file(&path);
        held.len()
    })
}

/// What one attack run measured.
struct Run {
    console: String,
    /// The process's peak resident memory over its resident memory before the VM was built.
    peak_growth: u64,
    /// CPU time of the VM's event-loop threads (the devices).
    device_cpu: Duration,
    /// CPU time of its vCPU thread (host time of the guest's exits included).
    vcpu_cpu: Duration,
    /// Most descriptors the process had open during the run, over those before it.
    fds: u64,
    wall: Duration,
    /// The disk's `io_errors` and `malformed` counters.
    blk_errors: (u64, u64),
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Descriptors this process has open.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

/// CPU time (user + system) of this process's threads called `comm`, by thread id.
fn threads_cpu(comm: &str) -> HashMap<String, Duration> {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut cpu = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." with utime and stime the 14th and 15th fields.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if !head.ends_with(comm) || !head.contains(&format!("({comm}")) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum::<u64>())
            .unwrap_or(0);
        cpu.insert(
            task.file_name().to_string_lossy().into_owned(),
            Duration::from_millis(used * 1000 / ticks),
        );
    }
    cpu
}

/// Runs one attack to the guest's exit and checks what the catalogue says of it; with
/// `alone` (nothing else runs in this process but the bystander) also its peak memory.
fn run_attack(name: &str, alone: bool) -> Run {
    let case = case(name);
    let before_threads = threads_cpu("keel-events");
    let before_vcpus = threads_cpu("keel-vcpu-0");
    // Reset the peak ("VmHWM") to the current resident size (proc(5), clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before = status_kib("VmRSS:") * 1024;
    let started = Instant::now();
    let out = SharedBuffer::new();
    let stop_peer = Arc::new(AtomicBool::new(false));
    let peer = matches!(name, "vsock_credit_overflow" | "vsock_connection_flood")
        .then(|| silent_peer(name, stop_peer.clone()));
    let config = attack_config(name);
    let image = config.disks[0].path.clone();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap_or_else(|err| panic!("{name}: build: {err}"));
    // The VM holds the image open; the name can go now.
    std::fs::remove_file(&image).unwrap();
    let handle = vm.handle();
    let stop_frames = Arc::new(AtomicBool::new(false));
    let frames = name
        .starts_with("net_rx_")
        .then(|| host_frames(&link_up(&vm_tap(name)), stop_frames.clone()));
    vm.start().unwrap();
    let mut device_cpu = HashMap::new();
    let mut vcpu_cpu = HashMap::new();
    let fds_before = open_fds();
    let mut peak_fds = fds_before;
    let mut counters = handle.counters();
    let reason = loop {
        if let Some(reason) = vm.wait_timeout(Duration::from_millis(20)) {
            break reason;
        }
        for (tid, cpu) in threads_cpu("keel-events") {
            if !before_threads.contains_key(&tid) {
                device_cpu.insert(tid, cpu);
            }
        }
        for (tid, cpu) in threads_cpu("keel-vcpu-0") {
            if !before_vcpus.contains_key(&tid) {
                vcpu_cpu.insert(tid, cpu);
            }
        }
        counters = handle.counters();
        peak_fds = peak_fds.max(open_fds());
        assert!(
            started.elapsed() < TIMEOUT,
            "{name}: the guest did not exit:\n{}",
            out.text()
        );
    };
    let wall = started.elapsed();
    let peak_growth = (status_kib("VmHWM:") * 1024).saturating_sub(rss_before);
    let console = out.text();
    assert_eq!(reason, ExitReason::Reset, "{name}:\n{console}");
    assert!(!console.contains("FAIL"), "{name}:\n{console}");
    assert!(!console.contains("panicked"), "{name}:\n{console}");
    stop_peer.store(true, Ordering::Relaxed);
    stop_frames.store(true, Ordering::Relaxed);
    if let Some(frames) = frames {
        assert!(
            frames.join().unwrap() > 0,
            "{name}: no frame reached the TAP"
        );
    }
    if let Some(peer) = peer {
        let held = peer.join().unwrap();
        if name == "vsock_connection_flood" {
            assert!(
                (1..=1024).contains(&held),
                "{name}: the host peer accepted {held}"
            );
        } else {
            assert_eq!(held, 1, "{name}: the host peer's connections");
        }
    }
    match case.outcome.split_once("<=") {
        // A bound: the guest reports `key=value`.
        Some((key, bound)) => {
            let prefix = format!("attack {name} outcome={key}=");
            let value: u64 = console
                .split(&prefix)
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no `{prefix}N` in:\n{console}"));
            assert!(
                value <= bound.parse().unwrap_or(0),
                "{name}: {key}={value}, over {bound}"
            );
            assert!(console.contains(" then=served"), "{name}:\n{console}");
        }
        None => {
            let line = format!("attack {name} outcome={} then=served", case.outcome);
            assert!(
                console.contains(&line),
                "{name}: no `{line}` in:\n{console}"
            );
        }
    }
    // Other tests' VMs start and stop in this process meanwhile unless `alone`.
    assert!(
        !alone || peak_growth < MEMORY_BOUND,
        "{name}: peak resident memory grew by {peak_growth} bytes"
    );
    let disk = |counters: &vmm_core::VmCounters, name| {
        counters
            .device("disk0")
            .and_then(|disk| disk.get(name))
            .unwrap_or(0)
    };
    let last = vm.handle().counters();
    // The transport reports a device it had to mark broken, and only then.
    let target = match case.device {
        "blk" => "disk0",
        "vsock" => "vsock0",
        "console" => "console0",
        "net" => "net0",
        _ => "rng0",
    };
    if case.device == "net" {
        let net = |counter| {
            last.device("net0")
                .and_then(|device| device.get(counter))
                .unwrap_or(0)
        };
        if name.starts_with("net_rx_") {
            assert!(
                net("rx_malformed_chains") >= 1,
                "{name}: no malformed receive chain counted"
            );
            assert!(
                net("rx_frames") >= 1,
                "{name}: the probe's buffer got no frame"
            );
        } else {
            assert!(
                net("tx_malformed") >= 1,
                "{name}: no malformed frame counted"
            );
            assert!(
                net("tx_frames") + net("tx_backend_errors") >= 1,
                "{name}: the probe frame did not reach the TAP"
            );
        }
    }
    // The console's output has the probe line and nothing of the attacks' buffers.
    let console_out = std::fs::read_to_string(console_path(name)).unwrap_or_default();
    let _ = std::fs::remove_file(console_path(name));
    if case.device == "console" {
        assert!(
            console_out.contains("keel-attack-probe"),
            "{name}: console output {console_out:?}"
        );
        assert!(
            !console_out.contains('!'),
            "{name}: the attack's bytes were written"
        );
        let malformed = last
            .device("console0")
            .and_then(|device| device.get("malformed"))
            .unwrap_or(0);
        assert!(malformed >= 1, "{name}: no malformed chain counted");
    }
    let needs_reset = last
        .device(target)
        .and_then(|device| device.get("needs_reset"))
        .unwrap_or_else(|| panic!("{name}: no needs_reset counter on {target}"));
    assert_eq!(
        needs_reset > 0,
        case.outcome == "needs_reset",
        "{name}: {target} needs_reset={needs_reset}"
    );
    let blk_errors = (
        disk(&last, "io_errors").max(disk(&counters, "io_errors")),
        disk(&last, "malformed").max(disk(&counters, "malformed")),
    );
    Run {
        console,
        peak_growth,
        device_cpu: device_cpu.values().sum(),
        vcpu_cpu: vcpu_cpu.values().sum(),
        fds: peak_fds.saturating_sub(fds_before),
        wall,
        blk_errors,
    }
}

macro_rules! attacks {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                require_kvm!();
                let run = run_attack(stringify!($name), false);
                if case(stringify!($name)).device == "blk" {
                    let (io_errors, malformed) = run.blk_errors;
                    assert!(io_errors + malformed >= 1, "{}: no block error counted", stringify!($name));
                }
            }
        )*
        /// Every attack has its test.
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

attacks!(
    desc_loop,
    chain_too_long,
    next_out_of_range,
    indirect_self,
    addr_beyond_memory,
    addr_mmio_hole,
    addr_overflow,
    zero_length,
    huge_length,
    rng_1gib,
    queue_size_zero,
    queue_size_odd,
    queue_size_too_big,
    avail_jump,
    avail_backwards,
    head_out_of_range,
    notify_unconfigured,
    notify_storm,
    config_write_oob,
    status_out_of_order,
    blk_sector_overflow,
    blk_short_header,
    blk_no_status,
    warn_flood,
    vsock_reset_flood,
    vsock_connection_flood,
    vsock_credit_overflow,
    console_writable_tx,
    console_desc_loop,
    console_huge_chain,
    console_addr_beyond_memory,
    net_tx_writable,
    net_tx_short,
    net_tx_oversize,
    net_tx_loop,
    net_rx_read_only,
    net_rx_short,
    net_rx_beyond_memory,
    net_rx_loop,
    msix_vector_out_of_range,
    msix_table_abuse,
    bar_over_ram,
    bars_overlap,
);

/// The catalogue as the table in `docs/hostile-guest.md`.
fn table() -> String {
    let mut table = String::from(
        "| attack (`keel.attack=`) | device | what the guest does | what Keel does | guest sees |\n\
         |---|---|---|---|---|\n",
    );
    for case in CATALOGUE {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} | `{}` |\n",
            case.name,
            case.device,
            case.abuse,
            case.answer,
            case.outcome.replace("<=", " ≤ ")
        ));
    }
    table
}

const DOC: &str = "docs/hostile-guest.md";
const BEGIN: &str = "<!-- catalogue: generated by vmm-core/tests/hostile_guest.rs -->\n";
const END: &str = "<!-- end of catalogue -->\n";

#[test]
fn the_catalogue_table_is_current() {
    let mut tested: Vec<_> = TESTED.to_vec();
    let mut listed: Vec<_> = CATALOGUE.iter().map(|case| case.name).collect();
    tested.sort_unstable();
    listed.sort_unstable();
    assert_eq!(tested, listed, "every attack of the catalogue has its test");
    let path = testkit::workspace_root().join(DOC);
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = table();
    let current = doc
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(table, _)| table);
    if std::env::var_os("KEEL_BLESS").is_some() {
        let (head, tail) = match doc.split_once(BEGIN) {
            Some((head, rest)) => (head, rest.split_once(END).map_or("", |(_, tail)| tail)),
            None => (doc.as_str(), ""),
        };
        std::fs::write(&path, format!("{head}{BEGIN}{generated}{END}{tail}")).unwrap();
        return;
    }
    assert_eq!(
        current,
        Some(generated.as_str()),
        "{DOC} is out of date: KEEL_BLESS=1 cargo test -p vmm-core --test hostile_guest"
    );
}

/// Counts the warnings logged (the child's logger: the devices' rate-limited `guest_warn!`
/// lines land here).
struct CountingLogger {
    warnings: AtomicU64,
    /// Warnings by where they were logged (`file:line`).
    sites: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl log::Log for CountingLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.warnings.fetch_add(1, Ordering::Relaxed);
            let site = format!(
                "{}:{} ({})",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0),
                record.args()
            );
            if let Ok(mut sites) = self.sites.lock() {
                *sites.entry(site).or_default() += 1;
            }
        }
    }
    fn flush(&self) {}
}

static LOGGER: CountingLogger = CountingLogger {
    warnings: AtomicU64::new(0),
    sites: std::sync::Mutex::new(std::collections::BTreeMap::new()),
};

#[test]
#[ignore = "run in a child process by every_attack_in_a_row_beside_a_bystander_vm"]
fn child_runs_the_catalogue_in_a_row() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    // The bystander: another VM of this process, ticking through the whole catalogue.
    let mut bystander = VmConfig::new(guest());
    bystander.vcpus = 1;
    bystander.memory = MemSize::mib(64);
    bystander.boot_protocol = BootProtocol::Pvh;
    bystander.cmdline = "keel.cpus=1 keel.ticks=0 keel.tick_tsc=20000000".into();
    let ticks = SharedBuffer::new();
    let mut bystander = VmBuilder::new(bystander)
        .serial_output(ticks.clone())
        .build()
        .unwrap();
    bystander.start().unwrap();
    assert!(ticks.wait_for("tick 1\r\n", TIMEOUT), "{}", ticks.text());
    println!(
        "| attack | outcome | peak RSS growth | host log warnings | peak fds | device thread CPU | wall |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in CATALOGUE {
        let ticks_before = ticks.text().matches("tick ").count();
        let warnings_before = LOGGER.warnings.load(Ordering::Relaxed);
        let run = run_attack(case.name, true);
        let warnings = LOGGER.warnings.load(Ordering::Relaxed) - warnings_before;
        // The limit's windows are aligned to the process's clock: a run touches one more.
        let windows = run.wall.as_secs() / 5 + 2;
        assert!(
            warnings <= LOG_BOUND_PER_WINDOW * windows,
            "{}: {warnings} warnings in the host's log: {:?}",
            case.name,
            LOGGER.sites.lock().map(|sites| sites
                .iter()
                .filter(|(_, n)| **n > 10)
                .map(|(site, n)| format!("{n} × {site}"))
                .take(5)
                .collect::<Vec<_>>())
        );
        let mut cpu = format!("{:.1} ms", run.device_cpu.as_secs_f64() * 1e3);
        if case.name == "notify_storm" {
            cpu.push_str(&format!(
                " ({:.2} µs per kick; vCPU thread {:.0} ms, {:.2} µs per kick)",
                run.device_cpu.as_secs_f64() * 1e6 / STORM_KICKS as f64,
                run.vcpu_cpu.as_secs_f64() * 1e3,
                run.vcpu_cpu.as_secs_f64() * 1e6 / STORM_KICKS as f64
            ));
        }
        if case.device == "blk" {
            cpu.push_str(&format!(
                " (disk io_errors={} malformed={})",
                run.blk_errors.0, run.blk_errors.1
            ));
        }
        println!(
            "| {} | {} | {:.1} MiB | {warnings} | +{} | {cpu} | {:.0} ms |",
            case.name,
            case.outcome,
            run.peak_growth as f64 / f64::from(1 << 20),
            run.fds,
            run.wall.as_secs_f64() * 1e3
        );
        assert!(run.console.contains("then=served"));
        // The bystander kept running meanwhile.
        let grown = ticks.wait_for(&format!("tick {}\r\n", ticks_before + 1), TIMEOUT);
        assert!(grown, "the bystander stopped during {}", case.name);
    }
    bystander.handle().stop();
    let reason = bystander.wait_timeout(TIMEOUT);
    assert!(reason.is_some(), "the bystander did not stop");
    println!("KEEL-CATALOGUE-DONE");
}

#[test]
fn every_attack_in_a_row_beside_a_bystander_vm() {
    require_kvm!();
    let _ = guest();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_runs_the_catalogue_in_a_row",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}:\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("KEEL-CATALOGUE-DONE"), "{stdout}\n{stderr}");
    for line in stdout.lines().filter(|line| line.starts_with('|')) {
        println!("{line}");
    }
}

/// A serial input flood with no reader: the guest never reads its UART (it only ticks) while
/// the host writes to its console input as fast as it can. Keel reads input only while the
/// UART's FIFO has room, so the writer is held back by the pipe (what it got in is bounded by
/// the pipe's buffer) and the guest keeps running.
#[test]
fn serial_input_flood_with_no_reader_is_held_back() {
    require_kvm!();
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, an array of two c_ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just opened both descriptors; each is owned once, here.
    let (reader, writer) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: fcntl on a descriptor this test owns; no memory is passed.
    unsafe {
        use std::os::fd::AsRawFd;
        let flags = libc::fcntl(writer.as_raw_fd(), libc::F_GETFL);
        assert_eq!(
            libc::fcntl(writer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK),
            0
        );
    }
    let mut config = VmConfig::new(guest());
    config.vcpus = 1;
    config.memory = MemSize::mib(64);
    config.boot_protocol = BootProtocol::Pvh;
    config.cmdline = "keel.cpus=1 keel.ticks=0 keel.tick_tsc=20000000".into();
    let out = SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(out.clone())
        .serial_input(reader)
        .build()
        .unwrap();
    vm.start().unwrap();
    assert!(out.wait_for("tick 1\r\n", TIMEOUT), "{}", out.text());
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before = status_kib("VmRSS:") * 1024;
    // Write until the pipe has refused everything for half a second.
    let chunk = vec![b'x'; 64 << 10];
    let mut written = 0u64;
    let mut refused_since = Instant::now();
    let started = Instant::now();
    while refused_since.elapsed() < Duration::from_millis(500) {
        assert!(started.elapsed() < TIMEOUT, "the pipe never filled");
        match std::io::Write::write(&mut &writer, &chunk) {
            Ok(n) => {
                written += n as u64;
                refused_since = Instant::now();
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("write: {err}"),
        }
    }
    let peak_growth = (status_kib("VmHWM:") * 1024).saturating_sub(rss_before);
    let ticks = out.text().matches("tick ").count();
    // The pipe holds 64 KiB; Keel holds what it read but the UART did not take yet (at most a
    // read's worth) and the FIFO's 64 bytes.
    println!("serial input flood: {written} bytes went in, peak RSS growth {peak_growth} bytes");
    assert!(
        written <= 1 << 20,
        "{written} bytes went in: input is not held back"
    );
    // (Not asserted: other tests' VMs share this process; `written` is the bound that matters.)
    let next = format!("tick {}\r\n", ticks + 1);
    assert!(out.wait_for(&next, TIMEOUT), "the guest stopped ticking");
    vm.handle().stop();
    assert!(vm.wait_timeout(TIMEOUT).is_some(), "the VM did not stop");
    drop(writer);
}
