//! Live migration of Keel's test guest (256 MiB, 1 vCPU) over TCP on loopback, beside QEMU's
//! (`-M microvm`, the same guest and command line) when `qemu-system-x86_64` is installed:
//! total time and downtime, idle and while the guest keeps writing 16 MiB or 64 MiB of its memory.
//!
//! `cargo bench -p benches --bench migration -- [RUNS]`
//!
//! Both are asked for at most 50 ms of downtime; QEMU's bandwidth cap is lifted so that neither
//! is throttled. Each reports its own downtime, measured differently: Keel's is from pausing
//! the VM at the source to the destination's report that it runs (the last dirty pages, every
//! device's and vCPU's state, the destination's build and start); QEMU's `query-migrate`
//! figure is measured at the source up to the end of the stream and leaves out the
//! destination's load and resume. The column that compares like with like is the guest's
//! pause: the guest prints a tick line about every millisecond, and the host timestamps them,
//! from the source's last line to the destination's first. Target: Keel idle at most 50 ms.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_core::migration::{IncomingMigration, MigrationOptions};
use vmm_core::{MemSize, VmBuilder, VmConfig};

const MEM_MIB: u64 = 256;
const DOWNTIME_MS: u64 = 50;
/// How long each guest runs (and starts writing) before it is migrated.
const WARM_UP: Duration = Duration::from_millis(300);

/// One migration's figures.
#[derive(Clone, Copy)]
struct Sample {
    total_ms: f64,
    downtime_ms: f64,
    /// What the guest saw: from the last tick line the source printed to the first the
    /// destination did (an upper bound, one tick spacing, about 1 ms, coarse).
    pause_ms: f64,
    /// Dirty-page passes over memory (Keel: pre-copy rounds; QEMU: dirty syncs).
    rounds: u64,
    mib_sent: f64,
}

/// When each serial line ended, as the host saw it.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<Instant>>>);

impl Lines {
    fn saw(&self, bytes: &[u8]) {
        let newlines = bytes.iter().filter(|b| **b == b'\n').count();
        if newlines > 0 {
            let now = Instant::now();
            let mut times = self.0.lock().unwrap_or_else(|e| e.into_inner());
            times.extend(std::iter::repeat_n(now, newlines));
        }
    }

    fn last(&self) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    }

    fn first(&self) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .copied()
    }

    /// Waits (up to 10 s) for a line.
    fn wait_first(&self) -> Option<Instant> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(first) = self.first() {
                return Some(first);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// Records a QEMU's serial output from its stdout.
    fn follow(&self, mut stdout: ChildStdout) {
        let lines = self.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                lines.saw(&buffer[..n]);
            }
        });
    }
}

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.saw(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The guest-visible pause between a source's last line and a destination's first.
fn pause_ms(source: &Lines, destination: &Lines) -> f64 {
    match (source.last(), destination.wait_first()) {
        (Some(last), Some(first)) => first.saturating_duration_since(last).as_secs_f64() * 1e3,
        _ => f64::NAN,
    }
}

fn cmdline(dirty_kib: u64) -> String {
    format!("keel.cpus=1 keel.ticks=0 keel.tick_tsc=2000000 keel.dirty_kib={dirty_kib}")
}

fn keel_config(guest: &Path, dirty_kib: u64) -> VmConfig {
    let mut config = VmConfig::new(guest);
    config.memory = MemSize::mib(MEM_MIB);
    config.cmdline = cmdline(dirty_kib);
    config
}

fn keel_once(guest: &Path, dirty_kib: u64) -> Result<Sample, String> {
    let (source_lines, destination_lines) = (Lines::default(), Lines::default());
    let destination_serial = destination_lines.clone();
    let mut source = VmBuilder::new(keel_config(guest, dirty_kib))
        .serial_output(source_lines.clone())
        .build()
        .map_err(|err| format!("build: {err}"))?;
    source.start().map_err(|err| format!("start: {err}"))?;
    std::thread::sleep(WARM_UP);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| format!("listen: {err}"))?;
    let address = listener.local_addr().map_err(|err| err.to_string())?;
    let receiver = std::thread::spawn(move || -> Result<vmm_core::Vm, String> {
        let (stream, _) = listener.accept().map_err(|err| format!("accept: {err}"))?;
        stream.set_nodelay(true).map_err(|err| err.to_string())?;
        let incoming = IncomingMigration::accept(stream).map_err(|err| format!("hello: {err}"))?;
        let config = incoming.config().clone();
        incoming
            .receive(VmBuilder::new(config).serial_output(destination_serial))
            .map_err(|err| format!("receive: {err}"))
    });
    let stream = TcpStream::connect(address).map_err(|err| format!("connect: {err}"))?;
    stream.set_nodelay(true).map_err(|err| err.to_string())?;
    let options = MigrationOptions {
        downtime: Duration::from_millis(DOWNTIME_MS),
        max_rounds: 30,
    };
    let report = source
        .handle()
        .send_migration(stream, &options)
        .map_err(|err| format!("send: {err}"))?;
    let destination = receiver.join().map_err(|_| "the receiver panicked")??;
    let pause_ms = pause_ms(&source_lines, &destination_lines);
    destination.handle().stop();
    Ok(Sample {
        total_ms: report.total_ms,
        downtime_ms: report.downtime_ms,
        pause_ms,
        rounds: u64::from(report.rounds),
        mib_sent: report.bytes_sent as f64 / f64::from(1 << 20),
    })
}

/// A QEMU process, killed when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu(guest: &Path, dirty_kib: u64, extra: &[String]) -> Result<Qemu, String> {
    Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args(["-m", &MEM_MIB.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(guest)
        .args(["-append", &cmdline(dirty_kib)])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Qemu)
        .map_err(|err| format!("qemu: {err}"))
}

/// A QMP session on a unix socket (JSON lines; asynchronous events are skipped).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(err) => return Err(format!("qmp connect: {err}")),
            }
        };
        let writer = stream.try_clone().map_err(|err| err.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        qmp.line()?; // the greeting
        qmp.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(qmp)
    }

    fn line(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .map_err(|err| err.to_string())?
            == 0
        {
            return Err("qmp closed".into());
        }
        serde_json::from_str(&line).map_err(|err| format!("qmp reply {line:?}: {err}"))
    }

    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let request = serde_json::json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").map_err(|err| err.to_string())?;
        loop {
            let reply = self.line()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(format!("{command}: {error}"));
            }
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

fn qemu_once(guest: &Path, dirty_kib: u64, dir: &Path) -> Result<Sample, String> {
    let port = free_port()?;
    let socket = dir.join(format!("qmp-{port}.sock"));
    let _ = std::fs::remove_file(&socket);
    let (source_lines, destination_lines) = (Lines::default(), Lines::default());
    let destination_socket = dir.join(format!("qmp-{port}-in.sock"));
    let _ = std::fs::remove_file(&destination_socket);
    let mut destination = qemu(
        guest,
        dirty_kib,
        &[
            "-incoming".into(),
            format!("tcp:127.0.0.1:{port}"),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", destination_socket.display()),
        ],
    )?;
    // Its monitor answers once it is set up, listening included.
    Qmp::connect(&destination_socket)?.execute("query-status", serde_json::json!({}))?;
    let _ = std::fs::remove_file(&destination_socket);
    let mut source = qemu(
        guest,
        dirty_kib,
        &[
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", socket.display()),
        ],
    )?;
    for (qemu, lines) in [
        (&mut source, &source_lines),
        (&mut destination, &destination_lines),
    ] {
        if let Some(stdout) = qemu.0.stdout.take() {
            lines.follow(stdout);
        }
    }
    let mut qmp = Qmp::connect(&socket)?;
    std::thread::sleep(WARM_UP);
    qmp.execute(
        "migrate-set-parameters",
        serde_json::json!({ "downtime-limit": DOWNTIME_MS, "max-bandwidth": 1u64 << 40 }),
    )?;
    qmp.execute(
        "migrate",
        serde_json::json!({ "uri": format!("tcp:127.0.0.1:{port}") }),
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = qmp.execute("query-migrate", serde_json::json!({}))?;
        match info["status"].as_str() {
            Some("completed") => {
                let number = |value: &serde_json::Value| value.as_f64().unwrap_or(f64::NAN);
                let _ = std::fs::remove_file(&socket);
                return Ok(Sample {
                    total_ms: number(&info["total-time"]),
                    downtime_ms: number(&info["downtime"]),
                    pause_ms: pause_ms(&source_lines, &destination_lines),
                    rounds: info["ram"]["dirty-sync-count"].as_u64().unwrap_or(0),
                    mib_sent: number(&info["ram"]["transferred"]) / f64::from(1 << 20),
                });
            }
            Some("failed") | Some("cancelled") => return Err(format!("qemu migration: {info}")),
            _ if Instant::now() > deadline => return Err("qemu migration took over 120 s".into()),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn median(samples: &[Sample], field: fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(field).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn show(label: &str, samples: &[Sample]) -> String {
    if samples.is_empty() {
        return format!("{label:<6} -");
    }
    let min_downtime = samples
        .iter()
        .map(|s| s.downtime_ms)
        .fold(f64::INFINITY, f64::min);
    format!(
        "{label:<6} total {:7.1} ms  downtime {:5.1} ms (min {:5.1})  guest pause {:5.1} ms  passes {:>2}  {:6.1} MiB sent",
        median(samples, |s| s.total_ms),
        median(samples, |s| s.downtime_ms),
        min_downtime,
        median(samples, |s| s.pause_ms),
        median(samples, |s| s.rounds as f64) as u64,
        median(samples, |s| s.mib_sent),
    )
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(5);
    if let Some(reason) = testkit::kvm_unavailable() {
        println!("migration benchmark skipped: {reason}");
        return;
    }
    let guest = testkit::build_test_guest().expect("test guest");
    let dir: PathBuf =
        testkit::workspace_root().join(format!("target/migration-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let qemu_found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    println!(
        "live migration: test guest, {MEM_MIB} MiB, 1 vCPU, TCP on loopback, downtime limit {DOWNTIME_MS} ms, \
         medians of {runs} alternating runs"
    );
    if !qemu_found {
        println!("  qemu-system-x86_64 not found: QEMU rows skipped (install qemu-system-x86)");
    }
    for (label, dirty_kib) in [
        ("idle", 0u64),
        ("writing 16 MiB", 16 << 10),
        ("writing 64 MiB", 64 << 10),
    ] {
        let (mut keel, mut qemu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            match keel_once(&guest, dirty_kib) {
                Ok(sample) => keel.push(sample),
                Err(err) => println!("  keel run failed: {err}"),
            }
            if qemu_found {
                match qemu_once(&guest, dirty_kib, &dir) {
                    Ok(sample) => qemu.push(sample),
                    Err(err) => println!("  qemu run failed: {err}"),
                }
            }
        }
        println!("  {label}:");
        println!("    {}", show("keel", &keel));
        if qemu_found {
            println!("    {}", show("qemu", &qemu));
        }
        let ratio = |field: fn(&Sample) -> f64| median(&keel, field) / median(&qemu, field);
        let target = if dirty_kib == 0 {
            format!(
                "  keel downtime {} the {DOWNTIME_MS} ms target",
                if median(&keel, |s| s.downtime_ms) <= DOWNTIME_MS as f64 {
                    "meets"
                } else {
                    "MISSES"
                }
            )
        } else {
            String::new()
        };
        if !qemu.is_empty() && !keel.is_empty() {
            println!(
                "    keel/qemu: total {:.2}x, reported downtime {:.2}x, guest pause {:.2}x{target}",
                ratio(|s| s.total_ms),
                ratio(|s| s.downtime_ms),
                ratio(|s| s.pause_ms)
            );
        } else if !target.is_empty() {
            println!("  {target}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
