//! Test support shared by Keel's tests, examples and benchmarks.
//!
//! - [`build_test_guest`] builds Keel's `no_std` test guest (`guest/`) for `x86_64-unknown-none`
//!   and returns the ELF's path. Cargo's own lock on the guest's target directory serialises
//!   concurrent callers, so parallel tests may all call it.
//! - [`SharedBuffer`] is a `Write` sink that tests read while a VM writes to it.
//! - [`ProcessResources`] counts this process's open fds, threads and memory mappings, to
//!   prove that a VM's teardown leaves nothing behind.
//! - [`PacketSocket`] is the host-side peer of a guest NIC on a TAP device.
//! - [`iasl`] checks ACPI tables with an independent disassembler.

pub mod iasl;
mod packet;

pub use packet::{PacketSocket, ETHERTYPE_TEST};

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Errors from building the test guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `cargo` could not be started.
    #[error("cannot run cargo to build the test guest in {dir}: {source}")]
    Spawn {
        /// The guest's source directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The guest did not compile.
    #[error("building the test guest failed ({status}):\n{stderr}")]
    Build {
        /// Cargo's exit status.
        status: std::process::ExitStatus,
        /// What cargo printed.
        stderr: String,
    },
    /// The build succeeded but the ELF is not where it should be.
    #[error("the test guest was built but {0} does not exist")]
    Missing(PathBuf),
    /// The Rust target the guest is built for is not installed and could not be installed.
    #[error(
        "the Rust target {target} is not installed ({why}); install it with: \
         (cd {dir} && rustup target add {target})",
        target = GUEST_TARGET,
        dir = .dir.display()
    )]
    TargetMissing {
        /// The directory to run the command in (its `rust-toolchain.toml` picks the toolchain).
        dir: PathBuf,
        /// Why it was not installed automatically.
        why: String,
    },
}

/// The Rust target Keel's test guest is built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// Set to `1` to forbid [`build_test_guest`] from running `rustup target add` itself (it then
/// fails with the command to run instead).
pub const NO_TARGET_INSTALL_ENV: &str = "KEEL_NO_TARGET_INSTALL";

/// The repository's root directory (the workspace root).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the test guest (release profile) and returns the path of its ELF image.
///
/// The guest has its own target directory (`target/guest` under the workspace) so this works
/// while the calling cargo holds the workspace's target directory.
///
/// On a fresh machine the pinned toolchain may lack the guest's target
/// ([`GUEST_TARGET`]): rustup does not add a toolchain file's `targets` to a toolchain that is
/// already installed. Then this runs `rustup target add` first, saying so on stderr, unless
/// [`NO_TARGET_INSTALL_ENV`] is `1`; when it cannot, the error names the exact command.
pub fn build_test_guest() -> Result<PathBuf, Error> {
    let root = workspace_root();
    let dir = root.join("guest");
    let target_dir = root.join("target").join("guest");
    ensure_guest_target(&dir)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&dir)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target_dir);
    // Variables a parent cargo sets for its own build must not leak into the guest's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().map_err(|source| Error::Spawn {
        dir: dir.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Build {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let elf = target_dir
        .join("x86_64-unknown-none")
        .join("release")
        .join("keel-test-guest");
    if elf.is_file() {
        Ok(elf)
    } else {
        Err(Error::Missing(elf))
    }
}

/// Whether the toolchain that builds in `dir` has the standard library for [`GUEST_TARGET`].
fn guest_target_installed(dir: &Path) -> Result<bool, String> {
    let output = Command::new("rustc")
        .current_dir(dir)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .map_err(|err| format!("cannot run rustc: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "rustc --print target-libdir failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let has_core = std::fs::read_dir(&libdir)
        .map(|entries| {
            entries.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false);
    Ok(has_core)
}

/// Installs [`GUEST_TARGET`] with rustup when it is missing (see [`build_test_guest`]).
fn ensure_guest_target(dir: &Path) -> Result<(), Error> {
    let missing = |why: String| Error::TargetMissing {
        dir: dir.to_path_buf(),
        why,
    };
    match guest_target_installed(dir) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        // Not a rustup-style toolchain we can inspect: let cargo report what it finds.
        Err(_) => return Ok(()),
    }
    if std::env::var_os(NO_TARGET_INSTALL_ENV).is_some_and(|v| v == "1") {
        return Err(missing(format!("{NO_TARGET_INSTALL_ENV}=1")));
    }
    eprintln!(
        "keel: the Rust target {GUEST_TARGET} (for Keel's test guest) is not installed; \
         running `rustup target add {GUEST_TARGET}` in {}",
        dir.display()
    );
    let status = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "add", GUEST_TARGET])
        .status()
        .map_err(|err| missing(format!("cannot run rustup: {err}")))?;
    if !status.success() {
        return Err(missing(format!("rustup target add failed ({status})")));
    }
    match guest_target_installed(dir) {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing(
            "rustup reported success but the target's standard library is still missing".into(),
        )),
        Err(why) => Err(missing(why)),
    }
}

/// A cloneable in-memory `Write` sink whose contents can be awaited.
#[derive(Clone, Default)]
pub struct SharedBuffer {
    inner: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl SharedBuffer {
    /// Creates an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        let bytes = match self.inner.0.lock() {
            Ok(bytes) => bytes,
            Err(poisoned) => poisoned.into_inner(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until the text contains `needle`; returns whether it did within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.inner;
        let mut bytes = match lock.lock() {
            Ok(bytes) => bytes,
            Err(poisoned) => poisoned.into_inner(),
        };
        loop {
            if String::from_utf8_lossy(&bytes).contains(needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            bytes = match cond.wait_timeout(bytes, deadline - now) {
                Ok((bytes, _)) => bytes,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (lock, cond) = &*self.inner;
        match lock.lock() {
            Ok(mut bytes) => bytes.extend_from_slice(buf),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(buf),
        }
        cond.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts of this process's kernel resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessResources {
    /// Open file descriptors (`/proc/self/fd`).
    pub fds: usize,
    /// Threads (`/proc/self/task`).
    pub threads: usize,
    /// Memory mappings (`/proc/self/maps` lines).
    pub mappings: usize,
}

impl ProcessResources {
    /// Reads the current counts.
    pub fn now() -> io::Result<Self> {
        Ok(ProcessResources {
            fds: std::fs::read_dir("/proc/self/fd")?.count(),
            threads: std::fs::read_dir("/proc/self/task")?.count(),
            mappings: std::fs::read_to_string("/proc/self/maps")?.lines().count(),
        })
    }
}

/// Whether `/dev/kvm` can be opened; when it cannot, the reason to print when skipping.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(err) => Some(format!("/dev/kvm cannot be opened: {err}")),
    }
}

/// Skips the calling test (returns early) when KVM is unavailable, printing why
/// (`KEEL-KVM-SKIP: ...`).
///
/// When the environment variable `KEEL_REQUIRE_KVM=1` is set (CI sets it on machines that
/// have `/dev/kvm`), an unusable KVM fails the test instead, so KVM tests cannot silently skip.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if let Some(reason) = $crate::kvm_unavailable() {
            if std::env::var_os("KEEL_REQUIRE_KVM").is_some_and(|v| v == "1") {
                panic!("KEEL_REQUIRE_KVM=1 but {reason}");
            }
            eprintln!("KEEL-KVM-SKIP: {}: {reason}", module_path!());
            return;
        }
    };
}
