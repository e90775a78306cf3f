//! An ACPI Generic Event Device (GED, `ACPI0013`): how a hardware-reduced ACPI platform tells
//! the guest about events such as a press of the power button.
//!
//! The device latches events in a pending mask and raises its interrupt. The guest's GED
//! driver then runs the DSDT's `_EVT` method, which reads the mask from the event register
//! (reading clears it) and notifies the devices concerned; for the power button that is a
//! `Notify(PWRB, 0x80)`, which Linux turns into a `KEY_POWER` input event (systemd-logind or
//! acpid then shut the system down). The VMM writes the `_EVT` method to match
//! [`GED_PORT_BASE`] and the event bits here.

use vm_superio::Trigger;

use crate::bus::BusDevice;

/// The event register's port (just after the ACPI power management block at 0x600).
pub const GED_PORT_BASE: u64 = 0x610;
/// One 32-bit register.
pub const GED_PORT_LEN: u64 = 4;
/// Event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 0;

/// The Generic Event Device's event register.
///
/// ```
/// use devices::bus::BusDevice;
/// use devices::legacy::{EventFdTrigger, Ged, GED_EVENT_POWER_BUTTON};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let irq = EventFd::new(EFD_NONBLOCK).unwrap();
/// let mut ged = Ged::new(EventFdTrigger::new(irq.try_clone().unwrap()));
/// ged.notify(GED_EVENT_POWER_BUTTON).unwrap();
/// assert_eq!(irq.read().unwrap(), 1); // the interrupt fired
/// let mut mask = [0u8; 4];
/// ged.read(0, &mut mask); // the guest's _EVT method reads the events ...
/// assert_eq!(u32::from_le_bytes(mask), GED_EVENT_POWER_BUTTON);
/// ged.read(0, &mut mask); // ... which clears them
/// assert_eq!(mask, [0; 4]);
/// ```
pub struct Ged<T: Trigger> {
    pending: u32,
    interrupt: T,
}

/// Snapshot of a [`Ged`]'s guest-visible state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GedState {
    /// Events raised and not yet read by the guest.
    pub pending: u32,
}

impl<T: Trigger> Ged<T> {
    /// Creates the device; `interrupt` raises its (edge-triggered) interrupt line.
    pub fn new(interrupt: T) -> Self {
        Ged {
            pending: 0,
            interrupt,
        }
    }

    /// Restores a device from `state`.
    pub fn from_state(state: &GedState, interrupt: T) -> Self {
        Ged {
            pending: state.pending,
            interrupt,
        }
    }

    /// The guest-visible state.
    pub fn state(&self) -> GedState {
        GedState {
            pending: self.pending,
        }
    }

    /// Latches `events` and interrupts the guest.
    pub fn notify(&mut self, events: u32) -> Result<(), T::E> {
        self.pending |= events;
        self.interrupt.trigger()
    }
}

impl<T: Trigger + Send> BusDevice for Ged<T>
where
    T::E: std::fmt::Debug,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // Only a read of the register from its start returns (and clears) the mask.
        if offset != 0 {
            return;
        }
        let bytes = self.pending.to_le_bytes();
        let len = data.len().min(bytes.len());
        data[..len].copy_from_slice(&bytes[..len]);
        // Events the access was too narrow to see stay pending.
        let seen = if len >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * len)) - 1
        };
        self.pending &= !seen;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        crate::guest_warn!(
            "ged: write of {} bytes at offset {offset} ignored (read-only register)",
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn ged() -> (Ged<EventFdTrigger>, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (Ged::new(EventFdTrigger::new(irq.try_clone().unwrap())), irq)
    }

    #[test]
    fn events_accumulate_until_read_and_each_raises_the_interrupt() {
        let (mut ged, irq) = ged();
        ged.notify(GED_EVENT_POWER_BUTTON).unwrap();
        ged.notify(1 << 4).unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        assert_eq!(ged.state().pending, GED_EVENT_POWER_BUTTON | 1 << 4);
        let mut data = [0u8; 4];
        ged.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), GED_EVENT_POWER_BUTTON | 1 << 4);
        assert_eq!(ged.state().pending, 0);
    }

    #[test]
    fn narrow_or_offset_reads_clear_only_what_they_return() {
        let (mut ged, _irq) = ged();
        ged.notify(0x0001_0001).unwrap();
        let mut byte = [0xffu8; 1];
        ged.read(2, &mut byte);
        assert_eq!(byte, [0]);
        assert_eq!(ged.state().pending, 0x0001_0001);
        ged.read(0, &mut byte);
        assert_eq!(byte, [1]);
        assert_eq!(ged.state().pending, 0x0001_0000);
    }

    #[test]
    fn writes_change_nothing_and_state_round_trips() {
        let (mut ged, irq) = ged();
        ged.notify(GED_EVENT_POWER_BUTTON).unwrap();
        ged.write(0, &[0xff; 4]);
        let restored = Ged::from_state(&ged.state(), EventFdTrigger::new(irq));
        assert_eq!(restored.state().pending, GED_EVENT_POWER_BUTTON);
    }
}
