//! The i8042 keyboard controller, reduced to what a VM needs: the CPU reset line.
//!
//! The state machine is `vm-superio`'s `I8042Device`: a write of 0xFE (pulse reset) to the
//! command port raises the reset trigger, which the VMM turns into a "guest reset" exit.

use vm_superio::Trigger;

use crate::bus::BusDevice;

/// First port decoded by the controller (data port 0x60; command/status is 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 controller on the port-I/O bus.
///
/// ```
/// use devices::bus::BusDevice;
/// use devices::legacy::{EventFdTrigger, I8042};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let reset = EventFd::new(EFD_NONBLOCK).unwrap();
/// let mut i8042 = I8042::new(EventFdTrigger::new(reset.try_clone().unwrap()));
/// i8042.write(4, &[0xfe]); // port 0x64: pulse the reset line
/// assert_eq!(reset.read().unwrap(), 1);
/// ```
pub struct I8042<T: Trigger> {
    inner: vm_superio::I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// Creates the controller; `reset` fires when the guest pulses the CPU reset line.
    pub fn new(reset: T) -> Self {
        I8042 {
            inner: vm_superio::I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(err) = self.inner.write(offset, value) {
            crate::guest_warn!("i8042: cannot signal reset: {err:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn only_the_reset_command_raises_reset() {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(EventFdTrigger::new(reset.try_clone().unwrap()));
        i8042.write(0, &[0xfe]); // data port: not a command
        i8042.write(4, &[0xaa]); // self-test command
        assert!(reset.read().is_err());
        i8042.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        let mut status = [0xffu8; 2];
        i8042.read(4, &mut status);
        assert_eq!(status, [0, 0]);
    }
}
