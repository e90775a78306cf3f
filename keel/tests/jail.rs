//! `keel jail` end to end, as root: a static keel built for the test runs the test guest on
//! /dev/kvm inside the jail, and the test inspects the jailed process from outside through
//! /proc: its user, groups, capabilities, no_new_privs, seccomp, root directory, mount and PID
//! namespaces, cgroup, descriptor limit, environment and inherited descriptors.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::require_kvm;

const NOBODY: u32 = 65534;
const FOREVER: &str = "keel.cpus=1 keel.ticks=0 keel.tick_tsc=2000000 keel.power_button";

fn keel() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

/// The static (musl) keel the jail runs: `KEEL_STATIC_BIN` (CI builds it once for this test
/// and the nested lane), or built here in a target directory of its own (the one this test
/// runs from is locked by the cargo that runs it).
fn static_keel() -> PathBuf {
    if let Some(path) = std::env::var_os("KEEL_STATIC_BIN") {
        return PathBuf::from(path);
    }
    let root = testkit::workspace_root();
    let target = root.join("target").join("jail-test");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "keel", "--bin", "keel"])
        .args(["--target", "x86_64-unknown-linux-musl", "--target-dir"])
        .arg(&target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the static keel failed");
    target.join("x86_64-unknown-linux-musl/debug/keel")
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `Key:` line of /proc/PID/status, whitespace-collapsed.
fn status_line(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no {what} at {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the jailed keel did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pipe whose write end the jail inherits (no CLOEXEC); returns both ends.
fn inheritable_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe returned two new descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn jail_command(base: &Path, id: &str, exec: &Path, guest: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(keel());
    command
        .args(["jail", "--id", id, "--uid", "65534", "--gid", "65534"])
        .arg("--chroot-base")
        .arg(base)
        .arg("--exec-file")
        .arg(exec)
        .arg("--file")
        .arg(format!("{}:/boot/guest", guest.display()))
        .args(["--cgroup", "pids.max=32", "--resource-limit", "no-file=256"])
        .args(extra)
        .args(["--", "--kernel", "/boot/guest", "--cmdline", FOREVER])
        .args(["--api-socket", "/api.sock", "--serial", "file=/console.log"])
        .env("KEEL_SECRET", "not for the jail")
        .stdin(Stdio::null());
    command
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let fs_root = Path::new("/sys/fs/cgroup");
    [
        fs_root.join("keel").join(id),
        fs_root.join("pids/keel").join(id),
    ]
    .into_iter()
    .filter(|dir| dir.is_dir())
    .collect()
}

fn power_off(root: &Path) {
    let status = Command::new(keel())
        .args(["remote", "--api-socket"])
        .arg(root.join("api.sock"))
        .arg("power-button")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "power-button through the jail's API socket"
    );
}

#[test]
fn a_jailed_keel_runs_the_guest_confined_and_unprivileged() {
    require_kvm!();
    if !is_root() {
        eprintln!("KEEL-JAIL-SKIP: keel jail needs root (CI runs as root)");
        return;
    }
    let exec = static_keel();
    let guest = testkit::build_test_guest().unwrap();
    let base = testkit::workspace_root()
        .join("target")
        .join(format!("jail-base-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let id = format!("jt-{}", std::process::id());
    let root = base.join("keel").join(&id).join("root");

    let (read_end, write_end) = inheritable_pipe();
    // A second pipe whose write end the jail passes on (as a manager passes a TAP device).
    let (kept_read, kept_write) = inheritable_pipe();
    let kept = kept_write.as_raw_fd().to_string();
    let mut child = jail_command(
        &base,
        &id,
        &exec,
        &guest,
        &["--keep-fd", &kept, "--same-pid-ns"],
    )
    .spawn()
    .unwrap();
    drop(write_end);
    drop(kept_write);
    wait_for(&root.join("api.sock"), "API socket");
    // In the same PID namespace the jail execs keel in place.
    let pid = child.id();

    assert_eq!(
        status_line(pid, "Uid"),
        format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")
    );
    assert_eq!(
        status_line(pid, "Gid"),
        format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")
    );
    assert_eq!(status_line(pid, "Groups"), "");
    assert_eq!(status_line(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_line(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_line(pid, "NoNewPrivs"), "1");
    assert_eq!(status_line(pid, "Seccomp"), "2");
    // Its root is the jail: the guest is there, the host's /etc is not.
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(proc_root.join("boot/guest").is_file());
    assert!(proc_root.join("dev/kvm").exists());
    assert!(
        !proc_root.join("etc").exists(),
        "the host's tree is visible in the jail"
    );
    assert!(!proc_root.join("old-root").exists());
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("/keel/{id}")), "{cgroups}");
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("256")),
        "{limits}"
    );
    assert_eq!(fs::read(format!("/proc/{pid}/environ")).unwrap(), b"");
    // The pipe the test left open is not among the jailed process's descriptors; the one it
    // passed with --keep-fd is, at the same number.
    let pipe = fs::read_link(format!("/proc/self/fd/{}", read_end.as_raw_fd())).unwrap();
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, pipe, "an inherited descriptor leaked into the jail");
    }
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/{kept}")).unwrap(),
        fs::read_link(format!("/proc/self/fd/{}", kept_read.as_raw_fd())).unwrap()
    );

    power_off(&root);
    assert_eq!(wait_exit(&mut child), 0);
    let console = fs::read_to_string(root.join("console.log")).unwrap();
    assert!(console.contains("keel-guest: exit via=s5"), "{console}");
    for dir in cgroup_dirs(&id) {
        fs::remove_dir(dir).unwrap();
    }

    // By default keel is PID 1 of a PID namespace of its own.
    let id2 = format!("{id}-pid");
    let root2 = base.join("keel").join(&id2).join("root");
    let mut child = jail_command(&base, &id2, &exec, &guest, &[])
        .spawn()
        .unwrap();
    wait_for(&root2.join("api.sock"), "API socket");
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let vmm: u32 = children.trim().parse().unwrap();
    assert_eq!(status_line(vmm, "NSpid"), format!("{vmm} 1"));
    // The waiting keel jail gave up root too.
    assert_eq!(
        status_line(child.id(), "Uid"),
        format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")
    );
    assert_eq!(
        status_line(vmm, "Uid"),
        format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")
    );
    // A SIGTERM to keel jail reaches the VMM, which stops its VM and exits 128 + 15.
    let jail_pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill takes integers only; the child is this test's own.
    assert_eq!(unsafe { libc::kill(jail_pid, libc::SIGTERM) }, 0);
    assert_eq!(
        wait_exit(&mut child),
        128 + libc::SIGTERM,
        "keel jail passes the signal on and the VMM's status back"
    );
    assert!(
        !root2.join("api.sock").exists(),
        "the VMM stopped cleanly, removing its socket"
    );
    for dir in cgroup_dirs(&id2) {
        fs::remove_dir(dir).unwrap();
    }
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_dynamically_linked_vmm_and_bad_flags_are_refused_before_anything_changes() {
    let base = testkit::workspace_root()
        .join("target")
        .join(format!("jail-refused-{}", std::process::id()));
    let cases: [(&[&str], &str); 3] = [
        (&["--exec-file", keel()], "dynamically linked"),
        (
            &["--file", "/no/such/kernel"],
            "--file: `/no/such/kernel` is not a file",
        ),
        (&["--cgroup", "pids.max"], "--cgroup: `pids.max`"),
    ];
    for (extra, expected) in cases {
        let output = Command::new(keel())
            .args([
                "jail", "--id", "refused", "--uid", "65534", "--gid", "65534",
            ])
            .arg("--chroot-base")
            .arg(&base)
            .args(extra)
            .args(["--", "--kernel", "/k"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!base.exists(), "a refused jail left {}", base.display());
    }
}

/// A static C program the jail runs in place of keel: it tries what Landlock forbids and what
/// it allows, one `name=result` line each (`ok`, or the error's text).
const PROBE_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void report(const char *what, int failed) {
    printf("%s=%s\n", what, failed ? strerror(errno) : "ok");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--exit") == 0) return 0;
    int fd = open("/made-here", O_CREAT | O_WRONLY, 0600);
    report("create", fd < 0);
    if (fd >= 0) close(fd);
    report("symlink", symlink("/made-here", "/link-here") != 0);
    int kvm = open("/dev/kvm", O_RDWR);
    report("open-kvm", kvm < 0);
    /* KVM_GET_API_VERSION is 12 on every kernel with KVM. */
    report("ioctl-kvm", kvm < 0 || ioctl(kvm, 0xAE00, 0) != 12);
    int null = open("/dev/null", O_RDWR);
    struct termios t;
    report("ioctl-null", null < 0 || ioctl(null, TCGETS, &t) != 0);
    pid_t child = fork();
    if (child == 0) {
        char *args[] = {"/other", "--exit", NULL};
        char *env[] = {NULL};
        execve("/other", args, env);
        _exit(errno);
    }
    int status = 0;
    waitpid(child, &status, 0);
    errno = WIFEXITED(status) ? WEXITSTATUS(status) : EINTR;
    report("exec-other", errno != 0);
    fflush(stdout);
    return 0;
}
"#;

/// What the probe reported in a jail made with `extra` flags.
fn probe_in_jail(base: &Path, probe: &Path, id: &str, extra: &[&str]) -> String {
    let output = Command::new(keel())
        .args(["jail", "--id", id, "--uid", "65534", "--gid", "65534"])
        .arg("--chroot-base")
        .arg(base)
        .arg("--exec-file")
        .arg(probe)
        .arg("--file")
        .arg(format!("{}:/other", probe.display()))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    for dir in cgroup_dirs(id) {
        fs::remove_dir(dir).unwrap();
    }
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn landlock_keeps_the_jailed_process_from_executing_linking_and_device_ioctls() {
    require_kvm!();
    if !is_root() {
        eprintln!("KEEL-JAIL-SKIP: keel jail needs root (CI runs as root)");
        return;
    }
    let base = testkit::workspace_root()
        .join("target")
        .join(format!("jail-landlock-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    let source = base.join("probe.c");
    fs::write(&source, PROBE_C).unwrap();
    let probe = base.join("probe");
    let cc = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&probe)
        .arg(&source)
        .status()
        .expect("run cc (the C compiler CI installs for the C ABI's checks)");
    assert!(cc.success(), "cc -static failed");

    let id = format!("ll-{}", std::process::id());
    let confined = probe_in_jail(&base, &probe, &id, &[]);
    // Files under the root and the KVM device work as the VMM needs them.
    assert!(confined.contains("create=ok\n"), "{confined}");
    assert!(confined.contains("open-kvm=ok\n"), "{confined}");
    assert!(confined.contains("ioctl-kvm=ok\n"), "{confined}");
    // Landlock refuses the rest (EACCES), where the first layer alone allows it: below.
    assert!(
        confined.contains("symlink=Permission denied\n"),
        "{confined}"
    );
    assert!(
        confined.contains("ioctl-null=Permission denied\n"),
        "{confined}"
    );
    assert!(
        confined.contains("exec-other=Permission denied\n"),
        "{confined}"
    );

    let id2 = format!("{id}-off");
    let open = probe_in_jail(&base, &probe, &id2, &["--no-landlock"]);
    assert!(open.contains("symlink=ok\n"), "{open}");
    assert!(
        open.contains("ioctl-null=Inappropriate ioctl for device\n"),
        "{open}"
    );
    assert!(open.contains("exec-other=ok\n"), "{open}");
    fs::remove_dir_all(&base).unwrap();
}
