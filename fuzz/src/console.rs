//! virtio-console: the input's queue serves as both the receive and the transmit queue (a
//! driver may point both at the same rings), with host input pushed in around the guest's
//! notifications.

use devices::console::ConsoleInput;
use devices::virtio::console::{VirtioConsole, INPUT_CAPACITY, RX_QUEUE, TX_QUEUE};
use devices::virtio::VirtioDevice;

use crate::support::{Guest, Input};

/// Feeds one input to the device; panics only on a bug.
pub fn console(data: &[u8]) {
    let mut input = Input::new(data);
    let host_input = vec![b'k'; usize::from(input.u16()) % (2 * INPUT_CAPACITY)];
    let Some(guest) = Guest::from_input(&mut input) else {
        return;
    };
    let Ok(mut device) = VirtioConsole::new(Vec::new()) else {
        return;
    };
    let (Some(rx), Some(tx)) = (guest.queue(), guest.queue()) else {
        return;
    };
    if device
        .activate(guest.mem.clone(), Guest::interrupt(), vec![rx, tx])
        .is_err()
    {
        return;
    }
    let taken = device.enqueue_input(&host_input);
    assert!(taken <= INPUT_CAPACITY, "took {taken} bytes");
    device.queue_notify(TX_QUEUE);
    device.queue_notify(RX_QUEUE);
    device.write_config(8, b"!");
    // One notification serves at most a queue's worth of 64 KiB chains, plus the emergency byte.
    let bound = (guest.descriptors.len() * 64 * 1024 + 1) as u64;
    let metrics = device.metrics();
    assert!(
        metrics.out_bytes <= bound,
        "{} bytes out",
        metrics.out_bytes
    );
    assert_eq!(device.output().len() as u64, metrics.out_bytes);
    assert!(metrics.in_bytes <= taken as u64);
    let _ = device.reset();
}
