//! The queue loop every device shares: take the driver's chains, hand each back with its used
//! length, and tell the driver without losing a notification or spinning on a broken ring.
//!
//! With `VIRTIO_RING_F_EVENT_IDX` a driver notifies only when the available index passes the
//! device's `avail_event`, so a device that stops taking chains must publish a fresh
//! `avail_event` (re-enable notifications) and then look at the ring once more: a chain added
//! between its last pop and the re-enable would otherwise wait for a notification that never
//! comes. [`drain_queue`] does that for devices that serve whatever the driver queues (block,
//! transmit queues, entropy, control queues); [`pop_or_enable_notification`] does it one chain
//! at a time for devices that fill chains as host data arrives (receive queues).
//!
//! A guest can corrupt its available index so the ring looks non-empty while nothing pops;
//! both functions then stop instead of spinning, and warn (rate-limited; [`pop_chain`] keeps
//! virtio-queue from logging every such pop).
//!
//! ```
//! use devices::virtio::queue_ops::{drain_queue, notify_used};
//! # use std::sync::Arc;
//! # use devices::virtio::{InterruptKind, VirtioInterrupt};
//! # use virtio_queue::{desc::{split::Descriptor, RawDescriptor}, mock::MockSplitQueue, QueueT};
//! # use vm_memory::GuestAddress;
//! # use devices::GuestMemoryMmap;
//! # struct NoIrq;
//! # impl VirtioInterrupt for NoIrq {
//! #     fn trigger(&self, _: InterruptKind) -> std::io::Result<()> { Ok(()) }
//! # }
//! # let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
//! # let driver = MockSplitQueue::new(&mem, 16);
//! # driver.build_desc_chain(&[RawDescriptor::from(Descriptor::new(0x8000, 64, 0, 0))]).unwrap();
//! # let mut queue: virtio_queue::Queue = driver.create_queue().unwrap();
//! # let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(NoIrq);
//! // A device that consumes what the driver sends and returns every chain at once.
//! let returned = drain_queue(&mut queue, &mem, "my-device", |chain| {
//!     let bytes: u32 = chain.map(|desc| desc.len()).sum();
//!     assert_eq!(bytes, 64);
//!     Some(0) // nothing written into the chain
//! });
//! assert_eq!(returned, 1);
//! notify_used(&mut queue, &mem, interrupt.as_ref(), 0, "my-device");
//! ```

use std::fmt;

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{InterruptKind, VirtioInterrupt};

/// Pops every available chain on `queue` and hands it to `serve`, which returns the used length
/// to complete it with now, or `None` when the device completes it later itself (asynchronous
/// I/O). Notifications stay off while the queue drains and the ring is checked again after they
/// are re-enabled, so no chain is missed. Returns how many chains went back to the driver;
/// `device` names the device in warnings (a `&str` or `format_args!`, formatted only if a
/// warning is logged).
pub fn drain_queue<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    device: impl fmt::Display,
    mut serve: impl FnMut(DescriptorChain<&'m GuestMemoryMmap>) -> Option<u32>,
) -> usize {
    drain_queue_until(queue, mem, device, |chain| match serve(chain) {
        Some(used_len) => Served::Used(used_len),
        None => Served::Later,
    })
    .returned
}

/// What [`drain_queue_until`]'s `serve` did with a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Done: return it to the driver with this used length.
    Used(u32),
    /// Taken: the device returns it itself later (asynchronous I/O).
    Later,
    /// Not taken (the device is over its rate limit): it goes back to the ring, untouched, and
    /// draining stops until the device looks again.
    Stop,
}

/// What [`drain_queue_until`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Chains that went back to the driver.
    pub returned: usize,
    /// Whether `serve` stopped it ([`Served::Stop`]) with chains left in the ring.
    pub stopped: bool,
}

/// [`drain_queue`] for a device that may have to stop before the ring is empty (a rate
/// limiter that says wait): a chain `serve` answers [`Served::Stop`] for is put back where it
/// was (the driver sees nothing) and the loop ends without re-enabling notifications; the
/// device drains again when it is allowed to, e.g. when its timer fires.
pub fn drain_queue_until<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    device: impl fmt::Display,
    mut serve: impl FnMut(DescriptorChain<&'m GuestMemoryMmap>) -> Served,
) -> Drained {
    let mut drained = Drained::default();
    loop {
        if let Err(err) = queue.disable_notification(mem) {
            crate::guest_warn!("{device}: cannot disable queue notifications: {err}");
        }
        let mut popped = 0usize;
        while let Some(chain) = pop_chain(queue, mem, &device) {
            popped += 1;
            let head = chain.head_index();
            let used_len = match serve(chain) {
                Served::Used(used_len) => used_len,
                Served::Later => continue,
                Served::Stop => {
                    // The chain was only looked at: the next pop takes it again.
                    queue.go_to_previous_position();
                    drained.stopped = true;
                    return drained;
                }
            };
            match queue.add_used(mem, head, used_len) {
                Ok(()) => drained.returned += 1,
                // A head outside the queue: there is nothing to return it to.
                Err(err) => crate::guest_warn!("{device}: cannot return chain {head}: {err}"),
            }
        }
        match queue.enable_notification(mem) {
            // More chains arrived while notifications were off.
            Ok(true) if popped > 0 => continue,
            Ok(true) => {
                crate::guest_warn!("{device}: the available index is inconsistent");
                break;
            }
            Ok(false) => break,
            Err(err) => {
                crate::guest_warn!("{device}: cannot enable queue notifications: {err}");
                break;
            }
        }
    }
    drained
}

/// The next chain on `queue`, as `Queue::pop_descriptor_chain` gives it, but what a driver
/// can get wrong at will is reported with [`guest_warn!`](crate::guest_warn), rate-limited,
/// where virtio-queue logs an error line every time (a flood of 40,000 lines in seconds,
/// measured by the hostile-guest catalogue's `warn_flood`): a corrupt ring (an available index
/// more than the queue size ahead of the device, a queue not ready), which yields nothing, and
/// an available entry naming a descriptor beyond the queue, which is skipped (it can be neither
/// read nor returned: virtio-queue's `add_used` refuses it, logging). `device` names the device
/// in the warnings.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    device: impl fmt::Display,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    let size = queue.size();
    let mut chains = match queue.iter(mem) {
        Ok(chains) => chains,
        Err(err) => {
            crate::guest_warn!("{device}: cannot read the available ring: {err}");
            return None;
        }
    };
    for chain in chains.by_ref() {
        if chain.head_index() < size {
            return Some(chain);
        }
        crate::guest_warn!(
            "{device}: the available ring names descriptor {} of a {size}-entry queue; skipped",
            chain.head_index()
        );
    }
    None
}

/// Takes the next chain a device fills; when the ring looks empty, re-enables driver
/// notifications (in event-index mode this publishes `avail_event`) and looks once more, so the
/// driver's next buffer is sure to be notified.
pub fn pop_or_enable_notification<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    if let Some(chain) = pop_chain(queue, mem, "virtio") {
        return Some(chain);
    }
    match queue.enable_notification(mem) {
        Ok(true) => pop_chain(queue, mem, "virtio"),
        Ok(false) => None,
        Err(err) => {
            crate::guest_warn!("virtio: cannot enable queue notifications: {err}");
            None
        }
    }
}

/// Raises queue `index`'s interrupt after the device returned chains, unless the driver's event
/// index says it needs none. When the event index cannot be read it interrupts anyway: a
/// spurious interrupt is harmless, a missing one leaves the driver waiting.
pub fn notify_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    device: impl fmt::Display,
) {
    let needed = queue.needs_notification(mem).unwrap_or_else(|err| {
        crate::guest_warn!("{device}: cannot read the used event index: {err}");
        true
    });
    if needed {
        if let Err(err) = interrupt.trigger(InterruptKind::Queue(index)) {
            crate::guest_warn!("{device}: cannot raise the interrupt of queue {index}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{desc, test_memory};
    use std::cell::Cell;
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn drains_everything_and_counts_what_went_back() {
        let mem = test_memory();
        let driver = MockSplitQueue::new(&mem, 16);
        for i in 0..3u64 {
            driver
                .build_desc_chain(&[desc(0x10_0000 + i * 0x1000, 8, false)])
                .unwrap();
        }
        let mut queue: Queue = driver.create_queue().unwrap();
        let served = Cell::new(0);
        // The second chain is kept for later (as asynchronous I/O would).
        let returned = drain_queue(&mut queue, &mem, "test", |_| {
            served.set(served.get() + 1);
            (served.get() != 2).then_some(4)
        });
        assert_eq!((served.get(), returned), (3, 2));
        assert_eq!(queue.next_used(), 2);
        assert!(queue.pop_descriptor_chain(&mem).is_none());
    }

    #[test]
    fn a_stopped_drain_puts_the_chain_back_for_the_next_one() {
        let mem = test_memory();
        let mut driver = crate::virtio::testing::DriverQueue::new(&mem, 0, 16);
        for i in 0..4u64 {
            driver.add_chain(&[(0x10_0000 + i * 0x1000, 8, false)]);
        }
        let mut queue = driver.device_queue();
        // Which buffer each chain served carries.
        let mut seen = Vec::new();
        let addr = |mut chain: DescriptorChain<&GuestMemoryMmap>| {
            chain.next().map(|desc| desc.addr().0 - 0x10_0000)
        };
        let drained = drain_queue_until(&mut queue, &mem, "test", |chain| {
            if seen.len() == 2 {
                return Served::Stop;
            }
            seen.push(addr(chain));
            Served::Used(0)
        });
        assert_eq!(
            drained,
            Drained {
                returned: 2,
                stopped: true
            }
        );
        assert_eq!(queue.next_used(), 2);
        // The third chain is the next one taken, then the fourth.
        let drained = drain_queue_until(&mut queue, &mem, "test", |chain| {
            seen.push(addr(chain));
            Served::Used(0)
        });
        assert_eq!(drained.returned, 2);
        assert!(!drained.stopped);
        assert_eq!(seen, [Some(0), Some(0x1000), Some(0x2000), Some(0x3000)]);
    }

    #[test]
    fn a_corrupt_available_index_does_not_spin() {
        let mem = test_memory();
        let driver = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = driver.create_queue().unwrap();
        // Claim 40000 chains in a 16-entry ring: the queue refuses to pop any.
        driver.avail().idx().store(40_000);
        let returned = drain_queue(&mut queue, &mem, "test", |_| Some(0));
        assert_eq!(returned, 0);
    }

    #[test]
    fn pop_chain_refuses_a_corrupt_ring_until_the_driver_fixes_it() {
        let mem = test_memory();
        let driver = MockSplitQueue::new(&mem, 16);
        driver
            .build_desc_chain(&[desc(0x10_0000, 8, true)])
            .unwrap();
        let mut queue: Queue = driver.create_queue().unwrap();
        driver.avail().idx().store(40_000);
        for _ in 0..1000 {
            assert!(pop_chain(&mut queue, &mem, "test").is_none());
        }
        assert_eq!(queue.next_avail(), 0, "nothing was taken");
        driver.avail().idx().store(1);
        let chain = pop_chain(&mut queue, &mem, "test").expect("the chain");
        assert_eq!(chain.head_index(), 0);
        assert!(pop_chain(&mut queue, &mem, "test").is_none());
    }

    #[test]
    fn pop_chain_skips_heads_beyond_the_queue() {
        let mem = test_memory();
        let driver = MockSplitQueue::new(&mem, 16);
        driver
            .build_desc_chain(&[desc(0x10_0000, 8, true)])
            .unwrap();
        driver
            .build_desc_chain(&[desc(0x10_1000, 8, true)])
            .unwrap();
        let mut queue: Queue = driver.create_queue().unwrap();
        // The first available entry names descriptor 300.
        driver.avail().ring().ref_at(0).unwrap().store(300);
        let chain = pop_chain(&mut queue, &mem, "test").expect("the second chain");
        assert!(chain.head_index() < 16);
        assert_eq!(queue.next_avail(), 2, "the bad entry was consumed");
        assert!(pop_chain(&mut queue, &mem, "test").is_none());
    }

    #[test]
    fn an_empty_ring_reenables_notifications() {
        let mem = test_memory();
        let driver = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = driver.create_queue().unwrap();
        queue.set_event_idx(true);
        assert!(pop_or_enable_notification(&mut queue, &mem).is_none());
        driver
            .build_desc_chain(&[desc(0x10_0000, 8, true)])
            .unwrap();
        assert!(pop_or_enable_notification(&mut queue, &mem).is_some());
    }
}
