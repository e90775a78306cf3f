//! The virtio devices of a VM before they are placed: those the config asks for, created with
//! their host back ends open (files, TAP devices, sockets), and the embedder's own.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{BlockConfig, IoMode, VirtioBlock};
use devices::virtio::mmio::SharedVirtioDevice;
use devices::virtio::net::{Net, NetConfig as NetDeviceConfig, TapSource};
use devices::virtio::rng::VirtioRng;
use devices::rate_limiter::RateLimitTarget;
use devices::virtio::vsock::{Vsock, VsockConfig as VsockDeviceConfig};
use devices::virtio::VirtioDevice;
use event_manager::MutEventSubscriber;

use super::DeviceManagerError;
use crate::config::{parse_mac, LimiterField, RateLimiterConfig, VmConfig};
use crate::sync::lock;

/// Sets the limit `config` asks for (if any) on `device`'s limiter `target`; `field` names the
/// config field in the error.
fn limit(
    device: &mut dyn VirtioDevice,
    id: &str,
    target: RateLimitTarget,
    field: LimiterField,
    config: Option<&RateLimiterConfig>,
) -> Result<(), DeviceManagerError> {
    let Some(config) = config else {
        return Ok(());
    };
    device
        .set_rate_limit(target, config.to_limit())
        .map_err(|err| DeviceManagerError::Create {
            id: id.to_string(),
            detail: format!("field `{}`: {err}", field.name()),
        })
}

/// A virtio device created from the config, before it is placed.
pub struct VirtioDeviceEntry {
    /// Device id from the config.
    pub id: String,
    /// The device.
    pub device: SharedVirtioDevice,
    /// Host-side event handling for the event loop, for devices that have any.
    pub subscriber: Option<Box<dyn MutEventSubscriber + Send>>,
    /// The typed device when it is a NIC (for announcements after a migration).
    pub(crate) net: Option<Arc<Mutex<Net>>>,
}

impl VirtioDeviceEntry {
    pub(crate) fn new<D: devices::virtio::VirtioDevice + 'static>(id: &str, device: D) -> Self {
        VirtioDeviceEntry {
            id: id.to_string(),
            device: Arc::new(Mutex::new(device)),
            subscriber: None,
            net: None,
        }
    }

    /// A NIC: a device with host-side events whose typed handle is kept.
    pub(crate) fn nic(id: &str, net: Net) -> Self {
        let shared = Arc::new(Mutex::new(net));
        VirtioDeviceEntry {
            id: id.to_string(),
            device: shared.clone(),
            subscriber: Some(Box::new(shared.clone())),
            net: Some(shared),
        }
    }

    /// A device the caller already shares (and keeps a typed handle to).
    pub(crate) fn shared<D: devices::virtio::VirtioDevice + 'static>(
        id: &str,
        device: Arc<Mutex<D>>,
    ) -> Self {
        VirtioDeviceEntry {
            id: id.to_string(),
            device,
            subscriber: None,
            net: None,
        }
    }

    /// A device that also handles host-side events in the event loop.
    pub(crate) fn with_events<D>(id: &str, device: D) -> Self
    where
        D: devices::virtio::VirtioDevice + MutEventSubscriber + 'static,
    {
        let shared = Arc::new(Mutex::new(device));
        VirtioDeviceEntry {
            id: id.to_string(),
            device: shared.clone(),
            subscriber: Some(Box::new(shared)),
            net: None,
        }
    }

    /// The device's virtio type.
    pub fn device_type(&self) -> u32 {
        lock(&self.device).device_type()
    }
}

/// Creates every virtio device the config asks for, in a fixed order (disks, network cards,
/// vsock, rng), opening their host-side resources. Runs before KVM is touched, so a missing
/// image or a bad TAP name fails early. `tap_fds` are TAP descriptors the builder was given,
/// by NIC id: each is taken by the NIC of that id, which must have no TAP name.
pub fn create_virtio_devices(
    config: &VmConfig,
    tap_fds: &mut Vec<(String, OwnedFd)>,
) -> Result<Vec<VirtioDeviceEntry>, DeviceManagerError> {
    if let Some((id, _)) = tap_fds
        .iter()
        .find(|(id, _)| !config.nets.iter().any(|nic| &nic.id == id))
    {
        return Err(DeviceManagerError::Create {
            id: id.clone(),
            detail: "a TAP descriptor was given for it, but the config has no NIC with that id"
                .into(),
        });
    }
    let mut entries = Vec::new();
    for disk in &config.disks {
        let block = VirtioBlock::new(&BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            direct: disk.direct,
            id: disk.id.clone(),
        })
        .map_err(|err| DeviceManagerError::Create {
            id: disk.id.clone(),
            detail: err.to_string(),
        })?;
        // Requests on the disk's own I/O thread (io_uring when the host has it): a slow disk
        // never holds up the event loop the NICs and consoles share. A throttled disk sleeps
        // there too, on its limiter's timer.
        let mut block = block;
        block.set_io_mode(IoMode::Thread);
        limit(
            &mut block,
            &disk.id,
            RateLimitTarget::Requests,
            LimiterField::Disk,
            disk.rate_limiter.as_ref(),
        )?;
        entries.push(VirtioDeviceEntry::new(&disk.id, block));
    }
    for nic in &config.nets {
        let mac = nic
            .mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|reason| DeviceManagerError::Create {
                id: nic.id.clone(),
                detail: format!("field `mac`: {reason}"),
            })?;
        let given = tap_fds
            .iter()
            .position(|(id, _)| id == &nic.id)
            .map(|at| tap_fds.remove(at).1);
        let (tap, what) = match (given, nic.tap.is_empty()) {
            (Some(fd), true) => (TapSource::Fd(fd), "the TAP descriptor given".to_string()),
            (None, false) => (
                TapSource::Name(nic.tap.clone()),
                format!("field `tap` ({})", nic.tap),
            ),
            (Some(_), false) => {
                return Err(DeviceManagerError::Create {
                    id: nic.id.clone(),
                    detail: format!(
                        "field `tap` names {} and a TAP descriptor was given too: one or the other",
                        nic.tap
                    ),
                })
            }
            (None, true) => {
                return Err(DeviceManagerError::Create {
                    id: nic.id.clone(),
                    detail: "field `tap` is empty and no TAP descriptor was given \
                             (VmBuilder::tap_fd)"
                        .into(),
                })
            }
        };
        let net = Net::new(NetDeviceConfig {
            id: nic.id.clone(),
            tap,
            mac,
        })
        .map_err(|err| DeviceManagerError::Create {
            id: nic.id.clone(),
            detail: format!("{what}: {err}"),
        })?;
        let mut net = net;
        for (target, field, config) in [
            (
                RateLimitTarget::Receive,
                LimiterField::NetRx,
                &nic.rx_rate_limiter,
            ),
            (
                RateLimitTarget::Transmit,
                LimiterField::NetTx,
                &nic.tx_rate_limiter,
            ),
        ] {
            limit(&mut net, &nic.id, target, field, config.as_ref())?;
        }
        entries.push(VirtioDeviceEntry::nic(&nic.id, net));
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(VsockDeviceConfig {
            id: vsock.id.clone(),
            guest_cid: vsock.guest_cid,
            uds_path: vsock.uds_path.clone(),
        })
        .map_err(|err| DeviceManagerError::Create {
            id: vsock.id.clone(),
            detail: err.to_string(),
        })?;
        entries.push(VirtioDeviceEntry::with_events(&vsock.id, device));
    }
    if let Some(rng) = &config.rng {
        let mut device = VirtioRng::new();
        limit(
            &mut device,
            &rng.id,
            RateLimitTarget::Requests,
            LimiterField::Rng,
            rng.rate_limiter.as_ref(),
        )?;
        // On the event loop, which serves its rate limiter's timer.
        entries.push(VirtioDeviceEntry::with_events(&rng.id, device));
    }
    Ok(entries)
}

