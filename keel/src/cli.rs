//! The `keel` command line: the VMM's flags (Cloud Hypervisor's shape) turned into a
//! [`VmConfig`], and the `remote` and `openapi` subcommands.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use vmm_core::config::{
    DiskConfig, NetConfig, RateLimiterConfig, RngConfig, TokenBucketConfig, VsockConfig,
};
use vmm_core::{BootProtocol, ConsoleConfig, SerialInput, SerialOutput, VirtioTransport, VmConfig};

use crate::options::{OptionError, OptionList};

/// `keel`: run one VM, driven by flags, a config file or the REST API.
#[derive(Parser, Debug)]
#[command(
    name = "keel",
    version,
    about = "Run one VM on KVM: from flags, a config file (JSON or YAML) or a REST API on a Unix socket",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A client subcommand instead of running a VM.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The VMM's flags.
    #[command(flatten)]
    pub vmm: VmmArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Talk to a running keel over its API socket (like Cloud Hypervisor's ch-remote).
    Remote(RemoteArgs),
    /// Start keel confined (as root): in a chroot of its own, new mount (and optionally PID)
    /// namespace, cgroups, resource limits, as an unprivileged user (like Firecracker's jailer).
    Jail(JailArgs),
}

/// `keel jail`.
#[derive(Args, Debug)]
pub struct JailArgs {
    /// The jail's name: its directory (`CHROOT_BASE/keel/ID/root`) and cgroup (`keel/ID`).
    #[arg(long)]
    pub id: String,
    /// The user the VMM runs as (not 0).
    #[arg(long)]
    pub uid: u32,
    /// The group the VMM runs as (not 0).
    #[arg(long)]
    pub gid: u32,
    /// Where jails are made.
    #[arg(long, value_name = "DIR", default_value = "/srv/keel")]
    pub chroot_base: PathBuf,
    /// The static keel binary to run (default: this one, which must then be static).
    #[arg(long, value_name = "PATH")]
    pub exec_file: Option<PathBuf>,
    /// A file the VM needs (kernel, initrd, disk image), hard-linked into the jail at DEST
    /// (default `/` + its name; the jail's user must be able to read it, and write it for a
    /// writable disk), or copied and given to the jail's user across file systems. Repeatable.
    #[arg(long, value_name = "SRC[:DEST]")]
    pub file: Vec<String>,
    /// A cgroup setting, `CONTROLLER.FILE=VALUE` (`memory.max=512M`, `pids.max=64`, or on
    /// cgroup v1 `memory.limit_in_bytes=...`). Repeatable.
    #[arg(long, value_name = "FILE=VALUE")]
    pub cgroup: Vec<String>,
    /// The cgroup the jails' cgroups are made under.
    #[arg(long, value_name = "PATH", default_value = "keel")]
    pub cgroup_parent: String,
    /// Where the cgroup file system is mounted.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup")]
    pub cgroup_fs: PathBuf,
    /// A network namespace to join (e.g. `/var/run/netns/vm1`), holding the VM's TAP devices.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Run the VMM in keel jail's own PID namespace and execute it in place (its PID is the
    /// one the manager started). Without it the VMM is PID 1 of a new PID namespace, and keel
    /// jail waits for it, passes SIGTERM, SIGINT and SIGHUP on, and exits with its status.
    #[arg(long)]
    pub same_pid_ns: bool,
    /// Detach: a new session, standard streams on /dev/null.
    #[arg(long)]
    pub daemonize: bool,
    /// Do not restrict the VMM with Landlock (the jail's second layer, on by default where the
    /// kernel has it), e.g. to debug a jailed VMM that is refused a file.
    #[arg(long)]
    pub no_landlock: bool,
    /// A descriptor to pass on to the VMM (e.g. a TAP device for `--net fd=N`); every other
    /// one above 2 is closed. Repeatable.
    #[arg(long, value_name = "FD")]
    pub keep_fd: Vec<u32>,
    /// Resource limits: `no-file=N` (default 2048), `fsize=BYTES`, `nproc=N`.
    #[arg(long, value_name = "no-file=N[,fsize=BYTES][,nproc=N]")]
    pub resource_limit: Option<String>,
    /// The VMM's flags, after `--`; their paths are the jail's.
    #[arg(last = true, value_name = "KEEL FLAGS")]
    pub vmm_args: Vec<String>,
}

/// `keel remote`.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// The keel process's API socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: RemoteAction,
}

/// `keel remote` actions.
#[derive(Subcommand, Debug)]
pub enum RemoteAction {
    /// The VMM's version, pid and the VM's state.
    Ping,
    /// Set the VM's config from a JSON or YAML file (built, not started).
    Create {
        /// The config file.
        config: PathBuf,
    },
    /// Start the VM.
    Boot,
    /// Pause the VM.
    Pause,
    /// Resume the VM.
    Resume,
    /// Stop the VM now.
    Shutdown,
    /// Press the ACPI power button (the guest shuts down if its OS handles it).
    PowerButton,
    /// Reset the VM.
    Reboot,
    /// Stop and forget the VM.
    Delete,
    /// The VM's config, state and exit reason (JSON).
    Info,
    /// The VM's counters (JSON).
    Counters,
    /// The VM's counters in Prometheus text.
    Metrics,
    /// Stop the VM and end the keel process.
    ShutdownVmm,
    /// Save the paused VM to a directory.
    Snapshot {
        /// Where to write the snapshot (created if missing).
        destination: PathBuf,
    },
    /// Build the VM from a snapshot directory (no VM may be running).
    Restore {
        /// The snapshot directory.
        source: PathBuf,
        /// A config of the same shape to restore into (JSON or YAML); default: the saved one.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Start it at once.
        #[arg(long)]
        resume: bool,
    },
    /// Live-migrate the VM to a keel waiting in `receive-migration`.
    SendMigration {
        /// `unix:PATH` or `tcp:HOST:PORT`.
        destination: String,
        /// Downtime budget in milliseconds (default 50).
        #[arg(long, value_name = "MS")]
        downtime_ms: Option<u64>,
    },
    /// Wait for a VM migrating in.
    ReceiveMigration {
        /// `unix:PATH` or `tcp:HOST:PORT` to listen on.
        listen: String,
        /// A config of the same shape to run it with here (JSON or YAML); default: the source's.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The current or last migration's progress, report or error (JSON).
    Migration,
    /// Change a disk's, NIC's or the entropy device's rate limit while the VM runs.
    RateLimit {
        /// The device's id (`disk0`, `net0`, `rng0`).
        device: String,
        /// The limit: `bw_size=BYTES,bw_refill_time=MS[,bw_one_time_burst=BYTES]` and/or
        /// `ops_size=N,ops_refill_time=MS[,ops_one_time_burst=N]`, or `none` to remove it.
        limit: String,
        /// Which side of a NIC (both by default); not for disks and the entropy device.
        #[arg(long, value_enum)]
        direction: Option<Direction>,
    },
    /// Attach to the serial console, or with --virtio the virtio console (detach with Ctrl-]).
    Console {
        /// The console socket; default: the one `info` reports.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The virtio console's socket rather than the serial port's.
        #[arg(long)]
        virtio: bool,
    },
}

/// Which side of a NIC `keel remote rate-limit` limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Frames to the guest.
    Rx,
    /// Frames from the guest.
    Tx,
    /// Both.
    Both,
}

/// What happens when the guest resets itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OnReset {
    /// The process exits (as Firecracker does; status 0).
    #[default]
    Exit,
    /// A fresh VM boots from the same config (as Cloud Hypervisor does).
    Reboot,
}

/// Log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events.
    Info,
    /// Details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The VMM's flags.
#[derive(Args, Debug)]
pub struct VmmArgs {
    /// Serve the REST API on this Unix socket. Without --kernel or --config the VMM waits
    /// for `vm.create` there.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// A VM config file: JSON, or YAML (by a .yaml/.yml extension), the serialized VmConfig.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "disk", "net", "vsock", "rng", "console", "transport", "boot_protocol", "virtio_mmio_cmdline"])]
    pub config: Option<PathBuf>,
    /// Kernel: an ELF (vmlinux, PVH) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default: `console=ttyS0 reboot=k panic=1`).
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
    /// vCPUs: `boot=N` (or just N). Default 1.
    #[arg(long, value_name = "boot=N")]
    pub cpus: Option<String>,
    /// Guest memory: `size=SIZE` (or just SIZE: 512M, 2G). Default 128M.
    #[arg(long, value_name = "size=SIZE")]
    pub memory: Option<String>,
    /// A virtio-blk disk on a raw image (repeatable). A rate limit (Cloud Hypervisor's keys,
    /// times in ms): `bw_size=BYTES,bw_refill_time=MS[,bw_one_time_burst=BYTES]` and/or
    /// `ops_size=N,ops_refill_time=MS[,ops_one_time_burst=N]`.
    #[arg(
        long,
        value_name = "path=PATH[,readonly=on][,direct=on][,id=ID][,bw_size=B,bw_refill_time=MS][,ops_size=N,ops_refill_time=MS]"
    )]
    pub disk: Vec<String>,
    /// A virtio-net card on a TAP device, by name or inherited descriptor (repeatable). The
    /// rate limit keys (as for --disk) limit both directions, each on its own.
    #[arg(
        long,
        value_name = "tap=NAME|fd=N[,mac=MAC][,id=ID][,bw_size=B,bw_refill_time=MS][,ops_size=N,ops_refill_time=MS]"
    )]
    pub net: Vec<String>,
    /// A vsock device; the host side is the Unix socket (Firecracker's model).
    #[arg(long, value_name = "cid=N,socket=PATH[,id=ID]")]
    pub vsock: Option<String>,
    /// A virtio-rng device (optionally `id=ID`, and a rate limit as for --disk, in bytes of
    /// entropy and requests).
    #[arg(
        long,
        value_name = "id=ID[,bw_size=B,bw_refill_time=MS][,ops_size=N,ops_refill_time=MS]",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub rng: Option<String>,
    /// The serial console (COM1): `tty` (stdout, and stdin when it is a terminal; the
    /// default), `file=PATH`, `socket=PATH` (clients attach with `keel remote console`),
    /// `null` or `off`.
    #[arg(long, value_name = "tty|file=PATH|socket=PATH|null|off")]
    pub serial: Option<String>,
    /// A virtio console (Linux's hvc0; boot with `console=hvc0`): `tty`, `file=PATH`,
    /// `socket=PATH`, `null` (output discarded) or `off` (no device, the default). With `tty` it
    /// takes standard input, unless --serial tty asks for it.
    #[arg(long, value_name = "off|tty|file=PATH|socket=PATH|null")]
    pub console: Option<String>,
    /// Virtio transport.
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Kernel entry protocol.
    #[arg(long, value_enum)]
    pub boot_protocol: Option<Protocol>,
    /// Also describe virtio-mmio devices on the kernel command line (`virtio_mmio.device=`),
    /// for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES (implies --transport mmio).
    #[arg(long)]
    pub virtio_mmio_cmdline: bool,
    /// What a guest reset does.
    #[arg(long, value_enum, default_value_t = OnReset::Exit)]
    pub on_reset: OnReset,
    /// Keep the process (and its API) up after the guest exits, until `vmm.shutdown`.
    #[arg(long, requires = "api_socket")]
    pub keep_alive: bool,
    /// Restore the VM from this snapshot directory (`vm.snapshot`) and run it, instead of
    /// booting a kernel; with --config or device flags, into that config (same shape).
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Warn)]
    pub log_level: LogLevel,
    /// Append logs to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Print when each start-up stage ended, from process start to the guest's first exit.
    #[arg(long)]
    pub boot_timer: bool,
    /// Limits on the VMs this process builds, beyond the host's own (RAM, RLIMIT_NOFILE):
    /// `max_vcpus_per_host_cpu=N` (without it more vCPUs than host CPUs are only warned
    /// about), `max_devices=N`, `max_queue_size=N`.
    #[arg(
        long,
        value_name = "max_vcpus_per_host_cpu=N[,max_devices=N][,max_queue_size=N]"
    )]
    pub limits: Option<String>,
    /// Run without seccomp filters (for debugging: a guest that takes over one of keel's
    /// threads can then make any system call).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// seccomp filters of your own, one per thread kind (`vcpu`, `events`, `blk`, `vmm`,
    /// `api`), in seccompiler's JSON format, instead of keel's.
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
}

/// The operator's limits from `--limits` (none when the flag is absent).
pub fn limits(args: &VmmArgs) -> Result<vmm_core::config::Limits, OptionError> {
    let Some(spec) = &args.limits else {
        return Ok(vmm_core::config::Limits::default());
    };
    let mut list = OptionList::parse(
        "--limits",
        spec,
        &["max_vcpus_per_host_cpu", "max_devices", "max_queue_size"],
        None,
    )?;
    Ok(vmm_core::config::Limits {
        max_vcpus_per_host_cpu: list.parsed("max_vcpus_per_host_cpu", "a number of vCPUs")?,
        max_devices: list.parsed("max_devices", "a number of devices")?,
        max_queue_size: list.parsed("max_queue_size", "a queue size")?,
    })
}

/// `--transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// virtio-pci (MSI-X).
    Pci,
    /// virtio-mmio (described in ACPI).
    Mmio,
}

/// `--boot-protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// PVH when the ELF has the note, else Linux 64-bit.
    Auto,
    /// PVH.
    Pvh,
    /// Linux 64-bit boot protocol.
    Linux64,
}

/// A problem with the flags or the config file.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's option list is wrong.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// The config file cannot be read.
    #[error("--config {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file does not parse.
    #[error("--config {path}: {message}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
}

/// What the flags describe: a VM config, and the inherited TAP descriptors (`--net fd=N`) by
/// NIC id, whose NICs have no TAP name in the config (a descriptor number does not belong in
/// a config document; the program hands them to the builder).
#[derive(Debug)]
pub struct FlagsVm {
    /// The config.
    pub config: VmConfig,
    /// `(NIC id, descriptor number)` for each `--net fd=N`.
    pub tap_fds: Vec<(String, i32)>,
}

/// The VM the flags describe, or `None` when they describe none (API-only start).
pub fn vm_config(args: &VmmArgs) -> Result<Option<FlagsVm>, CliError> {
    let mut tap_fds = Vec::new();
    let mut config = match (&args.config, &args.kernel) {
        (Some(path), _) => read_config_file(path)?,
        (None, Some(kernel)) => {
            let mut config = VmConfig::new(kernel);
            config.initrd = args.initrd.clone();
            if let Some(cmdline) = &args.cmdline {
                config.cmdline = cmdline.clone();
            }
            apply_machine_flags(args, &mut config, &mut tap_fds)?;
            config
        }
        (None, None) => {
            // Flags that need a kernel are refused rather than ignored.
            for (given, flag) in [
                (args.initrd.is_some(), "--initrd"),
                (args.cmdline.is_some(), "--cmdline"),
                (args.cpus.is_some(), "--cpus"),
                (args.memory.is_some(), "--memory"),
                (!args.disk.is_empty(), "--disk"),
                (!args.net.is_empty(), "--net"),
                (args.vsock.is_some(), "--vsock"),
                (args.rng.is_some(), "--rng"),
            ] {
                if given {
                    return Err(OptionError {
                        flag,
                        message: "describes a VM, but there is no --kernel (or --config)".into(),
                    }
                    .into());
                }
            }
            return Ok(None);
        }
    };
    if let Some(serial) = &args.serial {
        let (output, input) = parse_serial("--serial", serial)?;
        config.serial.output = output;
        config.serial.input = input;
    } else if args.config.is_none() {
        config.serial.input = default_tty_input();
    }
    if let Some(console) = args.console.as_deref().filter(|spec| *spec != "off") {
        let (output, input) = parse_serial("--console", console)?;
        // Standard input goes to the console unless --serial tty claimed it.
        if input == SerialInput::Stdin && args.serial.is_none() {
            config.serial.input = SerialInput::None;
        }
        config.console = Some(ConsoleConfig {
            output,
            input,
            ..ConsoleConfig::default()
        });
    }
    Ok(Some(FlagsVm { config, tap_fds }))
}

/// Reads a serialized [`VmConfig`]: YAML for `.yaml`/`.yml`, JSON otherwise.
pub fn read_config_file(path: &Path) -> Result<VmConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    let yaml = matches!(
        path.extension().and_then(|ext| ext.to_str()),
        Some("yaml" | "yml")
    );
    let parsed = if yaml {
        serde_saphyr::from_str(&text).map_err(|err| err.to_string())
    } else {
        serde_json::from_str(&text).map_err(|err| err.to_string())
    };
    parsed.map_err(|message| CliError::ParseConfig {
        path: path.to_path_buf(),
        message,
    })
}

fn apply_machine_flags(
    args: &VmmArgs,
    config: &mut VmConfig,
    tap_fds: &mut Vec<(String, i32)>,
) -> Result<(), CliError> {
    if let Some(cpus) = &args.cpus {
        let mut list = OptionList::parse("--cpus", cpus, &["boot"], Some("boot"))?;
        config.vcpus = list.parsed("boot", "a number of vCPUs")?.unwrap_or(1);
    }
    if let Some(memory) = &args.memory {
        let mut list = OptionList::parse("--memory", memory, &["size"], Some("size"))?;
        if let Some(size) = list.take("size")? {
            // MemSize's own messages quote the value and say what is wrong.
            config.memory = size.parse().map_err(|message| OptionError {
                flag: "--memory",
                message: format!("key `size`: {message}"),
            })?;
        }
    }
    for (index, spec) in args.disk.iter().enumerate() {
        config.disks.push(parse_disk(index, spec)?);
    }
    for (index, spec) in args.net.iter().enumerate() {
        let (nic, fd) = parse_net(index, spec)?;
        if let Some(fd) = fd {
            tap_fds.push((nic.id.clone(), fd));
        }
        config.nets.push(nic);
    }
    if let Some(spec) = &args.vsock {
        config.vsock = Some(parse_vsock(spec)?);
    }
    if let Some(spec) = &args.rng {
        let mut id = "rng0".to_string();
        let mut rate_limiter = None;
        if !spec.is_empty() {
            let mut list = OptionList::parse("--rng", spec, &with_rate_limit(&["id"]), None)?;
            if let Some(given) = list.take("id")? {
                id = given;
            }
            rate_limiter = take_rate_limiter(&mut list)?;
        }
        config.rng = Some(RngConfig { id, rate_limiter });
    }
    if let Some(transport) = args.transport {
        config.virtio_transport = match transport {
            Transport::Pci => VirtioTransport::Pci,
            Transport::Mmio => VirtioTransport::Mmio,
        };
    }
    if args.virtio_mmio_cmdline {
        config.virtio_mmio_cmdline = true;
        config.virtio_transport = VirtioTransport::Mmio;
    }
    if let Some(protocol) = args.boot_protocol {
        config.boot_protocol = match protocol {
            Protocol::Auto => BootProtocol::Auto,
            Protocol::Pvh => BootProtocol::Pvh,
            Protocol::Linux64 => BootProtocol::Linux64,
        };
    }
    Ok(())
}

/// The keys of a rate limit in an option list: Cloud Hypervisor's names, times in ms.
const RATE_LIMIT_KEYS: [&str; 6] = [
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
];

/// A flag's own keys, then the rate limit's.
fn with_rate_limit(keys: &[&'static str]) -> Vec<&'static str> {
    keys.iter().copied().chain(RATE_LIMIT_KEYS).collect()
}

/// The rate limit the list's `bw_*` and `ops_*` keys give, if any. A bucket needs its size and
/// its refill time.
pub(crate) fn take_rate_limiter(
    list: &mut OptionList,
) -> Result<Option<RateLimiterConfig>, OptionError> {
    let mut bucket = |prefix: &str, unit: &str| -> Result<Option<TokenBucketConfig>, OptionError> {
        let size_key = format!("{prefix}_size");
        let refill_key = format!("{prefix}_refill_time");
        let size = list.parsed::<u64>(&size_key, unit)?;
        let burst = list.parsed::<u64>(&format!("{prefix}_one_time_burst"), unit)?;
        let refill = list.parsed::<u64>(&refill_key, "a number of milliseconds")?;
        match (size, refill) {
            (None, None) if burst.is_none() => Ok(None),
            (Some(size), Some(refill_time_ms)) => Ok(Some(TokenBucketConfig {
                size,
                one_time_burst: burst.unwrap_or(0),
                refill_time_ms,
            })),
            (None, _) => {
                Err(list.missing(&size_key, &format!("a `{prefix}` bucket needs its size")))
            }
            (Some(_), None) => Err(list.missing(
                &refill_key,
                &format!("a `{prefix}` bucket needs its refill time in ms"),
            )),
        }
    };
    let bandwidth = bucket("bw", "a number of bytes")?;
    let ops = bucket("ops", "a number of operations")?;
    Ok((bandwidth.is_some() || ops.is_some()).then_some(RateLimiterConfig { bandwidth, ops }))
}

fn parse_disk(index: usize, spec: &str) -> Result<DiskConfig, OptionError> {
    let mut list = OptionList::parse(
        "--disk",
        spec,
        &with_rate_limit(&["path", "readonly", "direct", "id"]),
        Some("path"),
    )?;
    Ok(DiskConfig {
        path: list.require("path")?.into(),
        read_only: list.flag_value("readonly", false)?,
        direct: list.flag_value("direct", false)?,
        id: list.take("id")?.unwrap_or_else(|| format!("disk{index}")),
        rate_limiter: take_rate_limiter(&mut list)?,
    })
}

/// A NIC from `--net`, and the inherited TAP descriptor it names (`fd=N`), if any.
fn parse_net(index: usize, spec: &str) -> Result<(NetConfig, Option<i32>), OptionError> {
    let mut list = OptionList::parse(
        "--net",
        spec,
        &with_rate_limit(&["tap", "fd", "mac", "id"]),
        Some("tap"),
    )?;
    let tap = list.take("tap")?;
    let tap_fd = list.parsed::<i32>("fd", "a descriptor number")?;
    let (tap, tap_fd) = match (tap, tap_fd) {
        (Some(tap), None) => (tap, None),
        (None, Some(fd)) => (String::new(), Some(fd)),
        (Some(_), Some(_)) => {
            return Err(OptionError {
                flag: "--net",
                message: "give `tap` or `fd`, not both".into(),
            })
        }
        (None, None) => {
            return Err(OptionError {
                flag: "--net",
                message: "key `tap` (a TAP name) or `fd` (an inherited TAP descriptor) is required"
                    .into(),
            })
        }
    };
    if let Some(fd) = tap_fd.filter(|fd| *fd <= 2) {
        return Err(OptionError {
            flag: "--net",
            message: format!("key `fd`: {fd} is standard input, output or error, not a TAP"),
        });
    }
    // One limit for each direction, as Cloud Hypervisor's --net takes it.
    let (id, mac) = (list.take("id")?, list.take("mac")?);
    let limiter = take_rate_limiter(&mut list)?;
    let nic = NetConfig {
        id: id.unwrap_or_else(|| format!("net{index}")),
        tap,
        mac,
        rx_rate_limiter: limiter,
        tx_rate_limiter: limiter,
    };
    Ok((nic, tap_fd))
}

fn parse_vsock(spec: &str) -> Result<VsockConfig, OptionError> {
    let mut list = OptionList::parse("--vsock", spec, &["cid", "socket", "id"], None)?;
    Ok(VsockConfig {
        guest_cid: list
            .parsed("cid", "a context id")?
            .ok_or_else(|| OptionError {
                flag: "--vsock",
                message: "key `cid` is required".into(),
            })?,
        uds_path: list.require("socket")?.into(),
        id: list.take("id")?.unwrap_or_else(|| "vsock0".into()),
    })
}

/// Standard input for the console when it is a terminal (an interactive user), else none.
fn default_tty_input() -> SerialInput {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
        SerialInput::Stdin
    } else {
        SerialInput::None
    }
}

/// `tty`, `null`/`off`, `file=PATH` or `socket=PATH`, for `--serial` and `--console`.
fn parse_serial(
    flag: &'static str,
    spec: &str,
) -> Result<(SerialOutput, SerialInput), OptionError> {
    match spec {
        "tty" => return Ok((SerialOutput::Stdout, default_tty_input())),
        "null" | "off" => return Ok((SerialOutput::Null, SerialInput::None)),
        _ => {}
    }
    let mut list = OptionList::parse(flag, spec, &["file", "socket"], None)?;
    match (list.take("file")?, list.take("socket")?) {
        (Some(file), None) => Ok((SerialOutput::File(file.into()), SerialInput::None)),
        (None, Some(socket)) => Ok((SerialOutput::Socket(socket.into()), SerialInput::None)),
        _ => Err(OptionError {
            flag,
            message: "give one of tty, null, off, file=PATH or socket=PATH".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::MemSize;

    fn parse(args: &[&str]) -> Result<Option<VmConfig>, CliError> {
        parse_flags(args).map(|vm| vm.map(|vm| vm.config))
    }

    fn parse_flags(args: &[&str]) -> Result<Option<FlagsVm>, CliError> {
        let cli = Cli::try_parse_from(std::iter::once("keel").chain(args.iter().copied()))
            .map_err(|err| OptionError {
                flag: "clap",
                message: err.to_string(),
            })?;
        vm_config(&cli.vmm)
    }

    #[test]
    fn an_inherited_tap_descriptor_is_kept_out_of_the_config() {
        let vm = parse_flags(&["--kernel", "/k", "--net", "fd=7,id=uplink"])
            .unwrap()
            .unwrap();
        assert_eq!(vm.config.nets[0].tap, "");
        assert_eq!(vm.tap_fds, [("uplink".to_string(), 7)]);
        let err = parse(&["--kernel", "/k", "--net", "fd=1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("standard"), "{err}");
    }

    #[test]
    fn cloud_hypervisor_style_flags_build_the_config() {
        let config = parse(&[
            "--kernel",
            "/k",
            "--cpus",
            "boot=2",
            "--memory",
            "size=512M",
            "--disk",
            "path=/a.img,readonly=on,id=root",
            "--disk",
            "/b.img",
            "--net",
            "tap=tap0,mac=52:54:00:00:00:01",
            "--vsock",
            "cid=3,socket=/tmp/v.sock",
            "--rng",
            "--serial",
            "socket=/tmp/c.sock",
            "--console",
            "file=/tmp/hvc.log",
            "--transport",
            "mmio",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.memory, MemSize::mib(512));
        assert_eq!(config.disks[0].id, "root");
        assert!(config.disks[0].read_only);
        assert_eq!(config.disks[1].id, "disk1");
        assert_eq!(config.disks[1].path, PathBuf::from("/b.img"));
        assert_eq!(config.nets[0].tap, "tap0");
        assert_eq!(config.vsock.as_ref().unwrap().guest_cid, 3);
        assert_eq!(config.rng.as_ref().unwrap().id, "rng0");
        assert_eq!(
            config.serial.output,
            SerialOutput::Socket("/tmp/c.sock".into())
        );
        assert_eq!(config.virtio_transport, VirtioTransport::Mmio);
        assert_eq!(
            config.console.unwrap().output,
            SerialOutput::File("/tmp/hvc.log".into())
        );
    }

    #[test]
    fn bad_flags_name_the_flag_and_key() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert_eq!(
            err(&["--kernel", "/k", "--disk", "path=/a,size=1"]),
            "--disk: unknown key `size` (known keys: path, readonly, direct, id, bw_size, \
             bw_one_time_burst, bw_refill_time, ops_size, ops_one_time_burst, ops_refill_time)"
        );
        assert_eq!(
            err(&["--kernel", "/k", "--memory", "size=lots"]),
            "--memory: key `size`: `lots` has an unknown unit (use B, K, M, G or T)"
        );
        assert!(err(&["--kernel", "/k", "--net", "mac=52:54:00:00:00:01"]).contains("key `tap`"));
        assert!(err(&["--kernel", "/k", "--vsock", "socket=/s"]).contains("key `cid` is required"));
        assert_eq!(
            err(&["--kernel", "/k", "--serial", "pipe"]),
            "--serial: `pipe` is not key=value (known keys: file, socket)"
        );
        assert!(err(&["--cpus", "2"]).contains("--cpus: describes a VM, but there is no --kernel"));
        assert!(err(&["--config", "/c.json", "--cpus", "2"]).contains("cannot be used with"));
    }

    #[test]
    fn rate_limits_come_in_cloud_hypervisor_keys_and_need_size_and_refill_time() {
        let config = parse(&[
            "--kernel",
            "/k",
            "--disk",
            "path=/a.img,bw_size=1048576,bw_refill_time=100,ops_size=50,ops_one_time_burst=500,ops_refill_time=1000",
            "--net",
            "tap=tap0,ops_size=10,ops_refill_time=10",
            "--rng",
            "bw_size=64,bw_refill_time=1000",
        ])
        .unwrap()
        .unwrap();
        let disk = config.disks[0].rate_limiter.unwrap();
        assert_eq!(disk.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(disk.ops.unwrap().one_time_burst, 500);
        let nic = &config.nets[0];
        assert_eq!(nic.rx_rate_limiter, nic.tx_rate_limiter);
        assert_eq!(nic.tx_rate_limiter.unwrap().ops.unwrap().refill_time_ms, 10);
        let rng = config.rng.as_ref().unwrap();
        assert_eq!(rng.rate_limiter.unwrap().bandwidth.unwrap().size, 64);
        assert!(parse(&["--kernel", "/k", "--disk", "/b.img"])
            .unwrap()
            .unwrap()
            .disks[0]
            .rate_limiter
            .is_none());
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert_eq!(
            err(&["--kernel", "/k", "--disk", "path=/a,bw_size=10"]),
            "--disk: key `bw_refill_time`: a `bw` bucket needs its refill time in ms"
        );
        assert_eq!(
            err(&["--kernel", "/k", "--rng", "ops_refill_time=10"]),
            "--rng: key `ops_size`: a `ops` bucket needs its size"
        );
        assert!(err(&[
            "--kernel",
            "/k",
            "--net",
            "tap=t,ops_size=x,ops_refill_time=1"
        ])
        .starts_with("--net: key `ops_size`: `x` is not a number of operations"));
    }

    #[test]
    fn limits_parse_with_their_names() {
        let cli =
            Cli::try_parse_from(["keel", "--limits", "max_vcpus_per_host_cpu=2,max_devices=4"])
                .unwrap();
        let parsed = limits(&cli.vmm).unwrap();
        assert_eq!(parsed.max_vcpus_per_host_cpu, Some(2));
        assert_eq!(parsed.max_devices, Some(4));
        assert_eq!(parsed.max_queue_size, None);
        let cli = Cli::try_parse_from(["keel", "--limits", "max_queue_size=big"]).unwrap();
        let err = limits(&cli.vmm).unwrap_err().to_string();
        assert!(err.starts_with("--limits: key `max_queue_size`"), "{err}");
        let cli = Cli::try_parse_from(["keel"]).unwrap();
        assert_eq!(
            limits(&cli.vmm).unwrap(),
            vmm_core::config::Limits::default()
        );
    }

    #[test]
    fn config_files_parse_as_json_or_yaml_with_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("keel-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("vm.yaml");
        std::fs::write(&yaml, "kernel: /k\nvcpus: 3\nmemory: 1G\n").unwrap();
        let config = read_config_file(&yaml).unwrap();
        assert_eq!((config.vcpus, config.memory), (3, MemSize::mib(1024)));
        let json = dir.join("vm.json");
        std::fs::write(&json, r#"{"kernel": "/k", "vcpu": 2}"#).unwrap();
        let err = read_config_file(&json).unwrap_err().to_string();
        assert!(err.contains("vm.json"), "{err}");
        assert!(err.contains("unknown field `vcpu`"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_kernel_and_no_config_means_no_vm_yet() {
        assert!(parse(&["--api-socket", "/tmp/api"]).unwrap().is_none());
    }
}
