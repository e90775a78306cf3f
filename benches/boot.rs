//! Boot benchmark: process start -> first serial byte -> process exit, and peak RSS, for the
//! `keel` program beside Firecracker, Cloud Hypervisor and QEMU microvm on the same minimal
//! foreign guest (a few-instruction PVH ELF that prints a line and exits the way each VMM
//! understands: see `benches/foreign_guest.rs`), 1 vCPU, 128 MiB, in alternating runs.
//!
//! ```text
//! cargo bench -p benches --bench boot -- [RUNS] [--firecracker PATH] [--cloud-hypervisor PATH]
//! ```
//!
//! Keel is measured twice: the static musl build (the lean deployment build, as Firecracker
//! ships) and the default glibc build. Every VMM is started by the same small C launcher
//! (compiled with `cc` at start, see `LAUNCHER_C`), so `ru_maxrss` is the VMM's own. Firecracker and Cloud Hypervisor are run only when
//! their binaries are given (this repository never builds them); QEMU when
//! `qemu-system-x86_64` is installed. Prints min and median of both times, median peak RSS
//! (ru_maxrss of the whole process) and the ratios to the targets: Keel's minimum <=
//! Firecracker's, Keel's median <= 0.5 x Cloud Hypervisor's, Keel's peak RSS <= 0.75 x
//! Firecracker's. Then one `--boot-timer` trace of Keel's start-up stages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use benches::{write_foreign_guest, FOREIGN_GUEST_LINE};

const MEM_MIB: u32 = 128;

struct Sample {
    first_byte: Duration,
    exit: Duration,
    maxrss_kib: i64,
    ok: bool,
}

/// A tiny launcher, compiled with `cc` when the benchmark starts, that starts a VMM with
/// `posix_spawn`, reads its stdout and stderr to the end, reaps it and prints
/// `first_ns exit_ns maxrss_kib status`, then the VMM's output.
///
/// Why not spawn from this benchmark: a child started with vfork semantics (posix_spawn,
/// Rust's `Command`) inherits its parent's resident-size high-water mark as its `ru_maxrss`
/// baseline (the kernel records the old address space's peak at exec), and this benchmark
/// process is larger than Keel; fork + exec copies the parent's RSS outright. The launcher is
/// a few hundred KiB, well below every VMM measured.
const LAUNCHER_C: &str = r#"
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
static long long now_ns(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
  int out[2], err[2];
  if (argc < 2 || pipe(out) || pipe(err)) return 111;
  posix_spawn_file_actions_t fa; posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  posix_spawn_file_actions_addclose(&fa, err[0]);
  long long t0 = now_ns(), first = 0; pid_t pid;
  if (posix_spawnp(&pid, argv[1], &fa, NULL, argv + 1, environ)) return 112;
  close(out[1]); close(err[1]);
  static char text[1 << 20]; size_t len = 0; int open_fds = 2;
  struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  while (open_fds > 0 && poll(fds, 2, -1) > 0) {
    for (int i = 0; i < 2; i++) {
      if (!fds[i].revents) continue;
      char buf[4096]; ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) { fds[i].fd = -1; open_fds--; continue; }
      if (i == 0 && !first) first = now_ns();
      for (ssize_t j = 0; j < n && len < sizeof text; j++) text[len++] = buf[j];
    }
  }
  int status; struct rusage ru;
  if (wait4(pid, &status, 0, &ru) != pid) return 113;
  long long t1 = now_ns();
  printf("%lld %lld %ld %d\n", first ? first - t0 : 0, t1 - t0, ru.ru_maxrss, status);
  fwrite(text, 1, len, stdout);
  return 0;
}
"#;

/// Compiles the launcher into `dir`.
fn build_launcher(dir: &Path) -> PathBuf {
    let source = dir.join("launcher.c");
    let binary = dir.join("launcher");
    std::fs::write(&source, LAUNCHER_C).expect("write launcher.c");
    let built = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc (gcc) is needed to build the benchmark's launcher");
    assert!(built.success(), "cannot compile the launcher");
    binary
}

/// Runs `cmd` (program, arguments and environment) through the launcher and measures it.
fn run(launcher: &Path, cmd: Command) -> Sample {
    let output = Command::new(launcher)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .output()
        .expect("the launcher runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let (head, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let fields: Vec<i64> = head
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    let ok = output.status.success()
        && fields.len() == 4
        && rest.contains(FOREIGN_GUEST_LINE.trim_end());
    if !ok {
        eprintln!("failed run of {:?}: {text}", cmd.get_program());
    }
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    Sample {
        first_byte: Duration::from_nanos(field(0) as u64),
        exit: Duration::from_nanos(field(1) as u64),
        maxrss_kib: field(2),
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
    exit_min: f64,
    exit_median: f64,
    rss_median: f64,
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
        exit_min: min(&exits),
        exit_median: median(exits),
        rss_median: median(rss),
    };
    println!(
        "{name:<20} exit min {:7.2} ms  median {:7.2} ms | first byte median {:7.2} ms | peak RSS {:5.2} MiB | failed {}",
        summary.exit_min,
        summary.exit_median,
        median(firsts),
        summary.rss_median,
        samples.iter().filter(|s| !s.ok).count()
    );
    summary
}

/// How one VMM is started on the guest.
struct Vmm {
    name: &'static str,
    command: Box<dyn Fn() -> Command>,
}

fn build_keel(root: &Path, target: Option<&str>) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "keel",
        "--bin",
        "keel",
    ]);
    if let Some(target) = target {
        build.args(["--target", target]);
    }
    let built = build.status().expect("cargo runs");
    assert!(built.success(), "building keel ({target:?}) failed");
    match target {
        Some(target) => root.join("target").join(target).join("release/keel"),
        None => root.join("target/release/keel"),
    }
}

struct Options {
    runs: usize,
    firecracker: Option<PathBuf>,
    cloud_hypervisor: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        runs: 20,
        firecracker: None,
        cloud_hypervisor: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--firecracker" => options.firecracker = args.next().map(PathBuf::from),
            "--cloud-hypervisor" => options.cloud_hypervisor = args.next().map(PathBuf::from),
            // cargo bench passes --bench to harness-less benchmarks.
            "--bench" => {}
            other => match other.parse() {
                Ok(runs) => options.runs = runs,
                Err(_) => panic!(
                    "unknown argument {other}: [RUNS] [--firecracker PATH] [--cloud-hypervisor PATH]"
                ),
            },
        }
    }
    for path in [&options.firecracker, &options.cloud_hypervisor]
        .into_iter()
        .flatten()
    {
        assert!(path.is_file(), "{} does not exist", path.display());
    }
    options
}

fn main() {
    let options = options();
    if let Some(reason) = testkit::kvm_unavailable() {
        println!("boot benchmark skipped: {reason}");
        return;
    }
    let root = testkit::workspace_root();
    let dir = root.join(format!("target/boot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let guest = dir.join("foreign-guest.elf");
    write_foreign_guest(&guest).expect("write the guest");
    let launcher = build_launcher(&dir);

    let mut vmms: Vec<Vmm> = Vec::new();
    for (name, target) in [
        ("keel (musl)", Some("x86_64-unknown-linux-musl")),
        ("keel (glibc)", None),
    ] {
        let keel = build_keel(&root, target);
        let guest = guest.clone();
        vmms.push(Vmm {
            name,
            command: Box::new(move || {
                let mut cmd = Command::new(&keel);
                cmd.arg("--kernel")
                    .arg(&guest)
                    .args(["--cpus", "boot=1", "--memory"])
                    .arg(format!("size={MEM_MIB}M"));
                cmd
            }),
        });
    }
    if let Some(firecracker) = options.firecracker.clone() {
        let config = dir.join("firecracker.json");
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
               "drives": [],
               "machine-config": {{"vcpu_count": 1, "mem_size_mib": {MEM_MIB}}}}}"#,
            guest.display()
        );
        std::fs::write(&config, json).expect("firecracker config");
        vmms.push(Vmm {
            name: "firecracker",
            command: Box::new(move || {
                let mut cmd = Command::new(&firecracker);
                cmd.args(["--no-api", "--level", "Error", "--config-file"])
                    .arg(&config);
                cmd
            }),
        });
    }
    if let Some(cloud_hypervisor) = options.cloud_hypervisor.clone() {
        let guest = guest.clone();
        vmms.push(Vmm {
            name: "cloud-hypervisor",
            command: Box::new(move || {
                let mut cmd = Command::new(&cloud_hypervisor);
                cmd.arg("--kernel")
                    .arg(&guest)
                    .args(["--cpus", "boot=1", "--memory"])
                    .arg(format!("size={MEM_MIB}M"))
                    .args(["--serial", "tty", "--console", "off"]);
                cmd
            }),
        });
    }
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if qemu {
        let guest = guest.clone();
        vmms.push(Vmm {
            name: "qemu microvm",
            command: Box::new(move || {
                let mut cmd = Command::new("qemu-system-x86_64");
                cmd.args([
                    "-M",
                    "microvm,x-option-roms=off,rtc=on",
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
                ])
                .arg("-kernel")
                .arg(&guest);
                cmd
            }),
        });
    }

    println!(
        "boot benchmark: minimal foreign PVH guest, 1 vCPU, {MEM_MIB} MiB, {} alternating runs each",
        options.runs
    );
    if options.firecracker.is_none() || options.cloud_hypervisor.is_none() {
        println!("  (pass --firecracker PATH and --cloud-hypervisor PATH to compare with them)");
    }
    if !qemu {
        println!("  (qemu-system-x86_64 not found: install qemu-system-x86 to compare with QEMU)");
    }
    let mut samples: Vec<Vec<Sample>> = vmms.iter().map(|_| Vec::new()).collect();
    for round in 0..options.runs {
        // Rotate the order so no VMM always runs right after the same one.
        for offset in 0..vmms.len() {
            let index = (round + offset) % vmms.len();
            samples[index].push(run(&launcher, (vmms[index].command)()));
        }
    }
    let summaries: Vec<Summary> = vmms
        .iter()
        .zip(&samples)
        .map(|(vmm, samples)| summarize(vmm.name, samples))
        .collect();
    let find = |name: &str| {
        vmms.iter()
            .position(|vmm| vmm.name == name)
            .map(|index| &summaries[index])
    };
    for keel_name in ["keel (musl)", "keel (glibc)"] {
        let Some(keel) = find(keel_name) else {
            continue;
        };
        if let Some(fc) = find("firecracker") {
            println!(
                "{keel_name:<20} vs firecracker: exit min {:.2}x (target <= 1.00), peak RSS {:.2}x (target <= 0.75), exit median {:.2}x",
                keel.exit_min / fc.exit_min,
                keel.rss_median / fc.rss_median,
                keel.exit_median / fc.exit_median
            );
        }
        if let Some(ch) = find("cloud-hypervisor") {
            println!(
                "{keel_name:<20} vs cloud-hypervisor: exit median {:.2}x (target <= 0.50), exit min {:.2}x, peak RSS {:.2}x",
                keel.exit_median / ch.exit_median,
                keel.exit_min / ch.exit_min,
                keel.rss_median / ch.rss_median
            );
        }
        if let Some(qemu) = find("qemu microvm") {
            println!(
                "{keel_name:<20} vs qemu microvm: exit median {:.2}x, exit min {:.2}x, peak RSS {:.2}x",
                keel.exit_median / qemu.exit_median,
                keel.exit_min / qemu.exit_min,
                keel.rss_median / qemu.rss_median
            );
        }
    }
    // Where Keel's start-up time goes, in one run.
    let mut traced = (vmms[0].command)();
    traced.arg("--boot-timer").stdin(Stdio::null());
    let t0 = monotonic_ns();
    if let Ok(output) = traced.env("KEEL_BOOT_T0_NS", t0.to_string()).output() {
        println!("keel (musl) start-up stages, one run:");
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            if let Some(stage) = line.strip_prefix("keel-boot-timer: ") {
                println!("  {stage}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn monotonic_ns() -> u128 {
    // SAFETY: timespec is plain data that clock_gettime fills.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}
