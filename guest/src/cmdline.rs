//! The guest's command-line options.
//!
//! The command line is split at spaces into tokens. Tokens that do not start with a known `keel.`
//! key are ignored (the command line may carry options for other programs); a known key with a
//! value that does not parse is an error, so a typo in a test's command line fails loudly instead
//! of being ignored. Numbers are decimal, or hexadecimal with a `0x` prefix.

use core::fmt;

/// Default spacing of `keel.ticks` lines, in TSC ticks.
pub const DEFAULT_TICK_TSC: u64 = 20_000_000;

/// The most vCPUs the guest supports (the BSP and 254 APs: every xAPIC ID but the broadcast one).
pub const MAX_CPUS: u32 = 255;

/// What the command line asks the guest to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `keel.cpus=N`: how many vCPUs (including the BSP) must come online.
    pub cpus: Option<u32>,
    /// `keel.ticks=N`: print N tick lines (`Some(0)`: forever).
    pub ticks: Option<u64>,
    /// `keel.tick_tsc=T`: TSC ticks between two tick lines.
    pub tick_tsc: u64,
    /// `keel.echo`: echo serial input until a line `exit` arrives.
    pub echo: bool,
    /// `keel.fault=...`: a fault to raise deliberately, after everything else but the exit.
    pub fault: Option<Fault>,
    /// `keel.exit=...`: how to end the VM.
    pub exit_plan: ExitPlan,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cpus: None,
            ticks: None,
            tick_tsc: DEFAULT_TICK_TSC,
            echo: false,
            fault: None,
            exit_plan: ExitPlan::default(),
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
            ("keel.echo", None) => options.echo = true,
            ("keel.fault", Some(value)) => {
                options.fault =
                    Some(Fault::from_name(value).ok_or(error("one of triple, exception, panic"))?);
            }
            ("keel.exit", Some(value)) => {
                options.exit_plan = ExitPlan::parse(value)
                    .ok_or(error("1 to 4 of reset,debug,s5,halt separated by commas"))?;
            }
            ("keel.cpus" | "keel.ticks" | "keel.tick_tsc" | "keel.fault" | "keel.exit", None) => {
                return Err(error("a value after '='"));
            }
            ("keel.echo", Some(_)) => return Err(error("keel.echo without a value")),
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
        ] {
            let error = parse(token).unwrap_err();
            assert_eq!(error.token, token);
        }
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
