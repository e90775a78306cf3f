//! virtio-net transmit path: the input's chains become frames for a recording backend.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use devices::virtio::net::{
    features, Net, NetBackend, VirtioNetHeader, MAX_FRAME_LEN, TX_QUEUE, VIRTIO_NET_HDR_LEN,
};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use virtio_queue::{Queue, QueueT};

use crate::support::{Guest, Input};

/// Keeps what the device sends (a test double for the TAP).
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

impl NetBackend for Recorder {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn ready_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Feeds one input to the device's transmit queue, and its first bytes to the header checks;
/// panics only on a bug.
pub fn net_header(data: &[u8]) {
    let mut input = Input::new(data);
    // The pure checks on their own, with arbitrary features.
    let acked = input.u64();
    let header_bytes: Vec<u8> = (0..VIRTIO_NET_HDR_LEN).map(|_| input.byte()).collect();
    let frame_len = usize::from(input.u16());
    if let Some(header) = VirtioNetHeader::parse(&header_bytes) {
        assert_eq!(header.to_bytes().as_slice(), header_bytes.as_slice());
        let _ = header.validate_tx(frame_len, acked);
    }

    let Some(guest) = Guest::from_input(&mut input) else {
        return;
    };
    let sent = Arc::new(Mutex::new(Vec::new()));
    let Ok(mut net) = Net::with_backend("fuzz".into(), None, Box::new(Recorder(sent.clone())))
    else {
        return;
    };
    let acked = (acked | VIRTIO_F_VERSION_1) & net.avail_features();
    net.set_acked_features(acked);
    let Ok(rx) = Queue::new(256) else {
        return;
    };
    if net
        .activate(guest.mem.clone(), Guest::interrupt(), vec![rx, guest.queue])
        .is_err()
    {
        return;
    }
    net.queue_notify(TX_QUEUE);
    for frame in sent.lock().unwrap().iter() {
        assert!(frame.len() <= MAX_FRAME_LEN && frame.len() >= VIRTIO_NET_HDR_LEN + 14);
        let header = VirtioNetHeader::parse(frame).expect("a sent frame has a header");
        assert_eq!(
            header.validate_tx(frame.len() - VIRTIO_NET_HDR_LEN, acked),
            Ok(())
        );
        if header.gso_type != 0 {
            assert_ne!(acked & features::CSUM, 0);
        }
    }
    assert_eq!(net.metrics().tx_frames, sent.lock().unwrap().len() as u64);
    let _ = net.reset();
}
