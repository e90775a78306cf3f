//! Placing a VM's virtio devices and wiring them to KVM, one concern per module:
//!
//! - [`entries`]: the devices, created from the config or given by the embedder;
//! - [`resources`]: guest addresses, interrupt lines and GSIs, handed out and given back;
//! - [`interrupts`]: legacy lines and MSI-X routes through KVM irqfds;
//! - [`notify`]: queue notifications through KVM ioeventfds;
//! - [`mmio`] and [`pci`]: attaching devices over each transport.

pub mod entries;
pub mod interrupts;
pub mod mmio;
pub mod notify;
pub mod pci;
pub mod resources;

pub use entries::{create_virtio_devices, VirtioDeviceEntry};
pub use mmio::{MmioDeviceInfo, VirtioMmioDevices};
pub use pci::{PciError, VirtioPciDevices};
pub use resources::{PciHostInfo, ResourceError, Resources, GED_IRQ};

/// Errors placing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// No interrupt line is left.
    #[error("device `{0}`: no free interrupt line left for another virtio-mmio device")]
    NoIrq(String),
    /// No virtio-mmio window is left.
    #[error("device `{0}`: no room left for another virtio-mmio window")]
    NoWindow(String),
    /// The VM's resources could not be set up.
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// Creating the interrupt eventfd or registering it with KVM failed.
    #[error("device `{id}`: cannot connect its interrupt line {irq}: {detail}")]
    Irq {
        /// Device id.
        id: String,
        /// The line.
        irq: u32,
        /// Cause.
        detail: String,
    },
    /// The transport refused the device.
    #[error("device `{id}`: {source}")]
    Transport {
        /// Device id.
        id: String,
        /// Cause.
        source: devices::virtio::mmio::TransportError,
    },
    /// The MMIO bus refused the window.
    #[error(transparent)]
    Bus(#[from] devices::bus::BusError),
    /// A device could not be created from its config (file, TAP or socket problems).
    #[error("device `{id}`: {detail}")]
    Create {
        /// Device id.
        id: String,
        /// What went wrong, naming the config field.
        detail: String,
    },
}

