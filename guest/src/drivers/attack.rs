//! The hostile-guest catalogue's misbehaving driver (`keel.attack=NAME`; the attacks are listed
//! in `keel_test_guest::virtio::attack`).
//!
//! Each attack sets its device up (mostly as the honest drivers do), breaks one rule of the
//! virtio spec, and records what the device did: returned the chain with some used length,
//! did not return it, or set DEVICE_NEEDS_RESET. Then the device is reset and must serve one
//! well-formed request. The line `attack NAME outcome=... then=served` says both; the host's
//! tests compare the outcome with what Keel's devices are meant to do.

use core::fmt;

use keel_test_guest::cmdline::VirtioOptions;
use keel_test_guest::virtio::attack::Attack;
use keel_test_guest::virtio::blk::{request_header, HEADER_LEN, SECTOR_SIZE, T_IN};

use super::queue::{
    DmaArena, DmaBuffer, Segment, Virtqueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
    MAX_QUEUE_SIZE,
};
use super::transport::{DriverError, Transport};
use super::{deadline, pci, ID_BLOCK, ID_ENTROPY, MMIO_HIGH};
use crate::console::report;

/// How long an attack waits for a chain that may never come back (TSC ticks, about a second;
/// long enough for a device thread on a loaded 2-core host).
const SHORT_WAIT: u64 = 3_000_000_000;
/// Status bit: the device has hit an error it cannot recover from alone.
const NEEDS_RESET: u32 = 0x40;
/// Status bits of the handshake.
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
/// Guest-physical address of the I/O APIC's registers: in the MMIO hole, never RAM.
const IOAPIC: u64 = 0xfec0_0000;
/// Where `rng_1gib`'s buffer starts (256 MiB; the VM has 1.5 GiB).
const GIB_BUFFER: u64 = 0x1000_0000;
/// Where the guest's image is loaded (1 MiB): RAM that `bar_over_ram` puts a BAR on.
const GUEST_IMAGE: u64 = 0x10_0000;
/// A virtio-blk status byte the device never writes.
const NO_STATUS: u8 = 0xee;

/// What the device did with the attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Returned the chain, writing this many bytes.
    Returned(u32),
    /// Returned a block request with this status byte.
    Status(u8),
    /// Did not return the chain.
    NotReturned,
    /// Set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// Cleared FEATURES_OK: refused the features.
    FeaturesRefused,
    /// Kept working as if nothing happened (`count` notifications or writes taken).
    Ignored(u64),
    /// The MSI-X vectors (configuration, queue 0) read back after the driver set them.
    Vectors(u16, u16),
    /// BAR 0 read back after the driver moved it.
    Bar(u64),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Returned(len) => write!(f, "returned_len={len}"),
            Outcome::Status(status) => write!(f, "status={status}"),
            Outcome::NotReturned => f.write_str("not_returned"),
            Outcome::NeedsReset => f.write_str("needs_reset"),
            Outcome::FeaturesRefused => f.write_str("features_refused"),
            Outcome::Ignored(count) => write!(f, "ignored count={count}"),
            Outcome::Vectors(config, queue) => write!(f, "vectors={config:#x},{queue:#x}"),
            Outcome::Bar(address) => write!(f, "bar0={address:#x}"),
        }
    }
}

/// Runs `attack` against the first entropy device (`rng`) or block device (`blk`).
pub fn run(
    attack: Attack,
    rng: Option<Transport>,
    blk: Option<Transport>,
    vsock: Option<Transport>,
    console: Option<Transport>,
    net: Option<Transport>,
    options: &VirtioOptions,
) {
    let name = attack.name();
    if attack.on_console() || attack.on_net() {
        let target = if attack.on_net() { net } else { console };
        let Some(transport) = target else {
            report!("FAIL attack {name} no device");
            return;
        };
        let outcome = if attack.on_net_rx() {
            attack_rx(attack, &transport)
        } else {
            attack_tx(attack, &transport)
        };
        transport.reset();
        let served = if attack.on_net_rx() {
            probe_net_rx(&transport, options)
        } else if attack.on_net() {
            probe_net(&transport, options)
        } else {
            probe_console(&transport, options)
        };
        transport.reset();
        match (outcome, served) {
            (Ok(outcome), Ok(())) => report!("attack {name} outcome={outcome} then=served"),
            (Ok(outcome), Err(error)) => {
                report!("FAIL attack {name} outcome={outcome} then: {error}")
            }
            (Err(error), _) => report!("FAIL attack {name} {error}"),
        }
        return;
    }
    if attack.on_vsock() {
        let Some(transport) = vsock else {
            report!("FAIL attack {name} no device");
            return;
        };
        let which = match attack {
            Attack::VsockResetFlood => super::vsock::VsockAttack::ResetFlood,
            Attack::VsockConnectionFlood => super::vsock::VsockAttack::ConnectionFlood,
            _ => super::vsock::VsockAttack::CreditOverflow,
        };
        let seen = super::vsock::attack(&transport, options, which);
        let seen = match (seen, super::vsock::probe(&transport, options)) {
            (Ok(seen), Ok(())) => Ok(seen),
            (Ok(_), Err(error)) => {
                report!("FAIL attack {name} then: {error}");
                transport.reset();
                return;
            }
            (Err(error), _) => Err(error),
        };
        transport.reset();
        match seen {
            Ok(super::vsock::Seen::Resets(resets, 0)) => {
                report!("attack {name} outcome=resets={resets} then=served");
            }
            Ok(super::vsock::Seen::Resets(resets, other)) => {
                report!("FAIL attack {name} resets={resets} and {other} other packets");
            }
            Ok(super::vsock::Seen::Connections(accepted, refused)) => {
                report!("attack {name} outcome=accepted={accepted} refused={refused} then=served");
            }
            Ok(super::vsock::Seen::ResetAfter(bytes)) => {
                report!("attack {name} outcome=reset_after={bytes} then=served");
            }
            Ok(super::vsock::Seen::NoReset(why)) => report!("FAIL attack {name} {why}"),
            Err(error) => report!("FAIL attack {name} {error}"),
        }
        return;
    }
    let target = if attack.on_block() { blk } else { rng };
    let Some(transport) = target else {
        report!("FAIL attack {name} no device");
        return;
    };
    let outcome = attack_device(attack, &transport, blk.as_ref(), options);
    transport.reset();
    let served = if attack.on_block() {
        probe_block(&transport, options)
    } else {
        probe_entropy(&transport, options)
    };
    // The disk whose BAR was overlapped must work too.
    let served = match (served, attack, blk) {
        (Ok(()), Attack::BarsOverlap, Some(disk)) => {
            let served = probe_block(&disk, options);
            disk.reset();
            served
        }
        (served, _, _) => served,
    };
    transport.reset();
    match (outcome, served) {
        (Ok(outcome), Ok(())) => report!("attack {name} outcome={outcome} then=served"),
        (Ok(outcome), Err(error)) => {
            report!("FAIL attack {name} outcome={outcome} then: {error}")
        }
        (Err(error), _) => report!("FAIL attack {name} {error}"),
    }
}

/// A device with its one queue of [`MAX_QUEUE_SIZE`] entries ready, DRIVER_OK set, and the
/// rest of the arena.
fn live(transport: &Transport) -> Result<(Virtqueue, DmaArena), DriverError> {
    transport.negotiate(0, 0)?;
    // SAFETY: the previous driver reset its device before returning (as `run` does after an
    // attack).
    let mut arena = unsafe { DmaArena::take() };
    let queue = Virtqueue::new(transport, 0, &mut arena)?;
    transport.driver_ok()?;
    Ok((queue, arena))
}

/// Puts the chain starting at descriptor `head` on the ring, notifies, and waits a little.
fn send(transport: &Transport, queue: &mut Virtqueue, head: u16) -> Outcome {
    let next = queue.avail_idx().wrapping_add(1);
    queue.publish_raw(head, next);
    wait_outcome(transport, queue, SHORT_WAIT)
}

/// What the device did with the chains published so far, within `wait` TSC ticks.
fn wait_outcome(transport: &Transport, queue: &mut Virtqueue, wait: u64) -> Outcome {
    let (before, _) = queue.used_raw();
    transport.notify(queue.index());
    let until = deadline(wait);
    loop {
        if transport.read_status() & NEEDS_RESET != 0 {
            return Outcome::NeedsReset;
        }
        let (idx, len) = queue.used_raw();
        if idx != before {
            return Outcome::Returned(len);
        }
        if crate::cpu::rdtsc() > until {
            return Outcome::NotReturned;
        }
        core::hint::spin_loop();
    }
}

fn attack_device(
    attack: Attack,
    transport: &Transport,
    blk: Option<&Transport>,
    options: &VirtioOptions,
) -> Result<Outcome, DriverError> {
    const W: u16 = DESC_F_WRITE;
    const WN: u16 = DESC_F_WRITE | DESC_F_NEXT;
    match attack {
        Attack::MsixVectorOutOfRange => {
            let (_queue, _arena) = live(transport)?;
            let (config, queue) = transport
                .set_msix_vectors(0, 0x800)
                .ok_or(DriverError::QueueUnavailable(0))?;
            return Ok(Outcome::Vectors(config, queue));
        }
        Attack::MsixTableAbuse => {
            let entropy = pci::find(ID_ENTROPY).ok_or(DriverError::QueueUnavailable(0))?;
            let bar = pci::bar0(entropy).ok_or(DriverError::QueueUnavailable(0))?;
            let (pointer, control, table, pba) =
                pci::msix_capability(entropy).ok_or(DriverError::QueueUnavailable(0))?;
            // Both in BAR 0 (BIR 0), where Keel puts them; anything else is not attacked.
            if table & 7 != 0 || pba & 7 != 0 {
                return Err(DriverError::QueueUnavailable(0));
            }
            let (table, pba) = (bar + u64::from(table & !7), bar + u64::from(pba & !7));
            let entries = u64::from(control & 0x7ff) + 1;
            let (mut queue, _arena) = live(transport)?;
            let mut writes = 0u64;
            for entry in 0..entries + 16 {
                let at = table + entry * 16;
                // Stay below the PBA (which follows the table in Keel's layout) and in the
                // device memory the guest maps.
                if at + 16 > pba || at + 16 > MMIO_HIGH {
                    break;
                }
                for (offset, value) in [(0, 0xdead_b000u32), (4, 0xffff_ffff), (8, 0), (12, 0)] {
                    // SAFETY: `at` lies in BAR 0 of the entropy function, in the uncached
                    // device memory the guest identity-maps; only this driver uses it now.
                    unsafe { core::ptr::write_volatile((at + offset) as *mut u32, value) };
                }
                writes += 1;
            }
            for offset in [0u64, 4] {
                // SAFETY: as above, for the PBA's first 8 bytes.
                unsafe { core::ptr::write_volatile((pba + offset) as *mut u32, 0xffff_ffff) };
            }
            pci::set_msix_control(entropy, pointer, 1 << 15);
            let vectors = transport.set_msix_vectors(0, 0);
            let outcome = probe_live(transport, &mut queue)?;
            pci::set_msix_control(entropy, pointer, 0);
            transport.set_msix_vectors(0, 0xffff);
            if vectors != Some((0, 0)) {
                report!("FAIL attack msix_table_abuse: vectors {vectors:?}, not (0, 0)");
            }
            return Ok(outcome.unwrap_or(Outcome::Ignored(writes)));
        }
        Attack::BarOverRam | Attack::BarsOverlap => {
            let entropy = pci::find(ID_ENTROPY).ok_or(DriverError::QueueUnavailable(0))?;
            let original = pci::bar0(entropy).ok_or(DriverError::QueueUnavailable(0))?;
            let target = if attack == Attack::BarOverRam {
                GUEST_IMAGE
            } else {
                let disk = pci::find(ID_BLOCK).ok_or(DriverError::QueueUnavailable(0))?;
                if blk.is_none() {
                    return Err(DriverError::QueueUnavailable(0));
                }
                pci::bar0(disk).ok_or(DriverError::QueueUnavailable(0))?
            };
            let (_queue, _arena) = live(transport)?;
            let moved = pci::set_bar0(entropy, target).unwrap_or(0);
            // With decoding on at the new address, kick the queue where it used to be (the
            // device's old window) and where it now claims to be.
            transport.notify(0);
            let back = pci::set_bar0(entropy, original);
            if back != Some(original) {
                report!(
                    "FAIL attack {} bar0 did not move back: {back:?}",
                    attack.name()
                );
            }
            return Ok(Outcome::Bar(moved));
        }
        Attack::QueueSizeZero | Attack::QueueSizeOdd | Attack::QueueSizeTooBig => {
            let size = match attack {
                Attack::QueueSizeZero => 0,
                Attack::QueueSizeOdd => 12,
                _ => 1024,
            };
            transport.negotiate(0, 0)?;
            // SAFETY: as in `live`.
            let mut arena = unsafe { DmaArena::take() };
            let queue = Virtqueue::new_unready(0, &mut arena)?;
            transport.enable_queue_as(&queue, size)?;
            let status = transport.read_status();
            transport.write_status(status | DRIVER_OK);
            return Ok(if transport.read_status() & NEEDS_RESET != 0 {
                Outcome::NeedsReset
            } else {
                Outcome::Ignored(0)
            });
        }
        Attack::NotifyUnconfigured => {
            transport.negotiate(0, 0)?;
            let count = 1000;
            for _ in 0..count {
                transport.notify(0);
                transport.notify(7);
                transport.notify(u16::MAX);
            }
            let (mut queue, arena) = live(transport)?;
            for _ in 0..count {
                transport.notify(5);
            }
            let _ = arena;
            return Ok(match probe_live(transport, &mut queue)? {
                None => Outcome::Ignored(3 * count + count),
                Some(outcome) => outcome,
            });
        }
        Attack::StatusOutOfOrder => {
            transport.reset();
            transport.write_status(DRIVER_OK);
            transport.write_status(ACKNOWLEDGE | DRIVER | DRIVER_OK);
            transport.reset();
            transport.write_status(ACKNOWLEDGE | DRIVER);
            transport.write_driver_features(u64::MAX);
            transport.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
            let status = transport.read_status();
            return Ok(if status & NEEDS_RESET != 0 {
                Outcome::NeedsReset
            } else if status & FEATURES_OK == 0 {
                Outcome::FeaturesRefused
            } else {
                Outcome::Ignored(0)
            });
        }
        Attack::ConfigWriteOob => {
            let (mut queue, _arena) = live(transport)?;
            let magic = transport.mmio_read(0);
            let mut writes = 0;
            // Every register and the (absent) configuration space, but the status register
            // (0x70), whose writes are the handshake and are covered elsewhere.
            for offset in (0..0x200u64).step_by(4).filter(|offset| *offset != 0x70) {
                if transport.mmio_write(offset, 0xffff_ffff) {
                    writes += 1;
                }
            }
            if writes == 0 {
                return Err(DriverError::QueueUnavailable(0));
            }
            if transport.mmio_read(0) != magic {
                report!("FAIL attack config_write_oob: the magic value changed");
            }
            // The queue was live: the writes above hit its registers too. Whatever the device
            // did, it must not hang or crash; report what it says now.
            return Ok(match probe_live(transport, &mut queue)? {
                Some(outcome) => outcome,
                None => Outcome::Ignored(writes),
            });
        }
        _ => {}
    }
    if attack.on_block() {
        return attack_block(attack, transport, options);
    }
    let (mut queue, mut arena) = live(transport)?;
    let buffer = arena.alloc(64, 64)?;
    let addr = buffer.addr();
    let outcome = match attack {
        Attack::DescLoop => {
            queue.write_raw_desc(0, addr, 32, WN, 1);
            queue.write_raw_desc(1, addr + 32, 32, WN, 0);
            send(transport, &mut queue, 0)
        }
        Attack::ChainTooLong => {
            for index in 0..MAX_QUEUE_SIZE {
                let next = (index + 1) % MAX_QUEUE_SIZE;
                queue.write_raw_desc(index, addr, 4, WN, next);
            }
            send(transport, &mut queue, 0)
        }
        Attack::NextOutOfRange => {
            queue.write_raw_desc(0, addr, 64, WN, 500);
            send(transport, &mut queue, 0)
        }
        Attack::IndirectSelf => {
            let (table, _, _) = queue.addresses();
            let len = u32::from(MAX_QUEUE_SIZE) * 16;
            queue.write_raw_desc(0, table, len, DESC_F_INDIRECT, 0);
            send(transport, &mut queue, 0)
        }
        Attack::AddrBeyondMemory => {
            queue.write_raw_desc(0, 1 << 40, 64, W, 0);
            send(transport, &mut queue, 0)
        }
        Attack::AddrMmioHole => {
            queue.write_raw_desc(0, IOAPIC, 64, W, 0);
            send(transport, &mut queue, 0)
        }
        Attack::AddrOverflow => {
            queue.write_raw_desc(0, u64::MAX - 31, 64, W, 0);
            send(transport, &mut queue, 0)
        }
        Attack::ZeroLength => {
            queue.write_raw_desc(0, addr, 0, W, 0);
            send(transport, &mut queue, 0)
        }
        Attack::HugeLength => {
            queue.write_raw_desc(0, addr, u32::MAX, W, 0);
            send(transport, &mut queue, 0)
        }
        Attack::RngGib => {
            queue.write_raw_desc(0, GIB_BUFFER, 1 << 30, W, 0);
            send(transport, &mut queue, 0)
        }
        Attack::AvailJump => {
            queue.write_raw_desc(0, addr, 64, W, 0);
            let jumped = queue.avail_idx().wrapping_add(1000);
            queue.publish_raw(0, jumped);
            wait_outcome(transport, &mut queue, SHORT_WAIT)
        }
        Attack::AvailBackwards => {
            queue.write_raw_desc(0, addr, 64, W, 0);
            match send(transport, &mut queue, 0) {
                Outcome::Returned(_) => {}
                other => {
                    report!("FAIL attack avail_backwards: a valid request got {other}");
                    return Ok(other);
                }
            }
            // Back by one: the ring now claims 65535 new entries.
            let back = queue.avail_idx().wrapping_sub(1);
            queue.publish_raw(0, back);
            wait_outcome(transport, &mut queue, SHORT_WAIT)
        }
        Attack::HeadOutOfRange => {
            queue.write_raw_desc(0, addr, 64, W, 0);
            send(transport, &mut queue, 300)
        }
        Attack::WarnFlood => {
            queue.write_raw_desc(0, addr, 64, W, 0);
            for _ in 0..options.attack_count {
                let next = queue.avail_idx().wrapping_add(1);
                queue.publish_raw(300, next);
                transport.notify(0);
            }
            Outcome::Ignored(options.attack_count)
        }
        Attack::NotifyStorm => {
            // The ring stays empty: each kick costs the VMM a look at it and nothing else.
            for _ in 0..options.attack_count {
                transport.notify(0);
            }
            match probe_live(transport, &mut queue)? {
                None => Outcome::Ignored(options.attack_count),
                Some(outcome) => outcome,
            }
        }
        _ => Outcome::Ignored(0),
    };
    Ok(outcome)
}

/// One honest 16-byte entropy request on a live queue whose descriptors may have been
/// overwritten: `None` if it was served, else what happened.
fn probe_live(
    transport: &Transport,
    queue: &mut Virtqueue,
) -> Result<Option<Outcome>, DriverError> {
    let (table, _, _) = queue.addresses();
    // The queue's page has room the rings do not use: the available ring of 16 entries ends
    // at 0x426, the used ring starts at 0x800.
    let buffer = table + 0x700;
    queue.write_raw_desc(0, buffer, 16, DESC_F_WRITE, 0);
    match send(transport, queue, 0) {
        Outcome::Returned(16) => Ok(None),
        other => Ok(Some(other)),
    }
}

/// A console or network device with its receive (0) and transmit (1) queues ready, DRIVER_OK
/// set; returns the transmit queue.
fn live_two_queues(transport: &Transport) -> Result<(Virtqueue, DmaArena), DriverError> {
    transport.negotiate(0, 0)?;
    // SAFETY: as in `live`.
    let mut arena = unsafe { DmaArena::take() };
    let _rx = Virtqueue::new(transport, 0, &mut arena)?;
    let tx = Virtqueue::new(transport, 1, &mut arena)?;
    transport.driver_ok()?;
    Ok((tx, arena))
}

/// A malformed chain on the transmit queue (1) of a console or network device.
fn attack_tx(attack: Attack, transport: &Transport) -> Result<Outcome, DriverError> {
    const R: u16 = 0;
    let (mut tx, mut arena) = live_two_queues(transport)?;
    let buffer = arena.alloc(64, 64)?;
    buffer.with_bytes(|bytes| bytes.fill(b'!'));
    let addr = buffer.addr();
    match attack {
        Attack::ConsoleWritableTx | Attack::NetTxWritable => {
            tx.write_raw_desc(0, addr, 64, DESC_F_WRITE, 0)
        }
        Attack::NetTxShort => tx.write_raw_desc(0, addr, 4, R, 0),
        Attack::ConsoleDescLoop | Attack::NetTxLoop => {
            tx.write_raw_desc(0, addr, 32, DESC_F_NEXT, 1);
            tx.write_raw_desc(1, addr + 32, 32, DESC_F_NEXT, 0);
        }
        Attack::ConsoleHugeChain | Attack::NetTxOversize => {
            // 16 descriptors of 64 KiB over guest memory from 1 MiB (the guest's own image
            // and what follows; the device only reads).
            for index in 0..MAX_QUEUE_SIZE {
                let last = index + 1 == MAX_QUEUE_SIZE;
                let flags = if last { R } else { DESC_F_NEXT };
                let at = GUEST_IMAGE + u64::from(index) * 0x1_0000;
                tx.write_raw_desc(index, at, 0x1_0000, flags, index + 1);
            }
        }
        _ => tx.write_raw_desc(0, 1 << 40, 64, R, 0),
    }
    Ok(send(transport, &mut tx, 0))
}

/// A malformed chain on the receive queue (0) of a network device, while the host sends
/// frames: the device must return it unused (or mark itself broken), never write past it.
fn attack_rx(attack: Attack, transport: &Transport) -> Result<Outcome, DriverError> {
    transport.negotiate(0, 0)?;
    // SAFETY: as in `live`.
    let mut arena = unsafe { DmaArena::take() };
    let mut rx = Virtqueue::new(transport, 0, &mut arena)?;
    let _tx = Virtqueue::new(transport, 1, &mut arena)?;
    transport.driver_ok()?;
    // One page, filled with `!`: the attack's buffers are at its start; a malformed chain
    // must come back unused, so none of it may change.
    let buffer = arena.alloc(4096, 64)?;
    buffer.with_bytes(|bytes| bytes.fill(b'!'));
    let addr = buffer.addr();
    match attack {
        Attack::NetRxReadOnly => rx.write_raw_desc(0, addr, 1526, 0, 0),
        Attack::NetRxShort => rx.write_raw_desc(0, addr, 4, DESC_F_WRITE, 0),
        Attack::NetRxLoop => {
            rx.write_raw_desc(0, addr, 32, DESC_F_WRITE | DESC_F_NEXT, 1);
            rx.write_raw_desc(1, addr + 32, 32, DESC_F_WRITE | DESC_F_NEXT, 0);
        }
        _ => rx.write_raw_desc(0, 1 << 40, 1526, DESC_F_WRITE, 0),
    }
    let outcome = send(transport, &mut rx, 0);
    let untouched = buffer.with_bytes(|bytes| bytes.iter().all(|&b| b == b'!'));
    if !untouched {
        return Err(DriverError::Misbehaved(
            "wrote into a malformed receive chain",
        ));
    }
    Ok(outcome)
}

/// A fresh set-up and one receive buffer, which a frame from the host must fill.
fn probe_net_rx(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    transport.negotiate(0, 0)?;
    // SAFETY: as in `live`.
    let mut arena = unsafe { DmaArena::take() };
    let mut rx = Virtqueue::new(transport, 0, &mut arena)?;
    let _tx = Virtqueue::new(transport, 1, &mut arena)?;
    transport.driver_ok()?;
    let buffer = arena.alloc(12 + 1514, 8)?;
    rx.submit(&[Segment::writable(buffer)])?;
    transport.notify(rx.index());
    let (_, len) = rx.wait_used(
        transport,
        deadline(options.wait_tsc),
        "a frame from the host",
    )?;
    if len <= 12 {
        return Err(DriverError::Misbehaved("an empty frame from the host"));
    }
    Ok(())
}

/// A fresh set-up and one well-formed frame (virtio-net header, broadcast Ethernet header,
/// padding to 60 bytes) on the network device's transmit queue, which must come back.
fn probe_net(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    let (mut tx, mut arena) = live_two_queues(transport)?;
    let frame = arena.alloc(12 + 60, 8)?;
    frame.with_bytes(|bytes| {
        bytes[12..18].fill(0xff);
        bytes[18..24].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        bytes[24..26].copy_from_slice(&[0x88, 0xb5]);
    });
    tx.submit(&[Segment::readable(frame)])?;
    transport.notify(tx.index());
    tx.wait_used(transport, deadline(options.wait_tsc), "the network probe")?;
    Ok(())
}

/// The line `probe_console` sends; the host test looks for it in the console's output.
const CONSOLE_PROBE: &[u8] = b"keel-attack-probe\n";

/// A fresh set-up and one line on the console's transmit queue, which must come back.
fn probe_console(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    let (mut tx, mut arena) = live_two_queues(transport)?;
    let line = arena.alloc(CONSOLE_PROBE.len(), 8)?;
    line.with_bytes(|bytes| bytes.copy_from_slice(CONSOLE_PROBE));
    tx.submit(&[Segment::readable(line)])?;
    transport.notify(tx.index());
    tx.wait_used(transport, deadline(options.wait_tsc), "the console probe")?;
    Ok(())
}

/// A fresh set-up and one 64-byte entropy request, which must be served.
fn probe_entropy(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    let (mut queue, mut arena) = live(transport)?;
    let buffer = arena.alloc(64, 64)?;
    queue.submit(&[Segment::writable(buffer)])?;
    transport.notify(queue.index());
    let (_, len) = queue.wait_used(transport, deadline(options.wait_tsc), "entropy")?;
    if len == 0 {
        return Err(DriverError::Timeout("entropy (an empty answer)"));
    }
    Ok(())
}

/// A block request header, a sector buffer and a status byte in `arena`.
fn block_buffers(arena: &mut DmaArena) -> Result<(DmaBuffer, DmaBuffer, DmaBuffer), DriverError> {
    Ok((
        arena.alloc(HEADER_LEN, 16)?,
        arena.alloc(SECTOR_SIZE, 512)?,
        arena.alloc(1, 1)?,
    ))
}

fn attack_block(
    attack: Attack,
    transport: &Transport,
    options: &VirtioOptions,
) -> Result<Outcome, DriverError> {
    let (mut queue, mut arena) = live(transport)?;
    let (header, data, status) = block_buffers(&mut arena)?;
    status.with_bytes(|bytes| bytes[0] = NO_STATUS);
    let (sector, header_len, with_status) = match attack {
        Attack::BlkSectorOverflow => (u64::MAX, HEADER_LEN, true),
        Attack::BlkShortHeader => (0, 4, true),
        _ => (0, HEADER_LEN, false),
    };
    header.with_bytes(|bytes| bytes.copy_from_slice(&request_header(T_IN, sector)));
    let mut segments = [
        Segment::readable(header.slice(0, header_len)),
        Segment::writable(data),
        Segment::writable(status),
    ];
    let used = if with_status { 3 } else { 2 };
    let segments = &mut segments[..used];
    queue.submit(segments)?;
    // A block request always comes back, if only with an error: wait as long as for any.
    let outcome = wait_outcome(transport, &mut queue, options.wait_tsc);
    Ok(match outcome {
        Outcome::Returned(len) if with_status => {
            let byte = status.with_bytes(|bytes| bytes[0]);
            if byte == NO_STATUS {
                Outcome::Returned(len)
            } else {
                Outcome::Status(byte)
            }
        }
        other => other,
    })
}

/// A fresh set-up and one read of sector 0, which must succeed.
fn probe_block(transport: &Transport, options: &VirtioOptions) -> Result<(), DriverError> {
    let (mut queue, mut arena) = live(transport)?;
    let (header, data, status) = block_buffers(&mut arena)?;
    header.with_bytes(|bytes| bytes.copy_from_slice(&request_header(T_IN, 0)));
    status.with_bytes(|bytes| bytes[0] = NO_STATUS);
    queue.submit(&[
        Segment::readable(header),
        Segment::writable(data),
        Segment::writable(status),
    ])?;
    transport.notify(queue.index());
    queue.wait_used(transport, deadline(options.wait_tsc), "a block read")?;
    match status.with_bytes(|bytes| bytes[0]) {
        0 => Ok(()),
        _ => Err(DriverError::Timeout("a block read (it failed)")),
    }
}
