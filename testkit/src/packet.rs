//! A raw `AF_PACKET` socket on one interface: the host-side peer of a guest's NIC in tests and
//! benchmarks. It sees only frames of one EtherType (the test guest uses 0x88b5, the IEEE
//! "local experimental" type, so the host's own traffic on the TAP never interferes).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The EtherType of the test guest's frames (guest/README.md).
pub const ETHERTYPE_TEST: u16 = 0x88b5;

/// An `AF_PACKET` socket bound to one interface and EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    ethertype: u16,
}

impl PacketSocket {
    /// Binds to `ifname` for frames of `ethertype`; receives give up after `timeout`. A
    /// `rcvbuf` asks for a larger receive buffer (with `SO_RCVBUFFORCE` where the process may,
    /// else `SO_RCVBUF`), so bursts are not dropped while the reader is busy.
    pub fn open(
        ifname: &str,
        ethertype: u16,
        timeout: Duration,
        rcvbuf: Option<i32>,
    ) -> io::Result<Self> {
        let name = CString::new(ifname).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket creation; the descriptor is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ethertype.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket {
            fd,
            ifindex,
            ethertype,
        };
        let addr = socket.address(None);
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(size) = rcvbuf {
            if socket.set_option(libc::SO_RCVBUFFORCE, &size).is_err() {
                socket.set_option(libc::SO_RCVBUF, &size)?;
            }
        }
        let timeout = libc::timeval {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_usec: timeout.subsec_micros().into(),
        };
        socket.set_option(libc::SO_RCVTIMEO, &timeout)?;
        Ok(socket)
    }

    /// The next frame, or `None` when none arrived within the timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let n = self.recv_into(&mut buf)?;
        buf.truncate(n);
        Some(buf)
    }

    /// Receives the next frame into `buf`; its length, or `None` on timeout.
    pub fn recv_into(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok().filter(|n| *n > 0)
    }

    /// Sends `frame` (at least its 6-byte destination MAC) out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let Some(dest) = frame.get(..6) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let addr = self.address(Some(dest));
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn address(&self, dest: Option<&[u8]>) -> libc::sockaddr_ll {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = self.ethertype.to_be();
        addr.sll_ifindex = self.ifindex;
        if let Some(dest) = dest {
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dest[..6]);
        }
        addr
    }

    fn set_option<T>(&self, option: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a `T` of the size given, as the option expects.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
