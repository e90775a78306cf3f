//! The user-facing VM description ([`VmConfig`]) and its validation.
//!
//! A `VmConfig` is plain data (serde, so managers can store it as JSON/YAML). [`VmConfig::validate`]
//! checks everything that can be checked before touching KVM and names the offending field in
//! its error. Devices that need caller-supplied objects (a serial writer) are given to the
//! builder instead: see [`crate::VmBuilder`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::layout;

mod devices;
mod limits;
mod rate_limit;
pub use devices::{
    check_devices, check_devices_on_host, parse_mac, DiskConfig, NetConfig, RngConfig, VsockConfig,
    SECTOR_SIZE,
};
pub(crate) use limits::{check_limits, check_queue_sizes};
pub use limits::{descriptors_needed, HostResources, LimitError, Limits, MAX_QUEUE_SIZE};
pub(crate) use rate_limit::LimiterField;
pub use rate_limit::{RateLimitUpdate, RateLimiterConfig, TokenBucketConfig, MAX_REFILL_TIME_MS};

/// Most vCPUs a VM may have: xAPIC IDs are 8 bits and 0xFF is the broadcast ID.
pub const MAX_VCPUS: u32 = 254;
/// Least guest memory: room for the low-memory boot structures and a small kernel at 1 MiB.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;
/// Longest kernel command line accepted (the x86 Linux `COMMAND_LINE_SIZE`, NUL included).
pub const MAX_CMDLINE_LEN: usize = 2048;
/// Most virtio devices with the PCI transport (bus 0 slots minus the host bridge).
pub const MAX_PCI_DEVICES: usize = 31;
/// Most virtio devices with the virtio-mmio transport: one legacy interrupt line each, of
/// lines 5-22 less the RTC's 8.
pub const MAX_MMIO_DEVICES: usize = 17;
/// Command line used when the config gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

const PAGE_SIZE: u64 = 4096;

/// A size in bytes, written in configs as an integer number of MiB or as a string with a
/// unit (`"512K"`, `"128M"`, `"2G"`, `"4096"` bytes with a `B` suffix: `"4096B"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "SizeRepr")]
pub struct MemSize(u64);

impl MemSize {
    /// `mib` mebibytes.
    pub const fn mib(mib: u64) -> Self {
        MemSize(mib << 20)
    }

    /// `bytes` bytes.
    pub const fn bytes(bytes: u64) -> Self {
        MemSize(bytes)
    }

    /// The size in bytes.
    pub const fn as_bytes(self) -> u64 {
        self.0
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MemSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .description(Some("MiB")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*[0-9]+\s*([bBkKmMgGtT]([iI]?[bB])?)?\s*$"))
                    .description(Some("a size with a unit: 512K, 128M, 2G, 4096B")),
            )
            .description(Some(
                "A size: an integer number of MiB, or a string with a unit (B, K, M, G, T)",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MemSize {}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        if bytes != 0 && bytes.is_multiple_of(1 << 30) {
            write!(f, "{}G", bytes >> 30)
        } else if bytes.is_multiple_of(1 << 20) {
            write!(f, "{}M", bytes >> 20)
        } else if bytes.is_multiple_of(1 << 10) {
            write!(f, "{}K", bytes >> 10)
        } else {
            write!(f, "{bytes}B")
        }
    }
}

impl FromStr for MemSize {
    type Err = String;

    /// Parses `"128"` (MiB), `"128M"`, `"1G"`, `"512K"`, `"4096B"` (case-insensitive, optional
    /// `iB`/`B` after the unit letter).
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let split = lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len());
        let (digits, unit) = lower.split_at(split);
        let shift = match unit.trim() {
            "" | "m" | "mb" | "mib" => 20,
            "b" => 0,
            "k" | "kb" | "kib" => 10,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => {
                return Err(format!(
                    "`{trimmed}` has an unknown unit (use B, K, M, G or T)"
                ))
            }
        };
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("`{trimmed}` is not a size (examples: 128, 128M, 2G, 512K)"))?;
        value
            .checked_mul(1 << shift)
            .map(MemSize)
            .ok_or_else(|| format!("`{trimmed}` is too large"))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Mib(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for MemSize {
    type Error = String;

    fn try_from(repr: SizeRepr) -> Result<Self, String> {
        match repr {
            SizeRepr::Mib(mib) => mib
                .checked_mul(1 << 20)
                .map(MemSize)
                .ok_or_else(|| format!("{mib} MiB is too large")),
            SizeRepr::Text(text) => text.parse(),
        }
    }
}

impl From<MemSize> for SizeRepr {
    fn from(size: MemSize) -> Self {
        if size.0.is_multiple_of(1 << 20) {
            SizeRepr::Mib(size.0 >> 20)
        } else {
            SizeRepr::Text(size.to_string())
        }
    }
}

/// Which entry protocol to boot the kernel through.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the kernel is an ELF with a PVH entry note, else the Linux 64-bit protocol.
    #[default]
    Auto,
    /// The PVH boot protocol (32-bit entry, `hvm_start_info`); needs an ELF with the PVH note.
    Pvh,
    /// The Linux x86-64 boot protocol (64-bit entry, zero page); ELF vmlinux or bzImage.
    Linux64,
}

/// How virtio devices are attached to the guest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtioTransport {
    /// virtio-mmio windows described in the DSDT (and optionally on the command line).
    Mmio,
    /// Modern virtio-PCI functions behind a PCI host bridge (ECAM + ports 0xCF8), MSI-X only.
    /// The default: every current Linux driver stack has it built in or as a module.
    #[default]
    Pci,
}

/// Where the guest's serial console output goes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialOutput {
    /// This process's standard output.
    #[default]
    Stdout,
    /// Discarded.
    Null,
    /// Appended to a file (created if missing).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    File(PathBuf),
    /// Served on a Unix socket a client attaches to (input then comes from that client too;
    /// see [`crate::console`]). Stale socket files are replaced.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    Socket(PathBuf),
}

/// Where the guest's serial console input comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialInput {
    /// No input.
    #[default]
    None,
    /// This process's standard input.
    Stdin,
}

/// The serial console (COM1) configuration.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Output sink.
    #[serde(default)]
    pub output: SerialOutput,
    /// Input source.
    #[serde(default)]
    pub input: SerialInput,
}

/// A virtio console (Linux's `hvc0`), alongside the serial port: its output and input have the
/// serial port's choices.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Device id.
    #[serde(default = "default_console_id")]
    pub id: String,
    /// Output sink.
    #[serde(default)]
    pub output: SerialOutput,
    /// Input source.
    #[serde(default)]
    pub input: SerialInput,
}

fn default_console_id() -> String {
    "console0".to_string()
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            id: default_console_id(),
            output: SerialOutput::default(),
            input: SerialInput::default(),
        }
    }
}

/// A VM's description.
///
/// ```
/// use vmm_core::{MemSize, VmConfig};
///
/// let config: VmConfig = serde_json::from_str(
///     r#"{ "vcpus": 2, "memory": "256M", "kernel": "/boot/vmlinuz" }"#,
/// ).unwrap();
/// assert_eq!(config.memory, MemSize::mib(256));
/// assert_eq!(config.cmdline, vmm_core::DEFAULT_CMDLINE);
/// ```
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM; at least [`MIN_MEMORY_BYTES`], a multiple of 4 KiB.
    #[serde(default = "default_memory")]
    pub memory: MemSize,
    /// Kernel image: an ELF (vmlinux, or any PVH/Linux-64 ELF) or a bzImage.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Entry protocol.
    #[serde(default)]
    pub boot_protocol: BootProtocol,
    /// Serial console.
    #[serde(default)]
    pub serial: SerialConfig,
    /// Disks (virtio-blk).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Network cards (virtio-net on TAP).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Entropy device (virtio-rng).
    #[serde(default)]
    pub rng: Option<RngConfig>,
    /// A virtio console (`hvc0` in Linux).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// Also describe virtio-mmio devices on the kernel command line (`virtio_mmio.device=`),
    /// for kernels built with `VIRTIO_MMIO_CMDLINE_DEVICES`; they are always in the DSDT.
    #[serde(default)]
    pub virtio_mmio_cmdline: bool,
    /// Transport for every virtio device: `"mmio"` (default) or `"pci"`.
    #[serde(default)]
    pub virtio_transport: VirtioTransport,
}

fn default_vcpus() -> u32 {
    1
}

fn default_memory() -> MemSize {
    MemSize::mib(128)
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

impl VmConfig {
    /// A config with defaults (1 vCPU, 128 MiB, [`DEFAULT_CMDLINE`]) for `kernel`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            vcpus: default_vcpus(),
            memory: default_memory(),
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            boot_protocol: BootProtocol::Auto,
            serial: SerialConfig::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            rng: None,
            console: None,
            virtio_mmio_cmdline: false,
            virtio_transport: VirtioTransport::Pci,
        }
    }

    /// Checks every field that can be checked without KVM: [`VmConfig::check`], then
    /// [`VmConfig::check_host`].
    ///
    /// Whether the kernel parses and the initrd fits below the kernel's limit is checked when
    /// the kernel is loaded (the boot loader), since that needs the kernel's header.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()?;
        self.check_host()
    }

    /// Checks what this host has to offer the config: the kernel and initrd are regular files
    /// (and the initrd fits in guest memory), disk images exist and are whole sectors, the vsock
    /// socket's directory exists. Run it on the node that will run the VM.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
            let size = std::fs::metadata(initrd)
                .map_err(|err| {
                    ConfigError::invalid("initrd", format!("{}: {err}", initrd.display()))
                })?
                .len();
            if size >= self.memory.as_bytes() {
                return Err(ConfigError::invalid(
                    "initrd",
                    format!(
                        "{} is {} bytes, which does not fit in {} of guest memory",
                        initrd.display(),
                        size,
                        self.memory
                    ),
                ));
            }
        }
        check_devices_on_host(&self.disks, self.vsock.as_ref())
    }

    /// The virtio devices the config asks for.
    pub(crate) fn virtio_devices(&self) -> usize {
        self.disks.len()
            + self.nets.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng.is_some())
            + usize::from(self.console.is_some())
    }

    /// Writes the limiters `update` sets into the config of the device it names (after
    /// [`VmHandle::set_rate_limit`](crate::VmHandle::set_rate_limit) changed them on the
    /// running VM, so a reboot or a snapshot keeps them). Returns whether the config has that
    /// device (an embedder's own devices are not in it).
    pub fn apply_rate_limit(&mut self, update: &RateLimitUpdate) -> bool {
        if let Some(disk) = self.disks.iter_mut().find(|disk| disk.id == update.id) {
            if let Some(limiter) = update.rate_limiter {
                disk.rate_limiter = Some(limiter).filter(|l| *l != RateLimiterConfig::default());
            }
            return true;
        }
        if let Some(nic) = self.nets.iter_mut().find(|nic| nic.id == update.id) {
            for (slot, given) in [
                (&mut nic.rx_rate_limiter, update.rx_rate_limiter),
                (&mut nic.tx_rate_limiter, update.tx_rate_limiter),
            ] {
                if let Some(limiter) = given {
                    *slot = Some(limiter).filter(|l| *l != RateLimiterConfig::default());
                }
            }
            return true;
        }
        match self.rng.as_mut() {
            Some(rng) if rng.id == update.id => {
                if let Some(limiter) = update.rate_limiter {
                    rng.rate_limiter = Some(limiter).filter(|l| *l != RateLimiterConfig::default());
                }
                true
            }
            _ => false,
        }
    }

    /// The device half of [`VmConfig::check_host`]: disk images and the vsock socket's
    /// directory (a restored VM loads no kernel).
    pub(crate) fn check_host_devices(&self) -> Result<(), ConfigError> {
        check_devices_on_host(&self.disks, self.vsock.as_ref())
    }

    /// Checks the config on its own, touching nothing on this host (no files, no devices), so a
    /// control plane can check a config meant for another node: counts and sizes, the command
    /// line, device ids, names, MACs, CIDs and socket paths, and the consoles.
    ///
    /// ```
    /// use vmm_core::VmConfig;
    ///
    /// // The kernel only exists on the node that will run the VM: check() is fine with that.
    /// let mut config = VmConfig::new("/srv/kernels/vmlinux-6.12");
    /// config.check().unwrap();
    /// config.vcpus = 0;
    /// assert_eq!(config.check().unwrap_err().field, "vcpus");
    /// ```
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::invalid("vcpus", "must be at least 1"));
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::invalid(
                "vcpus",
                format!(
                    "{} is more than {MAX_VCPUS}, the most xAPIC IDs can address",
                    self.vcpus
                ),
            ));
        }
        let memory = self.memory.as_bytes();
        if memory < MIN_MEMORY_BYTES {
            return Err(ConfigError::invalid(
                "memory",
                format!(
                    "{} is too small: at least {} is needed",
                    self.memory,
                    MemSize::bytes(MIN_MEMORY_BYTES)
                ),
            ));
        }
        if !memory.is_multiple_of(PAGE_SIZE) {
            return Err(ConfigError::invalid(
                "memory",
                format!("{} is not a multiple of the 4 KiB page size", self.memory),
            ));
        }
        if memory > layout::MAX_MEMORY_BYTES {
            return Err(ConfigError::invalid(
                "memory",
                format!(
                    "{} is more than the {} Keel supports",
                    self.memory,
                    MemSize::bytes(layout::MAX_MEMORY_BYTES)
                ),
            ));
        }
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::invalid("kernel", "the path is empty"));
        }
        if self
            .initrd
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid("initrd", "the path is empty"));
        }
        if self.cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::invalid(
                "cmdline",
                format!(
                    "{} bytes is too long: at most {} bytes",
                    self.cmdline.len(),
                    MAX_CMDLINE_LEN - 1
                ),
            ));
        }
        if let Some(bad) = self
            .cmdline
            .chars()
            .find(|c| c.is_control() || !c.is_ascii())
        {
            return Err(ConfigError::invalid(
                "cmdline",
                format!("contains {bad:?}: only printable ASCII is allowed"),
            ));
        }
        check_devices(
            &self.disks,
            &self.nets,
            self.vsock.as_ref(),
            self.rng.as_ref(),
        )?;
        let count = self.virtio_devices();
        if self.virtio_transport == VirtioTransport::Mmio && count > MAX_MMIO_DEVICES {
            return Err(ConfigError::invalid(
                "virtio_transport",
                format!(
                    "{count} virtio devices need {count} interrupt lines: virtio-mmio has \
                     {MAX_MMIO_DEVICES} (\"pci\" takes {MAX_PCI_DEVICES})"
                ),
            ));
        }
        if self.virtio_transport == VirtioTransport::Pci {
            // Bus 0 has 32 slots and the host bridge takes one.
            if count > MAX_PCI_DEVICES {
                return Err(ConfigError::invalid(
                    "virtio_transport",
                    format!("{count} virtio devices do not fit on PCI bus 0 (at most {MAX_PCI_DEVICES})"),
                ));
            }
            if self.virtio_mmio_cmdline {
                return Err(ConfigError::invalid(
                    "virtio_mmio_cmdline",
                    "describes virtio-mmio devices, but virtio_transport is \"pci\"",
                ));
            }
        }
        check_console_ends("serial", &self.serial.output, &self.serial.input)?;
        if let Some(console) = &self.console {
            check_console_ends("console", &console.output, &console.input)?;
            if console.input == SerialInput::Stdin && self.serial.input == SerialInput::Stdin {
                return Err(ConfigError::invalid(
                    "console.input",
                    "standard input is already the serial port's input",
                ));
            }
            if let (SerialOutput::Socket(a), SerialOutput::Socket(b)) =
                (&console.output, &self.serial.output)
            {
                if a == b {
                    return Err(ConfigError::invalid(
                        "console.output",
                        format!("socket {} is already the serial port's", a.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a console's output and input (`which`: "serial" or "console", naming the fields).
fn check_console_ends(
    which: &'static str,
    output: &SerialOutput,
    input: &SerialInput,
) -> Result<(), ConfigError> {
    let (output_field, input_field) = match which {
        "serial" => ("serial.output", "serial.input"),
        _ => ("console.output", "console.input"),
    };
    match output {
        SerialOutput::File(path) if path.as_os_str().is_empty() => {
            Err(ConfigError::invalid(output_field, "file path is empty"))
        }
        SerialOutput::Socket(path) => {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(output_field, "socket path is empty"));
            }
            // sun_path holds 108 bytes, NUL included.
            if path.as_os_str().len() > 107 {
                return Err(ConfigError::invalid(
                    output_field,
                    format!(
                        "socket path {} is {} bytes: a Unix socket path holds at most 107",
                        path.display(),
                        path.as_os_str().len()
                    ),
                ));
            }
            if *input != SerialInput::None {
                return Err(ConfigError::invalid(
                    input_field,
                    "must be \"none\" when the output is a socket: input comes from the socket's client",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_file(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::invalid(
            field,
            format!("{} is not a regular file", path.display()),
        )),
        Err(err) => Err(ConfigError::invalid(
            field,
            format!("cannot read {}: {err}", path.display()),
        )),
    }
}

/// A config field that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VM config field `{field}`: {reason}")]
pub struct ConfigError {
    /// The field's name as written in a config file.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, bytes: usize) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&vec![0u8; bytes]).unwrap();
        path
    }

    fn valid() -> VmConfig {
        VmConfig::new(temp_file("kernel", 16))
    }

    fn field_of(config: &VmConfig) -> &'static str {
        config.validate().unwrap_err().field
    }

    #[test]
    fn defaults_are_valid() {
        valid().validate().unwrap();
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut c = valid();
        c.vcpus = 0;
        assert_eq!(field_of(&c), "vcpus");
        c.vcpus = 255;
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "vcpus");
        assert!(err.to_string().contains("255"), "{err}");

        let mut c = valid();
        c.memory = MemSize::mib(4);
        assert_eq!(field_of(&c), "memory");
        c.memory = MemSize::bytes((64 << 20) + 512);
        let err = c.validate().unwrap_err();
        assert!(err.reason.contains("4 KiB"), "{err}");

        let mut c = valid();
        c.kernel = "/nonexistent/vmlinux".into();
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "kernel");
        assert!(err.reason.contains("/nonexistent/vmlinux"), "{err}");
        c.kernel = std::env::temp_dir();
        assert_eq!(field_of(&c), "kernel");

        let mut c = valid();
        c.cmdline = "x".repeat(MAX_CMDLINE_LEN);
        assert_eq!(field_of(&c), "cmdline");
        c.cmdline = "console=ttyS0\n".into();
        assert_eq!(field_of(&c), "cmdline");

        let mut c = valid();
        c.memory = MemSize::mib(8);
        c.initrd = Some(temp_file("big-initrd", 8 << 20));
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "initrd");
        assert!(err.reason.contains("does not fit"), "{err}");
        c.initrd = Some("/nonexistent/initrd".into());
        assert_eq!(field_of(&c), "initrd");
    }

    #[test]
    fn virtio_transport_parses_defaults_to_pci_and_is_validated() {
        let config: VmConfig = serde_json::from_str(r#"{"kernel": "k"}"#).unwrap();
        assert_eq!(config.virtio_transport, VirtioTransport::Pci);
        assert_eq!(VmConfig::new("k").virtio_transport, VirtioTransport::Pci);
        let config: VmConfig =
            serde_json::from_str(r#"{"kernel": "k", "virtio_transport": "mmio"}"#).unwrap();
        assert_eq!(config.virtio_transport, VirtioTransport::Mmio);
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "virtio_transport": "isa"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("isa"), "{err}");

        let mut c = valid();
        c.virtio_transport = VirtioTransport::Pci;
        c.validate().unwrap();
        c.virtio_mmio_cmdline = true;
        assert_eq!(field_of(&c), "virtio_mmio_cmdline");
        c.virtio_mmio_cmdline = false;
        c.disks = (0..32)
            .map(|i| DiskConfig {
                id: format!("d{i}"),
                path: temp_file("disk", 512),
                read_only: true,
                direct: false,
                rate_limiter: None,
            })
            .collect();
        assert_eq!(field_of(&c), "virtio_transport");
        c.disks.truncate(31);
        c.validate().unwrap();
        c.virtio_transport = VirtioTransport::Mmio;
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "virtio_transport");
        assert!(err.reason.contains("virtio-mmio has 17"), "{err}");
        c.disks.truncate(17);
        c.validate().unwrap();
    }

    #[test]
    fn sizes_parse_in_the_units_people_write() {
        for (text, bytes) in [
            ("128", 128 << 20),
            ("128M", 128 << 20),
            ("128MiB", 128 << 20),
            ("2g", 2 << 30),
            ("512K", 512 << 10),
            ("4096B", 4096),
        ] {
            assert_eq!(text.parse::<MemSize>(), Ok(MemSize::bytes(bytes)), "{text}");
        }
        for bad in ["", "lots", "12X", "99999999999999999999G"] {
            assert!(bad.parse::<MemSize>().is_err(), "{bad}");
        }
        assert_eq!(MemSize::mib(2048).to_string(), "2G");
    }

    #[test]
    fn configs_round_trip_through_json_and_reject_unknown_fields() {
        let config = valid();
        let json = serde_json::to_string(&config).unwrap();
        let back: VmConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "vcpu": 2}"#).unwrap_err();
        assert!(err.to_string().contains("vcpu"), "{err}");
        let err =
            serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "memory": "12X"}"#).unwrap_err();
        assert!(err.to_string().contains("12X"), "{err}");
    }
}
