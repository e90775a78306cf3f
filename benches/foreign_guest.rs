//! A minimal "foreign" guest for comparing VMMs: a few instructions in a PVH ELF that any VMM
//! with PVH support boots the same way, so the benchmark measures the VMMs, not a guest that
//! knows one of them.
//!
//! Entered in 32-bit protected mode at 1 MiB (the PVH contract: flat segments, paging off),
//! it writes one line to the 16550 at 0x3f8, then tries every VMM's way out in turn: QEMU's
//! isa-debug-exit (0x10 to port 0xf4), ACPI S5 through the sleep control register at 0x600
//! (Cloud Hypervisor, Keel) and an i8042 reset pulse (0xfe to port 0x64; Firecracker, Keel),
//! then halts. Writes to ports a VMM does not decode are ignored, so each VMM ends it at its
//! own step.

use std::io;
use std::path::Path;

/// What the guest prints, so a benchmark can tell that it ran.
pub const FOREIGN_GUEST_LINE: &str = "keel-foreign-guest: hello\r\n";

/// Load and entry address (1 MiB).
const LOAD_ADDR: u64 = 0x10_0000;
/// File offset of the code (page-aligned, like the load address).
const CODE_OFFSET: u64 = 0x1000;
/// Xen ELF note type of the PVH 32-bit entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The machine code, with the message appended; `msg` is patched with its address.
fn code() -> Vec<u8> {
    let mut code: Vec<u8> = Vec::new();
    // mov esi, <msg>           (patched below)
    code.extend_from_slice(&[0xbe, 0, 0, 0, 0]);
    // mov ecx, <len>
    code.push(0xb9);
    code.extend_from_slice(&(FOREIGN_GUEST_LINE.len() as u32).to_le_bytes());
    // mov dx, 0x3f8
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]);
    // next: mov al, [esi]; out dx, al; inc esi; dec ecx; jnz next
    code.extend_from_slice(&[0x8a, 0x06, 0xee, 0x46, 0x49, 0x75, 0xf9]);
    // mov al, 0x10; out 0xf4, al            (QEMU isa-debug-exit)
    code.extend_from_slice(&[0xb0, 0x10, 0xe6, 0xf4]);
    // mov dx, 0x600; mov al, 0x34; out dx, al  (ACPI sleep control: SLP_EN | S5)
    code.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee]);
    // mov al, 0xfe; out 0x64, al            (i8042: pulse the reset line)
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]);
    // halt: hlt; jmp halt
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]);
    let msg = LOAD_ADDR + code.len() as u64;
    code[1..5].copy_from_slice(&(msg as u32).to_le_bytes());
    code.extend_from_slice(FOREIGN_GUEST_LINE.as_bytes());
    code
}

/// The ELF image: an ELF64 header, a `PT_LOAD` of the code at 1 MiB and a `PT_NOTE` with the
/// PVH entry note.
pub fn foreign_guest_image() -> Vec<u8> {
    let code = code();
    let phoff = 64u64;
    let phnum = 2u16;
    let note_offset = phoff + 56 * u64::from(phnum);
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz ("Xen\0")
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());

    let mut elf = Vec::new();
    // e_ident: ELF, 64-bit, little-endian, version 1, System V.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&phoff.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&phnum.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx

    let mut phdr = |p_type: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64| {
        elf.extend_from_slice(&p_type.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&offset.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        elf.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
        elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
        elf.extend_from_slice(&align.to_le_bytes());
    };
    // PT_LOAD, R+X.
    phdr(1, 5, CODE_OFFSET, LOAD_ADDR, code.len() as u64, 0x1000);
    // PT_NOTE.
    phdr(4, 4, note_offset, 0, note.len() as u64, 4);
    elf.extend_from_slice(&note);
    elf.resize(CODE_OFFSET as usize, 0);
    elf.extend_from_slice(&code);
    elf
}

/// Writes the image to `path`.
pub fn write_foreign_guest(path: &Path) -> io::Result<()> {
    std::fs::write(path, foreign_guest_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_has_the_pvh_note_and_the_message_address_patched() {
        let image = foreign_guest_image();
        assert_eq!(&image[..4], b"\x7fELF");
        let note = &image[64 + 112..64 + 112 + 20];
        assert_eq!(&note[12..16], b"Xen\0");
        assert_eq!(
            u32::from_le_bytes(note[16..20].try_into().unwrap()),
            0x10_0000
        );
        let code = &image[CODE_OFFSET as usize..];
        let msg = u32::from_le_bytes(code[1..5].try_into().unwrap()) as usize;
        let at = msg - LOAD_ADDR as usize;
        assert_eq!(&code[at..], FOREIGN_GUEST_LINE.as_bytes());
    }
}
