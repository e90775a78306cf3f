//! Fuzz targets for every parser a guest or a user reaches in Keel.
//!
//! Each target is a function from arbitrary bytes to nothing that must never panic, hang or
//! allocate without bound. For the virtio targets the bytes play the guest driver: they become
//! a descriptor table, an available ring and guest memory contents for a device driven through
//! virtio-queue's mock split queue. Others play the guest's port I/O (legacy devices) or the
//! user (VM configs in JSON and YAML and memory sizes, `keel`'s flags, kernel images, snapshot state files) or a network peer (a live-migration stream). The same functions back the libFuzzer binaries (`fuzz_targets/`) and the
//! stable-toolchain smoke test (`tests/smoke.rs`), which runs every entry of [`TARGETS`].

pub mod block;
pub mod config;
pub mod console;
pub mod flags;
pub mod kernel;
pub mod legacy;
pub mod migration;
pub mod net;
pub mod net_ctrl;
pub mod rng;
pub mod snapshot;
pub mod support;
pub mod transport;
pub mod vsock;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its libFuzzer binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("block_request", block::block_request),
    ("rng", rng::rng),
    ("console", console::console),
    ("net_header", net::net_header),
    ("net_ctrl", net_ctrl::net_ctrl),
    ("vsock_packet", vsock::vsock_packet),
    ("mmio_registers", transport::mmio_registers),
    ("pci_config", transport::pci_config),
    ("legacy_registers", legacy::legacy_registers),
    ("vm_config", config::vm_config),
    ("keel_flags", flags::keel_flags),
    ("kernel_image", kernel::kernel_image),
    ("snapshot_state", snapshot::snapshot_state),
    ("migration_stream", migration::migration_stream),
];
