//! Where a network device's frames go: the [`NetBackend`] trait.
//!
//! The device talks to its host side only through this trait, so tests can put a double
//! behind it and the real TAP device ([`super::Tap`]) stays a thin wrapper over system calls.

use std::io;
use std::os::fd::RawFd;

/// `TUNSETOFFLOAD` flag: the backend may deliver frames with partial checksums.
pub const OFFLOAD_CSUM: u32 = libc::TUN_F_CSUM;
/// `TUNSETOFFLOAD` flag: the backend may deliver unsegmented TCP/IPv4 frames.
pub const OFFLOAD_TSO4: u32 = libc::TUN_F_TSO4;
/// `TUNSETOFFLOAD` flag: the backend may deliver unsegmented TCP/IPv6 frames.
pub const OFFLOAD_TSO6: u32 = libc::TUN_F_TSO6;
/// `TUNSETOFFLOAD` flag: the backend may deliver unfragmented UDP frames.
pub const OFFLOAD_UFO: u32 = libc::TUN_F_UFO;

/// The host side of a network device. Every frame starts with a 12-byte
/// `virtio_net_hdr_v1` ([`super::VirtioNetHeader`]).
pub trait NetBackend: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Receives one frame into `buf` and returns its length, or fails with
    /// [`io::ErrorKind::WouldBlock`] when none is pending. Frames longer than `buf` may be
    /// truncated.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Lets the backend deliver frames that use the offloads in `flags` (`OFFLOAD_*` bits); the
    /// device calls it with exactly what the driver negotiated.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;

    /// A descriptor that polls readable while a frame is pending, for the event loop; `None`
    /// if the backend has none (it is then only read when the device is kicked).
    fn ready_fd(&self) -> Option<RawFd>;
}

/// A backend with no host side: frames the guest sends are dropped and none arrive. For a
/// guest that needs a NIC present but unplugged, and for tests and fuzzing of everything but
/// the data path.
///
/// ```
/// use devices::virtio::net::{NetBackend, NullBackend};
///
/// let mut backend = NullBackend;
/// backend.send(&[0u8; 60]).unwrap();
/// let err = backend.recv(&mut [0u8; 64]).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NullBackend;

impl NetBackend for NullBackend {
    fn send(&mut self, _frame: &[u8]) -> io::Result<()> {
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
