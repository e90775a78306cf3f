//! Fuzz targets for Keel's device models.
//!
//! Each target is a function from arbitrary bytes to nothing that must never panic, hang or
//! allocate without bound. The bytes play the guest driver: they become a descriptor table, an
//! available ring and guest memory contents for a device driven through virtio-queue's mock
//! split queue. The same functions back the libFuzzer binaries (`fuzz_targets/`) and the
//! stable-toolchain smoke test (`tests/smoke.rs`), which runs every entry of [`TARGETS`].

pub mod block;
pub mod net;
pub mod rng;
pub mod support;
pub mod transport;
pub mod vsock;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its libFuzzer binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("block_request", block::block_request),
    ("rng", rng::rng),
    ("net_header", net::net_header),
    ("vsock_packet", vsock::vsock_packet),
    ("mmio_registers", transport::mmio_registers),
    ("pci_config", transport::pci_config),
];
