//! COM1, a 16550-compatible UART at I/O port 0x3f8, driven by polling (no interrupts).
//!
//! Output waits for the transmit holding register to be empty before each byte; input polls the
//! data-ready bit. The FIFO control register is deliberately left alone: toggling the FIFO enable
//! bit clears the receive FIFO, which would drop input a host sent before the guest was ready.

use core::fmt;

use crate::cpu::{inb, outb};

/// Receive buffer (read) / transmit holding register (write); divisor latch low byte when DLAB is
/// set.
const DATA: u16 = 0;
/// Interrupt enable register; divisor latch high byte when DLAB is set.
const INTERRUPT_ENABLE: u16 = 1;
/// Line control register: word length, stop bits, parity, DLAB.
const LINE_CONTROL: u16 = 3;
/// Modem control register: DTR, RTS, OUT1, OUT2, loopback.
const MODEM_CONTROL: u16 = 4;
/// Line status register.
const LINE_STATUS: u16 = 5;

/// LCR: 8 data bits, no parity, 1 stop bit.
const LCR_8N1: u8 = 0x03;
/// LCR: divisor latch access bit.
const LCR_DLAB: u8 = 0x80;
/// MCR: DTR and RTS asserted, OUT2 (the interrupt gate on PCs) off.
const MCR_DTR_RTS: u8 = 0x03;
/// LSR: a received byte is waiting.
const LSR_DATA_READY: u8 = 0x01;
/// LSR: the transmit holding register can take a byte.
const LSR_THR_EMPTY: u8 = 0x20;
/// Divisor for 115200 baud from the 1.8432 MHz clock.
const DIVISOR_115200: u16 = 1;

/// Polls of LSR before a byte is written anyway: a UART whose THRE never sets must not hang the
/// guest.
const MAX_TRANSMIT_POLLS: u32 = 1_000_000;

/// A 16550 UART at a base I/O port. It has no memory state, so copies are interchangeable.
#[derive(Clone, Copy, Debug)]
pub struct Uart {
    base: u16,
}

/// The first serial port, the guest's console.
pub const COM1: Uart = Uart { base: 0x3f8 };

impl Uart {
    /// Programs 115200 baud 8N1 with interrupts off.
    pub fn init(self) {
        outb(self.base + INTERRUPT_ENABLE, 0);
        outb(self.base + LINE_CONTROL, LCR_DLAB);
        let [divisor_low, divisor_high] = DIVISOR_115200.to_le_bytes();
        outb(self.base + DATA, divisor_low);
        outb(self.base + INTERRUPT_ENABLE, divisor_high);
        outb(self.base + LINE_CONTROL, LCR_8N1);
        outb(self.base + MODEM_CONTROL, MCR_DTR_RTS);
    }

    /// Sends one byte once the transmitter can take it.
    pub fn write_byte(self, byte: u8) {
        for _ in 0..MAX_TRANSMIT_POLLS {
            if inb(self.base + LINE_STATUS) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        outb(self.base + DATA, byte);
    }

    /// A received byte, if one is waiting.
    pub fn try_read_byte(self) -> Option<u8> {
        (inb(self.base + LINE_STATUS) & LSR_DATA_READY != 0).then(|| inb(self.base + DATA))
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        text.bytes().for_each(|byte| self.write_byte(byte));
        Ok(())
    }
}
