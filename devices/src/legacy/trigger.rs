//! An eventfd that a device signals: an interrupt line (through KVM irqfd) or a reset request.

use std::io;
use std::ops::Deref;

use vmm_sys_util::eventfd::EventFd;

/// Signals an [`EventFd`] when a device raises its line.
///
/// ```
/// use devices::legacy::EventFdTrigger;
/// use vm_superio::Trigger;
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let trigger = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap());
/// trigger.trigger().unwrap();
/// assert_eq!(trigger.read().unwrap(), 1);
/// ```
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `fd`.
    pub fn new(fd: EventFd) -> Self {
        EventFdTrigger(fd)
    }

    /// Duplicates the underlying eventfd (both handles signal the same counter).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventFdTrigger(self.0.try_clone()?))
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}
