//! Device-level tests: a mock driver plays the guest; the host side is real Unix sockets in a
//! temporary directory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, shutdown, PacketHeader, HDR_LEN, TYPE_STREAM};
use super::*;
use crate::virtio::testing::{test_memory, DriverQueue, RecordingInterrupt, BUFFERS};
use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

const GUEST_CID: u64 = 3;
const RX_BUF: u32 = 4096;

struct Guest<'m> {
    mem: &'m GuestMemoryMmap,
    vsock: Vsock,
    rx: DriverQueue<'m>,
    tx: DriverQueue<'m>,
    rx_addrs: Vec<u64>,
    next_rx_used: u16,
    next_tx_addr: u64,
    uds: PathBuf,
    _dir: TempDir,
}

impl<'m> Guest<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/keel-vsock-").unwrap();
        let uds = dir.as_path().join("v.sock");
        let mut vsock = Vsock::new(VsockConfig {
            id: "vsock0".into(),
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        let rx = DriverQueue::new(mem, 0, QUEUE_SIZE);
        let tx = DriverQueue::new(mem, 0x8000, QUEUE_SIZE);
        let event = DriverQueue::new(mem, 0x1_0000, QUEUE_SIZE);
        vsock.set_acked_features(VIRTIO_F_VERSION_1);
        vsock
            .activate(
                mem.clone(),
                RecordingInterrupt::new(),
                vec![rx.device_queue(), tx.device_queue(), event.device_queue()],
            )
            .unwrap();
        Guest {
            mem,
            vsock,
            rx,
            tx,
            rx_addrs: Vec::new(),
            next_rx_used: 0,
            next_tx_addr: BUFFERS + 0x20_0000,
            uds,
            _dir: dir,
        }
    }

    fn post_rx(&mut self, count: usize) {
        for _ in 0..count {
            let addr = BUFFERS + self.rx_addrs.len() as u64 * 0x2000;
            let head = self
                .rx
                .add_chain(&[(addr, HDR_LEN as u32, true), (addr + 0x100, RX_BUF, true)]);
            assert_eq!(usize::from(head) / 2, self.rx_addrs.len());
            self.rx_addrs.push(addr);
        }
        self.vsock.queue_notify(RX_QUEUE);
    }

    fn send(&mut self, header: PacketHeader, data: &[u8]) {
        let addr = self.next_tx_addr;
        self.next_tx_addr += 0x1_0000;
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + 0x100))
            .unwrap();
        let mut chain = vec![(addr, HDR_LEN as u32, false)];
        if !data.is_empty() {
            chain.push((addr + 0x100, data.len() as u32, false));
        }
        self.tx.add_chain(&chain);
        self.vsock.queue_notify(TX_QUEUE);
    }

    /// Packets the device delivered since the last call.
    fn received(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while self.next_rx_used < self.rx.used_count() {
            let (id, len) = self.rx.used(self.next_rx_used);
            self.next_rx_used += 1;
            let addr = self.rx_addrs[id as usize / 2];
            let mut header = [0u8; HDR_LEN];
            self.mem
                .read_slice(&mut header, GuestAddress(addr))
                .unwrap();
            let header = PacketHeader::parse(&header).unwrap();
            assert_eq!(len as usize, HDR_LEN + header.len as usize);
            let mut data = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + 0x100))
                .unwrap();
            out.push((header, data));
        }
        out
    }

    /// Polls host sockets until the device delivers something (or a second passes).
    fn wait_received(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.vsock.handle_host_events();
            let got = self.received();
            if !got.is_empty() || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn from_guest(op: u16, src_port: u32, dst_port: u32, len: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

fn read_exactly(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut out = vec![0u8; len];
    stream.read_exact(&mut out).unwrap();
    out
}

#[test]
fn config_space_and_queues() {
    let mem = test_memory();
    let guest = Guest::new(&mem);
    assert_eq!(guest.vsock.device_type(), crate::virtio::TYPE_VSOCK);
    assert_eq!(guest.vsock.queue_max_sizes(), &[256, 256, 256]);
    let mut cid = [0u8; 8];
    guest.vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let err = Vsock::new(VsockConfig {
        id: "v".into(),
        guest_cid: 2,
        uds_path: "/tmp/x".into(),
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("guest_cid"), "{err}");
    let err = Vsock::new(VsockConfig {
        id: "v".into(),
        guest_cid: 3,
        uds_path: guest.uds.clone(),
    })
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("uds_path"),
        "an existing socket is not replaced: {err}"
    );
}

#[test]
fn host_initiated_connection_handshake_and_data() {
    let mem = test_memory();
    let mut guest = Guest::new(&mem);
    guest.post_rx(8);
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();

    let got = guest.wait_received();
    assert_eq!(got.len(), 1);
    let request = got[0].0;
    assert_eq!(
        (
            request.op,
            request.src_cid,
            request.dst_cid,
            request.dst_port
        ),
        (op::REQUEST, HOST_CID, GUEST_CID, 1234)
    );
    let host_port = request.src_port;

    guest.send(from_guest(op::RESPONSE, 1234, host_port, 0), &[]);
    assert_eq!(
        read_exactly(&mut host, format!("OK {host_port}\n").len()),
        format!("OK {host_port}\n").as_bytes()
    );

    host.write_all(b"ping").unwrap();
    let got = guest.wait_received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.dst_port, got[0].1.as_slice()),
        (op::RW, 1234, &b"ping"[..])
    );

    guest.send(from_guest(op::RW, 1234, host_port, 4), b"pong");
    assert_eq!(read_exactly(&mut host, 4), b"pong");

    // The host closes: the guest hears the host will send no more, then resets.
    drop(host);
    let got = guest.wait_received();
    assert_eq!(
        (got[0].0.op, got[0].0.flags),
        (op::SHUTDOWN, shutdown::SEND)
    );
    guest.send(from_guest(op::RST, 1234, host_port, 0), &[]);
    assert_eq!(guest.vsock.muxer().connection_count(), 0);
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mem = test_memory();
    let mut guest = Guest::new(&mem);
    guest.post_rx(8);
    let listener = UnixListener::bind(format!("{}_52", guest.uds.display())).unwrap();

    guest.send(from_guest(op::REQUEST, 1000, 52, 0), &[]);
    let got = guest.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RESPONSE, 52, 1000)
    );
    let (mut host, _) = listener.accept().unwrap();

    guest.send(from_guest(op::RW, 1000, 52, 2), b"hi");
    assert_eq!(read_exactly(&mut host, 2), b"hi");
    host.write_all(b"yo").unwrap();
    let got = guest.wait_received();
    assert_eq!((got[0].0.op, got[0].1.as_slice()), (op::RW, &b"yo"[..]));

    // No listener on port 53: the guest is refused.
    guest.send(from_guest(op::REQUEST, 1001, 53, 0), &[]);
    let got = guest.received();
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RST, 53, 1001)
    );
}

#[test]
fn credit_limits_what_the_host_sends() {
    let mem = test_memory();
    let mut guest = Guest::new(&mem);
    guest.post_rx(16);
    let listener = UnixListener::bind(format!("{}_7", guest.uds.display())).unwrap();
    let request = PacketHeader {
        buf_alloc: 16,
        ..from_guest(op::REQUEST, 2000, 7, 0)
    };
    guest.send(request, &[]);
    assert_eq!(guest.received()[0].0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();

    host.write_all(&[b'x'; 40]).unwrap();
    let got = guest.wait_received();
    let data: usize = got
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(h, _)| h.len as usize)
        .sum();
    assert_eq!(data, 16, "only the guest's 16 bytes of buffer");
    assert_eq!(got.last().unwrap().0.op, op::CREDIT_REQUEST);
    assert!(
        guest.wait_received().is_empty(),
        "nothing more without credit"
    );

    let update = PacketHeader {
        buf_alloc: 16,
        fwd_cnt: 16,
        ..from_guest(op::CREDIT_UPDATE, 2000, 7, 0)
    };
    guest.send(update, &[]);
    let mut got = guest.received();
    got.extend(guest.wait_received());
    let data: usize = got
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(h, _)| h.len as usize)
        .sum();
    assert_eq!(data, 16);

    // The device's own credit: what it forwarded to the host shows up as fwd_cnt.
    guest.send(
        PacketHeader {
            buf_alloc: 16,
            fwd_cnt: 32,
            ..from_guest(op::RW, 2000, 7, 3)
        },
        b"abc",
    );
    assert_eq!(read_exactly(&mut host, 3), b"abc");
    let got = guest.wait_received();
    assert_eq!(got[0].0.fwd_cnt, 3);
    assert_eq!(got[0].0.buf_alloc, CONN_BUF_SIZE);
}

#[test]
fn unknown_connections_and_malformed_packets() {
    let mem = test_memory();
    let mut guest = Guest::new(&mem);
    guest.post_rx(8);

    guest.send(from_guest(op::RW, 1000, 99, 3), b"abc");
    let got = guest.received();
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RST, 99, 1000)
    );
    guest.send(from_guest(op::RST, 1000, 99, 0), &[]);
    assert!(guest.received().is_empty(), "no reset for a reset");

    // Wrong source CID, wrong destination, and a length beyond the buffers: silently dropped.
    guest.send(
        PacketHeader {
            src_cid: 4,
            ..from_guest(op::REQUEST, 1, 2, 0)
        },
        &[],
    );
    guest.send(
        PacketHeader {
            dst_cid: 9,
            ..from_guest(op::REQUEST, 1, 2, 0)
        },
        &[],
    );
    guest.send(from_guest(op::RW, 1, 2, 100), b"short");
    assert!(guest.received().is_empty());
    assert_eq!(guest.vsock.metrics().tx_malformed, 3);

    // Bad operation or socket type from a well-addressed peer: reset.
    guest.send(from_guest(42, 1, 2, 0), &[]);
    guest.send(
        PacketHeader {
            type_: 2,
            ..from_guest(op::REQUEST, 1, 2, 0)
        },
        &[],
    );
    let got = guest.received();
    assert_eq!(
        got.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
        vec![op::RST, op::RST]
    );

    // A chain with a device-writable buffer, and one shorter than a header.
    let addr = BUFFERS + 0x30_0000;
    guest.tx.add_chain(&[(addr, HDR_LEN as u32, true)]);
    guest.tx.add_chain(&[(addr, 10, false)]);
    guest.vsock.queue_notify(TX_QUEUE);
    assert_eq!(guest.vsock.metrics().tx_malformed, 7);
    assert_eq!(guest.vsock.muxer().connection_count(), 0);
}

#[test]
fn packets_wait_for_receive_buffers() {
    let mem = test_memory();
    let mut guest = Guest::new(&mem);
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while !guest.vsock.muxer().has_pending_rx() && Instant::now() < deadline {
        guest.vsock.handle_host_events();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        guest.vsock.muxer().has_pending_rx(),
        "the request waits for a buffer"
    );
    assert_eq!(guest.rx.used_count(), 0);
    // A receive chain too small for a header is returned unused; the request then goes into
    // the next good one.
    guest.rx.add_chain(&[(BUFFERS, 8, true)]);
    let good = guest
        .rx
        .add_chain(&[(BUFFERS + 0x1000, HDR_LEN as u32 + RX_BUF, true)]);
    guest.vsock.queue_notify(RX_QUEUE);
    assert_eq!(guest.vsock.metrics().rx_malformed_chains, 1);
    assert_eq!(guest.rx.used_count(), 2);
    assert_eq!(guest.rx.used(0), (0, 0));
    assert_eq!(guest.rx.used(1), (u32::from(good), HDR_LEN as u32));
    let mut header = [0u8; HDR_LEN];
    mem.read_slice(&mut header, GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    let header = PacketHeader::parse(&header).unwrap();
    assert_eq!((header.op, header.dst_port), (op::REQUEST, 5));
    assert!(!guest.vsock.muxer().has_pending_rx());
}
