//! Device configuration spaces as drivers see them: one `ByteValued` struct per device type,
//! laid out as virtio 1.2 defines it (little-endian fields, no padding), and the bounded copy
//! every device's [`VirtioDevice::read_config`](super::VirtioDevice::read_config) does.

use vm_memory::{ByteValued, Le16, Le32, Le64};

/// Copies the bytes of `config` starting `offset` bytes in into `data`; bytes past the end of
/// the configuration space (or an offset beyond it) read as zero, as a driver probing a field
/// the device does not have expects.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let tail = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..));
    if let Some(tail) = tail {
        let len = tail.len().min(data.len());
        data[..len].copy_from_slice(&tail[..len]);
    }
}

/// `struct virtio_net_config` up to `status` (virtio 1.2, 5.1.4): Keel offers neither multiple
/// queues nor an MTU, so the fields after it are absent.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NetConfigSpace {
    pub mac: [u8; 6],
    pub status: Le16,
}

// SAFETY: `repr(C, packed)` of byte arrays and little-endian integers: no padding, and every bit
// pattern is a valid value.
unsafe impl ByteValued for NetConfigSpace {}

/// `struct virtio_blk_config` up to `unused1` (virtio 1.2, 5.2.4).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BlockConfigSpace {
    /// Disk size in 512-byte sectors.
    pub capacity: Le64,
    pub size_max: Le32,
    /// Most data descriptors per request.
    pub seg_max: Le32,
    /// `geometry`: cylinders (le16), heads, sectors.
    pub geometry: [u8; 4],
    /// The block size the guest should use.
    pub blk_size: Le32,
    /// `topology`: physical_block_exp, alignment_offset, min_io_size (le16), opt_io_size (le32).
    pub topology: [u8; 8],
    pub writeback: u8,
    pub unused0: u8,
    pub num_queues: Le16,
    pub max_discard_sectors: Le32,
    pub max_discard_seg: Le32,
    /// In sectors.
    pub discard_sector_alignment: Le32,
    pub max_write_zeroes_sectors: Le32,
    pub max_write_zeroes_seg: Le32,
    pub write_zeroes_may_unmap: u8,
    pub unused1: [u8; 3],
}

// SAFETY: `repr(C, packed)` of byte arrays, bytes and little-endian integers: no padding, and
// every bit pattern is a valid value.
unsafe impl ByteValued for BlockConfigSpace {}

/// `struct virtio_console_config` (virtio 1.2, 5.3.4).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConsoleConfigSpace {
    pub cols: Le16,
    pub rows: Le16,
    pub max_nr_ports: Le32,
    /// Writable: the low byte is a character to print.
    pub emerg_wr: Le32,
}

// SAFETY: `repr(C, packed)` of little-endian integers: no padding, and every bit pattern is a
// valid value.
unsafe impl ByteValued for ConsoleConfigSpace {}

/// `struct virtio_vsock_config` (virtio 1.2, 5.10.4).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VsockConfigSpace {
    pub guest_cid: Le64,
}

// SAFETY: `repr(C, packed)` of one little-endian integer: no padding, and every bit pattern is a
// valid value.
unsafe impl ByteValued for VsockConfigSpace {}

// The sizes the specification gives.
const _: () = assert!(size_of::<NetConfigSpace>() == 8);
const _: () = assert!(size_of::<BlockConfigSpace>() == 60);
const _: () = assert!(size_of::<ConsoleConfigSpace>() == 12);
const _: () = assert!(size_of::<VsockConfigSpace>() == 8);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn fields_sit_where_the_specification_puts_them() {
        assert_eq!(offset_of!(NetConfigSpace, status), 6);
        assert_eq!(offset_of!(BlockConfigSpace, seg_max), 12);
        assert_eq!(offset_of!(BlockConfigSpace, blk_size), 20);
        assert_eq!(offset_of!(BlockConfigSpace, num_queues), 34);
        assert_eq!(offset_of!(BlockConfigSpace, max_discard_sectors), 36);
        assert_eq!(offset_of!(BlockConfigSpace, discard_sector_alignment), 44);
        assert_eq!(offset_of!(BlockConfigSpace, max_write_zeroes_seg), 52);
        assert_eq!(offset_of!(BlockConfigSpace, write_zeroes_may_unmap), 56);
        assert_eq!(offset_of!(ConsoleConfigSpace, emerg_wr), 8);
    }

    #[test]
    fn reads_past_the_end_are_zero() {
        let config = VsockConfigSpace {
            guest_cid: Le64::from(0x0102_0304_0506_0708),
        };
        let mut data = [0xffu8; 4];
        read_config_bytes(config.as_slice(), 6, &mut data);
        assert_eq!(data, [0x02, 0x01, 0, 0]);
        read_config_bytes(config.as_slice(), u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
