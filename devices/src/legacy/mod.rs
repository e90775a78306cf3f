//! Legacy PC devices: the 16550 UART, the i8042 controller's reset line, the CMOS RTC, the
//! hardware-reduced ACPI power management registers and the ACPI Generic Event Device.
//!
//! Each wraps a plain state machine (from `vm-superio` where it has one) behind [`BusDevice`]
//! so the VMM can put it on the port-I/O bus. Interrupts and resets leave through
//! [`EventFdTrigger`], which the VMM wires to KVM (irqfd) or to its exit handling.
//!
//! [`BusDevice`]: crate::bus::BusDevice

mod acpi_pm;
mod ged;
mod i8042;
mod rtc;
mod serial;
mod trigger;

pub use acpi_pm::{
    AcpiPm, ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE,
    SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
pub use ged::{Ged, GedState, GED_EVENT_POWER_BUTTON, GED_PORT_BASE, GED_PORT_LEN};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use rtc::{Clock, CmosRtc, RtcState, SystemClock, RTC_PORT_BASE, RTC_PORT_LEN};
pub use serial::{Serial, SerialSnapshot, COM1_IRQ, COM1_PORT_BASE, SERIAL_PORT_LEN};
pub use trigger::EventFdTrigger;
