//! Device-level tests: a mock driver plays the guest over real guest memory, and a test double
//! (`FakeBackend`, not a TAP) stands in for the host side, except in the TAP test at the end.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::testing::{test_memory, DriverQueue, RecordingInterrupt, BUFFERS, MEMORY_SIZE};
use crate::virtio::{InterruptKind, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;

/// What the test double saw and will deliver.
#[derive(Default)]
struct FakeState {
    sent: Vec<Vec<u8>>,
    inbound: VecDeque<Vec<u8>>,
    offload: Option<u32>,
    recv_calls: usize,
}

/// A test double for the TAP: records sent frames, delivers queued ones, and keeps an eventfd
/// readable while it has frames so it works in a real event loop.
struct FakeBackend {
    state: Arc<Mutex<FakeState>>,
    ready: EventFd,
}

impl FakeBackend {
    fn new() -> (Self, Arc<Mutex<FakeState>>, EventFd) {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let ready = EventFd::new(EFD_NONBLOCK).unwrap();
        let handle = ready.try_clone().unwrap();
        (
            FakeBackend {
                state: state.clone(),
                ready,
            },
            state,
            handle,
        )
    }
}

impl NetBackend for FakeBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.state.lock().unwrap().sent.push(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state.lock().unwrap();
        state.recv_calls += 1;
        let Some(frame) = state.inbound.pop_front() else {
            let _ = self.ready.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let len = frame.len().min(buf.len());
        buf[..len].copy_from_slice(&frame[..len]);
        Ok(len)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.state.lock().unwrap().offload = Some(flags);
        Ok(())
    }

    fn ready_fd(&self) -> Option<RawFd> {
        Some(self.ready.as_raw_fd())
    }
}

fn inject(state: &Arc<Mutex<FakeState>>, ready: &EventFd, frame: Vec<u8>) {
    state.lock().unwrap().inbound.push_back(frame);
    ready.write(1).unwrap();
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    net: Net,
    rx: DriverQueue<'m>,
    tx: DriverQueue<'m>,
    interrupt: Arc<RecordingInterrupt>,
    state: Arc<Mutex<FakeState>>,
    ready: EventFd,
}

impl<'m> Harness<'m> {
    fn new(mem: &'m GuestMemoryMmap, acked: u64) -> Self {
        let (backend, state, ready) = FakeBackend::new();
        let mut net = Net::with_backend(
            "net0".into(),
            Some(MacAddress::new(MAC).unwrap()),
            Box::new(backend),
        )
        .unwrap();
        let rx = DriverQueue::new(mem, RX_RING, QUEUE_SIZE);
        let tx = DriverQueue::new(mem, TX_RING, QUEUE_SIZE);
        let interrupt = RecordingInterrupt::new();
        net.set_acked_features(acked | VIRTIO_F_VERSION_1);
        net.activate(
            mem.clone(),
            interrupt.clone(),
            vec![rx.device_queue(), tx.device_queue()],
        )
        .unwrap();
        Harness {
            mem,
            net,
            rx,
            tx,
            interrupt,
            state,
            ready,
        }
    }

    fn inject(&self, frame: Vec<u8>) {
        inject(&self.state, &self.ready, frame);
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state.lock().unwrap().sent)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }
}

/// A frame as the backend or driver sees it: a plain header then an Ethernet frame of
/// `payload` bytes (destination, source, an experimental EtherType, then a counting pattern).
fn frame(payload: usize) -> Vec<u8> {
    let mut out = vec![0u8; VIRTIO_NET_HDR_LEN];
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&MAC);
    out.extend_from_slice(&[0x88, 0xb5]);
    out.extend((0..payload).map(|i| i as u8));
    out
}

#[test]
fn features_and_config_space() {
    let (backend, _, _) = FakeBackend::new();
    let net = Net::with_backend(
        "n".into(),
        Some(MacAddress::new(MAC).unwrap()),
        Box::new(backend),
    )
    .unwrap();
    assert_eq!(net.device_type(), crate::virtio::TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256, CTRL_QUEUE_SIZE]);
    let offered = net.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        features::MAC,
        features::MRG_RXBUF,
        features::STATUS,
        VIRTIO_RING_F_EVENT_IDX,
        features::GUEST_TSO4,
        features::HOST_TSO6,
    ] {
        assert_ne!(offered & bit, 0, "{bit:#x} offered");
    }
    let mut config = [0u8; 8];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), LINK_UP);
    let mut tail = [0xaau8; 4];
    net.read_config(6, &mut tail);
    assert_eq!(
        tail,
        [1, 0, 0, 0],
        "bytes past the config space read as zero"
    );

    let (backend, _, _) = FakeBackend::new();
    let no_mac = Net::with_backend("n".into(), None, Box::new(backend)).unwrap();
    assert_eq!(
        no_mac.avail_features() & features::MAC,
        0,
        "MAC is offered only when configured"
    );
}

#[test]
fn negotiated_offloads_reach_the_backend_and_reset_clears_them() {
    let mem = test_memory();
    let mut h = Harness::new(
        &mem,
        features::GUEST_CSUM | features::GUEST_TSO4 | features::GUEST_UFO,
    );
    assert_eq!(
        h.state.lock().unwrap().offload,
        Some(OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_UFO)
    );
    assert!(h.net.reset());
    assert_eq!(h.state.lock().unwrap().offload, Some(0));

    // TSO without checksum offload is not a valid combination: nothing is enabled.
    let h = Harness::new(&mem, features::GUEST_TSO4);
    assert_eq!(h.state.lock().unwrap().offload, Some(0));
}

#[test]
fn activation_requires_two_queues() {
    let mem = test_memory();
    let (backend, _, _) = FakeBackend::new();
    let mut net = Net::with_backend("n".into(), None, Box::new(backend)).unwrap();
    let rx = DriverQueue::new(&mem, RX_RING, QUEUE_SIZE);
    let err = net
        .activate(
            mem.clone(),
            RecordingInterrupt::new(),
            vec![rx.device_queue()],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            crate::virtio::ActivateError::QueueCount { expected: 2, .. }
        ),
        "{err}"
    );
    assert!(!net.is_active());
}

#[test]
fn transmitted_frame_reaches_the_backend() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, 0);
    let frame = frame(46);
    // Header in one descriptor, the Ethernet frame split over two more.
    mem.write_slice(&frame[..12], GuestAddress(BUFFERS))
        .unwrap();
    mem.write_slice(&frame[12..40], GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    mem.write_slice(&frame[40..], GuestAddress(BUFFERS + 0x2000))
        .unwrap();
    let head = h.tx.add_chain(&[
        (BUFFERS, 12, false),
        (BUFFERS + 0x1000, 28, false),
        (BUFFERS + 0x2000, frame.len() as u32 - 40, false),
    ]);
    h.net.queue_notify(TX_QUEUE);

    assert_eq!(h.sent(), vec![frame.clone()]);
    assert_eq!(h.tx.used_count(), 1);
    assert_eq!(h.tx.used(0), (u32::from(head), 0));
    assert_eq!(h.interrupt.take(), vec![InterruptKind::Queue(TX_QUEUE)]);
    assert_eq!(h.net.metrics().tx_frames, 1);
    assert_eq!(h.net.metrics().tx_bytes, frame.len() as u64);
}

#[test]
fn malformed_transmit_chains_are_dropped_and_completed() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, 0);
    let good = frame(46);
    mem.write_slice(&good, GuestAddress(BUFFERS)).unwrap();
    let mut bad_header = good.clone();
    bad_header[0] = header::FLAG_NEEDS_CSUM; // CSUM was not negotiated
    mem.write_slice(&bad_header, GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    let len = good.len() as u32;

    h.tx.add_chain(&[(BUFFERS, 12, false), (BUFFERS + 12, len - 12, true)]); // write-only part
    h.tx.add_chain(&[(BUFFERS, 20, false)]); // shorter than header + Ethernet header
    h.tx.add_chain(&[(BUFFERS, 40_000, false), (BUFFERS + 40_000, 40_000, false)]); // > 64 KiB
    h.tx.add_chain(&[(MEMORY_SIZE - 16, 64, false)]); // runs off the end of memory
    h.tx.add_chain(&[(u64::MAX - 8, 64, false)]); // address wraps
    h.tx.add_chain(&[(BUFFERS + 0x1000, len, false)]); // offload not negotiated
    h.tx.add_chain(&[(BUFFERS, len, false)]); // the one good frame
    h.net.queue_notify(TX_QUEUE);

    assert_eq!(h.sent(), vec![good]);
    assert_eq!(h.tx.used_count(), 7, "every chain is given back");
    assert_eq!(h.net.metrics().tx_malformed, 6);
    assert_eq!(h.net.metrics().tx_frames, 1);
}

#[test]
fn checksum_offloaded_frame_passes_when_negotiated() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, features::CSUM | features::HOST_TSO4);
    let mut frame = frame(100);
    let header = VirtioNetHeader {
        flags: header::FLAG_NEEDS_CSUM,
        gso_type: header::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    frame[..12].copy_from_slice(&header.to_bytes());
    mem.write_slice(&frame, GuestAddress(BUFFERS)).unwrap();
    h.tx.add_chain(&[(BUFFERS, frame.len() as u32, false)]);
    h.net.queue_notify(TX_QUEUE);
    assert_eq!(h.sent(), vec![frame]);
}

#[test]
fn received_frame_is_merged_across_small_buffers() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, features::MRG_RXBUF);
    let heads: Vec<u16> = (0..4)
        .map(|i| h.rx.add_chain(&[(BUFFERS + i * 0x1000, 40, true)]))
        .collect();
    let sent = frame(78); // 12 + 14 + 78 = 104 bytes: three 40-byte buffers
    h.inject(sent.clone());
    assert_eq!(h.net.receive(), RxState::BackendDrained);

    assert_eq!(h.rx.used_count(), 3);
    let lens: Vec<(u32, u32)> = (0..3).map(|i| h.rx.used(i)).collect();
    assert_eq!(
        lens,
        vec![
            (heads[0].into(), 40),
            (heads[1].into(), 40),
            (heads[2].into(), 24)
        ]
    );
    let mut got = h.read(BUFFERS, 40);
    got.extend(h.read(BUFFERS + 0x1000, 40));
    got.extend(h.read(BUFFERS + 0x2000, 24));
    let header = VirtioNetHeader::parse(&got).unwrap();
    assert_eq!(header.num_buffers, 3);
    assert_eq!(
        &got[..10],
        &sent[..10],
        "the rest of the header is the backend's"
    );
    assert_eq!(&got[12..], &sent[12..]);
    assert_eq!(h.interrupt.take(), vec![InterruptKind::Queue(RX_QUEUE)]);
    assert_eq!(h.net.metrics().rx_frames, 1);

    // The fourth buffer takes the next frame on its own.
    h.inject(frame(10));
    h.net.receive();
    assert_eq!(h.rx.used_count(), 4);
    assert_eq!(h.rx.used(3), (heads[3].into(), 36));
    assert_eq!(
        VirtioNetHeader::parse(&h.read(BUFFERS + 0x3000, 12))
            .unwrap()
            .num_buffers,
        1
    );
}

#[test]
fn without_mergeable_buffers_a_frame_uses_one_chain_or_is_dropped() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, 0);
    h.rx.add_chain(&[(BUFFERS, 12, true), (BUFFERS + 0x1000, 100, true)]);
    h.inject(frame(200)); // 226 bytes: too big for the 112-byte chain
    h.inject(frame(50)); // 76 bytes: fits
    assert_eq!(h.net.receive(), RxState::BackendDrained);

    assert_eq!(h.net.metrics().rx_dropped, 1);
    assert_eq!(
        h.rx.used_count(),
        1,
        "the chain waited for the frame that fits"
    );
    assert_eq!(h.rx.used(0), (0, 76));
    assert_eq!(
        VirtioNetHeader::parse(&h.read(BUFFERS, 12))
            .unwrap()
            .num_buffers,
        1
    );
    assert_eq!(h.read(BUFFERS + 0x1000, 64), frame(50)[12..]);
}

#[test]
fn receive_stops_without_buffers_and_resumes_when_the_driver_adds_some() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, features::MRG_RXBUF);
    h.inject(frame(20));
    h.inject(frame(21));
    assert_eq!(h.net.receive(), RxState::WaitingForBuffers);
    assert_eq!(
        h.state.lock().unwrap().recv_calls,
        1,
        "one frame held, the rest left in the backend"
    );
    assert_eq!(h.net.receive(), RxState::WaitingForBuffers);
    assert_eq!(
        h.state.lock().unwrap().recv_calls,
        1,
        "no busy reading while waiting"
    );
    assert_eq!(h.net.metrics().rx_stalls, 2);

    // A frame that needs two buffers while only one is posted waits too, without consuming it.
    h.rx.add_chain(&[(BUFFERS, 30, true)]);
    assert_eq!(h.net.receive(), RxState::WaitingForBuffers);
    assert_eq!(h.rx.used_count(), 0);
    h.rx.add_chain(&[(BUFFERS + 0x1000, 30, true)]);
    h.rx.add_chain(&[(BUFFERS + 0x2000, 64, true)]);
    assert_eq!(h.net.receive(), RxState::BackendDrained);
    assert_eq!(h.rx.used_count(), 3);
    assert_eq!(h.rx.used(0), (0, 30));
    assert_eq!(h.rx.used(1), (1, 16));
    assert_eq!(h.rx.used(2), (2, 47));
    assert_eq!(h.net.metrics().rx_frames, 2);
}

#[test]
fn malformed_receive_chains_are_returned_unused() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, features::MRG_RXBUF);
    let read_only = h.rx.add_chain(&[(BUFFERS, 100, false)]);
    let tiny = h.rx.add_chain(&[(BUFFERS + 0x1000, 8, true)]);
    let outside = h.rx.add_chain(&[(MEMORY_SIZE - 4, 100, true)]);
    let first = h.rx.add_chain(&[(BUFFERS + 0x2000, 40, true)]);
    let empty = h.rx.add_chain(&[(BUFFERS + 0x3000, 0, true)]);
    let second = h.rx.add_chain(&[(BUFFERS + 0x4000, 1000, true)]);
    h.inject(frame(60));
    assert_eq!(h.net.receive(), RxState::BackendDrained);

    let used: Vec<(u32, u32)> = (0..h.rx.used_count()).map(|i| h.rx.used(i)).collect();
    assert_eq!(
        used,
        vec![
            (read_only.into(), 0),
            (tiny.into(), 0),
            (outside.into(), 0),
            (first.into(), 40),
            (second.into(), 46),
            (empty.into(), 0),
        ],
        "bad chains come back empty, and the frame's chains stay contiguous"
    );
    assert_eq!(h.net.metrics().rx_malformed_chains, 4);
    assert_eq!(
        VirtioNetHeader::parse(&h.read(BUFFERS + 0x2000, 12))
            .unwrap()
            .num_buffers,
        2
    );
}

#[test]
fn frame_larger_than_the_whole_ring_is_dropped() {
    let mem = test_memory();
    let (backend, state, ready) = FakeBackend::new();
    let mut net = Net::with_backend("n".into(), None, Box::new(backend)).unwrap();
    // A small ring: 4 entries of 16 bytes can never hold a 100-byte frame.
    let mut rx = DriverQueue::new(&mem, RX_RING, 4);
    let tx = DriverQueue::new(&mem, TX_RING, 4);
    net.set_acked_features(VIRTIO_F_VERSION_1 | features::MRG_RXBUF);
    net.activate(
        mem.clone(),
        RecordingInterrupt::new(),
        vec![rx.device_queue(), tx.device_queue()],
    )
    .unwrap();
    for i in 0..3 {
        rx.add_chain(&[(BUFFERS + i * 0x100, 16, true)]);
    }
    inject(&state, &ready, frame(74));
    assert_eq!(
        net.receive(),
        RxState::WaitingForBuffers,
        "three buffers: it might still fit"
    );
    rx.add_chain(&[(BUFFERS + 0x300, 16, true)]);
    inject(&state, &ready, frame(2));
    assert_eq!(net.receive(), RxState::BackendDrained);
    assert_eq!(net.metrics().rx_dropped, 1);
    assert_eq!(net.metrics().rx_frames, 1);
    assert_eq!(rx.used(0), (0, 16));
    assert_eq!(rx.used(1), (1, 12));
}

#[test]
fn event_loop_pauses_the_backend_while_the_guest_has_no_buffers() {
    let mem = test_memory();
    let h = Harness::new(&mem, features::MRG_RXBUF);
    let Harness {
        net,
        mut rx,
        state,
        ready,
        interrupt,
        ..
    } = h;
    let net = Arc::new(Mutex::new(net));
    let mut event_loop = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    event_loop.add_subscriber(net.clone());

    inject(&state, &ready, frame(30));
    inject(&state, &ready, frame(31));
    // Activation kicked receive; the kick and the backend are handled, then the backend is paused.
    event_loop.run_with_timeout(100).unwrap();
    for _ in 0..3 {
        assert_eq!(
            event_loop.run_with_timeout(10).unwrap(),
            0,
            "backend still readable but paused"
        );
    }
    assert_eq!(state.lock().unwrap().recv_calls, 1);

    rx.add_chain(&[(BUFFERS, 2048, true)]);
    rx.add_chain(&[(BUFFERS + 0x1000, 2048, true)]);
    net.lock().unwrap().queue_notify(RX_QUEUE);
    for _ in 0..3 {
        event_loop.run_with_timeout(100).unwrap();
        if rx.used_count() == 2 {
            break;
        }
    }
    assert_eq!(rx.used_count(), 2);
    assert_eq!(rx.used(0), (0, frame(30).len() as u32));
    assert_eq!(rx.used(1), (1, frame(31).len() as u32));
    assert!(interrupt.take().contains(&InterruptKind::Queue(RX_QUEUE)));
    // Drained: the backend is armed again and new frames flow without a driver notify.
    rx.add_chain(&[(BUFFERS + 0x2000, 2048, true)]);
    inject(&state, &ready, frame(32));
    event_loop.run_with_timeout(100).unwrap();
    assert_eq!(rx.used_count(), 3);
}

#[test]
fn event_index_suppresses_and_requests_notifications() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, features::MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX);
    for i in 0..3 {
        h.rx.add_chain(&[(BUFFERS + i * 0x1000, 2048, true)]);
    }
    // The driver wants an interrupt only once the used index moves past 1.
    h.rx.set_used_event(1);
    h.inject(frame(10));
    h.net.receive();
    assert_eq!(h.rx.used_count(), 1);
    assert_eq!(h.interrupt.take(), vec![], "used_event 1 not reached yet");
    h.inject(frame(11));
    h.net.receive();
    assert_eq!(h.interrupt.take(), vec![InterruptKind::Queue(RX_QUEUE)]);
    // Running dry publishes avail_event = next available index, so the driver's next buffer
    // (index 3) produces a notification.
    h.inject(frame(12));
    h.inject(frame(13));
    assert_eq!(h.net.receive(), RxState::WaitingForBuffers);
    assert_eq!(h.rx.avail_event(), 3);
}

/// The real thing: a TAP interface created for the test. Skips (with a reason) where
/// /dev/net/tun or CAP_NET_ADMIN is missing.
#[test]
fn tap_carries_frames_both_ways() {
    let name = format!("keeltest{}", std::process::id() % 100_000);
    let tap = match Tap::open(&name) {
        Ok(tap) => tap,
        Err(err) => {
            eprintln!("skipping tap_carries_frames_both_ways: {err}");
            return;
        }
    };
    assert_eq!(tap.name(), name);
    let guard = tap_test::LinkUp::new(&name).expect("bring the TAP link up");
    let socket = tap_test::PacketSocket::bind(&name).expect("packet socket on the TAP");

    let mem = test_memory();
    let mut net = Net::with_backend(
        "tap".into(),
        Some(MacAddress::new(MAC).unwrap()),
        Box::new(tap),
    )
    .unwrap();
    let mut rx = DriverQueue::new(&mem, RX_RING, QUEUE_SIZE);
    let mut tx = DriverQueue::new(&mem, TX_RING, QUEUE_SIZE);
    net.set_acked_features(
        VIRTIO_F_VERSION_1 | features::MRG_RXBUF | features::GUEST_CSUM | features::GUEST_TSO4,
    );
    net.activate(
        mem.clone(),
        RecordingInterrupt::new(),
        vec![rx.device_queue(), tx.device_queue()],
    )
    .unwrap();

    // Guest to host: the frame leaves the device and arrives on the interface.
    let out = frame(64);
    mem.write_slice(&out, GuestAddress(BUFFERS)).unwrap();
    tx.add_chain(&[(BUFFERS, out.len() as u32, false)]);
    net.queue_notify(TX_QUEUE);
    assert_eq!(net.metrics().tx_frames, 1, "{:?}", net.metrics());
    let seen = socket
        .receive_matching(&out[12..])
        .expect("the transmitted frame on the interface");
    assert_eq!(seen, out[12..]);

    // Host to guest: a frame sent out of the interface reaches the guest's buffers, merged
    // across 64-byte chains. The kernel may send frames of its own (IPv6 neighbour discovery),
    // so walk the used ring frame by frame looking for ours.
    let mut inbound = Vec::new();
    inbound.extend_from_slice(&MAC);
    inbound.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    inbound.extend_from_slice(&[0x88, 0xb5]);
    inbound.extend((0..100u8).rev());
    let buffer = |head: u32| BUFFERS + 0x1_0000 + u64::from(head) * 0x100;
    for i in 0..120u32 {
        let head = rx.add_chain(&[(buffer(i), 64, true)]);
        assert_eq!(u32::from(head), i);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut next_used = 0u16;
    let mut found = None;
    socket.send(&inbound).expect("send on the packet socket");
    while found.is_none() && std::time::Instant::now() < deadline {
        net.receive();
        while found.is_none() && next_used < rx.used_count() {
            let (id, first_len) = rx.used(next_used);
            let header = VirtioNetHeader::parse(&read(&mem, buffer(id), 12)).unwrap();
            let count = header.num_buffers.max(1);
            let mut data = Vec::new();
            for k in 0..count {
                let (id, len) = rx.used(next_used + k);
                data.extend(read(&mem, buffer(id), len as usize));
            }
            if data[12..] == inbound[..] {
                found = Some((first_len, header));
            }
            next_used += count;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (first_len, header) = found.expect("the injected frame in guest memory");
    assert_eq!(first_len, 64);
    assert_eq!(
        header.num_buffers, 2,
        "12 + 114 bytes span two 64-byte buffers"
    );
    drop(guard);
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

/// Host-side helpers for the TAP test: link up/down and an `AF_PACKET` socket.
mod tap_test {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: `ifreq` is plain old data (a byte array and a union of integers and arrays);
        // all zeroes is a valid value of it.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        request
    }

    fn socket(
        domain: libc::c_int,
        kind: libc::c_int,
        protocol: libc::c_int,
    ) -> io::Result<OwnedFd> {
        // SAFETY: socket(2) takes only integers and touches no memory of ours; a negative
        // result is checked before the descriptor is owned.
        let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Sets the interface up; sets it down again when dropped.
    pub struct LinkUp(String);

    impl LinkUp {
        pub fn new(name: &str) -> io::Result<Self> {
            set_up(name, true)?;
            Ok(LinkUp(name.to_string()))
        }
    }

    impl Drop for LinkUp {
        fn drop(&mut self) {
            let _ = set_up(&self.0, false);
        }
    }

    fn set_up(name: &str, up: bool) -> io::Result<()> {
        let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        let mut request = ifreq(name);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one `ifreq`, which we own and which
        // outlives both calls; `ifru_flags` is the union member SIOCGIFFLAGS just filled in (and
        // any `c_short` bit pattern is valid to read anyway).
        unsafe {
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = request.ifr_ifru.ifru_flags;
            let up_flag = libc::IFF_UP as libc::c_short;
            request.ifr_ifru.ifru_flags = if up {
                flags | up_flag
            } else {
                flags & !up_flag
            };
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// An `AF_PACKET` socket bound to one interface, seeing all EtherTypes.
    pub struct PacketSocket {
        fd: OwnedFd,
        ifindex: libc::c_int,
    }

    impl PacketSocket {
        pub fn bind(name: &str) -> io::Result<Self> {
            let protocol = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            let fd = socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                protocol,
            )?;
            let cname = std::ffi::CString::new(name).unwrap();
            // SAFETY: if_nametoindex only reads `cname`, a NUL-terminated string that outlives
            // the call.
            let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as libc::c_int;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let address = Self::address(ifindex, protocol as u16);
            // SAFETY: `address` is a live, initialised sockaddr_ll and the length passed is its
            // size, so the kernel reads only memory we own; the descriptor is an open socket.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &address as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(PacketSocket { fd, ifindex })
        }

        fn address(ifindex: libc::c_int, protocol: u16) -> libc::sockaddr_ll {
            // SAFETY: `sockaddr_ll` is plain old data (integers and a byte array); all zeroes
            // is a valid value of it.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = protocol;
            address.sll_ifindex = ifindex;
            address.sll_halen = 6;
            address
        }

        /// Transmits a whole Ethernet frame out of the interface (towards the TAP reader).
        pub fn send(&self, frame: &[u8]) -> io::Result<()> {
            let mut address = Self::address(self.ifindex, 0);
            address.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: `frame` is readable for `frame.len()` bytes and `address` is a live
            // sockaddr_ll of the size passed; sendto only reads them during the call.
            let ret = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    &address as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// Waits up to five seconds for a frame equal to `wanted`.
        pub fn receive_matching(&self, wanted: &[u8]) -> Option<Vec<u8>> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut buf = vec![0u8; 65_536];
            while std::time::Instant::now() < deadline {
                // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes and recv writes
                // at most that many into it.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                if &buf[..n as usize] == wanted {
                    return Some(buf[..n as usize].to_vec());
                }
            }
            None
        }
    }
}

fn ops_limit(size: u64, refill: std::time::Duration) -> crate::rate_limiter::RateLimit {
    crate::rate_limiter::RateLimit {
        bandwidth: None,
        ops: Some(crate::rate_limiter::BucketConfig {
            size,
            one_time_burst: 0,
            refill_time: refill,
        }),
    }
}

#[test]
fn frames_over_the_transmit_limit_wait_in_the_ring_and_go_out_in_order() {
    use crate::rate_limiter::RateLimitTarget;
    use std::time::Duration;
    let mem = test_memory();
    let mut h = Harness::new(&mem, 0);
    let clock = crate::rate_limiter::ManualClock::new();
    h.net
        .set_rate_limit(
            RateLimitTarget::Transmit,
            ops_limit(2, Duration::from_secs(1)),
        )
        .unwrap();
    h.net.set_rate_limit_clock(clock.clone());
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(50 + i)).collect();
    for (i, frame) in frames.iter().enumerate() {
        let addr = BUFFERS + i as u64 * 0x1000;
        mem.write_slice(frame, GuestAddress(addr)).unwrap();
        h.tx.add_chain(&[(addr, frame.len() as u32, false)]);
    }
    h.net.queue_notify(TX_QUEUE);
    assert_eq!(h.sent(), frames[..2].to_vec());
    assert_eq!(h.tx.used_count(), 2, "only what was sent is returned");
    h.net.queue_notify(TX_QUEUE);
    assert!(h.sent().is_empty(), "a kick does not refill the bucket");
    clock.advance(Duration::from_millis(500));
    h.net.rate_limit_timers_fired();
    assert_eq!(h.sent(), frames[2..3].to_vec());
    clock.advance(Duration::from_secs(10));
    h.net.rate_limit_timers_fired();
    assert_eq!(h.sent(), frames[3..].to_vec());
    assert_eq!(h.tx.used_count(), 5);
    assert_eq!(h.net.metrics().tx_frames, 5);
    let limited = h
        .net
        .counters()
        .into_iter()
        .find(|c| c.name == "tx_rate_limited");
    assert!(limited.unwrap().value >= 2);
}

#[test]
fn frames_over_the_receive_limit_stay_in_the_backend_until_the_timer() {
    use crate::rate_limiter::RateLimitTarget;
    use std::time::Duration;
    let mem = test_memory();
    let mut h = Harness::new(&mem, 0);
    let clock = crate::rate_limiter::ManualClock::new();
    // 100 bytes per second: one 76-byte frame, then the next must wait.
    let limit = crate::rate_limiter::RateLimit {
        bandwidth: Some(crate::rate_limiter::BucketConfig {
            size: 100,
            one_time_burst: 0,
            refill_time: Duration::from_secs(1),
        }),
        ops: None,
    };
    h.net
        .set_rate_limit(RateLimitTarget::Receive, limit)
        .unwrap();
    h.net.set_rate_limit_clock(clock.clone());
    assert!(h
        .net
        .set_rate_limit(RateLimitTarget::Requests, limit)
        .is_err());
    for i in 0..4 {
        h.rx.add_chain(&[(BUFFERS + i * 0x1000, 2048, true)]);
    }
    for _ in 0..3 {
        h.inject(frame(50));
    }
    assert_eq!(h.net.receive(), RxState::Throttled);
    assert_eq!(h.rx.used_count(), 1);
    let calls = h.state.lock().unwrap().recv_calls;
    assert_eq!(
        calls, 2,
        "the second frame is held, the third left in the backend"
    );
    assert_eq!(h.net.receive(), RxState::Throttled);
    assert_eq!(
        h.state.lock().unwrap().recv_calls,
        calls,
        "no reading while throttled"
    );
    clock.advance(Duration::from_millis(760));
    assert_eq!(h.net.rate_limit_timers_fired(), RxState::Throttled);
    assert_eq!(h.rx.used_count(), 2);
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.net.rate_limit_timers_fired(), RxState::BackendDrained);
    assert_eq!(h.rx.used_count(), 3);
    assert_eq!(h.net.metrics().rx_frames, 3);
    assert_eq!(h.net.metrics().rx_dropped, 0);
}

#[test]
fn rate_limiter_timers_are_served_by_the_event_loop() {
    use crate::rate_limiter::RateLimitTarget;
    use std::time::{Duration, Instant};
    let mem = test_memory();
    let h = Harness::new(&mem, 0);
    let Harness {
        net, mut tx, state, ..
    } = h;
    let net = Arc::new(Mutex::new(net));
    // 20 frames a second, 2 at once: 6 frames take at least 200 ms.
    net.lock()
        .unwrap()
        .set_rate_limit(
            RateLimitTarget::Transmit,
            ops_limit(2, Duration::from_millis(100)),
        )
        .unwrap();
    let mut event_loop = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    event_loop.add_subscriber(net.clone());
    let sent = frame(40);
    mem.write_slice(&sent, GuestAddress(BUFFERS)).unwrap();
    for _ in 0..6 {
        tx.add_chain(&[(BUFFERS, sent.len() as u32, false)]);
    }
    let started = Instant::now();
    net.lock().unwrap().queue_notify(TX_QUEUE);
    while state.lock().unwrap().sent.len() < 6 {
        assert!(started.elapsed() < Duration::from_secs(10), "stuck");
        event_loop.run_with_timeout(100).unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(190),
        "{took:?}: the limit held"
    );
    assert_eq!(tx.used_count(), 6);
}
