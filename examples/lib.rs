//! Keel's example binaries live next to this file:
//!
//! - `boot` (`cargo run --release --example boot`): boots Keel's test guest (or any kernel
//!   given with `--kernel`) and exits 0 when the guest resets or powers off.
//! - `placement`: runs the placement library on a cluster description.
//! - `custom_backend`: the test guest drives a disk and a NIC on back ends of the embedder's
//!   own ([`custom_backend`]).

#[path = "custom_backend_lib.rs"]
pub mod custom_backend;
