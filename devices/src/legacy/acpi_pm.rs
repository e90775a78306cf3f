//! Hardware-reduced ACPI power management: the FADT's sleep control, sleep status and reset
//! registers, as three byte-wide I/O ports.
//!
//! A guest powers off by writing `SLP_EN | SLP_TYP` to the sleep control register, with the
//! `SLP_TYP` value the DSDT's `\_S5` object gave it; it resets by writing the FADT's reset value
//! to the reset register. Both leave through triggers the VMM turns into VM exits. Other sleep
//! states (S1-S4) are not supported: such writes are logged and ignored, so the guest stays up.

use log::debug;
use vm_superio::Trigger;

use crate::bus::BusDevice;

/// First port of the block (the ports Cloud Hypervisor uses, so the same guests work).
pub const ACPI_PM_PORT_BASE: u64 = 0x600;
/// Sleep control, sleep status, reset.
pub const ACPI_PM_PORT_LEN: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// `SLP_TYP` for S5 (soft off), as `\_S5` in the DSDT must say.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 1;

/// Sleep control: sleep enable.
const SLP_EN: u8 = 1 << 5;
/// Sleep control: sleep type field (bits 2-4).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The power management register block.
///
/// ```
/// use devices::bus::BusDevice;
/// use devices::legacy::{AcpiPm, EventFdTrigger};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let off = EventFd::new(EFD_NONBLOCK).unwrap();
/// let reset = EventFd::new(EFD_NONBLOCK).unwrap();
/// let mut pm = AcpiPm::new(
///     EventFdTrigger::new(off.try_clone().unwrap()),
///     EventFdTrigger::new(reset.try_clone().unwrap()),
/// );
/// pm.write(0, &[0x34]); // SLP_EN | SLP_TYP=5: power off
/// assert_eq!(off.read().unwrap(), 1);
/// ```
pub struct AcpiPm<T: Trigger> {
    power_off: T,
    reset: T,
}

impl<T: Trigger> AcpiPm<T> {
    /// Creates the block; `power_off` fires on S5, `reset` on a write of [`RESET_VALUE`].
    pub fn new(power_off: T, reset: T) -> Self {
        AcpiPm { power_off, reset }
    }
}

impl<T: Trigger + Send> BusDevice for AcpiPm<T> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: no wake event pending; the others read as zero too.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    debug!("acpi: guest entered S5");
                    if let Err(err) = self.power_off.trigger() {
                        crate::guest_warn!("acpi: cannot signal power off: {err:?}");
                    }
                } else {
                    crate::guest_warn!("acpi: sleep type {sleep_type} is not supported; ignored");
                }
            }
            RESET_OFFSET if value == RESET_VALUE => {
                debug!("acpi: guest wrote the reset register");
                if let Err(err) = self.reset.trigger() {
                    crate::guest_warn!("acpi: cannot signal reset: {err:?}");
                }
            }
            _ => debug!("acpi: write {value:#x} at offset {offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn pm() -> (AcpiPm<EventFdTrigger>, EventFd, EventFd) {
        let off = EventFd::new(EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let pm = AcpiPm::new(
            EventFdTrigger::new(off.try_clone().unwrap()),
            EventFdTrigger::new(reset.try_clone().unwrap()),
        );
        (pm, off, reset)
    }

    #[test]
    fn only_s5_with_sleep_enable_powers_off() {
        let (mut pm, off, reset) = pm();
        pm.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        pm.write(SLEEP_CONTROL_OFFSET, &[SLP_EN | (3 << 2)]); // S3: unsupported
        pm.write(SLEEP_STATUS_OFFSET, &[0x34]);
        assert!(off.read().is_err());
        pm.write(SLEEP_CONTROL_OFFSET, &[SLP_EN | (S5_SLEEP_TYPE << 2)]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn reset_register_needs_the_advertised_value() {
        let (mut pm, off, reset) = pm();
        pm.write(RESET_OFFSET, &[0xff]);
        assert!(reset.read().is_err());
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(off.read().is_err());
        let mut status = [0xaau8; 2];
        pm.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status, [0, 0]);
        pm.write(RESET_OFFSET, &[]);
    }
}
