//! One `keel` process as the node agent holds it: started (as the agent's child, or by the
//! launcher pod) or adopted after an agent restart, always driven through its API socket.
//!
//! The process runs with `--keep-alive`, so after the guest ends its API still answers with the
//! exit reason; the agent reads it, reports it, then ends the process with `vmm.shutdown`.
//!
//! One VMI, one `keel`: the agent starts a `keel` holding an exclusive `flock` on the VMI's
//! `vmm.lock`, on a descriptor the process inherits and keeps for its whole life. An agent that
//! died between starting a `keel` and that `keel` opening its API socket left a process the
//! next agent cannot ping yet; the lock tells it one is alive, and it waits for that one's API
//! instead of starting a second VMM on the same disks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keel::api::{ApiVmState, Endpoint, VmInfo};
use keel::client::{AsyncClient, ClientError};
use vmm_core::VmConfig;

use crate::pod::{api_socket, vmm_command};

/// Errors driving a VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM's directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `keel` could not be started.
    #[error("cannot start {keel}: {source}")]
    Spawn {
        /// The binary.
        keel: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A `keel` for this VMI holds its lock: it is alive although its API did not answer.
    #[error(
        "a keel process for this VMI holds {lock} but its API did not answer within {seconds} s"
    )]
    Locked {
        /// The lock file.
        lock: PathBuf,
        /// How long the agent waited.
        seconds: u64,
    },
    /// The API did not come up.
    #[error("the VMM's API at {socket} did not answer within {seconds} s: {stderr}")]
    NoApi {
        /// The socket.
        socket: PathBuf,
        /// How long the agent waited.
        seconds: u64,
        /// What the process printed, if the agent started it.
        stderr: String,
    },
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ClientError),
}

/// A running `keel` process.
#[derive(Debug)]
pub struct Vmm {
    /// The VMI's uid.
    pub uid: String,
    /// Its directory on the node (sockets, logs).
    pub dir: PathBuf,
    /// Its process id.
    pub pid: u32,
    api: AsyncClient,
    child: Option<tokio::process::Child>,
}

/// How long a fresh `keel` may take to open its API socket.
const API_TIMEOUT: Duration = Duration::from_secs(20);

impl Vmm {
    /// Starts `keel` as this process's child with the launcher pod's command and waits for its
    /// API. The child is in its own process group, so it outlives the agent.
    pub async fn spawn(keel: &Path, run_dir: &Path, uid: &str) -> Result<Vmm, VmmError> {
        let dir = run_dir.join(uid);
        let dir_err = |source| VmmError::Dir {
            path: dir.clone(),
            source,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(dir_err)?;
        let socket = api_socket(run_dir, uid);
        match tokio::fs::remove_file(&socket).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(dir_err(e)),
        }
        // Held from here by the child alone (the agent's copy closes when this function ends).
        let lock = match VmmLock::take(&dir).map_err(dir_err)? {
            Some(lock) => lock,
            None => {
                return Err(VmmError::Locked {
                    lock: dir.join(LOCK_FILE),
                    seconds: 0,
                })
            }
        };
        let command = vmm_command(&keel.display().to_string(), run_dir, uid);
        let stderr = std::fs::File::create(dir.join("stderr")).map_err(dir_err)?;
        let stdout = std::fs::File::create(dir.join("stdout")).map_err(dir_err)?;
        let spawn_err = |source| VmmError::Spawn {
            keel: keel.to_path_buf(),
            source,
        };
        let mut spawning = tokio::process::Command::new(&command[0]);
        spawning
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        lock.pass_to(&mut spawning);
        let child = spawning.spawn().map_err(spawn_err)?;
        drop(lock);
        let pid = child.id().unwrap_or(0);
        let mut vmm = Vmm {
            uid: uid.to_string(),
            dir,
            pid,
            api: AsyncClient::new(&socket),
            child: Some(child),
        };
        vmm.wait_for_api(API_TIMEOUT).await?;
        Ok(vmm)
    }

    /// Waits for a VMM someone else starts (the launcher pod's container) to answer on its
    /// socket.
    pub async fn wait_started(
        run_dir: &Path,
        uid: &str,
        timeout: Duration,
    ) -> Result<Vmm, VmmError> {
        let mut vmm = Vmm {
            uid: uid.to_string(),
            dir: run_dir.join(uid),
            pid: 0,
            api: AsyncClient::new(api_socket(run_dir, uid)),
            child: None,
        };
        vmm.wait_for_api(timeout).await?;
        Ok(vmm)
    }

    /// The VMM of `uid` if one answers on its socket (after an agent restart), or one that is
    /// alive (it holds the VMI's lock) and answers within 20 s: an earlier agent
    /// started it and died before its API was up. `Ok(None)`: there is none.
    pub async fn adopt(run_dir: &Path, uid: &str) -> Result<Option<Vmm>, VmmError> {
        Self::adopt_within(run_dir, uid, API_TIMEOUT).await
    }

    async fn adopt_within(
        run_dir: &Path,
        uid: &str,
        timeout: Duration,
    ) -> Result<Option<Vmm>, VmmError> {
        let api = AsyncClient::new(api_socket(run_dir, uid));
        let dir = run_dir.join(uid);
        let ping = match api.ping().await {
            Ok(ping) => ping,
            Err(_) if VmmLock::held(&dir) => {
                let mut vmm = Vmm {
                    uid: uid.to_string(),
                    dir: dir.clone(),
                    pid: 0,
                    api,
                    child: None,
                };
                if vmm.wait_for_api(timeout).await.is_err() {
                    return Err(VmmError::Locked {
                        lock: dir.join(LOCK_FILE),
                        seconds: timeout.as_secs(),
                    });
                }
                vmm.pid = vmm.api.ping().await?.pid;
                return Ok(Some(vmm));
            }
            Err(_) => return Ok(None),
        };
        Ok(Some(Vmm {
            uid: uid.to_string(),
            dir,
            pid: ping.pid,
            api,
            child: None,
        }))
    }

    async fn wait_for_api(&mut self, timeout: Duration) -> Result<(), VmmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(ping) = self.api.ping().await {
                self.pid = ping.pid;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline || !self.alive() && self.child.is_some() {
                return Err(VmmError::NoApi {
                    socket: api_socket(self.dir.parent().unwrap_or(&self.dir), &self.uid),
                    seconds: timeout.as_secs(),
                    stderr: self.stderr(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the process wrote on stderr (when the agent started it).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Creates the VM and boots it.
    pub async fn create_and_boot(&self, config: &VmConfig) -> Result<(), VmmError> {
        self.api.create(config).await?;
        self.api.act(Endpoint::VmBoot).await?;
        Ok(())
    }

    /// Finishes a start that an earlier agent left half-way (it died between starting the
    /// process and booting the VM): creates the VM if the VMM has none yet and boots it if it
    /// was never started. Returns whether anything had to be done.
    pub async fn finish_start(&self, config: &VmConfig) -> Result<bool, VmmError> {
        match self.api.ping().await?.state {
            ApiVmState::NotCreated => self.create_and_boot(config).await.map(|()| true),
            ApiVmState::Created => {
                self.api.act(Endpoint::VmBoot).await?;
                Ok(true)
            }
            ApiVmState::Running | ApiVmState::Paused | ApiVmState::Exited => Ok(false),
        }
    }

    /// The VM's state, config and exit.
    pub async fn info(&self) -> Result<VmInfo, VmmError> {
        Ok(self.api.info().await?)
    }

    /// Whether the process still exists (reaping it when it is the agent's child).
    pub fn alive(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        pid_alive(self.pid)
    }

    /// Stops the guest: the ACPI power button, up to `grace` for the guest to power off, then a
    /// hard stop; then ends the process (`vmm.shutdown`, SIGKILL after 5 s). Returns the VM's
    /// last info when the API still answered.
    pub async fn stop(&mut self, grace: Duration) -> Option<VmInfo> {
        let running = |info: &Option<VmInfo>| {
            info.as_ref()
                .is_some_and(|i| matches!(i.state, ApiVmState::Running | ApiVmState::Paused))
        };
        let mut info = self.api.info().await.ok();
        if running(&info) && !grace.is_zero() {
            if matches!(info.as_ref().map(|i| i.state), Some(ApiVmState::Paused)) {
                let _ = self.api.act(Endpoint::VmResume).await;
            }
            if self.api.act(Endpoint::VmPowerButton).await.is_ok() {
                let deadline = tokio::time::Instant::now() + grace;
                while running(&info) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    info = self.api.info().await.ok();
                }
            }
        }
        if running(&info) {
            let _ = self.api.act(Endpoint::VmShutdown).await;
            info = self.api.info().await.ok().or(info);
        }
        let _ = self.api.act(Endpoint::VmmShutdown).await;
        self.wait_gone(Duration::from_secs(5)).await;
        if self.alive() {
            log::warn!(
                "VMM {} (pid {}) ignored vmm.shutdown; killing it",
                self.uid,
                self.pid
            );
            kill(self.pid);
            self.wait_gone(Duration::from_secs(5)).await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        info
    }

    async fn wait_gone(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The lock file in a VMI's directory.
const LOCK_FILE: &str = "vmm.lock";

/// An exclusive `flock` on a VMI's `vmm.lock`, taken by the agent to hand to the `keel` it
/// starts. A `flock` belongs to the open file, so the child's inherited descriptor holds it
/// after the agent's is closed, and the kernel drops it when the last one closes: when that
/// `keel` ends, however it ends.
struct VmmLock {
    file: std::fs::File,
}

impl VmmLock {
    /// The lock, or `None` if a live process holds it.
    fn take(dir: &Path) -> std::io::Result<Option<VmmLock>> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if taken == 0 {
            return Ok(Some(VmmLock { file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// Whether a live process holds the lock in `dir` (a missing or unreadable file: no).
    fn held(dir: &Path) -> bool {
        if !dir.join(LOCK_FILE).exists() {
            return false;
        }
        // Taking and dropping it at once: nobody was holding it.
        matches!(Self::take(dir), Ok(None))
    }

    /// Makes `command`'s child inherit the locked descriptor (it is close-on-exec here, so
    /// that no other child of the agent gets it).
    fn pass_to(&self, command: &mut tokio::process::Command) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: fcntl(2) is one, and it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `1234 (keel) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// SIGKILL to `pid`.
fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of this process; `pid` is a
    // positive process id (never 0 or -1, which would signal a group or every process).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_process_holding_the_lock_is_reported_not_replaced() {
        let run_dir = std::env::temp_dir().join(format!("keel-vmm-lock-{}", std::process::id()));
        let dir = run_dir.join("vmi-1");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!VmmLock::held(&dir), "no lock file: nobody holds it");
        // A process that inherited the lock and never opens an API (a keel stuck at start).
        let lock = VmmLock::take(&dir).unwrap().expect("free");
        let mut command = tokio::process::Command::new("sleep");
        command.arg("30");
        lock.pass_to(&mut command);
        let mut holder = command.spawn().unwrap();
        drop(lock);
        assert!(
            VmmLock::held(&dir),
            "the child holds it after the agent let go"
        );
        assert!(VmmLock::take(&dir).unwrap().is_none());
        let err = Vmm::adopt_within(&run_dir, "vmi-1", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, VmmError::Locked { .. }), "{err}");
        holder.kill().await.unwrap();
        let _ = holder.wait().await;
        assert!(!VmmLock::held(&dir), "the lock ends with its holder");
        assert!(
            Vmm::adopt_within(&run_dir, "vmi-1", Duration::from_millis(300))
                .await
                .unwrap()
                .is_none()
        );
        std::fs::remove_dir_all(&run_dir).unwrap();
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
