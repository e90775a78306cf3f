//! A slow disk does not hold up the NIC: the test guest leaves a read in flight on a disk whose
//! back end takes seconds per request (`keel.blk_background`) and meanwhile runs its network
//! test against this program; the frames cross and the guest gets its answer while the disk is
//! still busy. Before block devices had an I/O thread of their own, the disk request ran on the
//! event loop the NIC shares, and the network test waited for the disk.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use examples::custom_backend::{network, MemoryDisk, SocketPairNic, GUEST_MAC};
use vmm_core::backends::DiskBackend;
use vmm_core::{BootProtocol, ExitReason, MemSize, VirtioTransport, VmBuilder, VmConfig};

/// A disk that takes `delay` for every read and remembers when its last read finished.
struct SlowDisk {
    inner: MemoryDisk,
    delay: Duration,
    read_done: Arc<Mutex<Option<Instant>>>,
}

impl DiskBackend for SlowDisk {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::thread::sleep(self.delay);
        let result = self.inner.read_at(offset, buf);
        *self.read_done.lock().unwrap() = Some(Instant::now());
        result
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.inner.write_zeroes(offset, len, unmap)
    }
}

#[test]
fn frames_cross_the_nic_while_a_slow_disk_request_is_in_progress() {
    testkit::require_kvm!();
    let read_done = Arc::new(Mutex::new(None));
    let disk = SlowDisk {
        inner: MemoryDisk::new(64),
        delay: Duration::from_secs(6),
        read_done: read_done.clone(),
    };
    let mut config = VmConfig::new(testkit::build_test_guest().unwrap());
    config.vcpus = 1;
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.virtio_transport = VirtioTransport::Pci;
    // The guest waits up to ~20 s (at 2.5 GHz) for each answer: longer than the disk takes.
    config.cmdline = "keel.cpus=1 keel.pci keel.blk_background keel.net keel.net_frames=3 \
                      keel.virtio_wait_tsc=50000000000"
        .into();
    let (nic, peer) = UnixDatagram::pair().unwrap();
    nic.set_nonblocking(true).unwrap();
    let console = testkit::SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(console.clone())
        .disk("slow", disk, false)
        .net("nic", SocketPairNic(nic), Some(GUEST_MAC))
        .build()
        .unwrap();
    let network = std::thread::spawn(move || network(peer));
    vm.start().unwrap();
    let timeout = Duration::from_secs(90);
    assert!(
        console.wait_for("virtio-blk background read submitted", timeout),
        "{}",
        console.text()
    );
    assert!(
        console.wait_for("virtio-net rx", timeout),
        "{}",
        console.text()
    );
    let net_done = Instant::now();
    assert_eq!(
        *read_done.lock().unwrap(),
        None,
        "the network test finished while the disk read was still in progress:\n{}",
        console.text()
    );
    assert!(
        console.wait_for("virtio-blk background read status=0", timeout),
        "{}",
        console.text()
    );
    let disk_done = read_done.lock().unwrap().expect("the read finished");
    assert!(disk_done > net_done);
    assert_eq!(vm.wait_timeout(timeout), Some(ExitReason::Reset));
    let frames = network.join().unwrap().unwrap();
    assert_eq!(frames.len(), 3);
    let text = console.text();
    assert!(!text.contains("FAIL"), "{text}");
}
