//! virtio-console (virtio 1.2, section 5.3) with one port: what Linux calls `hvc0`.
//!
//! Two queues: receiveq (0, host to guest) takes device-writable buffers the device fills with
//! input; transmitq (1, guest to host) carries the guest's output, which goes to an injected
//! writer. Input is pushed in by the VMM ([`ConsoleInput::enqueue_input`]) into a bounded buffer
//! ([`INPUT_CAPACITY`]) and reaches the guest as it posts receive buffers; when that buffer
//! empties the device signals [`ConsoleInput::input_drained`], so the VMM reads more. The
//! emergency write register (`VIRTIO_CONSOLE_F_EMERG_WRITE`) takes single bytes before the
//! queues are set up. No multiport, no console size.

use std::collections::VecDeque;
use std::io::Write;
use std::mem::offset_of;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use log::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::{ChainBuffers, Direction};
use super::config_space::{read_config_bytes, ConsoleConfigSpace};
use super::queue_ops::{drain_queue, notify_used, pop_or_enable_notification};
use super::snapshot::{
    restore_plain, DeviceExtra, QueueSnapshot, SnapshotError, VirtioDeviceState,
};
pub use super::TYPE_CONSOLE;
use super::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::console::ConsoleInput;
use crate::counters::Counter;
use crate::narrow::len_u32;

/// Feature bit: the driver may write single bytes to `emerg_wr` in config space.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
/// Receive queue (host to guest).
pub const RX_QUEUE: u16 = 0;
/// Transmit queue (guest to host).
pub const TX_QUEUE: u16 = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Input bytes held for the guest at most.
pub const INPUT_CAPACITY: usize = 4096;
/// Largest transmit chain copied in one go; a longer one is dropped as malformed.
const MAX_TX_CHAIN: usize = 64 * 1024;

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

/// A virtio console whose output goes to `W`.
///
/// ```
/// use devices::console::ConsoleInput;
/// use devices::virtio::console::{VirtioConsole, TYPE_CONSOLE};
/// use devices::virtio::VirtioDevice;
///
/// let mut console = VirtioConsole::new(Vec::new()).unwrap();
/// assert_eq!(console.device_type(), TYPE_CONSOLE);
/// console.write_config(8, b"!"); // emergency write: before the queues exist
/// assert_eq!(console.output(), b"!");
/// assert_eq!(console.enqueue_input(b"ls\n"), 3); // held until the guest posts buffers
/// ```
pub struct VirtioConsole<W: Write + Send> {
    output: W,
    input: VecDeque<u8>,
    drained: EventFd,
    acked_features: u64,
    queue_sizes: [u16; 2],
    active: Option<Active>,
    buffer: Vec<u8>,
    metrics: ConsoleMetrics,
}

/// Counters of what the console carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleMetrics {
    /// Bytes the guest wrote (queue and emergency register).
    pub out_bytes: u64,
    /// Output bytes the writer refused.
    pub lost_bytes: u64,
    /// Input bytes delivered to the guest.
    pub in_bytes: u64,
    /// Chains returned unused as malformed (wrong direction, outside memory, too long).
    pub malformed: u64,
}

impl<W: Write + Send> VirtioConsole<W> {
    /// A console writing the guest's output to `output`.
    pub fn new(output: W) -> std::io::Result<Self> {
        Ok(VirtioConsole {
            output,
            input: VecDeque::new(),
            drained: EventFd::new(EFD_NONBLOCK)?,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 2],
            active: None,
            buffer: vec![0; 4096],
            metrics: ConsoleMetrics::default(),
        })
    }

    /// The output writer.
    pub fn output(&self) -> &W {
        &self.output
    }

    /// What the console carried so far.
    pub fn metrics(&self) -> &ConsoleMetrics {
        &self.metrics
    }

    /// Moves the guest's output from the transmit queue to the writer.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let (output, buffer, metrics) = (&mut self.output, &mut self.buffer, &mut self.metrics);
        let returned = drain_queue(&mut active.tx, mem, "virtio-console tx", |chain| {
            let head = chain.head_index();
            match ChainBuffers::new(mem, chain, Direction::DeviceReads, MAX_TX_CHAIN) {
                Ok(buffers) => {
                    let mut offset = 0;
                    while offset < buffers.len() {
                        match buffers.read_at(mem, offset, buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                write_out(output, metrics, &buffer[..n]);
                                offset += n;
                            }
                        }
                    }
                }
                Err(err) => {
                    debug!("virtio-console: tx chain {head} dropped: {err}");
                    metrics.malformed += 1;
                }
            }
            Some(0)
        });
        if returned > 0 {
            let interrupt = active.interrupt.as_ref();
            notify_used(
                &mut active.tx,
                mem,
                interrupt,
                TX_QUEUE,
                "virtio-console tx",
            );
        }
    }

    /// Fills the guest's receive buffers with pending input.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let had_input = !self.input.is_empty();
        let mut completed = false;
        while !self.input.is_empty() {
            let Some(chain) = pop_or_enable_notification(&mut active.rx, &active.mem) else {
                break;
            };
            let head = chain.head_index();
            let written =
                match ChainBuffers::new(&active.mem, chain, Direction::DeviceWrites, usize::MAX) {
                    Ok(buffers) => {
                        let (front, back) = self.input.as_slices();
                        let mut written = buffers.write_at(&active.mem, 0, front).unwrap_or(0);
                        if written == front.len() {
                            written += buffers.write_at(&active.mem, written, back).unwrap_or(0);
                        }
                        self.input.drain(..written);
                        self.metrics.in_bytes += written as u64;
                        written
                    }
                    Err(err) => {
                        debug!("virtio-console: rx chain {head} unusable: {err}");
                        self.metrics.malformed += 1;
                        0
                    }
                };
            if let Err(err) = active.rx.add_used(&active.mem, head, len_u32(written)) {
                crate::guest_warn!("virtio-console: rx queue: {err}");
            }
            completed = true;
        }
        if completed {
            let interrupt = active.interrupt.as_ref();
            notify_used(
                &mut active.rx,
                &active.mem,
                interrupt,
                RX_QUEUE,
                "virtio-console rx",
            );
        }
        if had_input && self.input.is_empty() {
            if let Err(err) = self.drained.write(1) {
                crate::guest_warn!("virtio-console: cannot signal input drained: {err}");
            }
        }
    }
}

/// Writes guest output, counting what the writer refused as lost.
fn write_out(output: &mut impl Write, metrics: &mut ConsoleMetrics, bytes: &[u8]) {
    metrics.out_bytes += bytes.len() as u64;
    if let Err(err) = output.write_all(bytes).and_then(|()| output.flush()) {
        debug!("virtio-console: output writer failed: {err}");
        metrics.lost_bytes += bytes.len() as u64;
    }
}

impl<W: Write + Send> ConsoleInput for VirtioConsole<W> {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = INPUT_CAPACITY.saturating_sub(self.input.len());
        let taken = bytes.len().min(room);
        self.input.extend(&bytes[..taken]);
        self.process_rx();
        taken
    }

    fn input_drained(&self) -> &EventFd {
        &self.drained
    }
}

impl<W: Write + Send> VirtioDevice for VirtioConsole<W> {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols = rows = 0 (no F_SIZE), max_nr_ports = 1 (ignored without F_MULTIPORT), emerg_wr
        // reads as 0.
        let config = ConsoleConfigSpace {
            max_nr_ports: 1.into(),
            ..Default::default()
        };
        read_config_bytes(config.as_slice(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_wr: the low byte is a character to print (the spec's only writable field).
        if offset == offset_of!(ConsoleConfigSpace, emerg_wr) as u64 {
            if let Some(&byte) = data.first() {
                write_out(&mut self.output, &mut self.metrics, &[byte]);
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
        });
        // Output the driver queued before DRIVER_OK, input that waited for the guest.
        self.process_tx();
        self.process_rx();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            other => debug!("virtio-console: notify for unknown queue {other}"),
        }
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        true
    }

    fn save_state(&mut self) -> Result<VirtioDeviceState, SnapshotError> {
        Ok(VirtioDeviceState {
            device_type: TYPE_CONSOLE,
            acked_features: self.acked_features,
            activated: self.active.is_some(),
            queues: self
                .active
                .iter()
                .flat_map(|active| [QueueSnapshot::of(&active.rx), QueueSnapshot::of(&active.tx)])
                .collect(),
            extra: DeviceExtra::None,
            rate_limiters: Vec::new(),
        })
    }

    fn restore_state(
        &mut self,
        state: &VirtioDeviceState,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), SnapshotError> {
        restore_plain(self, state, mem, interrupt)
    }

    fn counters(&self) -> Vec<Counter> {
        let m = &self.metrics;
        vec![
            Counter::count("out_bytes", "bytes the guest wrote", m.out_bytes),
            Counter::count(
                "lost_bytes",
                "output bytes the writer refused",
                m.lost_bytes,
            ),
            Counter::count("in_bytes", "input bytes delivered to the guest", m.in_bytes),
            Counter::count(
                "malformed",
                "chains returned unused as malformed",
                m.malformed,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{test_memory, DriverQueue, RecordingInterrupt, BUFFERS};
    use crate::virtio::InterruptKind;
    use vm_memory::{Bytes, GuestAddress};

    struct Setup<'m> {
        rx: DriverQueue<'m>,
        tx: DriverQueue<'m>,
        interrupts: Arc<RecordingInterrupt>,
    }

    fn activate<'m>(console: &mut VirtioConsole<Vec<u8>>, mem: &'m GuestMemoryMmap) -> Setup<'m> {
        let rx = DriverQueue::new(mem, 0x1_0000, 16);
        let tx = DriverQueue::new(mem, 0x4_0000, 16);
        let interrupts = RecordingInterrupt::new();
        let queues = vec![rx.device_queue(), tx.device_queue()];
        console
            .activate(mem.clone(), interrupts.clone(), queues)
            .unwrap();
        Setup { rx, tx, interrupts }
    }

    #[test]
    fn guest_output_reaches_the_writer_across_descriptors() {
        let mem = test_memory();
        let mut console = VirtioConsole::new(Vec::new()).unwrap();
        let mut setup = activate(&mut console, &mem);
        mem.write_slice(b"hello ", GuestAddress(BUFFERS)).unwrap();
        mem.write_slice(b"keel\n", GuestAddress(BUFFERS + 0x1000))
            .unwrap();
        setup
            .tx
            .add_chain(&[(BUFFERS, 6, false), (BUFFERS + 0x1000, 5, false)]);
        console.queue_notify(TX_QUEUE);
        assert_eq!(console.output(), b"hello keel\n");
        assert_eq!(console.metrics().out_bytes, 11);
        assert_eq!(setup.tx.used_count(), 1);
        assert_eq!(setup.interrupts.take(), [InterruptKind::Queue(TX_QUEUE)]);
    }

    #[test]
    fn input_waits_for_receive_buffers_is_bounded_and_signals_drained() {
        let mem = test_memory();
        let mut console = VirtioConsole::new(Vec::new()).unwrap();
        let mut setup = activate(&mut console, &mem);
        assert_eq!(console.enqueue_input(b"abc"), 3);
        assert_eq!(console.metrics().in_bytes, 0, "no receive buffer yet");
        // A full buffer takes only what fits.
        let big = vec![b'x'; INPUT_CAPACITY];
        assert_eq!(console.enqueue_input(&big), INPUT_CAPACITY - 3);
        assert_eq!(console.enqueue_input(b"more"), 0);
        // The guest posts a 2-byte and a large buffer.
        setup.rx.add_chain(&[(BUFFERS, 2, true)]);
        setup.rx.add_chain(&[(BUFFERS + 0x1000, 0x800, true)]);
        console.queue_notify(RX_QUEUE);
        let mut got = [0u8; 3];
        mem.read_slice(&mut got[..2], GuestAddress(BUFFERS))
            .unwrap();
        mem.read_slice(&mut got[2..], GuestAddress(BUFFERS + 0x1000))
            .unwrap();
        assert_eq!(&got, b"abc");
        assert_eq!(setup.rx.used(0), (0, 2));
        assert_eq!(setup.rx.used(1), (1, 0x800));
        assert_eq!(console.metrics().in_bytes, 2 + 0x800);
        assert!(console.input_drained().read().is_err(), "not drained yet");
        assert_eq!(setup.interrupts.take(), [InterruptKind::Queue(RX_QUEUE)]);
        // One more buffer takes the rest: drained fires.
        setup.rx.add_chain(&[(BUFFERS + 0x2000, 0x1000, true)]);
        console.queue_notify(RX_QUEUE);
        assert_eq!(console.metrics().in_bytes, INPUT_CAPACITY as u64);
        assert_eq!(console.input_drained().read().unwrap(), 1);
    }

    #[test]
    fn malformed_chains_are_returned_and_counted_never_panic() {
        let mem = test_memory();
        let mut console = VirtioConsole::new(Vec::new()).unwrap();
        let mut setup = activate(&mut console, &mem);
        // A writable descriptor on the transmit queue, one outside memory, one too long.
        setup.tx.add_chain(&[(BUFFERS, 8, true)]);
        setup.tx.add_chain(&[(0xffff_fff0, 64, false)]);
        setup.tx.add_chain(&[(BUFFERS, 0x2_0000, false)]);
        console.queue_notify(TX_QUEUE);
        assert_eq!(console.metrics().malformed, 3);
        assert!(console.output().is_empty());
        assert_eq!(setup.tx.used_count(), 3, "every chain goes back");
        // A read-only buffer on the receive queue gets nothing.
        console.enqueue_input(b"z");
        setup.rx.add_chain(&[(BUFFERS, 8, false)]);
        console.queue_notify(RX_QUEUE);
        assert_eq!(console.metrics().malformed, 4);
        assert_eq!(console.metrics().in_bytes, 0);
        // Unknown queues and config writes elsewhere are ignored.
        console.queue_notify(7);
        console.write_config(0, &[1, 2]);
        let mut config = [0u8; 12];
        console.read_config(0, &mut config);
        assert_eq!(config, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut past_end = [0xffu8; 4];
        console.read_config(u64::MAX, &mut past_end);
        assert_eq!(past_end, [0; 4]);
    }
}
