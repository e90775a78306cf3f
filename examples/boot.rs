//! Boots a VM with Keel and shows its serial console.
//!
//! With no arguments it builds Keel's test guest and boots it with 2 vCPUs and 128 MiB; the
//! guest prints a banner, starts its application processors, runs a self-check and resets the
//! machine, and this program exits 0. `--kernel/--initrd/--cmdline` boot any kernel (stock
//! Linux kernels need hardware KVM: see the README).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm_core::config::{DiskConfig, NetConfig, RngConfig, VirtioTransport, VsockConfig};
use vmm_core::{BootProtocol, ExitReason, MemSize, SerialInput, VmBuilder, VmConfig};

#[derive(Parser, Debug)]
#[command(about = "Boot a VM with Keel and show its serial console")]
struct Args {
    /// Kernel to boot (ELF or bzImage). Default: Keel's test guest, built on first use.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line. Default for the test guest: `keel.cpus=<vcpus>`; for other
    /// kernels: `console=ttyS0 reboot=k panic=1`.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Guest memory (128, 128M, 1G, ...).
    #[arg(long, default_value = "128M")]
    mem: MemSize,
    /// Entry protocol: auto, pvh or linux64.
    #[arg(long, default_value = "auto", value_parser = parse_protocol)]
    protocol: BootProtocol,
    /// Forward this terminal's input to the guest's serial port.
    #[arg(long)]
    interactive: bool,
    /// Add a virtio-blk disk: `PATH[,ro][,direct][,id=ID]` (repeatable).
    #[arg(long = "disk", value_name = "PATH[,ro][,direct][,id=ID]")]
    disks: Vec<String>,
    /// Add a virtio-net card on a TAP device: `TAP[,mac=52:54:00:12:34:56][,id=ID]`, or on a
    /// TAP descriptor this process inherited: `fd=N[,...]` (repeatable).
    #[arg(long = "net", value_name = "TAP|fd=N[,mac=MAC][,id=ID]")]
    nets: Vec<String>,
    /// Add a vsock device: `CID,UDS_PATH`.
    #[arg(long, value_name = "CID,UDS_PATH")]
    vsock: Option<String>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// Virtio transport: pci (default) or mmio.
    #[arg(long, default_value = "pci", value_parser = parse_transport)]
    transport: VirtioTransport,
    /// Also describe virtio-mmio devices with `virtio_mmio.device=` on the command line
    /// (implies `--transport mmio`).
    #[arg(long)]
    virtio_mmio_cmdline: bool,
    /// Print `keel-stats:` lines at exit: peak RSS and guest RAM resident (for benchmarks).
    #[arg(long)]
    stats: bool,
    /// A VM config in JSON; command-line options given explicitly are ignored for it.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline"])]
    config: Option<PathBuf>,
}

fn parse_protocol(text: &str) -> Result<BootProtocol, String> {
    match text {
        "auto" => Ok(BootProtocol::Auto),
        "pvh" => Ok(BootProtocol::Pvh),
        "linux64" => Ok(BootProtocol::Linux64),
        other => Err(format!("`{other}` is not one of auto, pvh, linux64")),
    }
}

fn parse_transport(text: &str) -> Result<VirtioTransport, String> {
    match text {
        "pci" => Ok(VirtioTransport::Pci),
        "mmio" => Ok(VirtioTransport::Mmio),
        other => Err(format!("`{other}` is not one of pci, mmio")),
    }
}

fn config_from(args: &Args) -> Result<VmConfig, String> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read config {}: {err}", path.display()))?;
        return serde_json::from_str(&text)
            .map_err(|err| format!("config {}: {err}", path.display()));
    }
    let (kernel, default_cmdline) = match &args.kernel {
        Some(kernel) => (kernel.clone(), vmm_core::DEFAULT_CMDLINE.to_string()),
        None => {
            eprintln!("keel: building the test guest ...");
            let guest = testkit::build_test_guest().map_err(|err| err.to_string())?;
            (guest, format!("keel.cpus={}", args.vcpus))
        }
    };
    let mut config = VmConfig::new(kernel);
    config.vcpus = args.vcpus;
    config.memory = args.mem;
    config.initrd = args.initrd.clone();
    config.cmdline = args.cmdline.clone().unwrap_or(default_cmdline);
    config.boot_protocol = args.protocol;
    if args.interactive {
        config.serial.input = SerialInput::Stdin;
    }
    for (index, spec) in args.disks.iter().enumerate() {
        config.disks.push(parse_disk(index, spec)?);
    }
    for (index, spec) in args.nets.iter().enumerate() {
        config.nets.push(parse_net(index, spec)?);
    }
    if let Some(spec) = &args.vsock {
        let (cid, path) = spec
            .split_once(',')
            .ok_or_else(|| format!("--vsock `{spec}`: expected CID,UDS_PATH"))?;
        config.vsock = Some(VsockConfig {
            id: "vsock0".into(),
            guest_cid: cid
                .parse()
                .map_err(|_| format!("--vsock `{spec}`: `{cid}` is not a number"))?,
            uds_path: path.into(),
        });
    }
    if args.rng {
        config.rng = Some(RngConfig { id: "rng0".into() });
    }
    config.virtio_transport = args.transport;
    config.virtio_mmio_cmdline = args.virtio_mmio_cmdline;
    if args.virtio_mmio_cmdline {
        config.virtio_transport = VirtioTransport::Mmio;
    }
    Ok(config)
}

/// `PATH[,ro][,direct][,id=ID]`
fn parse_disk(index: usize, spec: &str) -> Result<DiskConfig, String> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    let mut disk = DiskConfig {
        id: format!("disk{index}"),
        path: path.into(),
        read_only: false,
        direct: false,
    };
    for option in parts {
        match option {
            "ro" => disk.read_only = true,
            "direct" => disk.direct = true,
            _ => match option.strip_prefix("id=") {
                Some(id) => disk.id = id.to_string(),
                None => return Err(format!("--disk `{spec}`: unknown option `{option}`")),
            },
        }
    }
    Ok(disk)
}

/// `TAP[,mac=MAC][,id=ID]` or `fd=N[,mac=MAC][,id=ID]`
fn parse_net(index: usize, spec: &str) -> Result<NetConfig, String> {
    let mut parts = spec.split(',');
    let first = parts.next().unwrap_or_default();
    let mut net = NetConfig {
        id: format!("net{index}"),
        tap: first.to_string(),
        tap_fd: None,
        mac: None,
    };
    if let Some(fd) = first.strip_prefix("fd=") {
        net.tap.clear();
        net.tap_fd = Some(
            fd.parse()
                .map_err(|_| format!("--net `{spec}`: `{fd}` is not a descriptor number"))?,
        );
    }
    for option in parts {
        if let Some(mac) = option.strip_prefix("mac=") {
            net.mac = Some(mac.to_string());
        } else if let Some(id) = option.strip_prefix("id=") {
            net.id = id.to_string();
        } else {
            return Err(format!("--net `{spec}`: unknown option `{option}`"));
        }
    }
    Ok(net)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let config = match config_from(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("keel: {err}");
            return ExitCode::from(2);
        }
    };
    let mut vm = match VmBuilder::new(config).build() {
        Ok(vm) => vm,
        Err(err) => {
            eprintln!("keel: cannot build the VM: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = vm.start() {
        eprintln!("keel: cannot start the VM: {err}");
        return ExitCode::FAILURE;
    }
    let reason = vm.wait();
    eprintln!("keel: VM exited: {reason}");
    if args.stats {
        print_stats(&vm);
    }
    match reason {
        ExitReason::Reset | ExitReason::Shutdown => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Peak RSS of this process and how much of it is guest RAM.
fn print_stats(vm: &vmm_core::Vm) {
    let hwm_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let guest_kib = vmm_core::memory::resident_bytes(vm.memory()).unwrap_or(0) / 1024;
    eprintln!("keel-stats: vmhwm_kib={hwm_kib} guest_resident_kib={guest_kib}");
}
