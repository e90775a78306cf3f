//! Legacy PC devices: the 16550 UART, the i8042 controller's reset line and the CMOS RTC.
//!
//! Each wraps a plain state machine (from `vm-superio` where it has one) behind [`BusDevice`]
//! so the VMM can put it on the port-I/O bus. Interrupts and resets leave through
//! [`EventFdTrigger`], which the VMM wires to KVM (irqfd) or to its exit handling.
//!
//! [`BusDevice`]: crate::bus::BusDevice

mod i8042;
mod rtc;
mod serial;
mod trigger;

pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use rtc::{Clock, CmosRtc, SystemClock, RTC_PORT_BASE, RTC_PORT_LEN};
pub use serial::{Serial, COM1_IRQ, COM1_PORT_BASE, SERIAL_PORT_LEN};
pub use trigger::EventFdTrigger;
