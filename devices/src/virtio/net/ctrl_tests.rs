//! Control-queue tests: a mock driver sends requests on queue 2 over real guest memory, as
//! Linux lays them out (class and command, data, ack each in descriptors of their own) and in
//! every malformed shape a guest could make up.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::ctrl::*;
use super::*;
use crate::virtio::testing::{test_memory, DriverQueue, RecordingInterrupt, BUFFERS, MEMORY_SIZE};
use crate::virtio::{ActivateError, InterruptKind, VirtioDevice, VIRTIO_F_VERSION_1};

const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;
const CTRL_RING: u64 = 0x1_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const NEW_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
/// Where the ack byte goes; data goes from [`BUFFERS`] up.
const ACK: u64 = BUFFERS + 0x10_0000;
/// Written over the ack byte before each request, to see whether the device wrote it.
const UNTOUCHED: u8 = 0xa5;

/// Every control feature, and what a driver always accepts.
const CTRL_ALL: u64 = features::CTRL_VQ
    | features::CTRL_RX
    | features::CTRL_RX_EXTRA
    | features::CTRL_MAC_ADDR
    | features::GUEST_ANNOUNCE
    | features::STATUS
    | VIRTIO_F_VERSION_1;

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    net: Net,
    ctrl: DriverQueue<'m>,
    interrupt: Arc<RecordingInterrupt>,
}

/// What came back for one request.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// Length in the used ring.
    used_len: u32,
    /// The ack byte afterwards ([`UNTOUCHED`] if the device did not write it).
    ack: u8,
}

const OK: Answer = Answer {
    used_len: 1,
    ack: VIRTIO_NET_OK,
};
const ERR: Answer = Answer {
    used_len: 1,
    ack: VIRTIO_NET_ERR,
};
const UNANSWERED: Answer = Answer {
    used_len: 0,
    ack: UNTOUCHED,
};

impl<'m> Harness<'m> {
    /// A device with `mac`, activated with rx, tx and (if `ctrl_queue`) the control queue.
    fn with(mem: &'m GuestMemoryMmap, mac: Option<[u8; 6]>, acked: u64, ctrl_queue: bool) -> Self {
        let mac = mac.map(|mac| MacAddress::new(mac).unwrap());
        let mut net = Net::with_backend("net0".into(), mac, Box::new(NullBackend)).unwrap();
        let rx = DriverQueue::new(mem, RX_RING, QUEUE_SIZE);
        let tx = DriverQueue::new(mem, TX_RING, QUEUE_SIZE);
        let ctrl = DriverQueue::new(mem, CTRL_RING, CTRL_QUEUE_SIZE);
        let interrupt = RecordingInterrupt::new();
        net.set_acked_features(acked);
        let mut queues = vec![rx.device_queue(), tx.device_queue()];
        if ctrl_queue {
            queues.push(ctrl.device_queue());
        }
        net.activate(mem.clone(), interrupt.clone(), queues)
            .unwrap();
        Harness {
            mem,
            net,
            ctrl,
            interrupt,
        }
    }

    fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self::with(mem, Some(MAC), CTRL_ALL, true)
    }

    /// Posts one chain of raw descriptors (address, length, device-writable) and notifies.
    fn post(&mut self, descs: &[(u64, u32, bool)]) -> Answer {
        self.mem.write_obj(UNTOUCHED, GuestAddress(ACK)).unwrap();
        let before = self.ctrl.used_count();
        let head = self.ctrl.add_chain(descs);
        self.net.queue_notify(CTRL_QUEUE);
        assert_eq!(self.ctrl.used_count(), before + 1, "the chain is returned");
        let (id, used_len) = self.ctrl.used(before);
        assert_eq!(id, u32::from(head));
        Answer {
            used_len,
            ack: self.mem.read_obj(GuestAddress(ACK)).unwrap(),
        }
    }

    /// Sends a request as Linux does: each part of `parts` in a readable descriptor of its
    /// own, then a one-byte ack descriptor.
    fn send(&mut self, parts: &[&[u8]]) -> Answer {
        let mut descs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let addr = BUFFERS + i as u64 * 0x1000;
            self.mem.write_slice(part, GuestAddress(addr)).unwrap();
            descs.push((addr, part.len() as u32, false));
        }
        descs.push((ACK, 1, true));
        self.post(&descs)
    }

    fn config(&self) -> [u8; 8] {
        let mut config = [0u8; 8];
        self.net.read_config(0, &mut config);
        config
    }

    fn status(&self) -> u16 {
        let config = self.config();
        u16::from_le_bytes([config[6], config[7]])
    }
}

fn table(entries: u32, macs: &[[u8; 6]]) -> Vec<u8> {
    let mut out = entries.to_le_bytes().to_vec();
    for mac in macs {
        out.extend_from_slice(mac);
    }
    out
}

#[test]
fn control_features_are_offered_and_vlan_and_mq_are_not() {
    let net = Net::with_backend("n".into(), None, Box::new(NullBackend)).unwrap();
    assert_eq!(net.queue_max_sizes(), &[256, 256, CTRL_QUEUE_SIZE]);
    let offered = net.avail_features();
    for bit in [
        features::CTRL_VQ,
        features::CTRL_RX,
        features::CTRL_RX_EXTRA,
        features::CTRL_MAC_ADDR,
        features::GUEST_ANNOUNCE,
    ] {
        assert_ne!(offered & bit, 0, "{bit:#x} offered");
    }
    assert_eq!(offered & (features::CTRL_VLAN | features::MQ), 0);
}

#[test]
fn every_command_is_acknowledged() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    assert!(h.net.rx_filter().promisc, "promiscuous after reset");
    for command in [
        RX_PROMISC,
        RX_ALLMULTI,
        RX_ALLUNI,
        RX_NOMULTI,
        RX_NOUNI,
        RX_NOBCAST,
    ] {
        assert_eq!(
            h.send(&[&[CLASS_RX, command], &[1]]),
            OK,
            "command {command}"
        );
    }
    let filter = h.net.rx_filter().clone();
    assert!(
        filter.promisc
            && filter.allmulti
            && filter.alluni
            && filter.nomulti
            && filter.nouni
            && filter.nobcast
    );
    assert_eq!(h.send(&[&[CLASS_RX, RX_PROMISC], &[0]]), OK);
    assert!(!h.net.rx_filter().promisc);

    let uc = [0x02, 0, 0, 0, 0, 9];
    let mc = [0x01, 0x00, 0x5e, 0, 0, 1];
    assert_eq!(
        h.send(&[
            &[CLASS_MAC, MAC_TABLE_SET],
            &table(1, &[uc]),
            &table(2, &[mc, mc])
        ]),
        OK
    );
    assert_eq!(h.net.rx_filter().unicast, vec![uc]);
    assert_eq!(h.net.rx_filter().multicast, vec![mc, mc]);
    // Linux sends both tables in one buffer too when they are empty.
    let mut empty = table(0, &[]);
    empty.extend(table(0, &[]));
    assert_eq!(h.send(&[&[CLASS_MAC, MAC_TABLE_SET], &empty]), OK);
    assert!(h.net.rx_filter().multicast.is_empty());

    assert_eq!(h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &NEW_MAC]), OK);
    assert_eq!(h.send(&[&[CLASS_ANNOUNCE, ANNOUNCE_ACK]]), OK);
    // Header and data in one descriptor work as well.
    assert_eq!(h.send(&[&[CLASS_RX, RX_ALLMULTI, 0]]), OK);
    assert!(!h.net.rx_filter().allmulti);

    assert_eq!(h.net.metrics().ctrl_ok, 12);
    assert_eq!(h.net.metrics().ctrl_rejected, 0);
    let interrupts = h.interrupt.take();
    assert!(!interrupts.is_empty());
    assert!(interrupts
        .iter()
        .all(|kind| *kind == InterruptKind::Queue(CTRL_QUEUE)));
}

#[test]
fn unknown_and_unnegotiated_commands_get_err() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    for request in [
        &[CLASS_VLAN, 0, 1, 0][..], // VLAN_ADD: not offered
        &[CLASS_MQ, 0, 1, 0][..],   // MQ_VQ_PAIRS_SET: not offered
        &[5, 0, 0][..],             // GUEST_OFFLOADS: not offered
        &[0xff, 0][..],
        &[CLASS_RX, 6, 1][..],
        &[CLASS_MAC, 2][..],
        &[CLASS_ANNOUNCE, 1][..],
    ] {
        assert_eq!(h.send(&[request]), ERR, "{request:?}");
    }
    assert_eq!(h.net.metrics().ctrl_rejected, 7);

    // A driver that accepted the control queue but none of the command classes.
    let mem = test_memory();
    let mut h = Harness::with(
        &mem,
        Some(MAC),
        features::CTRL_VQ | features::STATUS | VIRTIO_F_VERSION_1,
        true,
    );
    assert_eq!(h.send(&[&[CLASS_RX, RX_PROMISC], &[0]]), ERR);
    assert_eq!(h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &NEW_MAC]), ERR);
    assert_eq!(h.send(&[&[CLASS_ANNOUNCE, ANNOUNCE_ACK]]), ERR);
    assert!(h.net.rx_filter().promisc, "the filter is unchanged");
    assert_eq!(h.net.mac().unwrap().bytes(), MAC);

    // CTRL_RX without CTRL_RX_EXTRA: the four extra modes are refused.
    let mem = test_memory();
    let mut h = Harness::with(
        &mem,
        None,
        features::CTRL_VQ | features::CTRL_RX | VIRTIO_F_VERSION_1,
        true,
    );
    assert_eq!(h.send(&[&[CLASS_RX, RX_ALLMULTI], &[1]]), OK);
    for command in [RX_ALLUNI, RX_NOMULTI, RX_NOUNI, RX_NOBCAST] {
        assert_eq!(h.send(&[&[CLASS_RX, command], &[1]]), ERR);
    }
}

#[test]
fn truncated_oversized_and_misshapen_chains_are_refused() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    // Truncated: no command byte; no data; data cut short.
    assert_eq!(h.send(&[&[CLASS_RX]]), ERR);
    assert_eq!(h.send(&[&[]]), ERR);
    assert_eq!(h.send(&[&[CLASS_RX, RX_PROMISC]]), ERR);
    assert_eq!(h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &NEW_MAC[..5]]), ERR);
    // Oversized: data longer than the command takes.
    assert_eq!(h.send(&[&[CLASS_RX, RX_PROMISC], &[1, 1]]), ERR);
    assert_eq!(h.send(&[&[CLASS_ANNOUNCE, ANNOUNCE_ACK], &[0]]), ERR);
    let mut long = NEW_MAC.to_vec();
    long.push(0);
    assert_eq!(h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &long]), ERR);
    // More readable bytes than any request needs: refused before anything is copied.
    mem.write_slice(&[CLASS_RX, RX_PROMISC, 0], GuestAddress(BUFFERS))
        .unwrap();
    assert_eq!(
        h.post(&[
            (BUFFERS, 40_000, false),
            (BUFFERS + 40_000, 40_000, false),
            (ACK, 1, true)
        ]),
        ERR
    );
    assert_eq!(
        h.post(&[(MEMORY_SIZE - 2, 4, false), (ACK, 1, true)]),
        ERR,
        "a readable buffer past the end of memory"
    );
    // A chain of over 4 GiB: virtio-queue stops walking it, so the ack is never reached.
    assert_eq!(
        h.post(&[
            (BUFFERS, u32::MAX, false),
            (BUFFERS, 2, false),
            (ACK, 1, true)
        ]),
        UNANSWERED
    );
    assert!(h.net.rx_filter().promisc, "none of that changed the filter");

    // Missing ack: nothing writable, or an empty writable descriptor, or one outside memory.
    assert_eq!(h.post(&[(BUFFERS, 3, false)]), UNANSWERED);
    assert_eq!(h.post(&[(BUFFERS, 3, false), (ACK, 0, true)]), UNANSWERED);
    assert_eq!(
        h.post(&[(BUFFERS, 3, false), (MEMORY_SIZE, 1, true)]),
        UNANSWERED
    );
    assert!(
        h.net.rx_filter().promisc,
        "a well-formed command without an ack is not carried out"
    );
    // An ack area of two bytes: ERR goes in the first.
    assert_eq!(h.post(&[(BUFFERS, 3, false), (ACK, 2, true)]), ERR);
    // Split over two one-byte writable descriptors: still two bytes.
    assert_eq!(
        h.post(&[(BUFFERS, 3, false), (ACK, 1, true), (ACK + 1, 1, true)]),
        ERR
    );
    // A readable descriptor after the ack.
    assert_eq!(
        h.post(&[(BUFFERS, 2, false), (ACK, 1, true), (BUFFERS + 2, 1, false)]),
        ERR
    );
    // Only the ack.
    assert_eq!(h.post(&[(ACK, 1, true)]), ERR);
    assert!(h.net.rx_filter().promisc);
    assert_eq!(h.net.metrics().ctrl_ok, 0);
    assert_eq!(h.net.metrics().ctrl_rejected, 17);
}

#[test]
fn mac_tables_with_lying_entry_counts_are_refused() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    // Read as a count, the first four bytes of either address claim far too many entries.
    let uc = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let mc = [0x33, 0x33, 0xff, 0, 0, 1];
    assert_eq!(
        h.send(&[
            &[CLASS_MAC, MAC_TABLE_SET],
            &table(1, &[uc]),
            &table(1, &[mc])
        ]),
        OK
    );
    let filter = h.net.rx_filter().clone();
    for (unicast, multicast) in [
        (table(2, &[uc]), table(1, &[mc])),       // unicast count too high
        (table(0, &[uc]), table(1, &[mc])),       // unicast count too low: bytes left over
        (table(1, &[uc]), table(3, &[mc])),       // multicast count too high
        (table(1, &[uc]), table(0, &[mc])),       // multicast count too low
        (table(u32::MAX, &[uc]), table(0, &[])),  // count whose byte size overflows u32
        (table(0x2aaa_aaab, &[]), table(0, &[])), // 6 * count wraps to 2 in 32 bits
        (table(1, &[uc]), Vec::new()),            // multicast table missing
        (table(1, &[uc]), vec![1, 0]),            // multicast count cut off
    ] {
        assert_eq!(
            h.send(&[&[CLASS_MAC, MAC_TABLE_SET], &unicast, &multicast]),
            ERR,
            "{unicast:?} {multicast:?}"
        );
    }
    assert_eq!(h.net.rx_filter(), &filter, "the tables are unchanged");
}

#[test]
fn mac_addr_set_is_visible_in_config_space_until_reset() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.config()[..6], MAC);
    let generation = h.net.config_generation();
    assert_eq!(h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &NEW_MAC]), OK);
    assert_eq!(h.config()[..6], NEW_MAC);
    assert_eq!(h.net.mac().unwrap().bytes(), NEW_MAC);
    let changed = h.net.config_generation();
    assert_ne!(
        changed, generation,
        "a new MAC moves the config generation on"
    );
    // A multicast address is refused and changes nothing.
    assert_eq!(
        h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &[0x01, 0, 0x5e, 0, 0, 1]]),
        ERR
    );
    assert_eq!(h.config()[..6], NEW_MAC);
    assert_eq!(
        h.net.config_generation(),
        changed,
        "a refused command changes nothing"
    );
    assert!(h.net.reset());
    assert_eq!(
        h.config()[..6],
        MAC,
        "reset restores the configured address"
    );
    assert_ne!(
        h.net.config_generation(),
        changed,
        "and moves the generation on"
    );

    // Without a configured MAC (Linux then picks one and sets it with MAC_ADDR_SET).
    let mem = test_memory();
    let mut h = Harness::with(&mem, None, CTRL_ALL, true);
    assert_eq!(h.config()[..6], [0; 6]);
    assert_eq!(h.send(&[&[CLASS_MAC, MAC_ADDR_SET], &NEW_MAC]), OK);
    assert_eq!(h.config()[..6], NEW_MAC);
    assert!(h.net.reset());
    assert_eq!(h.config()[..6], [0; 6]);
}

#[test]
fn announce_request_sets_status_and_interrupts_until_acknowledged() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.status(), LINK_UP);
    assert!(!h.net.announce_pending());
    let generation = h.net.config_generation();
    h.net.request_announce().unwrap();
    assert!(h.net.announce_pending());
    assert_ne!(
        h.net.config_generation(),
        generation,
        "the status field changed"
    );
    assert_eq!(h.status(), LINK_UP | ANNOUNCE);
    assert_eq!(h.interrupt.take(), vec![InterruptKind::Config]);

    assert_eq!(h.send(&[&[CLASS_ANNOUNCE, ANNOUNCE_ACK]]), OK);
    assert!(!h.net.announce_pending());
    assert_eq!(h.status(), LINK_UP);

    // Pending across nothing but a reset.
    h.net.request_announce().unwrap();
    assert!(h.net.reset());
    assert_eq!(h.status(), LINK_UP);
    assert!(matches!(
        h.net.request_announce(),
        Err(AnnounceError::NotActive(_))
    ));
}

#[test]
fn announce_needs_the_features_and_the_control_queue() {
    for (acked, queue, missing) in [
        (CTRL_ALL & !features::GUEST_ANNOUNCE, true, "GUEST_ANNOUNCE"),
        (CTRL_ALL & !features::STATUS, true, "STATUS"),
        (CTRL_ALL & !features::CTRL_VQ, true, "CTRL_VQ"),
        (CTRL_ALL, false, "CTRL_VQ (control queue not set up)"),
    ] {
        let mem = test_memory();
        let mut h = Harness::with(&mem, Some(MAC), acked, queue);
        match h.net.request_announce() {
            Err(AnnounceError::NotNegotiated { feature, .. }) => assert_eq!(feature, missing),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.status(), LINK_UP);
        assert_eq!(h.interrupt.take(), vec![]);
    }
}

#[test]
fn without_ctrl_vq_the_third_queue_is_ignored() {
    let mem = test_memory();
    // The driver did not accept CTRL_VQ but enabled a third queue anyway.
    let mut h = Harness::with(&mem, Some(MAC), VIRTIO_F_VERSION_1, true);
    mem.write_slice(&[CLASS_RX, RX_PROMISC, 0], GuestAddress(BUFFERS))
        .unwrap();
    h.ctrl.add_chain(&[(BUFFERS, 3, false), (ACK, 1, true)]);
    h.net.queue_notify(CTRL_QUEUE);
    assert_eq!(h.ctrl.used_count(), 0);
    assert_eq!(h.interrupt.take(), vec![]);
    assert!(h.net.rx_filter().promisc);
    assert_eq!(h.net.metrics().ctrl_ok + h.net.metrics().ctrl_rejected, 0);

    // Two queues, with or without CTRL_VQ negotiated: the device runs, notifications for
    // queue 2 are ignored.
    for acked in [VIRTIO_F_VERSION_1, CTRL_ALL] {
        let mem = test_memory();
        let mut h = Harness::with(&mem, Some(MAC), acked, false);
        assert!(h.net.is_active());
        h.net.queue_notify(CTRL_QUEUE);
        assert_eq!(h.interrupt.take(), vec![]);
    }
}

#[test]
fn activation_takes_two_or_three_queues() {
    let mem = test_memory();
    let queue = |base| DriverQueue::new(&mem, base, 16).device_queue();
    for count in [0usize, 1, 4] {
        let mut net = Net::with_backend("n".into(), None, Box::new(NullBackend)).unwrap();
        net.set_acked_features(CTRL_ALL);
        let queues = (0..count).map(|i| queue(i as u64 * 0x8000)).collect();
        let err = net
            .activate(mem.clone(), RecordingInterrupt::new(), queues)
            .unwrap_err();
        assert!(
            matches!(err, ActivateError::QueueCount { got, .. } if got == count),
            "{err}"
        );
        assert!(!net.is_active());
    }
}

#[test]
fn requests_queued_before_activation_are_answered_on_activation() {
    let mem = test_memory();
    let mut net = Net::with_backend("n".into(), None, Box::new(NullBackend)).unwrap();
    let rx = DriverQueue::new(&mem, RX_RING, QUEUE_SIZE);
    let tx = DriverQueue::new(&mem, TX_RING, QUEUE_SIZE);
    let mut ctrl = DriverQueue::new(&mem, CTRL_RING, CTRL_QUEUE_SIZE);
    mem.write_slice(&[CLASS_RX, RX_PROMISC, 0], GuestAddress(BUFFERS))
        .unwrap();
    ctrl.add_chain(&[(BUFFERS, 2, false), (BUFFERS + 2, 1, false), (ACK, 1, true)]);
    net.set_acked_features(CTRL_ALL);
    net.activate(
        mem.clone(),
        RecordingInterrupt::new(),
        vec![rx.device_queue(), tx.device_queue(), ctrl.device_queue()],
    )
    .unwrap();
    assert_eq!(ctrl.used_count(), 1);
    assert_eq!(ctrl.used(0).1, 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(ACK)).unwrap(),
        VIRTIO_NET_OK
    );
    assert!(!net.rx_filter().promisc);
}
