//! Disk backends for virtio-blk: the [`DiskBackend`] trait and a raw image file, [`RawFile`].
//!
//! The device only ever asks for whole 512-byte sectors, checked against the disk's size; a
//! backend just performs the I/O. `RawFile` can bypass the host page cache (`O_DIRECT`), in
//! which case it moves data through an aligned bounce buffer and reports the alignment the file
//! system needs as the block size the device advertises. Image formats (qcow2, ...) are not
//! handled here.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use log::debug;

use super::request::SECTOR_SHIFT;

/// Memory alignment of the `O_DIRECT` bounce buffer unless the file system asks for more.
const DIRECT_MEMORY_ALIGNMENT: u32 = 4096;
/// Size of the `O_DIRECT` bounce buffer; larger transfers are split.
const DIRECT_BUFFER_LEN: usize = 256 * 1024;
/// Largest I/O alignment accepted from the file system for `O_DIRECT`.
const MAX_DIRECT_ALIGNMENT: u32 = 64 * 1024;
/// Chunk written at a time when zeroes have to be written out explicitly.
const ZERO_CHUNK_LEN: usize = 64 * 1024;

/// Storage behind a virtio-blk device. Offsets and lengths are in bytes.
///
/// The device calls these only with ranges inside [`DiskBackend::size`]; `read_at` and
/// `write_at` transfer the whole buffer or fail.
pub trait DiskBackend: Send {
    /// Size of the disk in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` from the disk starting at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes all of `buf` to the disk starting at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;

    /// Tells the backend that `len` bytes at `offset` are no longer needed; their contents
    /// become unspecified.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeroes; `may_unmap` allows deallocating them.
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()>;

    /// The smallest I/O unit in bytes the backend handles (a power of two, at least 512).
    fn block_size(&self) -> u32 {
        1 << SECTOR_SHIFT // SECTOR_SIZE, as a u32
    }

    /// The file under the disk, when reads and writes of the disk are plain positional reads
    /// and writes of that file (a raw image): the device's I/O thread then submits them to
    /// io_uring itself, straight between the file and guest memory. `None` (the default) for
    /// any other backend, which the thread calls as usual.
    fn io_file(&self) -> Option<IoFile> {
        None
    }
}

/// A file whose bytes are the disk's bytes (see [`DiskBackend::io_file`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoFile {
    /// The descriptor; it stays open as long as the backend lives.
    pub fd: std::os::fd::RawFd,
    /// Opened with `O_DIRECT`: buffers, offsets and lengths must then be aligned to
    /// `block_size`.
    pub direct: bool,
    /// Alignment `O_DIRECT` needs.
    pub block_size: u32,
}

/// A page-aligned buffer for `O_DIRECT` transfers, carved out of an over-allocated `Vec`.
struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuffer {
    fn new(len: usize, alignment: usize) -> Self {
        let storage = vec![0u8; len + alignment];
        let start = storage.as_ptr().align_offset(alignment);
        AlignedBuffer {
            storage,
            start,
            len,
        }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len.min(self.len)]
    }
}

/// A raw disk image in a host file.
pub struct RawFile {
    file: File,
    read_only: bool,
    /// `Some` when the file was opened with `O_DIRECT`.
    direct: Option<AlignedBuffer>,
    block_size: u32,
}

/// `fallocate(2)` on `file`, retried on `EINTR`.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let offset = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let len = libc::off_t::try_from(len).map_err(|_| invalid())?;
    loop {
        // SAFETY: fallocate takes only integers; the descriptor stays open while `file` lives.
        let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether `err` means the file system does not implement an `fallocate` mode.
fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

/// The `O_DIRECT` alignments (file offset, memory) the file system reports, if it does.
fn direct_io_alignment(file: &File) -> Option<(u32, u32)> {
    // SAFETY: `statx` is a plain C struct of integers, for which all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, which with AT_EMPTY_PATH makes
    // statx describe the open descriptor; `stx` is a valid, writable statx struct.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_offset_align, stx.stx_dio_mem_align))
}

impl RawFile {
    /// Opens the image at `path`, read-only if `read_only`, bypassing the host page cache if
    /// `direct`.
    ///
    /// With `direct`, the file system must support `O_DIRECT`, and the block size becomes the
    /// I/O alignment it reports (at least 512 bytes).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<RawFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(path)?;
        let mut block_size: u32 = 1 << SECTOR_SHIFT; // SECTOR_SIZE
        let mut direct_buffer = None;
        if direct {
            let (offset_align, memory_align) =
                direct_io_alignment(&file).unwrap_or((block_size, DIRECT_MEMORY_ALIGNMENT));
            let offset_align = offset_align.max(block_size);
            if !offset_align.is_power_of_two() || offset_align > MAX_DIRECT_ALIGNMENT {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("O_DIRECT alignment of {offset_align} bytes is not supported"),
                ));
            }
            block_size = offset_align;
            let memory_align = memory_align.max(DIRECT_MEMORY_ALIGNMENT).max(offset_align) as usize;
            if !memory_align.is_power_of_two() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("O_DIRECT memory alignment of {memory_align} bytes is not supported"),
                ));
            }
            direct_buffer = Some(AlignedBuffer::new(DIRECT_BUFFER_LEN, memory_align));
        }
        Ok(RawFile {
            file,
            read_only,
            direct: direct_buffer,
            block_size,
        })
    }

    /// Whether the file was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the file bypasses the host page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn read_only_error() -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, "disk image is read-only")
    }

    /// Writes explicit zeroes, for file systems without `FALLOC_FL_ZERO_RANGE`.
    fn write_zero_blocks(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK_LEN];
        let mut done = 0u64;
        while done < len {
            // What is left, unless that is more than a chunk (or than a usize holds).
            let chunk =
                usize::try_from(len - done).map_or(ZERO_CHUNK_LEN, |rest| rest.min(ZERO_CHUNK_LEN));
            self.write_at(offset + done, &zeroes[..chunk])?;
            done += chunk as u64;
        }
        Ok(())
    }
}

impl DiskBackend for RawFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn io_file(&self) -> Option<IoFile> {
        Some(IoFile {
            fd: self.file.as_raw_fd(),
            direct: self.direct.is_some(),
            block_size: self.block_size,
        })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let Some(bounce) = self.direct.as_mut() else {
            return self.file.read_exact_at(buf, offset);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let aligned = bounce.get(buf.len() - done);
            let chunk = aligned.len();
            self.file.read_exact_at(aligned, offset + done as u64)?;
            buf[done..done + chunk].copy_from_slice(aligned);
            done += chunk;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(Self::read_only_error());
        }
        let Some(bounce) = self.direct.as_mut() else {
            return self.file.write_all_at(buf, offset);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let aligned = bounce.get(buf.len() - done);
            let chunk = aligned.len();
            aligned.copy_from_slice(&buf[done..done + chunk]);
            self.file.write_all_at(aligned, offset + done as u64)?;
            done += chunk;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // fdatasync(2): data and the metadata needed to read it back.
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(Self::read_only_error());
        }
        match fallocate(
            &self.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is a hint: a file system that cannot punch holes just keeps the data.
            Err(err) if unsupported(&err) => {
                debug!("virtio-blk: discard not supported by the file system: {err}");
                Ok(())
            }
            result => result,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(Self::read_only_error());
        }
        if may_unmap {
            match fallocate(
                &self.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(err) if unsupported(&err) => {}
                result => return result,
            }
        }
        match fallocate(&self.file, libc::FALLOC_FL_ZERO_RANGE, offset, len) {
            Err(err) if unsupported(&err) => self.write_zero_blocks(offset, len),
            result => result,
        }
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }
}
