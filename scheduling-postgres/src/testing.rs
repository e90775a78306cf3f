//! A throwaway PostgreSQL server for tests, benchmarks and demos (feature `testing`).
//!
//! [`TempPostgres::start`] runs Debian's `initdb` into a fresh directory under the temporary
//! directory and starts `postgres` on a Unix socket in that directory (no TCP port, so servers of
//! parallel tests never collide), with `fsync` and `synchronous_commit` on: commits are as
//! durable as in production. The binaries are found in `$KEEL_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `pg_ctl` on `PATH`.
//!
//! PostgreSQL refuses to run as root. When the caller is root (as CI is), the directory is given
//! to the unprivileged user `nobody` and `initdb`, `pg_ctl` and the server run as that user (the
//! child process drops to its uid and gid, and its supplementary groups, before `exec`); root,
//! the test, still connects through the socket. Dropping the server stops it and removes the
//! directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the throwaway server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TempPostgresError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries not found (looked in $KEEL_PG_BIN, /usr/lib/postgresql/*/bin \
         and PATH): install Debian's `postgresql` package"
    )]
    NotInstalled,
    /// Running as root, and no unprivileged user to run the server as.
    #[error("running as root and no user `nobody` in /etc/passwd to run PostgreSQL as")]
    NoUnprivilegedUser,
    /// A command failed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// The command.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed (and the server's log, when starting).
        output: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A PostgreSQL server in a temporary directory, stopped and removed on drop.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

/// `$KEEL_PG_BIN` when set (if it holds `pg_ctl`), else the newest `/usr/lib/postgresql/*/bin`
/// holding `pg_ctl`, else the directory of a `pg_ctl` on `PATH`.
pub fn find_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KEEL_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("pg_ctl").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|p| p.join("pg_ctl").exists() && p.join("initdb").exists())
}

/// uid and gid of `nobody`, read from /etc/passwd.
fn nobody() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&"nobody") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\t...". No libc call needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TempPostgresError {
    let what = what.into();
    move |source| TempPostgresError::Io { what, source }
}

impl TempPostgres {
    /// Creates the directory, runs `initdb` and starts the server; returns once it accepts
    /// connections. The superuser is `keel`, with a database `keel`, trusted on the socket.
    pub fn start() -> Result<TempPostgres, TempPostgresError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bin = find_binaries().ok_or(TempPostgresError::NotInstalled)?;
        let user = if is_root() {
            Some(nobody().ok_or(TempPostgresError::NoUnprivilegedUser)?)
        } else {
            None
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "keel-pg-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        let server = TempPostgres { dir, bin, user };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid))
                .map_err(io(format!("give {} to nobody", server.dir.display())))?;
        }
        let data = server.data_dir();
        server.run(
            "initdb",
            Command::new(server.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "keel", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale=C"]),
        )?;
        let conf = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nfsync = on\n\
             synchronous_commit = on\nmax_connections = 200\nlog_min_messages = warning\n",
            server.dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path)
            .map_err(io(format!("read {}", conf_path.display())))?;
        all.push_str(&conf);
        std::fs::write(&conf_path, all).map_err(io(format!("write {}", conf_path.display())))?;
        server.start_server()?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the server's socket (a libpq `host`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection string for database `dbname`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port=5432 user=keel dbname={dbname}",
            self.dir.display()
        )
    }

    /// Creates database `name` (for tests sharing one server).
    pub fn create_database(&self, name: &str) -> Result<String, TempPostgresError> {
        self.run(
            "createdb",
            Command::new(self.bin.join("createdb"))
                .args(["-h"])
                .arg(&self.dir)
                .args(["-U", "keel", name]),
        )?;
        Ok(self.conninfo(name))
    }

    /// Drops database `name` (to free its disk space between benchmark runs).
    pub fn drop_database(&self, name: &str) -> Result<(), TempPostgresError> {
        self.run(
            "dropdb",
            Command::new(self.bin.join("dropdb"))
                .args(["-h"])
                .arg(&self.dir)
                .args(["-U", "keel", name]),
        )
        .map(drop)
    }

    fn run(&self, what: &str, command: &mut Command) -> Result<Output, TempPostgresError> {
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            // The server's files are nobody's; run there, not in a directory nobody cannot read.
            command.uid(uid).gid(gid).current_dir(&self.dir);
        }
        let out = command.output().map_err(io(what))?;
        if !out.status.success() {
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stderr));
            if let Ok(log) = std::fs::read_to_string(self.dir.join("server.log")) {
                output.push_str("\nserver log:\n");
                output.push_str(&log);
            }
            return Err(TempPostgresError::Command {
                what: what.into(),
                status: out.status,
                output,
            });
        }
        Ok(out)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), TempPostgresError> {
        let what = format!("pg_ctl {}", args.join(" "));
        self.run(
            &what,
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(args),
        )
        .map(drop)
    }

    fn start_server(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-w", "-t", "60", "start"])
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no checkpoint,
    /// clients cut off; the next start recovers from the WAL).
    pub fn crash(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"])
    }

    /// Starts the server again after [`TempPostgres::crash`] or [`TempPostgres::stop`].
    pub fn start_again(&self) -> Result<(), TempPostgresError> {
        self.start_server()
    }

    /// Stops the server cleanly.
    pub fn stop(&self) -> Result<(), TempPostgresError> {
        self.pg_ctl(&["-w", "-m", "fast", "stop"])
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            if let Err(e) = self.crash() {
                log::warn!("stopping the throwaway PostgreSQL: {e}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("removing {}: {e}", self.dir.display());
        }
    }
}
