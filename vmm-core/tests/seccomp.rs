//! seccomp on KVM: every thread of a running VM is filtered, and a thread that makes a call
//! outside its list ends the process with a report naming its kind and the call.
//!
//! The calls are made by code the guest drives on each kind of thread (a device of the
//! test's own on the vCPU and event-loop threads, a disk back end on the disk's I/O thread),
//! in a child process (this test binary again, one ignored test run by name), since a
//! stopped call ends the whole process. The same child with seccomp off survives the call,
//! so it is the filter that stops it.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{guest_config, image, TIMEOUT};
use devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use devices::GuestMemoryMmap;
use testkit::{require_kvm, SharedBuffer};
use virtio_queue::Queue;
use vmm_core::backends::DiskBackend;
use vmm_core::config::DiskConfig;
use vmm_core::seccomp::SeccompPolicy;
use vmm_core::{VirtioTransport, VmBuilder};

/// The variable telling the child which case to run.
const CASE: &str = "KEEL_SECCOMP_CASE";

/// Makes a call no VM thread's filter allows: an IPv4 socket.
fn forbidden_call() {
    // SAFETY: socket(2) takes plain integers; the descriptor, if any, is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` is the descriptor just opened, owned here.
        unsafe { libc::close(fd) };
    }
}

/// A virtio-rng look-alike that makes the forbidden call when activated (on the vCPU that
/// writes DRIVER_OK) or when its queue is notified (on the event loop, through the ioeventfd).
struct Misbehaving {
    on_activate: bool,
    /// Open a file instead of the forbidden call (refused with EACCES, not stopped).
    open: bool,
    done: Arc<Mutex<Vec<String>>>,
}

impl Misbehaving {
    fn act(&self, when: &str) {
        if self.open {
            let opened = std::fs::File::open("/proc/self/status").map_err(|err| err.kind());
            record(&self.done, &format!("{when} opened {opened:?}"));
        } else {
            forbidden_call();
            record(&self.done, when);
        }
    }
}

impl VirtioDevice for Misbehaving {
    fn device_type(&self) -> u32 {
        devices::virtio::TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, _: u64) {}
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        _: GuestMemoryMmap,
        _: Arc<dyn VirtioInterrupt>,
        _: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.on_activate {
            self.act("activate");
        }
        Ok(())
    }
    fn queue_notify(&mut self, _: u16) {
        if !self.on_activate {
            self.act("notify");
        }
    }
    fn reset(&mut self) -> bool {
        true
    }
}

fn record(done: &Mutex<Vec<String>>, what: &str) {
    done.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
        "{what} on {}",
        std::thread::current().name().unwrap_or("?")
    ));
}

/// A disk whose reads make the forbidden call (on the disk's I/O thread).
struct MisbehavingDisk(Arc<Mutex<Vec<String>>>);

impl DiskBackend for MisbehavingDisk {
    fn size(&self) -> std::io::Result<u64> {
        Ok(1 << 20)
    }
    fn read_at(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        // Allowed on the vCPU thread that starts the I/O thread, not under the blk filter.
        // SAFETY: epoll_create1 takes a flag; the descriptor, if any, is closed at once.
        let fd = unsafe { libc::epoll_create1(0) };
        if fd >= 0 {
            // SAFETY: `fd` is the descriptor just opened, owned here.
            unsafe { libc::close(fd) };
        }
        record(&self.0, "read");
        buf.fill(0);
        Ok(())
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs in the child: boots a VM whose `kind` thread misbehaves. Exits 0 with "survived" if
/// the call went through (seccomp off); the filter ends the process otherwise.
#[test]
#[ignore = "run by the tests below in a child process"]
fn child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    let (kind, policy) = case.split_once(':').unwrap();
    let policy = if policy == "off" {
        SeccompPolicy::Off
    } else {
        SeccompPolicy::Keel
    };
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut config = guest_config(VirtioTransport::Pci, "keel.ticks=0 keel.tick_tsc=2000000");
    let mut builder;
    match kind {
        "vcpu" | "events" | "vcpu-open" => {
            config.cmdline.push_str(" keel.rng");
            builder = VmBuilder::new(config).virtio_device(
                "bad",
                Misbehaving {
                    on_activate: kind != "events",
                    open: kind == "vcpu-open",
                    done: done.clone(),
                },
            );
        }
        "blk" => {
            config.cmdline.push_str(" keel.blk");
            builder = VmBuilder::new(config).disk("bad", MisbehavingDisk(done.clone()), true);
        }
        other => panic!("unknown case {other}"),
    }
    let out = SharedBuffer::new();
    builder = builder.serial_output(out.clone()).seccomp(policy);
    let mut vm = builder.build().unwrap();
    vm.start().unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while done.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never reached the device:\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("survived: {:?}", done.lock().unwrap());
    vm.handle().stop();
}

/// Runs the child for `kind` under `policy` ("keel" or "off"); returns its status and output.
fn run_child(kind: &str, policy: &str) -> (Option<i32>, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE, format!("{kind}:{policy}"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// Runs `case` with Keel's filters (stopped, with `report` on stderr) and without (the call
/// goes through on `thread`).
fn stopped_on(case: &str, report: &str, thread: &str, (number, name): (i64, &str)) {
    let (status, text) = run_child(case, "keel");
    assert_eq!(status, Some(159), "{text}");
    let call = format!("made system call {number} ({name}), which its filter forbids");
    assert!(
        text.contains(report) && text.contains(&call),
        "no report `{report}` ... `{call}`:\n{text}"
    );
    assert!(!text.contains("survived"), "{text}");
    let (status, text) = run_child(case, "off");
    assert_eq!(status, Some(0), "{text}");
    assert!(text.contains("survived") && text.contains(thread), "{text}");
}

#[test]
fn a_vcpu_thread_is_stopped_on_a_forbidden_call() {
    require_kvm!();
    stopped_on(
        "vcpu",
        "keel: seccomp: thread keel-vcpu-0 (vcpu filter)",
        "activate on keel-vcpu-0",
        (libc::SYS_socket, "socket"),
    );
}

#[test]
fn the_event_loop_is_stopped_on_a_forbidden_call() {
    require_kvm!();
    stopped_on(
        "events",
        "keel: seccomp: thread keel-events (events filter)",
        "notify on keel-events",
        (libc::SYS_socket, "socket"),
    );
}

#[test]
fn a_disk_thread_is_stopped_on_a_forbidden_call() {
    require_kvm!();
    // The I/O thread starts on the vCPU that activates the disk and installs the blk filter
    // on top of the vCPU's: a call the vCPU may make (epoll_create1) stops it.
    stopped_on(
        "blk",
        "keel: seccomp: thread keel-blk (blk filter)",
        "read on keel-blk",
        (libc::SYS_epoll_create1, "epoll_create1"),
    );
}

#[test]
fn opening_a_file_is_refused_not_stopped() {
    require_kvm!();
    // Allocators open /proc files lazily on any thread: those opens fail with EACCES.
    let (status, text) = run_child("vcpu-open", "keel");
    assert_eq!(status, Some(0), "{text}");
    assert!(
        text.contains("activate opened Err(PermissionDenied) on keel-vcpu-0"),
        "{text}"
    );
    let (status, text) = run_child("vcpu-open", "off");
    assert_eq!(status, Some(0), "{text}");
    assert!(text.contains("activate opened Ok("), "{text}");
}

/// (`Seccomp:` mode, `Seccomp_filters:`) of each thread of this process whose name starts
/// with `keel-`.
fn thread_filters() -> Vec<(String, u32, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if !name.starts_with("keel-") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(u32::MAX)
        };
        threads.push((name, field("Seccomp:"), field("Seccomp_filters:")));
    }
    threads.sort();
    threads
}

#[test]
fn every_thread_of_a_running_vm_is_filtered_unless_turned_off() {
    require_kvm!();
    for policy in [SeccompPolicy::Keel, SeccompPolicy::Off] {
        let off = matches!(policy, SeccompPolicy::Off);
        let disk = image(&format!("seccomp-{off}.img"), 2048, |i| i as u8);
        // Random reads for much longer than the test looks: the disk's I/O thread stays up.
        let mut config = guest_config(
            VirtioTransport::Pci,
            "keel.blk_bench=randread keel.bench_depth=4 keel.bench_ops=100000000",
        );
        config.disks.push(DiskConfig {
            id: "disk0".into(),
            path: disk,
            read_only: true,
            direct: false,
            rate_limiter: None,
        });
        let out = SharedBuffer::new();
        let mut vm = VmBuilder::new(config)
            .serial_output(out.clone())
            .seccomp(policy)
            .build()
            .unwrap();
        vm.start().unwrap();
        // The other tests run their VMs in child processes: these threads are this VM's.
        let kinds = ["keel-vcpu-", "keel-events", "keel-blk"];
        let deadline = std::time::Instant::now() + TIMEOUT;
        let threads = loop {
            let threads = thread_filters();
            if kinds
                .iter()
                .all(|k| threads.iter().any(|(name, ..)| name.starts_with(k)))
            {
                break threads;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "threads {threads:?}:\n{}",
                out.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let expected = |mode: u32, filters: u32| {
            if off {
                mode == 0
            } else {
                mode == 2 && filters >= 1
            }
        };
        assert!(
            threads
                .iter()
                .all(|(_, mode, filters)| expected(*mode, *filters)),
            "seccomp off={off}: {threads:?}"
        );
        vm.handle().stop();
        vm.wait_timeout(TIMEOUT);
    }
}
