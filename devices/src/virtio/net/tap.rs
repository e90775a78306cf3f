//! A Linux TAP interface as a [`NetBackend`].
//!
//! The interface is set up the way virtio-net needs it: Ethernet frames (`IFF_TAP`), no
//! packet-information prefix (`IFF_NO_PI`), and a 12-byte virtio-net header on every frame
//! (`IFF_VNET_HDR` with `TUNSETVNETHDRSZ`), so headers pass between guest and kernel unchanged.
//! The descriptor is non-blocking. This file does not configure addresses or bring the link up:
//! that is the host administrator's job.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::NetBackend;
use super::header::VIRTIO_NET_HDR_LEN;

const TUN_DEVICE: &str = "/dev/net/tun";
/// Interface flags Keel requires of a TAP descriptor.
const REQUIRED_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Why a TAP interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE}: {0}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed (no permission, or the name is in use by a non-TAP interface).
    #[error("cannot attach to TAP interface {name:?}: {source}")]
    Attach {
        /// The interface name.
        name: String,
        /// The system error.
        source: io::Error,
    },
    /// The name does not fit in `struct ifreq`.
    #[error("TAP interface name {0:?} is too long or contains NUL")]
    Name(String),
    /// A supplied descriptor is not a TUN/TAP descriptor.
    #[error("descriptor is not an attached TUN/TAP device: {0}")]
    NotTun(#[source] io::Error),
    /// A supplied descriptor lacks `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    #[error("TAP descriptor has flags {0:#x}; IFF_TAP | IFF_NO_PI | IFF_VNET_HDR are required")]
    Flags(libc::c_int),
    /// Another set-up ioctl or fcntl failed.
    #[error("TAP set-up step {step} failed: {source}")]
    Setup {
        /// What was being done.
        step: &'static str,
        /// The system error.
        source: io::Error,
    },
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn interface_request(name: &str) -> Result<libc::ifreq, TapError> {
    // SAFETY: `ifreq` is plain old data (arrays, integers, a union of those); all zeroes is a
    // valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(TapError::Name(name.to_string()));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(request)
}

fn name_of(request: &libc::ifreq) -> String {
    // SAFETY: `ifr_name` is a fixed array; the kernel NUL-terminates the name it returns and
    // the zeroed initialisation guarantees a NUL even if it wrote nothing.
    let name = unsafe { CStr::from_ptr(request.ifr_name.as_ptr()) };
    name.to_string_lossy().into_owned()
}

impl Tap {
    /// Opens the TAP interface `name`, creating it if it does not exist (needs
    /// `CAP_NET_ADMIN` to create).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;
        let mut request = interface_request(name)?;
        // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR is 0x5002: it fits the request's short.
        #[allow(clippy::cast_possible_truncation)]
        let flags = REQUIRED_FLAGS as libc::c_short;
        request.ifr_ifru.ifru_flags = flags;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives for the whole call; the
        // descriptor is our open /dev/net/tun file.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            name: name_of(&request),
            file,
        };
        tap.finish_setup()?;
        Ok(tap)
    }

    /// Uses a TAP descriptor the caller opened; it must have been attached with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. The descriptor is made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let file = File::from(fd);
        // SAFETY: as above, `ifreq` is plain old data.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one `ifreq` into memory we own; on a non-TUN descriptor it
        // fails without touching it.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut request) };
        if ret < 0 {
            return Err(TapError::NotTun(io::Error::last_os_error()));
        }
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags });
        if flags & REQUIRED_FLAGS != REQUIRED_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(TapError::Flags(flags));
        }
        // SAFETY: F_GETFL/F_SETFL take no pointers; the descriptor is owned by `file`.
        let ret = unsafe {
            let status = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if status < 0 {
                status
            } else {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, status | libc::O_NONBLOCK)
            }
        };
        if ret < 0 {
            return Err(TapError::Setup {
                step: "fcntl(O_NONBLOCK)",
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            name: name_of(&request),
            file,
        };
        tap.finish_setup()?;
        Ok(tap)
    }

    fn finish_setup(&self) -> Result<(), TapError> {
        // VIRTIO_NET_HDR_LEN is 12: it fits a C int.
        #[allow(clippy::cast_possible_truncation)]
        let header_len = VIRTIO_NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which outlives the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        if ret < 0 {
            return Err(TapError::Setup {
                step: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        // Start with no offloads; the device enables what the driver negotiates.
        self.apply_offload(0).map_err(|source| TapError::Setup {
            step: "TUNSETOFFLOAD",
            source,
        })
    }

    fn apply_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is shared.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface name the kernel assigned.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // A TAP write takes the whole frame or fails; a short write would be a kernel bug.
        let written = self.file.write(frame)?;
        if written != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.apply_offload(flags)
    }

    fn ready_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}
