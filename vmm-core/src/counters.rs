//! A VM's counters: each vCPU's exits to the VMM by kind, and what each device did.
//!
//! vCPU threads count their exits in lock-free atomics; devices keep their own counters and
//! report them through [`devices::virtio::VirtioDevice::counters`] and
//! [`devices::legacy::Serial::counters`]. [`VmHandle::counters`](crate::VmHandle::counters)
//! reads everything into a [`VmCounters`] snapshot, which serializes to JSON as
//! `{"vcpus": [...], "devices": [{"id": "disk0", "kind": "block", "counters": {...}}]}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use devices::counters::Counter;
use devices::virtio::{
    SharedVirtioDevice, TYPE_BLOCK, TYPE_CONSOLE, TYPE_NET, TYPE_RNG, TYPE_VSOCK,
};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::console::ConsoleSocket;
use crate::event_loop::SharedSerial;
use crate::sync::lock;

/// Why a vCPU left the guest, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    /// A kick (pause, stop) or a signal interrupted `KVM_RUN`.
    Interrupted,
    /// System events, failures and anything else.
    Other,
}

const EXIT_KINDS: [(ExitKind, &str, &str); 7] = [
    (ExitKind::IoIn, "io_in", "port reads handled by the VMM"),
    (ExitKind::IoOut, "io_out", "port writes handled by the VMM"),
    (
        ExitKind::MmioRead,
        "mmio_read",
        "MMIO reads handled by the VMM",
    ),
    (
        ExitKind::MmioWrite,
        "mmio_write",
        "MMIO writes handled by the VMM",
    ),
    (ExitKind::Hlt, "hlt", "HLT exits"),
    (
        ExitKind::Interrupted,
        "interrupted",
        "runs interrupted by a kick or signal",
    ),
    (
        ExitKind::Other,
        "other",
        "other exits (system events, errors)",
    ),
];

/// One vCPU's exits, by kind; bumped by its thread without locks.
#[derive(Debug, Default)]
pub(crate) struct ExitCounters([AtomicU64; EXIT_KINDS.len()]);

impl ExitCounters {
    pub(crate) fn record(&self, kind: ExitKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<Counter> {
        EXIT_KINDS
            .iter()
            .map(|(kind, name, help)| {
                Counter::count(name, help, self.0[*kind as usize].load(Ordering::Relaxed))
            })
            .collect()
    }
}

/// The counters of one vCPU or device at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The device's id (`disk0`, `net0`, `com1`), or `vcpu<N>`.
    pub id: String,
    /// What it is: `vcpu`, `serial`, `block`, `net`, `vsock`, `rng`, or `virtio-<type>` for an
    /// embedder's own virtio device.
    pub kind: String,
    /// Its counters, in a stable order.
    pub counters: Vec<Counter>,
}

impl DeviceCounters {
    /// The value of the counter `name`, if the device has one.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|counter| counter.name == name)
            .map(|counter| counter.value)
    }
}

impl Serialize for DeviceCounters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Values<'a>(&'a [Counter]);
        impl Serialize for Values<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for counter in self.0 {
                    map.serialize_entry(counter.name, &counter.value)?;
                }
                map.end()
            }
        }
        let mut state = serializer.serialize_struct("DeviceCounters", 3)?;
        state.serialize_field("id", &self.id)?;
        state.serialize_field("kind", &self.kind)?;
        state.serialize_field("counters", &Values(&self.counters))?;
        state.end()
    }
}

/// All of a VM's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmCounters {
    /// One entry per vCPU (`vcpu0`, ...): exits by kind.
    pub vcpus: Vec<DeviceCounters>,
    /// The serial console, then each virtio device in config order.
    pub devices: Vec<DeviceCounters>,
}

impl VmCounters {
    /// The entry of the device or vCPU with this id.
    pub fn device(&self, id: &str) -> Option<&DeviceCounters> {
        self.vcpus
            .iter()
            .chain(&self.devices)
            .find(|device| device.id == id)
    }
}

/// The name of a virtio device type, as counters and metrics label it.
pub(crate) fn virtio_kind(device_type: u32) -> String {
    match device_type {
        TYPE_BLOCK => "block".into(),
        TYPE_NET => "net".into(),
        TYPE_VSOCK => "vsock".into(),
        TYPE_RNG => "rng".into(),
        TYPE_CONSOLE => "console".into(),
        other => format!("virtio-{other}"),
    }
}

/// Where a VM's counters come from.
pub(crate) struct CounterSources {
    pub(crate) exits: Vec<Arc<ExitCounters>>,
    pub(crate) serial: SharedSerial,
    /// Console sockets (of the serial port, the virtio console) by device id: their buffers
    /// may drop output.
    pub(crate) sockets: Vec<(String, ConsoleSocket)>,
    /// Virtio devices: id, kind, device.
    pub(crate) virtio: Vec<(String, String, SharedVirtioDevice)>,
    /// Each virtio device's transport by device id, for its `needs_reset` count.
    pub(crate) transports: Vec<(String, TransportOf)>,
}

/// The transport a virtio device sits behind.
pub(crate) enum TransportOf {
    Mmio(Arc<std::sync::Mutex<devices::virtio::mmio::MmioTransport>>),
    Pci(Arc<std::sync::Mutex<devices::virtio::pci::VirtioPciDevice>>),
}

impl TransportOf {
    fn needs_reset_count(&self) -> u64 {
        match self {
            TransportOf::Mmio(transport) => lock(transport).needs_reset_count(),
            TransportOf::Pci(function) => lock(function).needs_reset_count(),
        }
    }
}

impl CounterSources {
    pub(crate) fn snapshot(&self) -> VmCounters {
        let vcpus = self
            .exits
            .iter()
            .enumerate()
            .map(|(index, exits)| DeviceCounters {
                id: format!("vcpu{index}"),
                kind: "vcpu".into(),
                counters: exits.snapshot(),
            })
            .collect();
        let mut devices = vec![DeviceCounters {
            id: "com1".into(),
            kind: "serial".into(),
            counters: lock(&self.serial).counters(),
        }];
        devices.extend(self.virtio.iter().map(|(id, kind, device)| DeviceCounters {
            id: id.clone(),
            kind: kind.clone(),
            counters: lock(device).counters(),
        }));
        for (id, transport) in &self.transports {
            if let Some(device) = devices.iter_mut().find(|device| &device.id == id) {
                device.counters.push(Counter::count(
                    "needs_reset",
                    "times the device marked itself DEVICE_NEEDS_RESET (its driver broke the \
                     virtio rules, or it could not start or reset)",
                    transport.needs_reset_count(),
                ));
            }
        }
        for (id, socket) in &self.sockets {
            if let Some(device) = devices.iter_mut().find(|device| &device.id == id) {
                device.counters.push(Counter::count(
                    "dropped_bytes",
                    "output bytes dropped because no console client read them in time",
                    socket.dropped_bytes(),
                ));
                device.counters.push(Counter::count(
                    "console_attaches",
                    "console clients attached",
                    socket.attaches(),
                ));
            }
        }
        VmCounters { vcpus, devices }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_counters_count_by_kind_and_serialize_as_a_map() {
        let exits = ExitCounters::default();
        exits.record(ExitKind::IoOut);
        exits.record(ExitKind::IoOut);
        exits.record(ExitKind::Hlt);
        let device = DeviceCounters {
            id: "vcpu0".into(),
            kind: "vcpu".into(),
            counters: exits.snapshot(),
        };
        assert_eq!(device.get("io_out"), Some(2));
        assert_eq!(device.get("hlt"), Some(1));
        assert_eq!(device.get("io_in"), Some(0));
        let json = serde_json::to_value(&device).unwrap();
        assert_eq!(json["counters"]["io_out"], 2);
        assert_eq!(json["kind"], "vcpu");
    }
}
