//! `keel jail`: starts the `keel` VMM program confined, as Firecracker's jailer does, so that a
//! guest that took over the VMM finds itself in an empty directory tree, as an unprivileged
//! user, in its own cgroup, with seccomp filters on every thread.
//!
//! Run as root, it:
//! 1. checks every flag ([`Plan::new`]), refusing a dynamically linked VMM binary (nothing in
//!    the jail could load its libraries);
//! 2. builds the jail's root, `<chroot-base>/keel/<id>/root`: the VMM binary copied in as
//!    `/keel`, the files `--file` names hard-linked in (owner and mode unchanged: they are
//!    the host's files) or copied, `/dev/kvm`, `/dev/net/tun` and `/dev/null` as device
//!    nodes owned by the jail's user ([`root`]);
//! 3. puts the process in `keel/<id>` cgroups with the `--cgroup` values, v2 or v1 as the host
//!    mounts them ([`cgroup`]);
//! 4. sets resource limits, joins `--netns`, enters a new mount namespace whose root is the
//!    jail (`pivot_root`, the old root detached), and a new PID namespace (unless
//!    `--same-pid-ns`) where the VMM is PID 1 and this process waits, passing signals on;
//! 5. closes every descriptor above 2 but those `--keep-fd` names, drops all groups and
//!    capabilities by becoming `--uid`/`--gid`, sets `no_new_privs`;
//! 6. restricts itself with Landlock (unless `--no-landlock`): under the root, no executing
//!    but `/keel`, no device nodes or symbolic links, no ioctls but on `/dev/kvm` and
//!    `/dev/net/tun`, no signals or abstract sockets outside ([`sandbox`]); and executes
//!    `/keel` with the arguments after `--` and an empty environment.
//!
//! Paths in the VMM's arguments are the jail's: `--kernel /vmlinux` after
//! `--file /images/vmlinux:/vmlinux`, `--api-socket /api.sock` (on the host
//! `<chroot-base>/keel/<id>/root/api.sock`).

mod cgroup;
mod root;
mod sandbox;
mod sys;

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use crate::cli::JailArgs;
use crate::options::{OptionError, OptionList};

/// Exit status when the jail could not be set up (as for bad flags).
const EXIT_JAIL: u8 = 2;

/// What can go wrong setting up a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A flag's value is wrong.
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// A `key=value` list is wrong.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// Not running as root.
    #[error("keel jail must run as root (it creates device nodes, cgroups and namespaces, then drops to --uid/--gid)")]
    NotRoot,
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{call}: {source}")]
    Sys {
        /// The call (and its argument).
        call: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl JailError {
    fn flag(flag: &'static str, reason: impl Into<String>) -> Self {
        JailError::Flag {
            flag,
            reason: reason.into(),
        }
    }

    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        JailError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    fn sys(call: impl Into<String>) -> Self {
        JailError::Sys {
            call: call.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// A file put into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JailFile {
    /// On the host.
    source: PathBuf,
    /// In the jail (absolute, no `..`).
    dest: PathBuf,
}

/// A resource limit the VMM runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rlimit {
    /// `no-file`, `fsize` or `nproc`.
    name: &'static str,
    value: u64,
}

/// Everything `keel jail` will do, checked before anything is changed.
#[derive(Debug)]
struct Plan {
    id: String,
    uid: u32,
    gid: u32,
    exec_file: PathBuf,
    /// `<chroot-base>/keel/<id>/root`.
    root: PathBuf,
    files: Vec<JailFile>,
    cgroups: Vec<(String, String)>,
    cgroup_parent: String,
    cgroup_fs: PathBuf,
    netns: Option<PathBuf>,
    new_pid_ns: bool,
    daemonize: bool,
    /// Restrict the VMM with Landlock.
    landlock: bool,
    /// Descriptors passed on to the VMM (sorted, above 2).
    keep_fds: Vec<u32>,
    rlimits: Vec<Rlimit>,
    /// The VMM's arguments (after `--`).
    vmm_args: Vec<CString>,
}

/// Longest jail id (it names directories and cgroups).
const MAX_ID_LEN: usize = 64;

impl Plan {
    fn new(args: &JailArgs) -> Result<Plan, JailError> {
        let id = &args.id;
        if id.is_empty()
            || id.len() > MAX_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(JailError::flag(
                "--id",
                format!("`{id}` must be 1 to {MAX_ID_LEN} letters, digits, `-` or `_`"),
            ));
        }
        if args.uid == 0 || args.gid == 0 {
            return Err(JailError::flag(
                if args.uid == 0 { "--uid" } else { "--gid" },
                "0 is root; the VMM must run as an unprivileged user",
            ));
        }
        let exec_file = match &args.exec_file {
            Some(path) => path.clone(),
            None => std::env::current_exe().map_err(|err| {
                JailError::io(
                    "cannot find keel's own binary",
                    Path::new("/proc/self/exe"),
                    err,
                )
            })?,
        };
        if !args.chroot_base.is_absolute() {
            return Err(JailError::flag(
                "--chroot-base",
                format!("`{}` is not an absolute path", args.chroot_base.display()),
            ));
        }
        let root = args.chroot_base.join("keel").join(id).join("root");
        let files = args
            .file
            .iter()
            .map(|spec| parse_file(spec))
            .collect::<Result<Vec<_>, _>>()?;
        let cgroups = args
            .cgroup
            .iter()
            .map(|spec| cgroup::parse_setting(spec))
            .collect::<Result<Vec<_>, _>>()?;
        if args.cgroup_parent.is_empty()
            || !args
                .cgroup_parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'/')
            || args
                .cgroup_parent
                .split('/')
                .any(|part| part.is_empty() || part == "..")
        {
            return Err(JailError::flag(
                "--cgroup-parent",
                format!("`{}` is not a relative cgroup path", args.cgroup_parent),
            ));
        }
        let rlimits = parse_rlimits(args.resource_limit.as_deref())?;
        let mut keep_fds = args.keep_fd.clone();
        keep_fds.sort_unstable();
        keep_fds.dedup();
        if let Some(fd) = keep_fds.iter().find(|&&fd| fd < 3 || fd == u32::MAX) {
            return Err(JailError::flag(
                "--keep-fd",
                format!("{fd} is a standard stream or out of range (give descriptors above 2)"),
            ));
        }
        let vmm_args = args
            .vmm_args
            .iter()
            .map(|arg| {
                CString::new(arg.as_bytes()).map_err(|_| {
                    JailError::flag("--", format!("argument `{arg}` holds a NUL byte"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        root::check_static(&exec_file)?;
        Ok(Plan {
            id: id.clone(),
            uid: args.uid,
            gid: args.gid,
            exec_file,
            root,
            files,
            cgroups,
            cgroup_parent: args.cgroup_parent.clone(),
            cgroup_fs: args.cgroup_fs.clone(),
            netns: args.netns.clone(),
            new_pid_ns: !args.same_pid_ns,
            daemonize: args.daemonize,
            landlock: !args.no_landlock,
            keep_fds,
            rlimits,
            vmm_args,
        })
    }
}

/// `SRC[:DEST]`: DEST defaults to `/` + SRC's file name.
fn parse_file(spec: &str) -> Result<JailFile, JailError> {
    let (source, dest) = match spec.split_once(':') {
        Some((source, dest)) => (PathBuf::from(source), PathBuf::from(dest)),
        None => {
            let source = PathBuf::from(spec);
            let name = source
                .file_name()
                .ok_or_else(|| JailError::flag("--file", format!("`{spec}` names no file")))?;
            let dest = Path::new("/").join(name);
            (source, dest)
        }
    };
    let inside = dest.is_absolute()
        && dest
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && dest.components().count() > 1;
    if !inside {
        return Err(JailError::flag(
            "--file",
            format!(
                "`{}` must be an absolute path in the jail, without `..`",
                dest.display()
            ),
        ));
    }
    if !source.is_file() {
        return Err(JailError::flag(
            "--file",
            format!("`{}` is not a file", source.display()),
        ));
    }
    Ok(JailFile { source, dest })
}

/// Default descriptor limit: ample for a VM's devices, far below a host's.
const DEFAULT_NOFILE: u64 = 2048;

/// `--resource-limit no-file=N,fsize=BYTES,nproc=N`.
fn parse_rlimits(spec: Option<&str>) -> Result<Vec<Rlimit>, JailError> {
    let mut limits = vec![Rlimit {
        name: "no-file",
        value: DEFAULT_NOFILE,
    }];
    let Some(spec) = spec else {
        return Ok(limits);
    };
    let mut list = OptionList::parse(
        "--resource-limit",
        spec,
        &["no-file", "fsize", "nproc"],
        None,
    )?;
    for name in ["no-file", "fsize", "nproc"] {
        if let Some(value) = list.parsed::<u64>(name, "a number")? {
            limits.retain(|limit| limit.name != name);
            limits.push(Rlimit { name, value });
        }
    }
    Ok(limits)
}

/// Runs `keel jail`: on success it does not return (the process becomes the jailed VMM), or
/// returns the jailed VMM's status when it ran in a new PID namespace.
pub fn run(args: JailArgs) -> ExitCode {
    match jail(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("keel jail: {err}");
            ExitCode::from(EXIT_JAIL)
        }
    }
}

fn jail(args: &JailArgs) -> Result<ExitCode, JailError> {
    let plan = Plan::new(args)?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    root::build(&plan)?;
    cgroup::join(&plan)?;
    for limit in &plan.rlimits {
        sys::set_rlimit(limit)?;
    }
    if let Some(netns) = &plan.netns {
        sys::join_netns(netns)?;
    }
    sys::enter_root(&plan.root)?;
    if plan.new_pid_ns {
        if let Some(status) = sys::fork_into_pid_ns(plan.uid, plan.gid)? {
            // The parent: the jailed VMM ran as PID 1 of its namespace and ended.
            return Ok(ExitCode::from(status));
        }
    }
    if plan.daemonize {
        sys::daemonize()?;
    }
    sys::close_other_fds(&plan.keep_fds)?;
    sys::drop_privileges(plan.uid, plan.gid)?;
    if plan.landlock {
        match sandbox::restrict()? {
            sandbox::Enforced::Fully => {}
            sandbox::Enforced::Partially => log::info!(
                "keel jail: this kernel's Landlock enforces part of the jail's rules"
            ),
            sandbox::Enforced::Not => eprintln!(
                "keel jail: warning: this kernel has no Landlock; the jail relies on its other layers"
            ),
        }
    }
    Err(sys::exec_vmm(&plan.vmm_args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(extra: &[&str]) -> Result<Plan, JailError> {
        let exe = std::env::current_exe().unwrap();
        let mut argv = vec![
            "keel", "jail", "--id", "vm-1", "--uid", "1000", "--gid", "1000",
        ];
        argv.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let Some(crate::cli::Command::Jail(mut args)) = cli.command else {
            panic!("not jail")
        };
        // This test binary is dynamically linked: point at a static stand-in only when asked.
        if args.exec_file.is_none() {
            args.exec_file = Some(exe);
        }
        Plan::new(&args)
    }

    /// A plan for `vm-1` with `settings` on a cgroup file system at `fs`.
    pub(super) fn plan_with(fs: &Path, settings: &[&str]) -> Plan {
        Plan {
            id: "vm-1".into(),
            uid: 1000,
            gid: 1000,
            exec_file: PathBuf::from("/keel"),
            root: PathBuf::from("/nonexistent"),
            files: Vec::new(),
            cgroups: settings
                .iter()
                .map(|s| cgroup::parse_setting(s).unwrap())
                .collect(),
            cgroup_parent: "keel".into(),
            cgroup_fs: fs.to_path_buf(),
            netns: None,
            new_pid_ns: false,
            daemonize: false,
            landlock: true,
            keep_fds: Vec::new(),
            rlimits: Vec::new(),
            vmm_args: Vec::new(),
        }
    }

    #[test]
    fn bad_flags_are_named() {
        let err = |extra: &[&str]| plan(extra).unwrap_err().to_string();
        assert!(err(&["--file", "/etc/hostname:../x"]).starts_with("--file: `../x` must be"));
        assert!(
            err(&["--file", "/no/such/file"]).starts_with("--file: `/no/such/file` is not a file")
        );
        assert!(err(&["--cgroup", "pids.max"]).starts_with("--cgroup: `pids.max`"));
        assert!(err(&["--cgroup", "../x=1"]).starts_with("--cgroup: `../x`"));
        assert!(err(&["--cgroup-parent", "a/../b"]).starts_with("--cgroup-parent"));
        assert!(err(&["--keep-fd", "1"]).starts_with("--keep-fd: 1 is a standard stream"));
        assert!(err(&["--chroot-base", "rel"]).starts_with("--chroot-base: `rel`"));
        assert!(err(&["--resource-limit", "no-file=many"])
            .starts_with("--resource-limit: key `no-file`"));
        // The test binary itself is dynamically linked.
        assert!(err(&[]).contains("dynamically linked"), "{}", err(&[]));
        let cli = crate::cli::Cli::try_parse_from([
            "keel", "jail", "--id", "../up", "--uid", "1", "--gid", "1",
        ])
        .unwrap();
        let Some(crate::cli::Command::Jail(args)) = cli.command else {
            panic!("not jail")
        };
        assert!(Plan::new(&args)
            .unwrap_err()
            .to_string()
            .starts_with("--id: `../up`"));
    }

    #[test]
    fn files_and_limits_parse() {
        let file = parse_file("/etc/hostname").unwrap();
        assert_eq!(file.dest, Path::new("/hostname"));
        let file = parse_file("/etc/hostname:/images/h").unwrap();
        assert_eq!(file.dest, Path::new("/images/h"));
        let limits = parse_rlimits(Some("fsize=1048576,no-file=64")).unwrap();
        assert!(limits.contains(&Rlimit {
            name: "no-file",
            value: 64
        }));
        assert_eq!(limits.len(), 2);
        assert_eq!(parse_rlimits(None).unwrap()[0].value, DEFAULT_NOFILE);
    }
}
