//! Runs the real `keel` binary and talks to it over its real Unix sockets.
#![allow(dead_code)] // each test binary uses what it needs

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel::client::Client;

/// How long a guest may take (all guest code is emulated on nested PVM hosts).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Keel's test guest, built once per test binary.
pub fn guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| testkit::build_test_guest().unwrap_or_else(|err| panic!("{err}")))
        .clone()
}

/// A scratch directory for this test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-prog-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `keel` process; killed when dropped if it is still running.
pub struct Keel {
    pub child: Child,
    pub api: PathBuf,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
}

impl Keel {
    /// Starts `keel` with `args`, stdout and stderr into files in `dir`.
    pub fn spawn(dir: &Path, args: &[&str]) -> Keel {
        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start keel");
        Keel {
            child,
            api: dir.join("api.sock"),
            stderr_path,
            stdout_path,
        }
    }

    /// Starts `keel --api-socket DIR/api.sock ARGS` and waits until it answers a ping.
    pub fn with_api(dir: &Path, args: &[&str]) -> (Keel, Client) {
        let api = dir.join("api.sock");
        let mut all = vec!["--api-socket", api.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut keel = Keel::spawn(dir, &all);
        let client = Client::new(&api).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while client.ping().is_err() {
            if let Ok(Some(status)) = keel.child.try_wait() {
                panic!("keel exited with {status}: {}", keel.stderr());
            }
            assert!(Instant::now() < deadline, "no API: {}", keel.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        (keel, client)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits for the process to end.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keel did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` on stdout:\n{out}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads from a console socket until `needle` arrives; returns all that was read.
pub fn read_console_until(stream: &mut UnixStream, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&text).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` on the console:\n{}",
            String::from_utf8_lossy(&text)
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Polls `check` until it holds.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
