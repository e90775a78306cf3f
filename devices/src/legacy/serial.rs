//! COM1: a 16550A UART from `vm-superio` on the port-I/O bus, with input flow control.
//!
//! Output bytes go to a caller-supplied writer. Input is pushed in by the VMM's event loop with
//! [`ConsoleInput::enqueue_input`]; when the guest has drained the receive FIFO the device
//! signals [`ConsoleInput::input_drained`] so the loop can push more (the FIFO holds 64 bytes).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::debug;
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::EventFdTrigger;
use crate::bus::BusDevice;
use crate::console::ConsoleInput;
use crate::counters::Counter;

/// I/O port base of COM1.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// Number of ports a 16550 decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// ISA IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;

/// What the UART carried, counted lock-free (see [`Serial::counters`]).
#[derive(Debug, Default)]
struct SerialCounters {
    out_bytes: AtomicU64,
    lost_bytes: AtomicU64,
    in_bytes: AtomicU64,
}

/// Signals an eventfd when the guest empties the receive FIFO, and counts bytes.
struct DrainNotifier {
    drained: EventFd,
    counters: Arc<SerialCounters>,
}

impl SerialEvents for DrainNotifier {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.counters.out_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.counters.lost_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        if let Err(err) = self.drained.write(1) {
            crate::guest_warn!("serial: cannot signal input drained: {err}");
        }
    }
}

/// A 16550A UART with an output writer and flow-controlled input.
///
/// ```
/// use devices::bus::BusDevice;
/// use devices::console::ConsoleInput;
/// use devices::legacy::{EventFdTrigger, Serial};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let irq = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap());
/// let mut serial = Serial::new(irq, Vec::new()).unwrap();
/// serial.write(0, b"A"); // THR
/// assert_eq!(serial.output(), b"A");
///
/// assert_eq!(serial.enqueue_input(b"hi"), 2);
/// let mut byte = [0u8];
/// serial.read(0, &mut byte); // RBR
/// assert_eq!(&byte, b"h");
/// ```
pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<EventFdTrigger, DrainNotifier, W>,
    drained: EventFd,
    counters: Arc<SerialCounters>,
}

/// What the UART saves in a snapshot: its registers and the bytes waiting in the receive FIFO.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Receive FIFO contents.
    pub in_buffer: Vec<u8>,
}

impl Default for SerialSnapshot {
    fn default() -> Self {
        Self::from(&vm_superio::serial::SerialState::default())
    }
}

impl From<&vm_superio::serial::SerialState> for SerialSnapshot {
    fn from(state: &vm_superio::serial::SerialState) -> Self {
        SerialSnapshot {
            baud_divisor: [state.baud_divisor_low, state.baud_divisor_high],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        }
    }
}

impl<W: Write + Send> Serial<W> {
    /// Creates the UART; `interrupt` is signalled when it raises its IRQ line, `out` receives
    /// what the guest transmits.
    pub fn new(interrupt: EventFdTrigger, out: W) -> std::io::Result<Self> {
        Self::from_state(interrupt, out, &SerialSnapshot::default())
    }

    /// Creates the UART in a saved state (a restored VM); a receive FIFO over the UART's 64
    /// bytes is refused.
    pub fn from_state(
        interrupt: EventFdTrigger,
        out: W,
        saved: &SerialSnapshot,
    ) -> std::io::Result<Self> {
        let drained = EventFd::new(EFD_NONBLOCK)?;
        let counters = Arc::new(SerialCounters::default());
        let notifier = DrainNotifier {
            drained: drained.try_clone()?,
            counters: counters.clone(),
        };
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: saved.baud_divisor[0],
            baud_divisor_high: saved.baud_divisor[1],
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let uart = vm_superio::Serial::from_state(&state, interrupt, notifier, out)
            .map_err(|err| std::io::Error::other(format!("serial state refused: {err:?}")))?;
        Ok(Serial {
            uart,
            drained,
            counters,
        })
    }

    /// The UART's state for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        SerialSnapshot::from(&self.uart.state())
    }

    /// Queues bytes for the guest to receive; returns how many fit in the FIFO.
    fn enqueue(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(count) => {
                self.counters
                    .in_bytes
                    .fetch_add(count as u64, Ordering::Relaxed);
                count
            }
            Err(err) => {
                crate::guest_warn!("serial: input not delivered: {err:?}");
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The output writer.
    pub fn output(&self) -> &W {
        self.uart.writer()
    }

    /// Bytes the guest sent (`out_bytes`), bytes the writer refused (`lost_bytes`) and input
    /// bytes delivered to the guest (`in_bytes`).
    pub fn counters(&self) -> Vec<Counter> {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            Counter::count(
                "out_bytes",
                "bytes the guest sent",
                get(&self.counters.out_bytes),
            ),
            Counter::count(
                "lost_bytes",
                "output bytes the writer refused",
                get(&self.counters.lost_bytes),
            ),
            Counter::count(
                "in_bytes",
                "input bytes delivered to the guest",
                get(&self.counters.in_bytes),
            ),
        ]
    }
}

/// Input goes into the 64-byte receive FIFO; [`ConsoleInput::input_drained`] fires when the
/// guest has read the last byte of it.
impl<W: Write + Send> ConsoleInput for Serial<W> {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.enqueue(bytes)
    }

    fn input_drained(&self) -> &EventFd {
        &self.drained
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses read the first register and pad.
        data.fill(0xff);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(err) = self.uart.write(offset, value) {
            debug!("serial: write to register {offset} failed: {err:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleInput;

    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;
    const IER_RX_DATA: u8 = 0x01;

    fn serial() -> (Serial<Vec<u8>>, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Serial::new(EventFdTrigger::new(irq.try_clone().unwrap()), Vec::new());
        (serial.unwrap(), irq)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut serial, _) = serial();
        for byte in b"keel\r\n" {
            serial.write(0, &[*byte]);
        }
        assert_eq!(serial.output(), b"keel\r\n");
    }

    #[test]
    fn input_is_flow_controlled_and_drain_is_signalled() {
        let (mut serial, irq) = serial();
        serial.write(IER, &[IER_RX_DATA]);
        let input = vec![b'x'; 100];
        let accepted = serial.enqueue_input(&input);
        assert_eq!(accepted, 64, "the 16550 FIFO holds 64 bytes");
        assert_eq!(serial.enqueue_input(&input[accepted..]), 0);
        assert_eq!(irq.read().unwrap(), 1, "received-data interrupt raised");
        assert!(serial.input_drained().read().is_err(), "not drained yet");
        let mut byte = [0u8];
        for _ in 0..64 {
            serial.read(LSR, &mut byte);
            assert_ne!(byte[0] & LSR_DATA_READY, 0);
            serial.read(0, &mut byte);
            assert_eq!(byte[0], b'x');
        }
        serial.read(LSR, &mut byte);
        assert_eq!(byte[0] & LSR_DATA_READY, 0);
        assert_eq!(serial.input_drained().read().unwrap(), 1);
        assert_eq!(serial.input_capacity(), 64);
    }

    #[test]
    fn odd_widths_and_offsets_do_not_panic() {
        let (mut serial, _) = serial();
        let mut wide = [0u8; 4];
        serial.read(7, &mut wide);
        serial.read(300, &mut wide);
        serial.write(300, &[1]);
        serial.write(0, &[]);
        let mut empty: [u8; 0] = [];
        serial.read(0, &mut empty);
    }
}
