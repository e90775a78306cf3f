//! Parsing of virtio-blk requests (virtio 1.2, section 5.2.6).
//!
//! [`Request::parse`] turns the descriptors of one chain into a typed [`Request`], checking every
//! value the guest controls: the chain's shape, each descriptor's direction and length, guest
//! addresses, and sector ranges against the disk's capacity. It reads guest memory (the request
//! header and discard ranges) but does no disk I/O, so it can be unit-tested and fuzzed on its
//! own. Executing a request is the device's job ([`super::VirtioBlock`]).
//!
//! Keel expects the header and the status byte in descriptors of their own, as Linux, SeaBIOS,
//! OVMF and the Windows drivers send them, and every IN/OUT data descriptor to hold whole sectors.

use std::mem::size_of;

use crate::virtio::byte;
use virtio_bindings::virtio_blk;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory, Le32, Le64, Permissions};

/// Bytes in a virtio-blk sector, the unit of `sector` fields whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the serial number returned by `GET_ID`.
pub const ID_BYTES: usize = virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Request type: read sectors into the guest's buffers.
pub const VIRTIO_BLK_T_IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
/// Request type: write sectors from the guest's buffers.
pub const VIRTIO_BLK_T_OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
/// Request type: make completed writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Request type: return the device's serial number.
pub const VIRTIO_BLK_T_GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;
/// Request type: the guest no longer needs these sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = virtio_blk::VIRTIO_BLK_T_DISCARD;
/// Request type: make these sectors read as zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES;

/// Status byte: the request succeeded.
pub const VIRTIO_BLK_S_OK: u8 = byte(virtio_blk::VIRTIO_BLK_S_OK);
/// Status byte: the request failed (malformed, or the I/O failed).
pub const VIRTIO_BLK_S_IOERR: u8 = byte(virtio_blk::VIRTIO_BLK_S_IOERR);
/// Status byte: the device does not support this request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = byte(virtio_blk::VIRTIO_BLK_S_UNSUPP);

/// Discard/write-zeroes range flag: the device may deallocate the sectors.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Length of the request header (`struct virtio_blk_req` up to the data).
pub const HEADER_LEN: u32 = 16;
/// Length of one discard/write-zeroes range (`struct virtio_blk_discard_write_zeroes`).
pub const RANGE_LEN: u32 = 16;
// The lengths are the sizes of the structs read from guest memory.
const _: () = assert!(size_of::<RequestHeader>() == HEADER_LEN as usize);
const _: () = assert!(size_of::<RangeEntry>() == RANGE_LEN as usize);

/// The fixed part of a request as it sits in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RequestHeader {
    request_type: Le32,
    reserved: Le32,
    sector: Le64,
}

// SAFETY: `RequestHeader` is `repr(C)`, made only of plain integers, without padding (4 + 4 + 8
// bytes), so every bit pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// One `struct virtio_blk_discard_write_zeroes` as it sits in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RangeEntry {
    sector: Le64,
    num_sectors: Le32,
    flags: Le32,
}

// SAFETY: `RangeEntry` is `repr(C)`, made only of plain integers, without padding (8 + 4 + 4
// bytes), so every bit pattern is a valid value.
unsafe impl ByteValued for RangeEntry {}

/// What the device accepts; requests beyond these limits are rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Most data descriptors in one IN/OUT/GET_ID request (the config space's `seg_max`).
    pub seg_max: u32,
    /// Most sectors in one discard range.
    pub max_discard_sectors: u32,
    /// Most ranges in one discard request.
    pub max_discard_seg: u32,
    /// Most sectors in one write-zeroes range.
    pub max_write_zeroes_sectors: u32,
    /// Most ranges in one write-zeroes request.
    pub max_write_zeroes_seg: u32,
}

/// A guest buffer: `len` bytes at `addr`, checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
}

/// A range of sectors for a discard or write-zeroes request, checked against the capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Number of sectors (never zero).
    pub num_sectors: u32,
    /// The guest allows the device to deallocate the sectors (write-zeroes only).
    pub unmap: bool,
}

impl SectorRange {
    /// Byte offset of the range on the disk.
    pub fn offset(&self) -> u64 {
        self.sector << SECTOR_SHIFT
    }

    /// Length of the range in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.num_sectors) << SECTOR_SHIFT
    }

    /// Whether the range is empty (never true for a parsed range).
    pub fn is_empty(&self) -> bool {
        self.num_sectors == 0
    }
}

/// What a request asks for, with its checked operands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read from `sector` into the segments, in order.
    In {
        /// First sector to read.
        sector: u64,
        /// Device-writable buffers, each a whole number of sectors.
        segments: Vec<Segment>,
    },
    /// Write the segments, in order, starting at `sector`.
    Out {
        /// First sector to write.
        sector: u64,
        /// Device-readable buffers, each a whole number of sectors.
        segments: Vec<Segment>,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the serial number (up to [`ID_BYTES`]) into the segments.
    GetId {
        /// Device-writable buffers.
        segments: Vec<Segment>,
    },
    /// Deallocate the ranges.
    Discard(Vec<SectorRange>),
    /// Make the ranges read as zeroes.
    WriteZeroes(Vec<SectorRange>),
}

/// A parsed request: what to do and where to put the status byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestKind,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

impl Request {
    /// Bytes the request moves between guest memory and the disk (what a bandwidth limit
    /// counts): the data of a read or write, nothing for the other kinds.
    pub fn data_bytes(&self) -> u64 {
        match &self.kind {
            RequestKind::In { segments, .. } | RequestKind::Out { segments, .. } => {
                segments.iter().map(|s| u64::from(s.len)).sum()
            }
            _ => 0,
        }
    }
}

/// Why a descriptor chain is not a valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has fewer descriptors than a request needs.
    #[error("chain has {0} descriptors, a request needs at least 2")]
    ChainTooShort(usize),
    /// The chain has more descriptors than the device accepts.
    #[error("chain has more than {0} descriptors")]
    ChainTooLong(usize),
    /// The last descriptor still points to a next one: the chain loops, is longer than the queue
    /// or names a descriptor outside the table.
    #[error("chain does not end (a loop, or a next index outside the descriptor table)")]
    Unterminated,
    /// The header descriptor is device-writable or not exactly [`HEADER_LEN`] bytes.
    #[error("header descriptor must be device-readable and {HEADER_LEN} bytes (writable: {writable}, len: {len})")]
    BadHeader {
        /// The descriptor is device-writable.
        writable: bool,
        /// Its length.
        len: u32,
    },
    /// The status descriptor is device-readable or not exactly one byte.
    #[error(
        "status descriptor must be device-writable and 1 byte (writable: {writable}, len: {len})"
    )]
    BadStatus {
        /// The descriptor is device-writable.
        writable: bool,
        /// Its length.
        len: u32,
    },
    /// A descriptor's buffer is not entirely in guest memory.
    #[error("descriptor {index} ({len} bytes at {addr:#x}) is outside guest memory")]
    OutsideMemory {
        /// Position in the chain.
        index: usize,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The request type is unknown or not supported.
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    /// A data descriptor points the wrong way for the request type.
    #[error("data descriptor {index} must be device-{} for this request", if *.writable_expected { "writable" } else { "readable" })]
    WrongDirection {
        /// Position in the chain.
        index: usize,
        /// What the request type needs.
        writable_expected: bool,
    },
    /// A data descriptor has length zero.
    #[error("data descriptor {0} has length 0")]
    EmptySegment(usize),
    /// An IN/OUT data descriptor does not hold whole sectors.
    #[error("data descriptor {index} has length {len}, not a multiple of {SECTOR_SIZE}")]
    PartialSector {
        /// Position in the chain.
        index: usize,
        /// Its length.
        len: u32,
    },
    /// A request type that carries no data came with data descriptors.
    #[error("request type carries no data but has {0} data descriptors")]
    UnexpectedData(usize),
    /// The sectors requested are not all on the disk.
    #[error("sectors {sector}+{sectors} are beyond the capacity of {capacity} sectors")]
    BeyondCapacity {
        /// First sector.
        sector: u64,
        /// Number of sectors (saturated at `u64::MAX`).
        sectors: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// The discard/write-zeroes payload is not a whole number of ranges.
    #[error("discard/write-zeroes payload of {0} bytes is not a multiple of {RANGE_LEN}")]
    PartialRange(u64),
    /// A discard/write-zeroes request has no ranges or more than the device allows.
    #[error("{got} ranges in one request; the device takes 1 to {max}")]
    RangeCount {
        /// Ranges in the request.
        got: u64,
        /// The limit.
        max: u32,
    },
    /// A discard/write-zeroes range is empty or longer than the device allows.
    #[error("range of {got} sectors; the device takes 1 to {max}")]
    RangeLength {
        /// Sectors in the range.
        got: u32,
        /// The limit.
        max: u32,
    },
    /// A discard/write-zeroes range sets flags the request type does not allow.
    #[error("range flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    /// Guest memory could not be read although its range was checked.
    #[error("guest memory read at {0:#x} failed")]
    MemoryRead(u64),
}

impl RequestError {
    /// The status byte the device reports for this error: `UNSUPP` for requests it does not
    /// implement, `IOERR` for malformed ones.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags(_) => {
                VIRTIO_BLK_S_UNSUPP
            }
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A rejected chain: the reason, and where to report it if the status byte could be located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Why the chain is not a valid request.
    pub error: RequestError,
    /// Guest address of a valid status byte, or `None` when there is none and the chain can only
    /// be returned with nothing written.
    pub status: Option<GuestAddress>,
}

fn in_memory<M: GuestMemory>(mem: &M, desc: &Descriptor, access: Permissions) -> bool {
    let len = desc.len() as usize;
    len == 0 || mem.check_range(desc.addr(), len, access)
}

/// Sectors covered by `bytes` (a multiple of [`SECTOR_SIZE`]).
fn sectors_in(bytes: u64) -> u64 {
    bytes >> SECTOR_SHIFT
}

fn check_capacity(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::BeyondCapacity {
            sector,
            sectors,
            capacity,
        }),
    }
}

impl Request {
    /// Parses the descriptors of one chain (in chain order) against `limits`.
    ///
    /// Reads at most `seg_max + 3` descriptors, so an endless iterator is harmless. On error
    /// the returned [`Rejected`] says where the status byte is, if the last descriptor is a
    /// valid one.
    pub fn parse<M, I>(descriptors: I, mem: &M, limits: &Limits) -> Result<Request, Rejected>
    where
        M: GuestMemory,
        I: IntoIterator<Item = Descriptor>,
    {
        // Header + data + status, plus one to notice a chain that is too long.
        let max_descriptors = (limits.seg_max as usize).saturating_add(2);
        let descs: Vec<Descriptor> = descriptors
            .into_iter()
            .take(max_descriptors.saturating_add(1))
            .collect();
        let reject = |error, status| Err(Rejected { error, status });

        let Some(last) = descs.last() else {
            return reject(RequestError::ChainTooShort(0), None);
        };
        if last.has_next() {
            // The iterator stopped early: a loop, the queue-size bound, or a bad next index.
            let error = if descs.len() > max_descriptors {
                RequestError::ChainTooLong(max_descriptors)
            } else {
                RequestError::Unterminated
            };
            return reject(error, None);
        }
        let status_ok =
            last.is_write_only() && last.len() == 1 && in_memory(mem, last, Permissions::Write);
        let status = status_ok.then_some(last.addr());
        if descs.len() > max_descriptors {
            return reject(RequestError::ChainTooLong(max_descriptors), status);
        }
        if descs.len() < 2 {
            return reject(RequestError::ChainTooShort(descs.len()), status);
        }
        if !status_ok {
            let error = if !last.is_write_only() || last.len() != 1 {
                RequestError::BadStatus {
                    writable: last.is_write_only(),
                    len: last.len(),
                }
            } else {
                RequestError::OutsideMemory {
                    index: descs.len() - 1,
                    addr: last.addr().raw_value(),
                    len: last.len(),
                }
            };
            return reject(error, None);
        }
        let status_addr = last.addr();
        Self::parse_body(&descs, mem, limits)
            .map(|kind| Request {
                kind,
                status: status_addr,
            })
            .map_err(|error| Rejected {
                error,
                status: Some(status_addr),
            })
    }

    /// Parses header and data of a chain whose status descriptor has been checked.
    fn parse_body<M: GuestMemory>(
        descs: &[Descriptor],
        mem: &M,
        limits: &Limits,
    ) -> Result<RequestKind, RequestError> {
        let header_desc = descs[0];
        if header_desc.is_write_only() || header_desc.len() != HEADER_LEN {
            return Err(RequestError::BadHeader {
                writable: header_desc.is_write_only(),
                len: header_desc.len(),
            });
        }
        if !in_memory(mem, &header_desc, Permissions::Read) {
            return Err(RequestError::OutsideMemory {
                index: 0,
                addr: header_desc.addr().raw_value(),
                len: header_desc.len(),
            });
        }
        let header: RequestHeader = mem
            .read_obj(header_desc.addr())
            .map_err(|_| RequestError::MemoryRead(header_desc.addr().raw_value()))?;
        let request_type = u32::from(header.request_type);
        let sector = u64::from(header.sector);
        let data = &descs[1..descs.len() - 1];

        match request_type {
            VIRTIO_BLK_T_IN => {
                let segments = Self::segments(data, mem, true, true)?;
                check_capacity(sector, Self::sectors(&segments), limits.capacity)?;
                Ok(RequestKind::In { sector, segments })
            }
            VIRTIO_BLK_T_OUT => {
                let segments = Self::segments(data, mem, false, true)?;
                check_capacity(sector, Self::sectors(&segments), limits.capacity)?;
                Ok(RequestKind::Out { sector, segments })
            }
            VIRTIO_BLK_T_FLUSH => {
                if !data.is_empty() {
                    return Err(RequestError::UnexpectedData(data.len()));
                }
                Ok(RequestKind::Flush)
            }
            VIRTIO_BLK_T_GET_ID => Ok(RequestKind::GetId {
                segments: Self::segments(data, mem, true, false)?,
            }),
            VIRTIO_BLK_T_DISCARD => Ok(RequestKind::Discard(Self::ranges(
                data,
                mem,
                limits,
                limits.max_discard_seg,
                limits.max_discard_sectors,
                0,
            )?)),
            VIRTIO_BLK_T_WRITE_ZEROES => Ok(RequestKind::WriteZeroes(Self::ranges(
                data,
                mem,
                limits,
                limits.max_write_zeroes_seg,
                limits.max_write_zeroes_sectors,
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            )?)),
            other => Err(RequestError::UnsupportedType(other)),
        }
    }

    /// Sectors covered by segments that each hold whole sectors.
    fn sectors(segments: &[Segment]) -> u64 {
        // At most seg_max segments of at most 4 GiB: no overflow in u64.
        sectors_in(segments.iter().map(|s| u64::from(s.len)).sum())
    }

    /// Checks data descriptors (chain positions 1..) and turns them into segments.
    fn segments<M: GuestMemory>(
        data: &[Descriptor],
        mem: &M,
        writable: bool,
        whole_sectors: bool,
    ) -> Result<Vec<Segment>, RequestError> {
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        data.iter()
            .enumerate()
            .map(|(i, desc)| {
                let index = i + 1;
                if desc.is_write_only() != writable {
                    return Err(RequestError::WrongDirection {
                        index,
                        writable_expected: writable,
                    });
                }
                let len = desc.len();
                if len == 0 {
                    return Err(RequestError::EmptySegment(index));
                }
                if whole_sectors && !u64::from(len).is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::PartialSector { index, len });
                }
                if !in_memory(mem, desc, access) {
                    return Err(RequestError::OutsideMemory {
                        index,
                        addr: desc.addr().raw_value(),
                        len,
                    });
                }
                Ok(Segment {
                    addr: desc.addr(),
                    len,
                })
            })
            .collect()
    }

    /// Reads and checks the ranges of a discard or write-zeroes request.
    fn ranges<M: GuestMemory>(
        data: &[Descriptor],
        mem: &M,
        limits: &Limits,
        max_ranges: u32,
        max_sectors: u32,
        allowed_flags: u32,
    ) -> Result<Vec<SectorRange>, RequestError> {
        let segments = Self::segments(data, mem, false, false)?;
        let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        if !total.is_multiple_of(u64::from(RANGE_LEN)) {
            return Err(RequestError::PartialRange(total));
        }
        let count = total / u64::from(RANGE_LEN);
        if count == 0 || count > u64::from(max_ranges) {
            return Err(RequestError::RangeCount {
                got: count,
                max: max_ranges,
            });
        }
        // Ranges may straddle descriptors; gather the (bounded: `count` is checked above)
        // payload first.
        let mut payload = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for segment in &segments {
            let start = payload.len();
            payload.resize(start + segment.len as usize, 0);
            mem.read_slice(&mut payload[start..], segment.addr)
                .map_err(|_| RequestError::MemoryRead(segment.addr.raw_value()))?;
        }
        payload
            .chunks_exact(RANGE_LEN as usize)
            .map(|bytes| {
                let mut entry = RangeEntry::default();
                entry.as_mut_slice().copy_from_slice(bytes);
                let sector = u64::from(entry.sector);
                let num_sectors = u32::from(entry.num_sectors);
                let flags = u32::from(entry.flags);
                if flags & !allowed_flags != 0 {
                    return Err(RequestError::UnsupportedFlags(flags));
                }
                if num_sectors == 0 || num_sectors > max_sectors {
                    return Err(RequestError::RangeLength {
                        got: num_sectors,
                        max: max_sectors,
                    });
                }
                check_capacity(sector, u64::from(num_sectors), limits.capacity)?;
                Ok(SectorRange {
                    sector,
                    num_sectors,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{
        test_memory, DriverQueue, Rng, BUFFERS, F_INDIRECT, F_NEXT, F_WRITE,
    };
    use crate::GuestMemoryMmap;
    use virtio_queue::{Queue, QueueOwnedT};

    const HDR: u64 = BUFFERS;
    const STATUS: u64 = BUFFERS + 0x100;
    const BUF: u64 = BUFFERS + 0x1000;

    fn limits() -> Limits {
        Limits {
            capacity: 64,
            seg_max: 8,
            max_discard_sectors: 16,
            max_discard_seg: 2,
            max_write_zeroes_sectors: 16,
            max_write_zeroes_seg: 2,
        }
    }

    fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        let header = RequestHeader {
            request_type: request_type.into(),
            reserved: 0.into(),
            sector: sector.into(),
        };
        mem.write_obj(header, GuestAddress(HDR)).unwrap();
    }

    fn readable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, F_NEXT, 0)
    }

    fn writable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, F_NEXT | F_WRITE, 0)
    }

    fn status() -> Descriptor {
        Descriptor::new(STATUS, 1, F_WRITE, 0)
    }

    /// Parses header + `data` + status for a request of `request_type` at `sector`.
    fn parse(
        mem: &GuestMemoryMmap,
        request_type: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> Result<Request, Rejected> {
        header(mem, request_type, sector);
        let mut descs = vec![readable(HDR, HEADER_LEN)];
        descs.extend_from_slice(data);
        descs.push(status());
        Request::parse(descs, mem, &limits())
    }

    fn error(result: Result<Request, Rejected>) -> RequestError {
        let rejected = result.expect_err("request must be rejected");
        assert_eq!(
            rejected.status,
            Some(GuestAddress(STATUS)),
            "status byte located"
        );
        rejected.error
    }

    #[test]
    fn well_formed_requests_parse() {
        let mem = test_memory();
        let read = parse(&mem, VIRTIO_BLK_T_IN, 3, &[writable(BUF, 1024)]).unwrap();
        assert_eq!(
            read,
            Request {
                kind: RequestKind::In {
                    sector: 3,
                    segments: vec![Segment {
                        addr: GuestAddress(BUF),
                        len: 1024
                    }],
                },
                status: GuestAddress(STATUS),
            }
        );
        let write = parse(
            &mem,
            VIRTIO_BLK_T_OUT,
            62,
            &[readable(BUF, 512), readable(BUF, 512)],
        );
        assert!(
            matches!(write.unwrap().kind, RequestKind::Out { sector: 62, ref segments } if segments.len() == 2)
        );
        assert_eq!(
            parse(&mem, VIRTIO_BLK_T_FLUSH, 0, &[]).unwrap().kind,
            RequestKind::Flush
        );
        let id = parse(&mem, VIRTIO_BLK_T_GET_ID, 0, &[writable(BUF, 20)]).unwrap();
        assert!(matches!(id.kind, RequestKind::GetId { .. }));
    }

    #[test]
    fn malformed_chain_shapes_are_rejected() {
        let mem = test_memory();
        let limits = limits();
        // Empty chain and a lone status byte: nothing to report into, or too short.
        let empty = Request::parse(Vec::new(), &mem, &limits).unwrap_err();
        assert_eq!(
            (empty.error, empty.status),
            (RequestError::ChainTooShort(0), None)
        );
        let lone = Request::parse(vec![status()], &mem, &limits).unwrap_err();
        assert_eq!(lone.error, RequestError::ChainTooShort(1));
        // The iterator stopped on a descriptor that still has NEXT: a loop or bad index.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let open = Request::parse(vec![readable(HDR, 16), writable(BUF, 512)], &mem, &limits);
        assert_eq!(open.unwrap_err().error, RequestError::Unterminated);
        // Longer than seg_max + 2.
        let mut long = vec![readable(HDR, 16)];
        long.extend(std::iter::repeat_n(writable(BUF, 512), 9));
        long.push(status());
        let err = Request::parse(long, &mem, &limits).unwrap_err();
        assert_eq!(err.error, RequestError::ChainTooLong(10));
        // An endless iterator is cut off too.
        let endless = std::iter::repeat(writable(BUF, 512));
        let err = Request::parse(endless, &mem, &limits).unwrap_err();
        assert_eq!(
            (err.error, err.status),
            (RequestError::ChainTooLong(10), None)
        );
    }

    #[test]
    fn bad_status_descriptors_drop_the_request() {
        let mem = test_memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let cases = [
            (
                Descriptor::new(STATUS, 1, 0, 0),
                RequestError::BadStatus {
                    writable: false,
                    len: 1,
                },
            ),
            (
                Descriptor::new(STATUS, 0, F_WRITE, 0),
                RequestError::BadStatus {
                    writable: true,
                    len: 0,
                },
            ),
            (
                Descriptor::new(STATUS, 2, F_WRITE, 0),
                RequestError::BadStatus {
                    writable: true,
                    len: 2,
                },
            ),
            (
                Descriptor::new(MEM_END, 1, F_WRITE, 0),
                RequestError::OutsideMemory {
                    index: 1,
                    addr: MEM_END,
                    len: 1,
                },
            ),
            (
                Descriptor::new(u64::MAX, 1, F_WRITE, 0),
                RequestError::OutsideMemory {
                    index: 1,
                    addr: u64::MAX,
                    len: 1,
                },
            ),
        ];
        for (last, expected) in cases {
            let err = Request::parse(vec![readable(HDR, 16), last], &mem, &limits()).unwrap_err();
            assert_eq!((err.error, err.status), (expected, None), "{last:?}");
        }
    }

    const MEM_END: u64 = crate::virtio::testing::MEMORY_SIZE;

    #[test]
    fn bad_headers_are_rejected() {
        let mem = test_memory();
        let limits = limits();
        for (hdr, expected) in [
            (
                Descriptor::new(HDR, 16, F_NEXT | F_WRITE, 0),
                RequestError::BadHeader {
                    writable: true,
                    len: 16,
                },
            ),
            (
                readable(HDR, 8),
                RequestError::BadHeader {
                    writable: false,
                    len: 8,
                },
            ),
            (
                readable(HDR, 0),
                RequestError::BadHeader {
                    writable: false,
                    len: 0,
                },
            ),
            (
                readable(HDR, u32::MAX),
                RequestError::BadHeader {
                    writable: false,
                    len: u32::MAX,
                },
            ),
            (
                readable(MEM_END - 8, 16),
                RequestError::OutsideMemory {
                    index: 0,
                    addr: MEM_END - 8,
                    len: 16,
                },
            ),
        ] {
            assert_eq!(
                error(Request::parse(vec![hdr, status()], &mem, &limits)),
                expected
            );
        }
        assert_eq!(
            error(parse(&mem, 3, 0, &[])),
            RequestError::UnsupportedType(3)
        );
        assert_eq!(
            RequestError::UnsupportedType(3).status(),
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(RequestError::ChainTooShort(0).status(), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn data_descriptors_are_checked() {
        let mem = test_memory();
        // Direction: reads need device-writable buffers, writes device-readable ones.
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_IN, 0, &[readable(BUF, 512)])),
            RequestError::WrongDirection {
                index: 1,
                writable_expected: true
            }
        );
        assert_eq!(
            error(parse(
                &mem,
                VIRTIO_BLK_T_OUT,
                0,
                &[readable(BUF, 512), writable(BUF, 512)]
            )),
            RequestError::WrongDirection {
                index: 2,
                writable_expected: false
            }
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_GET_ID, 0, &[readable(BUF, 20)])),
            RequestError::WrongDirection {
                index: 1,
                writable_expected: true
            }
        );
        // Lengths: zero, partial sectors, huge.
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_IN, 0, &[writable(BUF, 0)])),
            RequestError::EmptySegment(1)
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_OUT, 0, &[readable(BUF, 511)])),
            RequestError::PartialSector { index: 1, len: 511 }
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_IN, 0, &[writable(BUF, u32::MAX)])),
            RequestError::PartialSector {
                index: 1,
                len: u32::MAX
            }
        );
        let huge = u32::MAX - 511;
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_IN, 0, &[writable(BUF, huge)])),
            RequestError::OutsideMemory {
                index: 1,
                addr: BUF,
                len: huge
            }
        );
        // Addresses outside guest memory, including ones that wrap around.
        assert_eq!(
            error(parse(
                &mem,
                VIRTIO_BLK_T_OUT,
                0,
                &[readable(MEM_END - 512, 1024)]
            )),
            RequestError::OutsideMemory {
                index: 1,
                addr: MEM_END - 512,
                len: 1024
            }
        );
        assert_eq!(
            error(parse(
                &mem,
                VIRTIO_BLK_T_OUT,
                0,
                &[readable(u64::MAX - 511, 512)]
            )),
            RequestError::OutsideMemory {
                index: 1,
                addr: u64::MAX - 511,
                len: 512
            }
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_FLUSH, 0, &[writable(BUF, 512)])),
            RequestError::UnexpectedData(1)
        );
    }

    #[test]
    fn sectors_beyond_capacity_are_rejected() {
        let mem = test_memory();
        // 64 sectors: the last one is readable, one more is not.
        assert!(parse(&mem, VIRTIO_BLK_T_IN, 63, &[writable(BUF, 512)]).is_ok());
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_IN, 63, &[writable(BUF, 1024)])),
            RequestError::BeyondCapacity {
                sector: 63,
                sectors: 2,
                capacity: 64
            }
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_OUT, 64, &[readable(BUF, 512)])),
            RequestError::BeyondCapacity {
                sector: 64,
                sectors: 1,
                capacity: 64
            }
        );
        // sector + length overflows u64.
        assert_eq!(
            error(parse(
                &mem,
                VIRTIO_BLK_T_IN,
                u64::MAX,
                &[writable(BUF, 512)]
            )),
            RequestError::BeyondCapacity {
                sector: u64::MAX,
                sectors: 1,
                capacity: 64
            }
        );
        // A zero-sector read at the end is harmless; past the end it is not.
        assert!(parse(&mem, VIRTIO_BLK_T_IN, 64, &[]).is_ok());
        assert!(parse(&mem, VIRTIO_BLK_T_IN, 65, &[]).is_err());
    }

    fn range(mem: &GuestMemoryMmap, at: u64, sector: u64, num_sectors: u32, flags: u32) {
        let entry = RangeEntry {
            sector: sector.into(),
            num_sectors: num_sectors.into(),
            flags: flags.into(),
        };
        mem.write_obj(entry, GuestAddress(at)).unwrap();
    }

    #[test]
    fn discard_and_write_zeroes_ranges_are_checked() {
        let mem = test_memory();
        range(&mem, BUF, 4, 8, 0);
        range(&mem, BUF + 16, 20, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        let zeroes = parse(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[readable(BUF, 32)]).unwrap();
        assert_eq!(
            zeroes.kind,
            RequestKind::WriteZeroes(vec![
                SectorRange {
                    sector: 4,
                    num_sectors: 8,
                    unmap: false
                },
                SectorRange {
                    sector: 20,
                    num_sectors: 4,
                    unmap: true
                },
            ])
        );
        // A range may straddle two descriptors.
        let split = parse(
            &mem,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &[readable(BUF, 5), readable(BUF + 5, 27)],
        );
        assert_eq!(split.unwrap().kind, zeroes.kind);
        // DISCARD must not carry the unmap flag.
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_DISCARD, 0, &[readable(BUF, 32)])),
            RequestError::UnsupportedFlags(1)
        );
        assert_eq!(
            RequestError::UnsupportedFlags(1).status(),
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_DISCARD, 0, &[readable(BUF, 17)])),
            RequestError::PartialRange(17)
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_DISCARD, 0, &[readable(BUF, 48)])),
            RequestError::RangeCount { got: 3, max: 2 }
        );
        assert_eq!(
            error(parse(&mem, VIRTIO_BLK_T_DISCARD, 0, &[])),
            RequestError::RangeCount { got: 0, max: 2 }
        );
        for (sector, num, expected) in [
            (0, 0, RequestError::RangeLength { got: 0, max: 16 }),
            (0, 17, RequestError::RangeLength { got: 17, max: 16 }),
            (
                60,
                8,
                RequestError::BeyondCapacity {
                    sector: 60,
                    sectors: 8,
                    capacity: 64,
                },
            ),
            (
                u64::MAX,
                1,
                RequestError::BeyondCapacity {
                    sector: u64::MAX,
                    sectors: 1,
                    capacity: 64,
                },
            ),
        ] {
            range(&mem, BUF, sector, num, 0);
            assert_eq!(
                error(parse(&mem, VIRTIO_BLK_T_DISCARD, 0, &[readable(BUF, 16)])),
                expected
            );
        }
        range(&mem, BUF, 0, 1, 0x8);
        assert_eq!(
            error(parse(
                &mem,
                VIRTIO_BLK_T_WRITE_ZEROES,
                0,
                &[readable(BUF, 16)]
            )),
            RequestError::UnsupportedFlags(8)
        );
    }

    /// Parses the first chain a real queue yields, so the chain iterator's bounds apply.
    fn parse_from_queue(mem: &GuestMemoryMmap, driver: &DriverQueue) -> Result<Request, Rejected> {
        let mut queue: Queue = driver.device_queue();
        let chain = queue
            .iter(mem)
            .unwrap()
            .next()
            .expect("a chain is available");
        Request::parse(chain, mem, &limits())
    }

    #[test]
    fn descriptor_loops_and_bad_next_indices_end_as_errors() {
        let mem = test_memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> ...: virtio-queue's iterator stops after `queue size` descriptors.
        let mut driver = DriverQueue::new(&mem, 0, 16);
        driver.add_raw(
            0,
            &[
                Descriptor::new(HDR, 16, F_NEXT, 1),
                Descriptor::new(BUF, 512, F_NEXT | F_WRITE, 0),
            ],
        );
        let err = parse_from_queue(&mem, &driver).unwrap_err();
        assert_eq!(err.status, None);
        assert!(matches!(
            err.error,
            RequestError::ChainTooLong(_) | RequestError::Unterminated
        ));
        // A self-loop on a queue small enough that the whole loop fits under seg_max.
        let mut driver = DriverQueue::new(&mem, 0, 4);
        driver.add_raw(0, &[Descriptor::new(HDR, 16, F_NEXT, 0)]);
        assert_eq!(
            parse_from_queue(&mem, &driver).unwrap_err().error,
            RequestError::Unterminated
        );
        // A next index outside the descriptor table.
        let mut driver = DriverQueue::new(&mem, 0, 4);
        driver.add_raw(0, &[Descriptor::new(HDR, 16, F_NEXT, 200)]);
        assert_eq!(
            parse_from_queue(&mem, &driver).unwrap_err().error,
            RequestError::Unterminated
        );
        // An indirect table whose length is not a whole number of descriptors yields nothing.
        let mut driver = DriverQueue::new(&mem, 0, 4);
        driver.add_raw(0, &[Descriptor::new(BUF, 17, F_INDIRECT, 0)]);
        assert_eq!(
            parse_from_queue(&mem, &driver).unwrap_err(),
            Rejected {
                error: RequestError::ChainTooShort(0),
                status: None
            }
        );
    }

    #[test]
    fn random_chains_never_panic_and_valid_results_are_in_bounds() {
        let mem = test_memory();
        let limits = limits();
        let mut rng = Rng::new(0x6b65_656c);
        let addrs = [HDR, BUF, STATUS, 0, MEM_END - 16, MEM_END, u64::MAX - 8];
        let lens = [0, 1, 16, 20, 511, 512, 1024, 4096, u32::MAX];
        let mut accepted = 0;
        for _ in 0..20_000 {
            header(&mem, rng.below(16) as u32, rng.below(80));
            let count = rng.below(12) as usize;
            let descs: Vec<Descriptor> = (0..count)
                .map(|i| {
                    let addr = addrs[rng.below(addrs.len() as u64) as usize]
                        .wrapping_add(rng.below(2) * 512);
                    let len = lens[rng.below(lens.len() as u64) as usize];
                    let mut flags = (rng.below(4) as u16) & F_WRITE;
                    if i + 1 < count || rng.below(8) == 0 {
                        flags |= F_NEXT;
                    }
                    Descriptor::new(addr, len, flags, 0)
                })
                .collect();
            match Request::parse(descs, &mem, &limits) {
                Ok(request) => {
                    accepted += 1;
                    if let RequestKind::In { sector, segments }
                    | RequestKind::Out { sector, segments } = &request.kind
                    {
                        let bytes: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
                        assert!(sector + bytes / SECTOR_SIZE <= limits.capacity);
                        assert!(segments
                            .iter()
                            .all(|s| u64::from(s.len).is_multiple_of(SECTOR_SIZE) && s.len > 0));
                    }
                }
                Err(rejected) => {
                    let _ = rejected.error.to_string();
                }
            }
        }
        assert!(accepted > 0, "the generator also produces valid requests");
    }
}
