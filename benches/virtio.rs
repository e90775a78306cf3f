//! Virtio throughput benchmark: the `keel` program (`target/release/keel`) and QEMU `-M microvm`
//! run the same test guest (`guest/`, modern virtio-mmio, devices listed with `virtio_mmio.device=`
//! on the command line) in its benchmark modes, in alternating runs.
//!
//! `cargo bench -p benches --bench virtio [-- RUNS]` (default 5 runs per VMM and workload;
//! `-- 1` or `KEEL_BENCH_QUICK=1` is a quick smoke run with smaller workloads).
//! `KEEL_BENCH_DIRECT=1` opens the disk images with O_DIRECT (Keel `,direct`, QEMU `cache=none`);
//! by default both go through the host's page cache.
//! `KEEL_BENCH_ONLY=randread,randread4,randread2,seqwrite,net,vsock` (any of them) runs only those
//! workloads.
//!
//! Workloads (guest/README.md, "Benchmarks"):
//! - `blk randread` (`randread`): 4 KiB reads at pseudo-random 4 KiB-aligned offsets of a 64 MiB
//!   raw image, 16 in flight;
//! - `blk randread depth 4` (`randread4`): the same with 4 in flight, where the time a request
//!   spends in the VMM shows more (the guest waits for completions more often);
//! - `blk randread 2 disks` (`randread2`): the guest's `randread2` mode, the same reads shared
//!   between two disks (two 64 MiB images), each with its own queue and 4 requests in flight, so
//!   the VMM must serve both devices at once (Keel: one I/O thread per disk);
//! - `blk seqwrite`: sequential 64 KiB writes over a region, 16 in flight, then one FLUSH;
//! - `net tx`: minimum-size frames (EtherType 0x88b5) guest -> host through a TAP device, drained
//!   and counted by the host on an AF_PACKET socket;
//! - `vsock stream` (Keel only): one guest connection to a host Unix socket (`<uds>_<port>`,
//!   Firecracker-style) streaming bytes in 64 KiB RW packets. QEMU would need a vhost-user vsock
//!   back end (none installed; there is no /dev/vhost-vsock here either).
//!
//! The guest prints `keel-guest: bench <name> start` right before its timed loop and
//! `keel-guest: bench <name> end ops=<n> bytes=<b>` right after; the host takes the time between the
//! arrival of the two lines on each VMM's stdout (both VMMs write the serial console to stdout at
//! least once per line, so the line ends are comparable). The end line's own output (a few ms of
//! guest console work on this host) is inside the window; the workloads are sized to run ~1 s
//! (seqwrite ~0.2 s: it is bounded by the 64 MiB image).
//!
//! On this project's nested PVM host all guest code runs in KVM's instruction emulator at roughly a
//! million instructions a second (guest/README.md, "Platform"), so the guest's own per-request work
//! bounds every number: read them as "on this nested PVM host", and compare the two VMMs as ratios.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use testkit::PacketSocket;

const MEM_MIB: u32 = 128;
const IMAGE_BYTES: u64 = 64 << 20;
const GUEST_CID: u32 = 3;
const VSOCK_PORT: u32 = 5000;
const MAC: &str = "52:54:00:12:34:56";
const ETHERTYPE_BENCH: u16 = 0x88b5;
/// A run that has not printed its end line by then is killed and counted as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Keel,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Keel => "keel",
            Vmm::Qemu => "qemu microvm",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    RandRead,
    RandReadDepth4,
    RandReadTwoDisks,
    SeqWrite,
    NetTx,
    Vsock,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "blk randread 4K",
            Workload::RandReadDepth4 => "blk randread depth 4",
            Workload::RandReadTwoDisks => "blk randread 2 disks",
            Workload::SeqWrite => "blk seqwrite 64K",
            Workload::NetTx => "net tx 60B frames",
            Workload::Vsock => "vsock stream 64K",
        }
    }

    /// The name `KEEL_BENCH_ONLY` selects the workload by.
    fn key(self) -> &'static str {
        match self {
            Workload::RandReadDepth4 => "randread4",
            other => other.guest_name(),
        }
    }

    /// The guest's bench name (in its start and end lines).
    fn guest_name(self) -> &'static str {
        match self {
            Workload::RandRead | Workload::RandReadDepth4 => "randread",
            Workload::RandReadTwoDisks => "randread2",
            Workload::SeqWrite => "seqwrite",
            Workload::NetTx => "net",
            Workload::Vsock => "vsock",
        }
    }

    /// Operations per second (true) or megabytes per second (false).
    fn per_op(self) -> bool {
        matches!(
            self,
            Workload::RandRead
                | Workload::RandReadDepth4
                | Workload::RandReadTwoDisks
                | Workload::NetTx
        )
    }

    /// Disk images the workload needs.
    fn disks(self) -> usize {
        match self {
            Workload::RandRead | Workload::RandReadDepth4 | Workload::SeqWrite => 1,
            Workload::RandReadTwoDisks => 2,
            Workload::NetTx | Workload::Vsock => 0,
        }
    }
}

/// Requests the default random-read workload keeps in flight.
const RANDREAD_DEPTH: u32 = 16;
/// Requests in flight in the shallow random-read workload, and on each disk of the two-disk one.
const SHALLOW_DEPTH: u32 = 4;

/// Sizes of the workloads.
struct Sizes {
    /// Reads of each random-read workload (the two-disk one: both disks together).
    randread_ops: u64,
    seqwrite_bytes: u64,
    net_frames: u64,
    vsock_bytes: u64,
}

/// What one run measured.
struct Sample {
    secs: f64,
    ops: u64,
    bytes: u64,
    /// Frames or bytes the host received (net, vsock).
    host_count: Option<u64>,
}

impl Sample {
    fn rate(&self, workload: Workload) -> f64 {
        if workload.per_op() {
            self.ops as f64 / self.secs
        } else {
            self.bytes as f64 / self.secs / 1e6
        }
    }
}

/// Runs one VM to its end: the time between the guest's start and end lines, and the end line's
/// counts. Kills the VM after [`RUN_TIMEOUT`].
fn run_vm(mut cmd: Command, bench: &str) -> Result<(Duration, u64, u64), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd
        .spawn()
        .map_err(|err| format!("cannot start {cmd:?}: {err}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (lines_tx, lines_rx) = mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let start_line = format!("keel-guest: bench {bench} start");
    let end_prefix = format!("keel-guest: bench {bench} end ");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut start = None;
    let mut result = None;
    let mut console = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok((at, line)) => {
                let line = line.trim_end().to_string();
                if line == start_line {
                    start = Some(at);
                } else if let Some(rest) = line.strip_prefix(&end_prefix) {
                    let field = |name: &str| -> Option<u64> {
                        rest.split_whitespace()
                            .find_map(|kv| kv.strip_prefix(name)?.parse().ok())
                    };
                    if let (Some(begin), Some(ops), Some(bytes)) =
                        (start, field("ops="), field("bytes="))
                    {
                        result = Some((at - begin, ops, bytes));
                    }
                }
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                console.push_str("(killed after the timeout)\n");
                break;
            }
        }
    }
    let status = child.wait().map_err(|err| err.to_string())?;
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    match result {
        Some(result) if !console.contains("FAIL") => Ok(result),
        _ => Err(format!(
            "run failed ({status}):\n{console}{}",
            stderr
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("  stderr: {l}\n"))
                .collect::<String>()
        )),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn command_works(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A raw image of [`IMAGE_BYTES`] with nonzero contents (no holes), fresh for each run.
fn fresh_image(path: &Path) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for byte in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::File::create(path)?;
    for _ in 0..IMAGE_BYTES / chunk.len() as u64 {
        std::io::Write::write_all(&mut file, &chunk)?;
    }
    file.sync_all()
}

/// A persistent TAP device (created with `ip tuntap`, brought up, deleted on drop) with an
/// AF_PACKET socket counting the benchmark's frames in a thread.
struct Tap {
    name: String,
    frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    drainer: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn create(name: &str) -> Result<Self, String> {
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|err| format!("ip: {err}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let _ = ip(&["link", "del", name]);
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let mut tap = Tap {
            name: name.to_string(),
            frames: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            drainer: None,
        };
        ip(&["link", "set", "dev", name, "up"])?;
        let socket = PacketSocket::open(
            name,
            ETHERTYPE_BENCH,
            Duration::from_millis(100),
            Some(32 << 20),
        )
        .map_err(|err| format!("AF_PACKET on {name}: {err}"))?;
        let frames = tap.frames.clone();
        let stop = tap.stop.clone();
        tap.drainer = Some(std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let n = socket.recv_into(&mut buf).unwrap_or(0);
                if n >= 24 && buf[14..24] == *b"KEEL-BENCH" {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        Ok(tap)
    }

    /// Frames counted so far.
    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.join();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A workload's samples under Keel and QEMU, and notes to print with them.
type Row = (Workload, Vec<Sample>, Vec<Sample>, Vec<String>);

struct Bench {
    keel: PathBuf,
    guest: PathBuf,
    dir: PathBuf,
    direct: bool,
    sizes: Sizes,
}

impl Bench {
    fn cmdline(&self, workload: Workload) -> String {
        let mode = match workload {
            Workload::RandRead => format!(
                "keel.blk_bench=randread keel.bench_depth={RANDREAD_DEPTH} keel.bench_ops={}",
                self.sizes.randread_ops
            ),
            Workload::RandReadDepth4 => format!(
                "keel.blk_bench=randread keel.bench_depth={SHALLOW_DEPTH} keel.bench_ops={}",
                self.sizes.randread_ops
            ),
            Workload::RandReadTwoDisks => format!(
                "keel.blk_bench=randread2 keel.bench_depth={SHALLOW_DEPTH} keel.bench_ops={}",
                self.sizes.randread_ops
            ),
            Workload::SeqWrite => format!(
                "keel.blk_bench=seqwrite keel.bench_bytes={}",
                self.sizes.seqwrite_bytes
            ),
            Workload::NetTx => format!("keel.net_bench keel.bench_ops={}", self.sizes.net_frames),
            Workload::Vsock => format!(
                "keel.vsock_bench keel.vsock_port={VSOCK_PORT} keel.bench_bytes={}",
                self.sizes.vsock_bytes
            ),
        };
        format!("keel.cpus=1 {mode}")
    }

    fn keel_cmd(&self, workload: Workload) -> Command {
        let mut cmd = Command::new(&self.keel);
        cmd.arg("--kernel")
            .arg(&self.guest)
            .args(["--cpus", "boot=1", "--memory", &format!("size={MEM_MIB}M")])
            .args([
                "--cmdline",
                &self.cmdline(workload),
                "--virtio-mmio-cmdline",
            ]);
        cmd
    }

    fn qemu_cmd(&self, workload: Workload) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args(["-m", &MEM_MIB.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-global",
            "virtio-mmio.force-legacy=false",
        ])
        .arg("-kernel")
        .arg(&self.guest)
        .args(["-append", &self.cmdline(workload)]);
        cmd
    }

    fn image(&self, vmm: Vmm, disk: usize) -> PathBuf {
        self.dir
            .join(format!("{}-{disk}.img", vmm.name().replace(' ', "-")))
    }

    /// One run of `workload` under `vmm`.
    fn run(&self, vmm: Vmm, workload: Workload, tap: Option<&Tap>) -> Result<Sample, String> {
        let mut cmd = match vmm {
            Vmm::Keel => self.keel_cmd(workload),
            Vmm::Qemu => self.qemu_cmd(workload),
        };
        let mut vsock_server = None;
        let mut vsock_dir = None;
        match workload {
            Workload::RandRead
            | Workload::RandReadDepth4
            | Workload::RandReadTwoDisks
            | Workload::SeqWrite => {
                for disk in 0..workload.disks() {
                    let image = self.image(vmm, disk);
                    fresh_image(&image)
                        .map_err(|err| format!("image {}: {err}", image.display()))?;
                    match vmm {
                        Vmm::Keel => {
                            let direct = if self.direct { ",direct=on" } else { "" };
                            cmd.arg("--disk")
                                .arg(format!("path={}{direct}", image.display()));
                        }
                        Vmm::Qemu => {
                            let cache = if self.direct { ",cache=none" } else { "" };
                            cmd.args([
                                "-drive",
                                &format!(
                                    "id=d{disk},file={},format=raw,if=none{cache}",
                                    image.display()
                                ),
                                "-device",
                                &format!("virtio-blk-device,drive=d{disk}"),
                            ]);
                        }
                    }
                }
            }
            Workload::NetTx => {
                let tap = tap.expect("net runs get a TAP");
                match vmm {
                    Vmm::Keel => {
                        cmd.args(["--net", &format!("tap={},mac={MAC}", tap.name)]);
                    }
                    Vmm::Qemu => {
                        cmd.args([
                            "-netdev",
                            &format!("tap,id=n0,ifname={},script=no,downscript=no", tap.name),
                            "-device",
                            &format!("virtio-net-device,netdev=n0,mac={MAC}"),
                        ]);
                    }
                }
            }
            Workload::Vsock => {
                let dir = self.dir.join(format!("vsock-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
                let uds = dir.join("v.sock");
                let listener = std::os::unix::net::UnixListener::bind(
                    dir.join(format!("v.sock_{VSOCK_PORT}")),
                )
                .map_err(|err| format!("listen: {err}"))?;
                vsock_server = Some(std::thread::spawn(move || -> u64 {
                    let Ok((mut stream, _)) = listener.accept() else {
                        return 0;
                    };
                    let _ = stream.set_read_timeout(Some(RUN_TIMEOUT));
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0u64;
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    total
                }));
                cmd.args([
                    "--vsock",
                    &format!("cid={GUEST_CID},socket={}", uds.display()),
                ]);
                vsock_dir = Some(dir);
            }
        }
        let frames_before = tap.map(Tap::frames);
        let outcome = run_vm(cmd, workload.guest_name());
        let host_count = match workload {
            Workload::NetTx => {
                // Let the drainer take what is still queued on the socket.
                std::thread::sleep(Duration::from_millis(300));
                tap.map(|tap| tap.frames() - frames_before.unwrap_or(0))
            }
            Workload::Vsock => {
                if outcome.is_err() {
                    // Unblock a server still waiting for the guest's connection.
                    if let Some(dir) = &vsock_dir {
                        let _ = std::os::unix::net::UnixStream::connect(
                            dir.join(format!("v.sock_{VSOCK_PORT}")),
                        );
                    }
                }
                vsock_server.take().and_then(|server| server.join().ok())
            }
            _ => None,
        };
        if let Some(dir) = vsock_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let (elapsed, ops, bytes) = outcome?;
        Ok(Sample {
            secs: elapsed.as_secs_f64(),
            ops,
            bytes,
            host_count,
        })
    }
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(5)
        .max(1);
    let quick = runs == 1 || std::env::var_os("KEEL_BENCH_QUICK").is_some_and(|v| v == "1");
    let direct = std::env::var_os("KEEL_BENCH_DIRECT").is_some_and(|v| v == "1");
    let sizes = if quick {
        Sizes {
            randread_ops: 500,
            seqwrite_bytes: 8 << 20,
            net_frames: 500,
            vsock_bytes: 8 << 20,
        }
    } else {
        Sizes {
            randread_ops: 8000,
            seqwrite_bytes: IMAGE_BYTES,
            net_frames: 10000,
            vsock_bytes: 64 << 20,
        }
    };

    if let Some(reason) = testkit::kvm_unavailable() {
        println!("virtio benchmark skipped: {reason}");
        return;
    }
    let guest = testkit::build_test_guest().unwrap_or_else(|err| panic!("{err}"));
    let root = testkit::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "keel",
            "--bin",
            "keel",
        ])
        .status()
        .expect("cargo runs");
    assert!(built.success(), "building the keel program failed");
    // Images live under target/ (a disk, not tmpfs: O_DIRECT works there).
    let dir = root.join(format!("target/virtio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let bench = Bench {
        keel: root.join("target/release/keel"),
        guest,
        dir: dir.clone(),
        direct,
        sizes,
    };

    let qemu = command_works("qemu-system-x86_64", "--version");
    let tun = Path::new("/dev/net/tun").exists();
    let ip = command_works("ip", "-V");

    println!(
        "virtio benchmark: test guest, 1 vCPU, {MEM_MIB} MiB, modern virtio-mmio; {runs} alternating run(s) per VMM{}",
        if quick { " (quick sizes)" } else { "" }
    );
    println!(
        "  sizes: randread {} x 4 KiB ({RANDREAD_DEPTH} in flight; depth 4: {SHALLOW_DEPTH}; 2 disks: half each, {SHALLOW_DEPTH} in flight on each), seqwrite {} MiB in 64 KiB (16 in flight) + FLUSH, net {} frames, vsock {} MiB; disk I/O {}",
        bench.sizes.randread_ops,
        bench.sizes.seqwrite_bytes >> 20,
        bench.sizes.net_frames,
        bench.sizes.vsock_bytes >> 20,
        if direct { "O_DIRECT (keel ,direct / qemu cache=none)" } else { "through the host page cache" }
    );
    println!("  NOTE: on this nested PVM host guest code is emulated (~1M instructions/s): the guest's per-request work bounds these numbers.");
    if !qemu {
        println!("  qemu-system-x86_64 not found: QEMU columns skipped (install qemu-system-x86)");
    }

    let only = std::env::var("KEEL_BENCH_ONLY").unwrap_or_default();
    let mut table: Vec<Row> = Vec::new();
    for workload in [
        Workload::RandRead,
        Workload::RandReadDepth4,
        Workload::RandReadTwoDisks,
        Workload::SeqWrite,
        Workload::NetTx,
        Workload::Vsock,
    ] {
        if !only.is_empty() && !only.split(',').any(|name| name == workload.key()) {
            continue;
        }
        let mut notes = Vec::new();
        let mut vmms = vec![Vmm::Keel];
        if workload == Workload::Vsock {
            notes.push("QEMU not run: it would need a vhost-user vsock back end (vhost-device-vsock), not installed; no /dev/vhost-vsock either".to_string());
        } else if qemu {
            vmms.push(Vmm::Qemu);
        }
        let mut taps: Vec<Option<Tap>> = vec![None, None];
        if workload == Workload::NetTx {
            if !tun || !ip {
                println!(
                    "{:<20} skipped: {}",
                    workload.name(),
                    if !tun {
                        "/dev/net/tun is missing"
                    } else {
                        "the ip command is missing"
                    }
                );
                continue;
            }
            let mut failed = None;
            for (index, vmm) in vmms.iter().enumerate() {
                let name = format!(
                    "kvb{}{}",
                    if *vmm == Vmm::Keel { 'k' } else { 'q' },
                    std::process::id() % 100_000
                );
                match Tap::create(&name) {
                    Ok(tap) => taps[index] = Some(tap),
                    Err(err) => failed = Some(err),
                }
            }
            if let Some(err) = failed {
                println!(
                    "{:<20} skipped: cannot set up a TAP: {err}",
                    workload.name()
                );
                continue;
            }
        }
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for run in 0..runs {
            for (index, vmm) in vmms.iter().enumerate() {
                match bench.run(*vmm, workload, taps[index].as_ref()) {
                    Ok(sample) => {
                        let unit = if workload.per_op() { "ops/s" } else { "MB/s" };
                        let host = match (workload, sample.host_count) {
                            (Workload::NetTx, Some(frames)) => {
                                format!(", host saw {frames} frames")
                            }
                            (Workload::Vsock, Some(bytes)) => format!(", host got {bytes} bytes"),
                            _ => String::new(),
                        };
                        println!(
                            "  {:<20} run {:>2} {:<13} {:>9.1} {unit} ({} ops, {:.3} s{host})",
                            workload.name(),
                            run + 1,
                            vmm.name(),
                            sample.rate(workload),
                            sample.ops,
                            sample.secs
                        );
                        samples[index].push(sample);
                    }
                    Err(err) => {
                        println!(
                            "  {:<20} run {:>2} {:<13} FAILED: {err}",
                            workload.name(),
                            run + 1,
                            vmm.name()
                        );
                    }
                }
            }
        }
        let [keel, qemu_samples] = samples;
        table.push((workload, keel, qemu_samples, notes));
        drop(taps);
    }

    println!();
    println!(
        "{:<20} {:>7} | {:>14} {:>14} | {:>9} | host-side",
        "workload (median)", "unit", "keel", "qemu microvm", "keel/qemu"
    );
    for (workload, keel, qemu_samples, notes) in &table {
        let unit = if workload.per_op() { "ops/s" } else { "MB/s" };
        let rate = |samples: &[Sample]| median(samples.iter().map(|s| s.rate(*workload)).collect());
        let keel_rate = rate(keel);
        let qemu_rate = rate(qemu_samples);
        let show = |value: f64, samples: &[Sample]| {
            if samples.is_empty() {
                "-".to_string()
            } else {
                format!("{value:.1} ({}/{runs})", samples.len())
            }
        };
        let ratio = if keel.is_empty() || qemu_samples.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", keel_rate / qemu_rate)
        };
        let host = |samples: &[Sample]| -> String {
            match workload {
                Workload::NetTx => {
                    let rates: Vec<f64> = samples
                        .iter()
                        .filter_map(|s| Some(s.host_count? as f64 / s.secs))
                        .collect();
                    let lost: u64 = samples
                        .iter()
                        .map(|s| s.ops.saturating_sub(s.host_count.unwrap_or(0)))
                        .sum();
                    format!("{:.1} frames/s seen, {lost} lost", median(rates))
                }
                Workload::Vsock => {
                    let short = samples
                        .iter()
                        .filter(|s| s.host_count != Some(s.bytes))
                        .count();
                    format!(
                        "all bytes arrived in {}/{} runs",
                        samples.len() - short,
                        samples.len()
                    )
                }
                _ => String::new(),
            }
        };
        let host_text = match workload {
            Workload::NetTx => format!("keel {}; qemu {}", host(keel), host(qemu_samples)),
            Workload::Vsock => format!("keel {}", host(keel)),
            _ => String::new(),
        };
        println!(
            "{:<20} {unit:>7} | {:>14} {:>14} | {ratio:>9} | {host_text}",
            workload.name(),
            show(keel_rate, keel),
            show(qemu_rate, qemu_samples),
        );
        for note in notes {
            println!("{:<20} note: {note}", "");
        }
    }
    println!("(ratio > 1: Keel faster; (n/{runs}) = successful runs)");
    let _ = std::fs::remove_dir_all(&dir);
}
