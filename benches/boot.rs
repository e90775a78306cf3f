//! Boot benchmark: process start -> first serial byte -> process exit, for Keel's `boot`
//! example and for QEMU `-M microvm` on the same test guest, in alternating runs.
//!
//! Keel is measured twice: the static musl build (the lean deployment build, as Firecracker
//! ships) and the default glibc build, whose RSS includes ~1.2 MiB of touched glibc pages.
//!
//! `cargo bench -p benches --bench boot [-- RUNS]` (default 20 runs each). Prints min and median
//! of both times, their ratio, and peak RSS (ru_maxrss). For Keel it also prints peak RSS
//! beyond guest RAM (VmHWM minus guest pages resident at exit, reported by `--stats`).
//! QEMU is skipped, with a note, when `qemu-system-x86_64` is not installed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VCPUS: u32 = 2;
const MEM_MIB: u32 = 128;

struct Sample {
    first_byte: Duration,
    exit: Duration,
    maxrss_kib: i64,
    beyond_guest_kib: Option<i64>,
    ok: bool,
}

fn run(mut cmd: Command) -> Sample {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => panic!("cannot start {cmd:?}: {err}"),
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = [0u8; 1];
    let first_byte = match stdout.read(&mut first) {
        Ok(1) => start.elapsed(),
        _ => Duration::ZERO,
    };
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; `status` and `usage` are valid out-pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    let output = String::from_utf8_lossy(&rest);
    let ok = waited == pid && !output.contains("FAIL") && output.contains("selfcheck ok");
    let beyond_guest_kib = stderr.lines().find_map(|line| {
        let stats = line.strip_prefix("keel-stats: ")?;
        let field = |name: &str| -> Option<i64> {
            stats
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.parse().ok())
        };
        Some(field("vmhwm_kib=")? - field("guest_resident_kib=")?)
    });
    Sample {
        first_byte,
        exit,
        maxrss_kib: usage.ru_maxrss,
        beyond_guest_kib,
        ok,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

struct Summary {
    first_min: f64,
    first_median: f64,
    exit_min: f64,
    exit_median: f64,
    rss_median: f64,
    failures: usize,
}

fn summarize(name: &str, samples: &[Sample]) -> Summary {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let firsts: Vec<f64> = samples.iter().map(|s| ms(s.first_byte)).collect();
    let exits: Vec<f64> = samples.iter().map(|s| ms(s.exit)).collect();
    let rss: Vec<f64> = samples
        .iter()
        .map(|s| s.maxrss_kib as f64 / 1024.0)
        .collect();
    let summary = Summary {
        first_min: min(&firsts),
        first_median: median(firsts),
        exit_min: min(&exits),
        exit_median: median(exits),
        rss_median: median(rss),
        failures: samples.iter().filter(|s| !s.ok).count(),
    };
    println!(
        "{name:<14} first byte min {:7.2} ms  median {:7.2} ms | exit min {:7.2} ms  median {:7.2} ms | peak RSS {:6.2} MiB | failed runs {}",
        summary.first_min,
        summary.first_median,
        summary.exit_min,
        summary.exit_median,
        summary.rss_median,
        summary.failures
    );
    summary
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(20);
    let guest = testkit::build_test_guest().unwrap_or_else(|err| panic!("{err}"));
    let root = testkit::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut keel_builds = Vec::new();
    for (name, target) in [
        ("keel (musl)", Some("x86_64-unknown-linux-musl")),
        ("keel (glibc)", None),
    ] {
        let mut build = Command::new(&cargo);
        build.current_dir(&root).args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "examples",
            "--example",
            "boot",
        ]);
        if let Some(target) = target {
            build.args(["--target", target]);
        }
        let built = build.status().expect("cargo runs");
        assert!(built.success(), "building the boot example ({name}) failed");
        let dir = match target {
            Some(target) => root.join("target").join(target).join("release"),
            None => root.join("target/release"),
        };
        keel_builds.push((name, dir.join("examples/boot")));
    }
    let cmdline = format!("keel.cpus={VCPUS}");
    let qemu_available = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());

    let keel_cmd = |keel: &std::path::Path| {
        let mut cmd = Command::new(keel);
        cmd.arg("--kernel")
            .arg(&guest)
            .args([
                "--vcpus",
                &VCPUS.to_string(),
                "--mem",
                &format!("{MEM_MIB}M"),
            ])
            .args(["--cmdline", &cmdline, "--stats"]);
        cmd
    };
    let qemu_cmd = || {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,rtc=on",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args(["-m", &MEM_MIB.to_string(), "-smp", &VCPUS.to_string()])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        .arg("-kernel")
        .arg(&guest)
        .args(["-append", &cmdline]);
        cmd
    };

    println!(
        "boot benchmark: test guest, {VCPUS} vCPUs, {MEM_MIB} MiB, {runs} alternating runs each"
    );
    let mut keel_samples: Vec<Vec<Sample>> = keel_builds.iter().map(|_| Vec::new()).collect();
    let mut qemu_samples = Vec::new();
    for _ in 0..runs {
        for ((_, path), samples) in keel_builds.iter().zip(keel_samples.iter_mut()) {
            samples.push(run(keel_cmd(path)));
        }
        if qemu_available {
            qemu_samples.push(run(qemu_cmd()));
        }
    }
    let qemu_summary = qemu_available.then(|| summarize("qemu microvm", &qemu_samples));
    if !qemu_available {
        println!("qemu-system-x86_64 not found: install qemu-system-x86 to compare");
    }
    for ((name, _), samples) in keel_builds.iter().zip(&keel_samples) {
        let summary = summarize(name, samples);
        let beyond: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.beyond_guest_kib.map(|k| k as f64 / 1024.0))
            .collect();
        println!(
            "{name:<14} peak RSS beyond guest RAM: median {:.2} MiB, max {:.2} MiB (target <= 3 MiB)",
            median(beyond.clone()),
            beyond.iter().copied().fold(0.0, f64::max)
        );
        if let Some(qemu) = &qemu_summary {
            println!(
                "{name:<14} ratio to qemu: exit min {:.2}  exit median {:.2}  first byte median {:.2}  (target exit <= 0.50)",
                summary.exit_min / qemu.exit_min,
                summary.exit_median / qemu.exit_median,
                summary.first_median / qemu.first_median
            );
        }
    }
}
