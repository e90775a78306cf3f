//! Interrupt routing through KVM: legacy lines as irqfds on the in-kernel IOAPIC/PIC pins, and
//! MSI-X vectors as irqfds on GSIs whose routes follow the messages the guest programs.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole routing table, so [`GsiRoutingTable`] keeps the
//! routes KVM installs by default (GSI 0-15 to both PICs and the IOAPIC, 16-23 to the IOAPIC;
//! virtio-mmio and the serial port rely on them) plus one MSI route per programmed vector, and
//! re-installs it whole when a vector's message changes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use devices::pci::msix::{MsiInterruptRoute, MsiMessage};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use log::debug;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::PciError;
use crate::narrow::halves;
use crate::sync::lock;

/// IOAPIC pins KVM routes by default.
const IOAPIC_PINS: u32 = 24;
/// Legacy PIC lines (two cascaded 8259s) KVM routes by default.
const PIC_PINS: u32 = 16;

/// An eventfd registered as KVM irqfd for `gsi`: writing it raises the line.
pub fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, String> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(|err| err.to_string())?;
    vm.register_irqfd(&fd, gsi).map_err(|err| err.to_string())?;
    Ok(fd)
}

/// Where a GSI is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsiRoute {
    /// A pin of an in-kernel interrupt controller (`KVM_IRQCHIP_*`).
    Irqchip {
        /// `KVM_IRQCHIP_PIC_MASTER`, `KVM_IRQCHIP_PIC_SLAVE` or `KVM_IRQCHIP_IOAPIC`.
        chip: u32,
        /// Pin on that controller.
        pin: u32,
    },
    /// An MSI message.
    Msi(MsiMessage),
}

/// The VM's full GSI routing table, as `KVM_SET_GSI_ROUTING` wants it.
#[derive(Debug, Clone)]
pub struct GsiRoutingTable {
    msi: BTreeMap<u32, MsiMessage>,
}

impl Default for GsiRoutingTable {
    fn default() -> Self {
        Self::new()
    }
}

impl GsiRoutingTable {
    /// KVM's default routes only, no MSI routes.
    pub fn new() -> Self {
        GsiRoutingTable {
            msi: BTreeMap::new(),
        }
    }

    /// Routes `gsi` to `message`; returns whether the table changed.
    pub fn set_msi(&mut self, gsi: u32, message: MsiMessage) -> bool {
        self.msi.insert(gsi, message) != Some(message)
    }

    /// Every route: KVM's defaults (GSI 0-15 to the IOAPIC and the PICs, 16-23 to the IOAPIC)
    /// then the MSI routes, by GSI.
    pub fn routes(&self) -> Vec<(u32, GsiRoute)> {
        let mut routes = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            routes.push((
                gsi,
                GsiRoute::Irqchip {
                    chip: KVM_IRQCHIP_IOAPIC,
                    pin: gsi,
                },
            ));
            if gsi < PIC_PINS {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                routes.push((gsi, GsiRoute::Irqchip { chip, pin: gsi % 8 }));
            }
        }
        routes.extend(self.msi.iter().map(|(gsi, m)| (*gsi, GsiRoute::Msi(*m))));
        routes
    }

    /// The table in KVM's format.
    pub fn to_kvm(&self) -> Result<KvmIrqRouting, vmm_sys_util::fam::Error> {
        let entries: Vec<kvm_irq_routing_entry> = self
            .routes()
            .into_iter()
            .map(|(gsi, route)| {
                let mut entry = kvm_irq_routing_entry {
                    gsi,
                    ..Default::default()
                };
                match route {
                    GsiRoute::Irqchip { chip, pin } => {
                        entry.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                        entry.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
                    }
                    GsiRoute::Msi(message) => {
                        let (address_lo, address_hi) = halves(message.address);
                        entry.type_ = KVM_IRQ_ROUTING_MSI;
                        entry.u.msi = kvm_irq_routing_msi {
                            address_lo,
                            address_hi,
                            data: message.data,
                            ..Default::default()
                        };
                    }
                }
                entry
            })
            .collect();
        KvmIrqRouting::from_entries(&entries)
    }
}

/// MSI-X delivery for one device: vector *n* is an irqfd on GSI `first_gsi + n`, whose route
/// follows the message the guest programs.
pub struct KvmMsiRoute {
    vm: Arc<VmFd>,
    routing: Arc<Mutex<GsiRoutingTable>>,
    gsis: Range<u32>,
    irqfds: Vec<EventFd>,
}

impl KvmMsiRoute {
    /// Creates and registers one irqfd per GSI in `gsis`.
    pub fn new(
        id: &str,
        vm: Arc<VmFd>,
        routing: Arc<Mutex<GsiRoutingTable>>,
        gsis: Range<u32>,
    ) -> Result<Self, PciError> {
        let mut irqfds = Vec::new();
        // One vector per GSI: the range comes from the device's MSI-X vector count, a u16.
        for (gsi, vector) in gsis.clone().zip(0u16..) {
            let irq_error = |detail: String| PciError::Irq {
                id: id.to_string(),
                vector,
                gsi,
                detail,
            };
            irqfds.push(irqfd(&vm, gsi).map_err(irq_error)?);
        }
        Ok(KvmMsiRoute {
            vm,
            routing,
            gsis,
            irqfds,
        })
    }
}

impl MsiInterruptRoute for KvmMsiRoute {
    fn fire(&self, vector: u16) -> std::io::Result<()> {
        match self.irqfds.get(usize::from(vector)) {
            Some(fd) => fd.write(1),
            None => Err(std::io::Error::other(format!(
                "no irqfd for vector {vector}"
            ))),
        }
    }

    fn update(&self, vector: u16, message: MsiMessage, masked: bool) -> std::io::Result<()> {
        // Masking is handled by the MSI-X table (it does not fire masked vectors), so the route
        // only follows the message.
        let _ = masked;
        let gsi = self.gsis.start + u32::from(vector);
        if !self.gsis.contains(&gsi) || message.address == 0 {
            return Ok(());
        }
        let mut routing = lock(&self.routing);
        if routing.set_msi(gsi, message) {
            debug!(
                "pci: GSI {gsi} -> MSI {:#x}/{:#x}",
                message.address, message.data
            );
            let table = routing
                .to_kvm()
                .map_err(|err| std::io::Error::other(format!("{err:?}")))?;
            self.vm
                .set_gsi_routing(&table)
                .map_err(|err| std::io::Error::other(err.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table_keeps_kvm_defaults_and_adds_one_msi_route_per_vector() {
        let mut table = GsiRoutingTable::new();
        let routes = table.routes();
        assert_eq!(routes.len(), 24 + 16, "IOAPIC pins plus PIC pins");
        assert!(routes.contains(&(
            4,
            GsiRoute::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: 4
            }
        )));
        assert!(routes.contains(&(
            4,
            GsiRoute::Irqchip {
                chip: KVM_IRQCHIP_PIC_MASTER,
                pin: 4
            }
        )));
        assert!(routes.contains(&(
            10,
            GsiRoute::Irqchip {
                chip: KVM_IRQCHIP_PIC_SLAVE,
                pin: 2
            }
        )));
        assert!(!routes.iter().any(|(gsi, route)| *gsi >= 16
            && matches!(route, GsiRoute::Irqchip { chip, .. } if *chip != KVM_IRQCHIP_IOAPIC)));

        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x31,
        };
        assert!(table.set_msi(25, message));
        assert!(!table.set_msi(25, message), "unchanged");
        assert!(table.set_msi(26, message));
        let routes = table.routes();
        assert_eq!(routes.len(), 42);
        assert_eq!(routes.last(), Some(&(26, GsiRoute::Msi(message))));
        let kvm = table.to_kvm().unwrap();
        let entries = kvm.as_slice();
        assert_eq!(entries.len(), 42);
        assert_eq!(entries[40].gsi, 25);
        assert_eq!(entries[40].type_, KVM_IRQ_ROUTING_MSI);
        assert_eq!(entries[0].type_, KVM_IRQ_ROUTING_IRQCHIP);
    }
}
