//! Devices on back ends of the embedder's own, through [`VmBuilder::disk`] and
//! [`VmBuilder::net`]: an in-memory disk and a NIC on one end of a datagram socketpair, with
//! this program on the other end playing the network.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmm_core::backends::{DiskBackend, NetBackend};
use vmm_core::{BootProtocol, ExitReason, MemSize, VirtioTransport, VmBuilder, VmConfig};

/// Sectors of the in-memory disk.
const DISK_SECTORS: usize = 64;
/// The NIC's MAC address.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Bytes of the virtio-net header in front of every frame a NIC back end sees.
const NET_HEADER: usize = 12;

/// A disk that is a `Vec` this program can look into.
#[derive(Clone)]
pub struct MemoryDisk(Arc<Mutex<Vec<u8>>>);

impl MemoryDisk {
    /// A disk of `sectors` sectors, byte `i` holding `i % 251`.
    pub fn new(sectors: usize) -> Self {
        MemoryDisk(Arc::new(Mutex::new(
            (0..sectors * 512).map(|i| (i % 251) as u8).collect(),
        )))
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        let size = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        if end > size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "beyond the disk",
            ));
        }
        Ok(start..end)
    }
}

impl DiskBackend for MemoryDisk {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.lock().unwrap_or_else(PoisonError::into_inner).len() as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap_or_else(PoisonError::into_inner)[range]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        self.0.lock().unwrap_or_else(PoisonError::into_inner)[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let range = self.range(offset, len)?;
        self.0.lock().unwrap_or_else(PoisonError::into_inner)[range].fill(0);
        Ok(())
    }
}

/// A NIC back end on one end of a datagram socketpair: each datagram is one frame (with its
/// virtio-net header).
pub struct SocketPairNic(pub UnixDatagram);

impl NetBackend for SocketPairNic {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame).map(drop)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn ready_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

/// The test guest's NIC address in these examples.
pub const GUEST_MAC: [u8; 6] = MAC;

/// Plays the network on the other end: takes the guest's three test frames, then answers with
/// one frame for the guest's MAC. Returns the payloads it received.
pub fn network(peer: UnixDatagram) -> io::Result<Vec<String>> {
    peer.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while seen.len() < 3 {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no frames from the guest",
            ));
        }
        match peer.recv(&mut buf) {
            Ok(len) if len > NET_HEADER + 14 => {
                let payload = &buf[NET_HEADER + 14..len];
                seen.push(
                    String::from_utf8_lossy(payload)
                        .trim_end_matches('\0')
                        .to_string(),
                );
            }
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err),
        }
    }
    let mut frame = vec![0u8; NET_HEADER];
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    frame.extend_from_slice(b"KEEL-HOST hello from the embedder");
    peer.send(&frame)?;
    Ok(seen)
}

/// Boots the test guest with the two devices; returns a summary, or what went wrong.
pub fn run() -> Result<String, String> {
    let guest = testkit::build_test_guest().map_err(|err| err.to_string())?;
    let mut config = VmConfig::new(guest);
    config.vcpus = 1;
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.virtio_transport = VirtioTransport::Pci;
    config.cmdline =
        "keel.cpus=1 keel.pci keel.blk keel.blk_start=3 keel.blk_sectors=5 keel.net keel.net_frames=3"
            .into();
    let disk = MemoryDisk::new(DISK_SECTORS);
    let (nic, peer) = UnixDatagram::pair().map_err(|err| err.to_string())?;
    nic.set_nonblocking(true).map_err(|err| err.to_string())?;
    let console = testkit::SharedBuffer::new();
    let mut vm = VmBuilder::new(config)
        .serial_output(console.clone())
        .disk("memdisk", disk.clone(), false)
        .net("memnic", SocketPairNic(nic), Some(MAC))
        .build()
        .map_err(|err| format!("build: {err}"))?;
    let network = std::thread::spawn(move || network(peer));
    vm.start().map_err(|err| err.to_string())?;
    let reason = vm
        .wait_timeout(Duration::from_secs(90))
        .ok_or("the guest did not finish")?;
    let frames = network
        .join()
        .map_err(|_| "the network thread panicked")?
        .map_err(|err| format!("network: {err}"))?;
    let text = console.text();
    if reason != ExitReason::Reset || text.contains("FAIL") {
        return Err(format!("guest: {reason}\n{text}"));
    }
    // The guest wrote sectors 3..8 with its pattern, flushed and read them back.
    let contents = disk.contents();
    let pattern = |sector: usize, offset: usize| (((sector * 31 + offset * 7) ^ 0x5a) & 0xff) as u8;
    for sector in 3..8 {
        for offset in 0..512 {
            if contents[sector * 512 + offset] != pattern(sector, offset) {
                return Err(format!(
                    "the in-memory disk lacks the guest's write at sector {sector}"
                ));
            }
        }
    }
    if !text.contains("virtio-blk dev=0 wrote=5 start=3 flushed verified") {
        return Err(format!("no verified disk test:\n{text}"));
    }
    if !text.contains("payload=KEEL-HOST hello from the embedder") {
        return Err(format!(
            "the guest did not get the embedder's frame:\n{text}"
        ));
    }
    if frames != ["KEEL-GUEST 0", "KEEL-GUEST 1", "KEEL-GUEST 2"] {
        return Err(format!("frames from the guest: {frames:?}"));
    }
    let counters = vm.handle().counters();
    let written = counters
        .device("memdisk")
        .and_then(|d| d.get("write_bytes"));
    let sent = counters.device("memnic").and_then(|d| d.get("tx_frames"));
    Ok(format!(
        "the guest wrote {} bytes to the in-memory disk and sent {} frames over the socketpair; it got the embedder's frame back",
        written.unwrap_or(0),
        sent.unwrap_or(0)
    ))
}
