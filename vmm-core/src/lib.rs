//! Keel's VMM core: boot a Linux-style kernel in a KVM virtual machine and run it.
//!
//! A [`VmConfig`] describes the VM (vCPUs, memory, kernel, initrd, command line, serial
//! console); [`VmBuilder`] validates it, maps guest memory, loads the kernel through the PVH or
//! Linux 64-bit boot protocol, creates the KVM VM with its in-kernel interrupt controllers,
//! vCPUs and legacy devices; [`Vm`] runs one thread per vCPU and reports why the guest
//! stopped ([`ExitReason`]). A [`VmHandle`] pauses, resumes, stops and watches a VM from any
//! thread, so one process can run and manage many VMs.
//!
//! ```no_run
//! use vmm_core::{ExitReason, MemSize, VmBuilder, VmConfig};
//!
//! let mut config = VmConfig::new("guest.elf");
//! config.vcpus = 2;
//! config.memory = MemSize::mib(128);
//! let mut vm = VmBuilder::new(config).build()?;
//! let handle = vm.handle(); // Clone + Send: give it to a control thread
//! vm.start()?;
//! handle.pause()?;
//! handle.resume()?;
//! match vm.wait() {
//!     ExitReason::Reset | ExitReason::Shutdown => println!("guest finished"),
//!     other => eprintln!("guest failed: {other}"),
//! }
//! # Ok::<(), vmm_core::Error>(())
//! ```
//!
//! Bad input is refused before anything is created, with the field named:
//!
//! ```
//! use vmm_core::{Error, VmBuilder, VmConfig};
//!
//! let mut config = VmConfig::new("/no/such/kernel");
//! config.vcpus = 0;
//! match VmBuilder::new(config).build() {
//!     Err(Error::Config(err)) => assert_eq!(err.field, "vcpus"),
//!     _ => unreachable!("0 vCPUs is refused"),
//! }
//! ```
//!
//! What an embedder uses: [`VmConfig`] and its parts in [`config`], [`VmBuilder`] with the
//! device traits of [`backends`] for its own disks, NICs and devices, [`Vm`] and [`VmHandle`],
//! the console socket in [`console`], [`VmCounters`], and the errors. The rest (guest physical
//! layout, memory, boot protocols, ACPI, the KVM VM and vCPUs, virtio-mmio and virtio-PCI
//! wiring, the event loop) is internal; Keel's own tests and fuzz targets reach it through the
//! `testing` feature, which is not part of the supported API.

#![deny(missing_docs)]
// A silently truncated guest value (or layout value) is a bug class: narrowings use `try_from`
// with the failure handled, a lossless form, or an `as` under a local `allow` naming the bound.
#![deny(clippy::cast_possible_truncation)]
#![warn(unnameable_types)]

/// Declares an internal module: private, or public (and hidden from the docs) with the
/// `testing` feature for Keel's own integration tests, benches and fuzz targets.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "testing"))]
        mod $name;
    )*};
}

internal!(
    acpi,
    boot,
    device_manager,
    event_loop,
    layout,
    memory,
    snapshot,
    vcpu,
    vm
);

mod boot_timer;
mod builder;
pub mod config;
pub mod console;
mod counters;
pub mod migration;
mod narrow;
mod resident;
pub mod seccomp;
mod state;
mod sync;

/// The device traits and back ends an embedder implements or uses with
/// [`VmBuilder::disk`], [`VmBuilder::net`] and [`VmBuilder::virtio_device`].
pub mod backends {
    pub use devices::counters::{Counter, CounterKind};
    pub use devices::virtio::block::{DiskBackend, RawFile};
    pub use devices::virtio::net::{NetBackend, NullBackend, Tap};
    pub use devices::virtio::{ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt};
}

pub use boot_timer::BootTimer;
pub use builder::{Vm, VmBuilder};
pub use config::{
    BootProtocol, ConfigError, ConsoleConfig, MemSize, SerialConfig, SerialInput, SerialOutput,
    VirtioTransport, VmConfig, DEFAULT_CMDLINE, MAX_VCPUS,
};
pub use counters::{DeviceCounters, VmCounters};
pub use devices::counters::{Counter, CounterKind};
pub use snapshot::saved_config;
pub use state::{
    AnnounceError, ExitReason, RateLimitUpdateError, StateError, VmHandle, VmState, PAUSE_TIMEOUT,
};

/// The causes inside [`Error`]'s variants, for embedders that look deeper than its message.
pub mod errors {
    pub use crate::acpi::AcpiError;
    pub use crate::boot::{KernelFormat, LoadError};
    pub use crate::console::ConsoleError;
    pub use crate::device_manager::DeviceManagerError;
    pub use crate::device_manager::{PciError, ResourceError};
    pub use crate::event_loop::EventLoopError;
    pub use crate::memory::MemoryError;
    pub use crate::snapshot::file::StateFileError;
    pub use crate::snapshot::SnapshotError;
    pub use crate::vcpu::regs::RegsError;
    pub use crate::vcpu::VcpuError;
    pub use crate::vm::VmError;
    pub use devices::bus::BusError;
}

/// Errors from building or starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The VM would exceed a limit of this host or of the process's [`config::Limits`].
    #[error(transparent)]
    Limit(#[from] config::LimitError),
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Load(#[from] boot::LoadError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Creating the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Configuring a vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// Creating or placing a virtio device failed.
    #[error(transparent)]
    Device(#[from] device_manager::DeviceManagerError),
    /// Placing a virtio-PCI device or connecting its MSI-X vectors failed.
    #[error(transparent)]
    Pci(#[from] device_manager::PciError),
    /// Placing a device on a bus failed.
    #[error(transparent)]
    Bus(#[from] devices::bus::BusError),
    /// A live migration could not be received.
    #[error(transparent)]
    Migration(Box<migration::MigrationError>),
    /// A snapshot could not be restored.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The console socket could not be created.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    /// The seccomp policy's filters did not compile.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The serial output file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The event loop could not start.
    #[error(transparent)]
    EventLoop(#[from] event_loop::EventLoopError),
    /// A lifecycle request was invalid.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another I/O error (eventfds, threads).
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
}
