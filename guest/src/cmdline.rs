//! The guest's command-line options.
//!
//! The command line is split at spaces into tokens. Tokens that do not start with a known `keel.`
//! key are ignored (the command line may carry options for other programs); a known key with a
//! value that does not parse is an error, so a typo in a test's command line fails loudly instead
//! of being ignored. Numbers are decimal, or hexadecimal with a `0x` prefix.

use core::fmt;

pub use crate::virtio::attack::Attack;

/// Default spacing of `keel.ticks` lines, in TSC ticks.
pub const DEFAULT_TICK_TSC: u64 = 20_000_000;

/// Default of `keel.blk_sectors`: sectors the virtio-blk test writes and reads back.
pub const DEFAULT_BLK_SECTORS: u64 = 8;

/// Default of `keel.blk_start`: the first sector the virtio-blk test writes (sector 0 is only read).
pub const DEFAULT_BLK_START: u64 = 1;

/// Default of `keel.net_frames`: frames the virtio-net test sends.
pub const DEFAULT_NET_FRAMES: u32 = 3;

/// Default of `keel.vsock_port`: the host port the virtio-vsock test connects to.
pub const DEFAULT_VSOCK_PORT: u32 = 5000;

/// Default of `keel.vsock_listen`: the guest port on which the virtio-vsock test accepts a connection.
pub const DEFAULT_VSOCK_LISTEN: u32 = 6000;

/// Default of `keel.virtio_wait_tsc`: TSC ticks the virtio tests wait for a device or a peer (about 4 s
/// at 2.5 GHz).
pub const DEFAULT_VIRTIO_WAIT_TSC: u64 = 10_000_000_000;

/// Default of `keel.bench_ops`: requests (randread; randread2 in all) or frames (net) a benchmark
/// runs.
pub const DEFAULT_BENCH_OPS: u64 = 2000;

/// Default of `keel.bench_bytes`: bytes the seqwrite and vsock benchmarks move (4 MiB).
pub const DEFAULT_BENCH_BYTES: u64 = 4 << 20;

/// Default of `keel.bench_depth`: requests a benchmark keeps in flight at most.
pub const DEFAULT_BENCH_DEPTH: u16 = 16;

/// Most requests `keel.bench_depth` may ask for (the bench queues have 64 descriptors, and a block
/// request takes three).
pub const MAX_BENCH_DEPTH: u64 = 21;

/// Most bytes `keel.bench_bytes` may ask for (1 TiB).
pub const MAX_BENCH_BYTES: u64 = 1 << 40;

/// Most sectors `keel.blk_sectors` may ask for.
pub const MAX_BLK_SECTORS: u64 = 4096;

/// Most frames `keel.net_frames` may ask for.
pub const MAX_NET_FRAMES: u32 = 1000;

/// Where `keel.dirty_kib` memory starts (after the benchmark buffers).
pub const DIRTY_MEMORY_BASE: u64 = 8 << 20;
/// The most `keel.dirty_kib` accepts (1 GiB).
pub const MAX_DIRTY_KIB: u64 = 1 << 20;

/// The most vCPUs the guest supports (the BSP and 254 APs: every xAPIC ID but the broadcast one).
pub const MAX_CPUS: u32 = 255;
/// Default of `keel.attack_count`.
pub const DEFAULT_ATTACK_COUNT: u64 = 100_000;
/// Most repetitions `keel.attack_count` takes.
pub const MAX_ATTACK_COUNT: u64 = 100_000_000;

/// What the command line asks the guest to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `keel.cpus=N`: how many vCPUs (including the BSP) must come online.
    pub cpus: Option<u32>,
    /// `keel.ticks=N`: print N tick lines (`Some(0)`: forever).
    pub ticks: Option<u64>,
    /// `keel.tick_tsc=T`: TSC ticks between two tick lines.
    pub tick_tsc: u64,
    /// `keel.dirty_kib=N`: between tick lines, keep writing every page of N KiB of memory
    /// (from [`DIRTY_MEMORY_BASE`]), as a busy guest does during a live migration.
    pub dirty_kib: u64,
    /// `keel.echo`: echo serial input until a line `exit` arrives.
    pub echo: bool,
    /// `keel.power_button`: while ticking or echoing, watch the ACPI power button (the
    /// Generic Event Device's register) and power off through S5 when it is pressed.
    pub power_button: bool,
    /// `keel.fault=...`: a fault to raise deliberately, after everything else but the exit.
    pub fault: Option<Fault>,
    /// `keel.exit=...`: how to end the VM.
    pub exit_plan: ExitPlan,
    /// The virtio device tests.
    pub virtio: VirtioOptions,
}

/// How far `keel.pci_move_bar` moves BAR 0 of each virtio function (128 MiB: inside Keel's
/// 256 MiB 32-bit PCI window at 0xc0000000, above every BAR Keel pre-assigns there).
pub const PCI_BAR_MOVE: u64 = 0x0800_0000;

/// What the command line asks of the virtio drivers (`keel.blk`, `keel.rng`, `keel.net`,
/// `keel.vsock` and their parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioOptions {
    /// `keel.blk`: test every virtio-blk device.
    pub blk: bool,
    /// `keel.blk_sectors=N`: sectors to write, flush and read back.
    pub blk_sectors: u64,
    /// `keel.blk_start=S`: the first of them.
    pub blk_start: u64,
    /// `keel.pci`: also look for virtio devices on PCI bus 0 (virtio-pci transport).
    pub pci: bool,
    /// `keel.pci_move_bar`: move BAR 0 of every virtio function up by
    /// [`PCI_BAR_MOVE`] before using it (as an OS reassigning BARs would).
    pub pci_move_bar: bool,
    /// `keel.rng`: test the first virtio-rng device.
    pub rng: bool,
    /// `keel.net`: test the first virtio-net device.
    pub net: bool,
    /// `keel.net_frames=N`: frames to send.
    pub net_frames: u32,
    /// `keel.vsock`: test the first virtio-vsock device.
    pub vsock: bool,
    /// `keel.console`: test the first virtio-console device.
    pub console: bool,
    /// `keel.blk_background`: leave a read on the first disk in flight while the other tests
    /// run, then wait for it.
    pub blk_background: bool,
    /// `keel.vsock_port=P`: the host (CID 2) port to connect to.
    pub vsock_port: u32,
    /// `keel.vsock_listen=Q`: the guest port to accept a connection on.
    pub vsock_listen: u32,
    /// `keel.virtio_wait_tsc=T`: TSC ticks to wait for a device's answer or a peer's packet.
    pub wait_tsc: u64,
    /// `keel.blk_bench=randread|seqwrite|randread2`: benchmark the first block device (the first
    /// two with `randread2`) instead of testing.
    pub blk_bench: Option<BlkBench>,
    /// `keel.net_bench`: benchmark sending on the first network device instead of testing it.
    pub net_bench: bool,
    /// `keel.vsock_bench`: benchmark streaming to the host instead of testing the socket device.
    pub vsock_bench: bool,
    /// `keel.bench_ops=N`: requests (randread; randread2 on both disks together) or frames (net)
    /// to time.
    pub bench_ops: u64,
    /// `keel.bench_bytes=B`: bytes to write (seqwrite) or stream (vsock).
    pub bench_bytes: u64,
    /// `keel.bench_depth=D`: requests (or packets) kept in flight at most (randread2: on each disk).
    pub bench_depth: u16,
    /// `keel.attack=NAME`: misbehave on purpose towards a device (see [`Attack`]) instead of
    /// testing it.
    pub attack: Option<Attack>,
    /// `keel.attack_count=N`: how many times an attack repeats (`notify_storm`'s kicks).
    pub attack_count: u64,
}

/// A block benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkBench {
    /// 4 KiB reads at pseudo-random 4 KiB-aligned offsets.
    RandRead,
    /// Sequential 64 KiB writes from sector 0, then a flush.
    SeqWrite,
    /// 4 KiB random reads on the first two block devices at once, each with its own queue and
    /// requests in flight.
    RandRead2,
}

impl BlkBench {
    /// The name used on the command line and in `bench` lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::SeqWrite => "seqwrite",
            Self::RandRead2 => "randread2",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::RandRead, Self::SeqWrite, Self::RandRead2]
            .into_iter()
            .find(|bench| bench.name() == name)
    }
}

impl VirtioOptions {
    /// Whether any virtio test is enabled, or `keel.pci` asks for the PCI devices to be listed.
    pub fn any(&self) -> bool {
        self.pci
            || self.blk
            || self.rng
            || self.net
            || self.vsock
            || self.console
            || self.blk_background
            || self.blk_bench.is_some()
            || self.net_bench
            || self.vsock_bench
            || self.attack.is_some()
    }
}

impl Default for VirtioOptions {
    fn default() -> Self {
        Self {
            blk: false,
            blk_sectors: DEFAULT_BLK_SECTORS,
            blk_start: DEFAULT_BLK_START,
            pci: false,
            pci_move_bar: false,
            rng: false,
            net: false,
            net_frames: DEFAULT_NET_FRAMES,
            vsock: false,
            console: false,
            blk_background: false,
            vsock_port: DEFAULT_VSOCK_PORT,
            vsock_listen: DEFAULT_VSOCK_LISTEN,
            wait_tsc: DEFAULT_VIRTIO_WAIT_TSC,
            blk_bench: None,
            net_bench: false,
            vsock_bench: false,
            bench_ops: DEFAULT_BENCH_OPS,
            bench_bytes: DEFAULT_BENCH_BYTES,
            bench_depth: DEFAULT_BENCH_DEPTH,
            attack: None,
            attack_count: DEFAULT_ATTACK_COUNT,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cpus: None,
            ticks: None,
            tick_tsc: DEFAULT_TICK_TSC,
            dirty_kib: 0,
            echo: false,
            power_button: false,
            fault: None,
            exit_plan: ExitPlan::default(),
            virtio: VirtioOptions::default(),
        }
    }
}

/// A fault the guest raises on purpose, to test how the VMM or the host's tests handle it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `triple`: an exception with an empty IDT; the CPU shuts down (KVM_EXIT_SHUTDOWN).
    Triple,
    /// `exception`: an invalid opcode, reported by the guest's own handler as a `FAIL exception`
    /// line.
    Exception,
    /// `panic`: a Rust panic, reported as a `FAIL panic` line.
    Panic,
}

impl Fault {
    /// The name used on the command line and in the `fault` line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Triple => "triple",
            Self::Exception => "exception",
            Self::Panic => "panic",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Triple, Self::Exception, Self::Panic]
            .into_iter()
            .find(|fault| fault.name() == name)
    }
}

/// One way of ending the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitMethod {
    /// Pulse the reset line through the i8042 controller: 0xfe to port 0x64.
    Reset = 1,
    /// QEMU's isa-debug-exit device: 0x10 to port 0xf4.
    Debug = 2,
    /// ACPI sleep control (Cloud Hypervisor's S5): 0x34 to port 0x600.
    S5 = 3,
    /// `cli; hlt` forever.
    Halt = 4,
}

impl ExitMethod {
    /// The name used on the command line and in `exit via=` lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Debug => "debug",
            Self::S5 => "s5",
            Self::Halt => "halt",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Reset, Self::Debug, Self::S5, Self::Halt]
            .into_iter()
            .find(|method| method.name() == name)
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::Reset, Self::Debug, Self::S5, Self::Halt]
            .into_iter()
            .find(|method| *method as u8 == code)
    }
}

/// The exit methods to try, in order (at most [`ExitPlan::MAX_METHODS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitPlan {
    methods: [Option<ExitMethod>; ExitPlan::MAX_METHODS],
}

impl ExitPlan {
    /// How many methods a plan can list.
    pub const MAX_METHODS: usize = 4;

    /// The methods in the order they are tried.
    pub fn methods(&self) -> impl Iterator<Item = ExitMethod> + '_ {
        self.methods.iter().map_while(|method| *method)
    }

    /// Packs the plan into a `u32` (one method code per byte, first method in the low byte), so it
    /// can live in an atomic that a panic handler reads.
    pub fn to_bits(self) -> u32 {
        self.methods.iter().rev().fold(0, |bits, method| {
            (bits << 8) | method.map_or(0, |m| m as u32)
        })
    }

    /// Unpacks [`to_bits`](Self::to_bits); bytes that are no method end the plan.
    pub fn from_bits(bits: u32) -> Self {
        let mut methods = [None; Self::MAX_METHODS];
        for (index, slot) in methods.iter_mut().enumerate() {
            match ExitMethod::from_code((bits >> (8 * index)) as u8) {
                Some(method) => *slot = Some(method),
                None => break,
            }
        }
        Self { methods }
    }

    fn parse(list: &str) -> Option<Self> {
        let mut methods = [None; Self::MAX_METHODS];
        for (index, name) in list.split(',').enumerate() {
            *methods.get_mut(index)? = Some(ExitMethod::from_name(name)?);
        }
        Some(Self { methods })
    }
}

impl Default for ExitPlan {
    /// `reset,debug,s5`: ends the VM under Keel, QEMU (with isa-debug-exit) and Cloud Hypervisor
    /// alike.
    fn default() -> Self {
        Self {
            methods: [
                Some(ExitMethod::Reset),
                Some(ExitMethod::Debug),
                Some(ExitMethod::S5),
                None,
            ],
        }
    }
}

/// A known option whose value is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionError<'a> {
    /// The whole offending token, e.g. `keel.cpus=lots`.
    pub token: &'a str,
    /// What the value should have been.
    pub expected: &'static str,
}

impl fmt::Display for OptionError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad option {:?}: expected {}", self.token, self.expected)
    }
}

/// Parses the options out of a command line (see the module documentation for the rules).
pub fn parse(cmdline: &str) -> Result<Options, OptionError<'_>> {
    let mut options = Options::default();
    for token in cmdline.split(' ').filter(|token| !token.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (token, None),
        };
        let error = |expected| OptionError { token, expected };
        match (key, value) {
            ("keel.cpus", Some(value)) => {
                let cpus = parse_number(value)
                    .filter(|cpus| (1..=u64::from(MAX_CPUS)).contains(cpus))
                    .ok_or(error("a vCPU count from 1 to 255"))?;
                options.cpus = Some(cpus as u32);
            }
            ("keel.ticks", Some(value)) => {
                options.ticks = Some(parse_number(value).ok_or(error("a number of ticks"))?);
            }
            ("keel.tick_tsc", Some(value)) => {
                options.tick_tsc = parse_number(value)
                    .filter(|ticks| *ticks > 0)
                    .ok_or(error("a positive number of TSC ticks"))?;
            }
            ("keel.dirty_kib", Some(value)) => {
                options.dirty_kib = parse_number(value)
                    .filter(|kib| *kib <= MAX_DIRTY_KIB)
                    .ok_or(error("a size in KiB up to 1048576"))?;
            }
            ("keel.echo", None) => options.echo = true,
            ("keel.power_button", None) => options.power_button = true,
            ("keel.fault", Some(value)) => {
                options.fault =
                    Some(Fault::from_name(value).ok_or(error("one of triple, exception, panic"))?);
            }
            ("keel.exit", Some(value)) => {
                options.exit_plan = ExitPlan::parse(value)
                    .ok_or(error("1 to 4 of reset,debug,s5,halt separated by commas"))?;
            }
            ("keel.blk", None) => options.virtio.blk = true,
            ("keel.rng", None) => options.virtio.rng = true,
            ("keel.pci", None) => options.virtio.pci = true,
            ("keel.pci_move_bar", None) => options.virtio.pci_move_bar = true,
            ("keel.net", None) => options.virtio.net = true,
            ("keel.vsock", None) => options.virtio.vsock = true,
            ("keel.console", None) => options.virtio.console = true,
            ("keel.blk_background", None) => options.virtio.blk_background = true,
            ("keel.net_bench", None) => options.virtio.net_bench = true,
            ("keel.vsock_bench", None) => options.virtio.vsock_bench = true,
            ("keel.blk_bench", Some(value)) => {
                options.virtio.blk_bench = Some(
                    BlkBench::from_name(value).ok_or(error("randread, seqwrite or randread2"))?,
                );
            }
            ("keel.attack", Some(value)) => {
                options.virtio.attack =
                    Some(Attack::from_name(value).ok_or(error("an attack of the catalogue"))?);
            }
            ("keel.attack_count", Some(value)) => {
                options.virtio.attack_count = parse_number(value)
                    .filter(|count| (1..=MAX_ATTACK_COUNT).contains(count))
                    .ok_or(error("a count from 1 to 10^8"))?;
            }
            ("keel.bench_ops", Some(value)) => {
                options.virtio.bench_ops = parse_number(value)
                    .filter(|count| (1..=1 << 32).contains(count))
                    .ok_or(error("a count from 1 to 2^32"))?;
            }
            ("keel.bench_bytes", Some(value)) => {
                options.virtio.bench_bytes = parse_number(value)
                    .filter(|bytes| (1..=MAX_BENCH_BYTES).contains(bytes))
                    .ok_or(error("a byte count from 1 to 2^40"))?;
            }
            ("keel.bench_depth", Some(value)) => {
                options.virtio.bench_depth = parse_number(value)
                    .filter(|depth| (1..=MAX_BENCH_DEPTH).contains(depth))
                    .ok_or(error("a request count from 1 to 21"))?
                    as u16;
            }
            ("keel.blk_sectors", Some(value)) => {
                options.virtio.blk_sectors = parse_number(value)
                    .filter(|count| (1..=MAX_BLK_SECTORS).contains(count))
                    .ok_or(error("a sector count from 1 to 4096"))?;
            }
            ("keel.blk_start", Some(value)) => {
                options.virtio.blk_start = parse_number(value)
                    .filter(|start| *start < 1 << 40)
                    .ok_or(error("a sector number below 2^40"))?;
            }
            ("keel.net_frames", Some(value)) => {
                options.virtio.net_frames = parse_number(value)
                    .filter(|count| (1..=u64::from(MAX_NET_FRAMES)).contains(count))
                    .ok_or(error("a frame count from 1 to 1000"))?
                    as u32;
            }
            ("keel.vsock_port" | "keel.vsock_listen", Some(value)) => {
                let port = parse_number(value)
                    .and_then(|port| u32::try_from(port).ok())
                    .ok_or(error("a 32-bit port number"))?;
                if key == "keel.vsock_port" {
                    options.virtio.vsock_port = port;
                } else {
                    options.virtio.vsock_listen = port;
                }
            }
            ("keel.virtio_wait_tsc", Some(value)) => {
                options.virtio.wait_tsc = parse_number(value)
                    .filter(|ticks| *ticks > 0)
                    .ok_or(error("a positive number of TSC ticks"))?;
            }
            (
                "keel.cpus"
                | "keel.ticks"
                | "keel.tick_tsc"
                | "keel.dirty_kib"
                | "keel.fault"
                | "keel.exit"
                | "keel.blk_sectors"
                | "keel.blk_start"
                | "keel.net_frames"
                | "keel.vsock_port"
                | "keel.vsock_listen"
                | "keel.virtio_wait_tsc"
                | "keel.blk_bench"
                | "keel.bench_ops"
                | "keel.bench_bytes"
                | "keel.bench_depth"
                | "keel.attack"
                | "keel.attack_count",
                None,
            ) => {
                return Err(error("a value after '='"));
            }
            (
                "keel.echo"
                | "keel.power_button"
                | "keel.blk"
                | "keel.rng"
                | "keel.net"
                | "keel.vsock"
                | "keel.console"
                | "keel.blk_background"
                | "keel.net_bench"
                | "keel.vsock_bench"
                | "keel.pci"
                | "keel.pci_move_bar",
                Some(_),
            ) => {
                return Err(error("the option without a value"));
            }
            _ => {}
        }
    }
    Ok(options)
}

/// Parses a decimal number, or a hexadecimal one with a `0x` prefix.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_command_line_gives_the_defaults() {
        assert_eq!(parse(""), Ok(Options::default()));
        assert_eq!(parse("   "), Ok(Options::default()));
        let names: Vec<_> = Options::default()
            .exit_plan
            .methods()
            .map(ExitMethod::name)
            .collect();
        assert_eq!(names, ["reset", "debug", "s5"]);
    }

    #[test]
    fn every_option_is_understood() {
        let options = parse(
            "console=ttyS0 keel.cpus=4 keel.ticks=5 keel.tick_tsc=0x100 keel.echo keel.fault=triple \
             keel.exit=debug,halt",
        )
        .unwrap();
        assert_eq!(options.cpus, Some(4));
        assert_eq!(options.ticks, Some(5));
        assert_eq!(options.tick_tsc, 256);
        assert!(options.echo);
        assert!(!options.power_button);
        assert_eq!(options.fault, Some(Fault::Triple));
        assert_eq!(
            parse("keel.fault=exception").unwrap().fault,
            Some(Fault::Exception)
        );
        assert_eq!(parse("keel.fault=panic").unwrap().fault, Some(Fault::Panic));
        let methods: Vec<_> = options.exit_plan.methods().collect();
        assert_eq!(methods, [ExitMethod::Debug, ExitMethod::Halt]);
    }

    #[test]
    fn virtio_options_are_understood() {
        let virtio = parse("keel.blk keel.rng keel.net keel.vsock")
            .unwrap()
            .virtio;
        assert!(virtio.blk && virtio.rng && virtio.net && virtio.vsock && virtio.any());
        assert_eq!(
            VirtioOptions {
                blk: false,
                rng: false,
                net: false,
                vsock: false,
                ..virtio
            },
            VirtioOptions::default()
        );
        assert!(!VirtioOptions::default().any());
        let virtio = parse("keel.pci").unwrap().virtio;
        assert!(virtio.pci && virtio.any() && !virtio.blk);
        assert!(parse("keel.pci=1").is_err());
        let virtio = parse("keel.pci keel.pci_move_bar").unwrap().virtio;
        assert!(virtio.pci && virtio.pci_move_bar);
        assert!(!parse("keel.pci").unwrap().virtio.pci_move_bar);
        assert!(parse("keel.pci_move_bar=1").is_err());
        let virtio = parse(
            "keel.blk_sectors=16 keel.blk_start=0x10 keel.net_frames=5 keel.vsock_port=1234 \
             keel.vsock_listen=0xffffffff keel.virtio_wait_tsc=1000",
        )
        .unwrap()
        .virtio;
        assert_eq!(virtio.blk_sectors, 16);
        assert_eq!(virtio.blk_start, 16);
        assert_eq!(virtio.net_frames, 5);
        assert_eq!(virtio.vsock_port, 1234);
        assert_eq!(virtio.vsock_listen, u32::MAX);
        assert_eq!(virtio.wait_tsc, 1000);
    }

    #[test]
    fn bench_options_are_understood() {
        let virtio = parse("keel.blk_bench=randread keel.net_bench keel.vsock_bench")
            .unwrap()
            .virtio;
        assert_eq!(virtio.blk_bench, Some(BlkBench::RandRead));
        assert!(virtio.net_bench && virtio.vsock_bench && virtio.any());
        assert!(!virtio.blk && !virtio.net && !virtio.vsock);
        assert_eq!(
            (virtio.bench_ops, virtio.bench_bytes, virtio.bench_depth),
            (DEFAULT_BENCH_OPS, DEFAULT_BENCH_BYTES, DEFAULT_BENCH_DEPTH)
        );
        let virtio = parse(
            "keel.blk_bench=seqwrite keel.bench_ops=7 keel.bench_bytes=0x10000 keel.bench_depth=1",
        )
        .unwrap()
        .virtio;
        assert_eq!(virtio.blk_bench, Some(BlkBench::SeqWrite));
        assert_eq!(BlkBench::SeqWrite.name(), "seqwrite");
        assert_eq!(
            (virtio.bench_ops, virtio.bench_bytes, virtio.bench_depth),
            (7, 0x10000, 1)
        );
        assert!(parse("keel.blk_bench=seqwrite").unwrap().virtio.any());
        let virtio = parse("keel.blk_bench=randread2 keel.bench_depth=4")
            .unwrap()
            .virtio;
        assert_eq!(virtio.blk_bench, Some(BlkBench::RandRead2));
        assert_eq!(BlkBench::RandRead2.name(), "randread2");
        assert_eq!(virtio.bench_depth, 4);
        assert!(parse("keel.blk_bench=randread3").is_err());
        let virtio = parse("keel.attack=desc_loop keel.attack_count=7")
            .unwrap()
            .virtio;
        assert_eq!(virtio.attack, Some(Attack::DescLoop));
        assert_eq!(virtio.attack_count, 7);
        assert!(virtio.any());
        assert!(parse("keel.attack=nope").is_err());
        assert!(parse("keel.attack").is_err());
        assert!(parse("keel.attack_count=0").is_err());
    }

    #[test]
    fn unknown_tokens_are_ignored() {
        assert_eq!(
            parse("quiet keel.unknown=1 keelcpus=9 root=/dev/vda"),
            Ok(Options::default())
        );
    }

    #[test]
    fn bad_values_of_known_keys_are_errors() {
        for token in [
            "keel.cpus=0",
            "keel.cpus=256",
            "keel.cpus=two",
            "keel.cpus",
            "keel.ticks=-1",
            "keel.tick_tsc=0",
            "keel.echo=1",
            "keel.fault=double",
            "keel.fault",
            "keel.exit=",
            "keel.exit=reset,,s5",
            "keel.exit=poweroff",
            "keel.exit=reset,debug,s5,halt,reset",
            "keel.blk=1",
            "keel.vsock=yes",
            "keel.blk_sectors=0",
            "keel.blk_sectors=4097",
            "keel.blk_start",
            "keel.net_frames=0",
            "keel.vsock_port=0x100000000",
            "keel.vsock_listen=",
            "keel.virtio_wait_tsc=0",
            "keel.blk_bench=write",
            "keel.blk_bench",
            "keel.net_bench=1",
            "keel.bench_ops=0",
            "keel.bench_bytes=0",
            "keel.bench_depth=22",
        ] {
            let error = parse(token).unwrap_err();
            assert_eq!(error.token, token);
        }
    }

    #[test]
    fn power_button_is_a_flag() {
        assert!(parse("keel.power_button").unwrap().power_button);
        assert!(parse("keel.power_button=1").is_err());
    }

    #[test]
    fn ticks_zero_means_forever() {
        assert_eq!(parse("keel.ticks=0").unwrap().ticks, Some(0));
    }

    #[test]
    fn exit_plans_survive_packing_into_bits() {
        for list in ["reset", "halt,s5", "reset,debug,s5,halt", "debug,debug"] {
            let plan = ExitPlan::parse(list).unwrap();
            assert_eq!(ExitPlan::from_bits(plan.to_bits()), plan, "{list}");
        }
        assert_eq!(ExitPlan::from_bits(0).methods().count(), 0);
    }
}
