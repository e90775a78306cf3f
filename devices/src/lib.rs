//! Keel's device models.
//!
//! Devices here are state machines with injected I/O: they see guest accesses as calls
//! ([`bus::BusDevice`]), raise interrupts through triggers, and write output to caller-supplied
//! writers. Nothing in this crate touches KVM, so every device is unit-testable without a VM;
//! `vmm-core` wires them to KVM.
//!
//! - [`bus`]: port-I/O and MMIO buses that route accesses by address and reject overlaps.
//! - [`legacy`]: the 16550 UART (COM1), the i8042 reset line and the CMOS RTC.
//! - [`pci`]: PCI bus 0 (config space, CF8/CFC and ECAM access, BAR windows) and MSI-X.
//! - [`virtio`]: virtio devices and their MMIO and PCI transports.
//! - [`rate_limiter`]: token buckets that limit what a guest takes from a device.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use devices::bus::{Bus, BusKind};
//! use devices::legacy::{EventFdTrigger, Serial, COM1_PORT_BASE, SERIAL_PORT_LEN};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! let irq = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap());
//! let serial = Arc::new(Mutex::new(Serial::new(irq, Vec::new()).unwrap()));
//! let mut pio = Bus::new(BusKind::Pio);
//! pio.insert("com1", COM1_PORT_BASE, SERIAL_PORT_LEN, serial.clone()).unwrap();
//! for byte in b"ok" {
//!     pio.write(COM1_PORT_BASE, &[*byte]); // the guest's `out 0x3f8, al`
//! }
//! assert_eq!(serial.lock().unwrap().output(), b"ok");
//! ```

#![deny(missing_docs)]
// A value from a guest register or guest memory that is silently truncated is a bug class:
// device code narrows with `try_from` (and handles the failure), with the lossless helpers of
// `narrow`, or, where a bound makes it provably lossless, with an `as` under a local `allow` that
// names the bound. Unit tests, which build small fixed inputs, are exempt.
#![cfg_attr(not(test), deny(clippy::cast_possible_truncation))]

/// Guest memory as Keel maps it. Every write the VMM makes through it (a device filling a
/// buffer, a used-ring update) marks its page in a per-region dirty bitmap: KVM's dirty log
/// sees only the guest's own writes, and a live migration must resend both.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

pub mod bus;
pub mod console;
pub mod counters;
pub mod legacy;
pub mod log_limit;
mod narrow;
pub mod pci;
pub mod rate_limiter;
pub mod virtio;
