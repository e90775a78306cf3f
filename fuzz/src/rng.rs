//! virtio-rng over a deterministic entropy source.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use devices::virtio::rng::{EntropySource, VirtioRng, MAX_BYTES_PER_REQUEST};
use devices::virtio::VirtioDevice;

use crate::support::{Guest, Input};

/// Counts what it produces, so the target can check the per-request cap.
struct Counter(Arc<AtomicUsize>);

impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0xa5);
        self.0.fetch_add(buf.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// Feeds one input to the device; panics only on a bug.
pub fn rng(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(guest) = Guest::from_input(&mut input) else {
        return;
    };
    let produced = Arc::new(AtomicUsize::new(0));
    let mut device = VirtioRng::with_source(Counter(produced.clone()));
    let Some(queue) = guest.queue() else {
        return;
    };
    if device
        .activate(guest.mem.clone(), Guest::interrupt(), vec![queue])
        .is_err()
    {
        return;
    }
    device.queue_notify(0);
    // One notification serves at most a queue's worth of chains, each capped.
    let bound = guest.descriptors.len() * MAX_BYTES_PER_REQUEST;
    let produced = produced.load(Ordering::Relaxed);
    assert!(
        produced <= bound,
        "{produced} bytes for a queue of {}",
        guest.descriptors.len()
    );
    let _ = device.reset();
}
