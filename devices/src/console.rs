//! The input side of a console device, as the VMM feeds it: the 16550 UART
//! ([`crate::legacy::Serial`]) and virtio-console ([`crate::virtio::console::VirtioConsole`])
//! both take host input in bounded amounts and say when they can take more, so one piece of
//! VMM plumbing (standard input, a console socket) serves either.

use vmm_sys_util::eventfd::EventFd;

/// A device that takes console input from the host with flow control.
pub trait ConsoleInput: Send {
    /// Offers `bytes` for the guest; returns how many the device took. The rest must be
    /// offered again after [`ConsoleInput::input_drained`] fires.
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize;

    /// Becomes readable when the device has room for more input.
    fn input_drained(&self) -> &EventFd;
}
