//! Hardware-independent parts of Keel's test guest.
//!
//! Everything here is plain computation over bytes and integers, so it builds for the host as well
//! and its unit tests run with `cargo test --target x86_64-unknown-linux-gnu --lib`. The binary
//! (`src/main.rs`) adds what needs the machine: the boot assembly, the UART, the local APIC and the
//! exit paths.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod bootinfo;
pub mod cmdline;
pub mod selfcheck;
pub mod sync;
pub mod virtio;
