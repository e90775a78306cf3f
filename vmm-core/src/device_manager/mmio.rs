//! Devices on virtio-mmio: a window and an interrupt line each, described to the guest in the
//! DSDT (and, optionally, in `virtio_mmio.device=` command-line entries).

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::virtio::mmio::{MmioTransport, SharedVirtioDevice, MMIO_WINDOW_SIZE};
use devices::virtio::NotifyStats;
use kvm_ioctls::VmFd;
use devices::GuestMemoryMmap;

use super::interrupts::irqfd;
use super::notify::{NotifyLayout, QueueIoeventfds, QueueNotifier};
use super::resources::Resources;
use super::DeviceManagerError;

/// Where a virtio-mmio device lives, as the guest must be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Device id from the config.
    pub id: String,
    /// Virtio device type.
    pub device_type: u32,
    /// Window base address.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Interrupt line (GSI), edge-triggered.
    pub irq: u32,
}

impl MmioDeviceInfo {
    /// The Linux command-line entry describing this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size / 1024,
            self.base,
            self.irq
        )
    }
}

/// Plans where each virtio-mmio device goes (before KVM exists, so the command line and ACPI
/// tables can be written first), then attaches the devices to the VM.
#[derive(Debug, Default)]
pub struct VirtioMmioDevices {
    devices: Vec<MmioDeviceInfo>,
}

impl VirtioMmioDevices {
    /// Gives each `(id, device type)` a window and an interrupt line from `resources`, in
    /// order.
    pub fn plan(
        devices: &[(String, u32)],
        resources: &mut Resources,
    ) -> Result<Self, DeviceManagerError> {
        let devices = devices
            .iter()
            .map(|(id, device_type)| {
                let irq = resources
                    .legacy_irq()
                    .ok_or_else(|| DeviceManagerError::NoIrq(id.clone()))?;
                let base = resources
                    .mmio_window()
                    .ok_or_else(|| DeviceManagerError::NoWindow(id.clone()))?;
                Ok(MmioDeviceInfo {
                    id: id.clone(),
                    device_type: *device_type,
                    base,
                    size: MMIO_WINDOW_SIZE,
                    irq,
                })
            })
            .collect::<Result<Vec<_>, DeviceManagerError>>()?;
        Ok(VirtioMmioDevices { devices })
    }

    /// Puts `device` (planned as `info`) on `bus` behind an MMIO transport, connects its
    /// interrupt line through a KVM irqfd, and its queue notifications through KVM ioeventfds.
    /// Returns the transport and the event-loop subscriber that processes the notified queues
    /// (`None` if KVM refused the ioeventfds: the transport then handles notifications on the
    /// vCPU thread).
    pub fn attach(
        info: &MmioDeviceInfo,
        vm: &Arc<VmFd>,
        bus: &mut Bus,
        mem: &GuestMemoryMmap,
        device: SharedVirtioDevice,
    ) -> Result<(Arc<Mutex<MmioTransport>>, Option<QueueNotifier>), DeviceManagerError> {
        let irq_error = |detail: String| DeviceManagerError::Irq {
            id: info.id.clone(),
            irq: info.irq,
            detail,
        };
        let line = irqfd(vm, info.irq).map_err(irq_error)?;
        let transport =
            MmioTransport::new(device.clone(), mem.clone(), line).map_err(|source| {
                DeviceManagerError::Transport {
                    id: info.id.clone(),
                    source,
                }
            })?;
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(&info.id, info.base, info.size, transport.clone())?;
        // Registrations on a virtio-mmio window never move: only the subscriber is kept.
        let notifier = QueueIoeventfds::attach(
            &info.id,
            vm,
            NotifyLayout::Mmio,
            info.base,
            device,
            Arc::new(NotifyStats::default()),
        )
        .map(|(_, notifier)| notifier);
        Ok((transport, notifier))
    }

    /// The planned devices.
    pub fn devices(&self) -> &[MmioDeviceInfo] {
        &self.devices
    }

    /// The `virtio_mmio.device=` entries for every device, space-separated.
    pub fn cmdline_entries(&self) -> String {
        self.devices
            .iter()
            .map(MmioDeviceInfo::cmdline_entry)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entries_use_linux_syntax() {
        let info = MmioDeviceInfo {
            id: "d".into(),
            device_type: 2,
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
        };
        assert_eq!(info.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:6");
    }

    #[test]
    fn plans_give_distinct_windows_and_lines_until_lines_run_out() {
        let mut resources = Resources::new(512 << 20).unwrap();
        let wanted: Vec<(String, u32)> = (0..17).map(|i| (format!("d{i}"), 2)).collect();
        let plan = VirtioMmioDevices::plan(&wanted, &mut resources).unwrap();
        let mut bases: Vec<u64> = plan.devices().iter().map(|d| d.base).collect();
        let mut irqs: Vec<u32> = plan.devices().iter().map(|d| d.irq).collect();
        bases.dedup();
        irqs.sort();
        irqs.dedup();
        assert_eq!((bases.len(), irqs.len()), (wanted.len(), wanted.len()));
        assert!(
            !irqs.contains(&4) && !irqs.contains(&8) && !irqs.contains(&super::super::GED_IRQ),
            "serial, RTC and GED lines stay free"
        );
        assert!(matches!(
            VirtioMmioDevices::plan(&[("extra".into(), 2)], &mut resources),
            Err(DeviceManagerError::NoIrq(id)) if id == "extra"
        ));
    }
}
