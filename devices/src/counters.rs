//! What a device reports about its work: named counters with a help text, read by the VMM
//! for its API and Prometheus exposition.
//!
//! Devices keep plain integers in their own state (updated under the device lock they already
//! hold while processing a queue) and list them through
//! [`VirtioDevice::counters`](crate::virtio::VirtioDevice::counters); reading takes the same
//! lock for a moment. Names are
//! snake_case and stable: they are part of the metrics a manager scrapes.

/// Whether a value only grows ([`CounterKind::Counter`]) or goes up and down
/// ([`CounterKind::Gauge`], e.g. open connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Monotonically increasing since the device was created.
    Counter,
    /// A current level.
    Gauge,
}

/// One value a device reports.
///
/// ```
/// use devices::counters::Counter;
///
/// let reads = Counter::count("read_ops", "read requests completed", 42);
/// assert_eq!((reads.name, reads.value), ("read_ops", 42));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// snake_case name, unique within the device kind (`read_bytes`, `rx_frames`).
    pub name: &'static str,
    /// What it counts, in one line (becomes the Prometheus `# HELP` text).
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: CounterKind,
    /// The value.
    pub value: u64,
}

impl Counter {
    /// A monotonically increasing counter.
    pub const fn count(name: &'static str, help: &'static str, value: u64) -> Self {
        Counter {
            name,
            help,
            kind: CounterKind::Counter,
            value,
        }
    }

    /// A gauge (a current level).
    pub const fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Counter {
            name,
            help,
            kind: CounterKind::Gauge,
            value,
        }
    }
}
