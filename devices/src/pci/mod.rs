//! PCI: configuration space, bus 0 with its config access mechanisms, and MSI-X.
//!
//! - [`configuration`]: a type-0 header with BARs and a capability list.
//! - [`bus`]: the bus, the host bridge, port 0xCF8/0xCFC and ECAM config access, and the MMIO
//!   window BARs are decoded in.
//! - [`msix`]: the MSI-X table and pending bits, delivering through an injected route.
//!
//! Nothing here knows KVM; `vmm-core` connects MSI-X vectors to irqfds and GSI routes.
//! Virtio over PCI is in [`crate::virtio::pci`].

pub mod bus;
pub mod configuration;
pub mod msix;
