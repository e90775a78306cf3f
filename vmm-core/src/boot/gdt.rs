//! Segment descriptors for the entry GDT and their KVM register form.
//!
//! Both entry protocols start with the same four-entry GDT shape (null, code, data, TSS); the
//! code descriptor is 64-bit for the Linux 64-bit protocol and 32-bit for PVH.

use kvm_bindings::kvm_segment;

use crate::narrow::halves;

/// The limit of either entry GDT (four 8-byte descriptors), as the GDTR takes it.
pub const GDT_LIMIT: u16 = 4 * 8 - 1;
const _: () = assert!(std::mem::size_of::<[u64; 4]>() == GDT_LIMIT as usize + 1);

/// GDT selector of the code segment.
#[cfg(test)]
pub const CODE_SELECTOR: u16 = 0x08;
/// GDT selector of the data segment.
#[cfg(test)]
pub const DATA_SELECTOR: u16 = 0x10;
/// GDT selector of the TSS.
#[cfg(test)]
pub const TSS_SELECTOR: u16 = 0x18;

/// Packs a descriptor from its flags (high nibble: G, D/B, L, AVL; low byte: access byte),
/// base and limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The entry GDT for the Linux 64-bit protocol: 64-bit code, flat data, 64-bit TSS.
pub const GDT_LONG_MODE: [u64; 4] = [
    0,
    descriptor(0xa09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x808b, 0, 0xfffff),
];

/// The entry GDT for PVH: flat 32-bit code and data, a busy 32-bit TSS (base 0, limit 0x67)
/// as the PVH specification describes.
pub const GDT_PVH: [u64; 4] = [
    0,
    descriptor(0xc09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x008b, 0, 0x67),
];

/// Decodes descriptor `index` of `gdt` into the segment register KVM loads.
pub fn segment(gdt: &[u64; 4], index: u16) -> kvm_segment {
    let entry = gdt[usize::from(index) % gdt.len()];
    let access = ((entry >> 40) & 0xff) as u8;
    let flags = ((entry >> 52) & 0xf) as u8;
    let granular = flags & 0x8 != 0;
    // Limit bits 0..16 sit in the low dword, bits 16..20 in the high one.
    let (low, high) = halves(entry);
    let raw_limit = (low & 0xffff) | (high & 0xf_0000);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        // The index sits above the selector's table-indicator and privilege bits.
        selector: index << 3,
        type_: access & 0xf,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: u8::from(granular),
        avl: flags & 1,
        unusable: u8::from(access & 0x80 == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment_decodes_as_kvm_expects() {
        let code = segment(&GDT_LONG_MODE, 1);
        assert_eq!(code.selector, CODE_SELECTOR);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!((code.type_, code.s, code.present, code.dpl), (0xb, 1, 1, 0));
        assert_eq!((code.l, code.db, code.g), (1, 0, 1));
        let data = segment(&GDT_LONG_MODE, 2);
        assert_eq!(
            (data.type_, data.db, data.l, data.selector),
            (0x3, 1, 0, DATA_SELECTOR)
        );
    }

    #[test]
    fn pvh_segments_are_flat_32_bit_with_a_busy_tss() {
        let code = segment(&GDT_PVH, 1);
        assert_eq!((code.l, code.db, code.limit), (0, 1, 0xffff_ffff));
        let tss = segment(&GDT_PVH, 3);
        assert_eq!((tss.type_, tss.s, tss.limit, tss.g), (0xb, 0, 0x67, 0));
        assert_eq!(tss.selector, TSS_SELECTOR);
        assert_eq!(segment(&GDT_PVH, 0).unusable, 1);
    }

    #[test]
    fn descriptor_packs_split_base_and_limit() {
        let entry = descriptor(0x8093, 0x1234_5678, 0xabcde);
        assert_eq!(entry & 0xffff, 0xbcde);
        assert_eq!((entry >> 16) & 0xff_ffff, 0x34_5678);
        assert_eq!(entry >> 56, 0x12);
        assert_eq!((entry >> 48) & 0xf, 0xa);
    }
}
