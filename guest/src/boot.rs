//! Entry points and the static machine state they load: GDT, page tables, IDT, boot stack, AP
//! trampoline.
//!
//! Everything up to the first `sti` runs with interrupts disabled, and on nested KVM without
//! VMX/SVM (see `README.md`) such code is executed instruction by instruction by KVM's emulator. So
//! this file keeps that path to a few dozen instructions without a single loop: the page tables,
//! the GDT and the whole IDT are assembled as static data, and each entry only loads registers
//! before enabling interrupts and calling Rust.
//!
//! Entry points (all end in [`crate::keel_main`] or [`crate::smp::ap_main`]):
//! - `pvh_entry32` — PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`. Named by the
//!   `XEN_ELFNOTE_PHYS32_ENTRY` note.
//! - `linux64_entry` — Linux 64-bit boot protocol: long mode on the VMM's page tables and GDT,
//!   `rsi` = zero page. The ELF entry point (`e_entry`).
//! - `ap_trampoline_start` — application processors, real mode at `AP_TRAMPOLINE_ADDR` (copied
//!   there by the BSP before it sends the startup IPIs).
//!
//! This file does not decide anything: parsing, printing and policy live in Rust.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64};

/// 64-bit code segment selector (GDT entry 1).
pub const CODE64_SELECTOR: u16 = 0x08;
/// Flat data segment selector (GDT entry 2).
pub const DATA_SELECTOR: u16 = 0x10;
/// 32-bit code segment selector (GDT entry 3), used by the AP trampoline on its way to long mode.
pub const CODE32_SELECTOR: u16 = 0x18;

/// Size of the BSP's boot stack, part of the image.
pub const BSP_STACK_SIZE: usize = 32 * 1024;

/// Physical address the AP trampoline is copied to; startup IPI vector `AP_TRAMPOLINE_ADDR >> 12`.
pub const AP_TRAMPOLINE_ADDR: u64 = 0x10000;

/// log2 of the size of each AP's stack (8 KiB).
pub const AP_STACK_SHIFT: u32 = 13;
/// Size of each AP's stack.
pub const AP_STACK_SIZE: u64 = 1 << AP_STACK_SHIFT;
/// The most APs that get a stack; later ones halt in the trampoline (xAPIC IDs 0..=254 minus the
/// BSP).
pub const MAX_APS: u32 = keel_test_guest::cmdline::MAX_CPUS - 1;

/// Value of the `protocol` argument of [`crate::keel_main`] for each entry (see
/// `BootProtocol::from_raw`).
const PROTOCOL_PVH: u32 = keel_test_guest::bootinfo::BootProtocol::Pvh as u32;
const PROTOCOL_LINUX64: u32 = keel_test_guest::bootinfo::BootProtocol::Linux64 as u32;

/// Tickets handed out to APs in arrival order; an AP's ticket picks its stack.
pub static AP_TICKETS: AtomicU32 = AtomicU32::new(0);

/// Lowest address of the AP stacks: the AP with ticket `t` gets the `AP_STACK_SIZE` bytes from
/// `base + t * AP_STACK_SIZE`. Set by the BSP before it starts the APs.
pub static AP_STACKS_BASE: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static __image_end: u8;
}

/// The AP trampoline as linked into the image, to be copied to [`AP_TRAMPOLINE_ADDR`].
pub fn ap_trampoline() -> &'static [u8] {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    // SAFETY: both symbols are labels in the same section of the image (below), start before end,
    // and the bytes between them are code that nothing writes.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// One past the last byte of the loaded image (page-aligned).
pub fn image_end() -> u64 {
    (&raw const __image_end) as u64
}

// The PVH entry note: Xen ELF note type 18 (XEN_ELFNOTE_PHYS32_ENTRY), whose descriptor is the
// 32-bit physical address of the PVH entry.
global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry32
    .popsection
    "#
);

// The entries: the bootstrap processor's two, then the application processors' (one block, because
// they share the ENABLE_LONG_MODE macro).
global_asm!(
    r#"
    // Turns on long mode from 32-bit protected mode with paging off: PAE, CR3 = the static page
    // tables, EFER.LME, then CR0.PG (with caching enabled: CD and NW cleared, as an AP starts with
    // both set). The caller far-jumps to 64-bit code right after.
    .macro ENABLE_LONG_MODE
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, offset boot_pml4
        mov cr3, eax
        mov ecx, 0xC0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        and eax, 0x9fffffff
        or eax, 0x80000001
        mov cr0, eax
    .endm

    .pushsection .text.boot, "ax"

    // PVH: 32-bit protected mode, paging off, flat segments, interrupts off, ebx = hvm_start_info.
    // No stack is promised; none is used before bsp_common64 sets one.
    .code32
    .global pvh_entry32
pvh_entry32:
    lgdt [gdt_pointer]
    ENABLE_LONG_MODE
    // jmp far CODE64:pvh_entry64, encoded by hand (a 32-bit absolute ljmp the linker can relocate).
    .byte 0xea
    .long pvh_entry64
    .word {code64}
    .code64
pvh_entry64:
    mov edi, ebx
    mov esi, {protocol_pvh}
    jmp bsp_common64

    // Linux 64-bit boot protocol: long mode, the VMM's GDT and page tables (which map at least the
    // first GiB, where this image lies), interrupts off, rsi = zero page. No stack is promised.
    .global linux64_entry
linux64_entry:
    lea rsp, [rip + bsp_stack_top]
    lgdt [rip + gdt_pointer]
    // Reload CS from our GDT with a far return.
    push {code64}
    lea rax, [rip + 2f]
    push rax
    retfq
2:
    lea rax, [rip + boot_pml4]
    mov cr3, rax
    mov rdi, rsi
    mov esi, {protocol_linux64}
    // Fall through.

    // Both entries: edi/rdi = boot information address, esi = protocol.
bsp_common64:
    mov ax, {data}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + bsp_stack_top]
    cld
    lidt [rip + idt_pointer]
    // Mask both 8259 PICs so that no legacy interrupt arrives, then leave the emulator behind.
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    sti
    call {keel_main}
3:
    cli
    hlt
    jmp 3b

    .popsection

    // The application processors' way from the startup IPI to Rust.
    .pushsection .text.trampoline, "ax"

    // Real mode at CS:IP = (AP_TRAMPOLINE_ADDR >> 4):0, interrupts off. Position independent: the
    // only absolute addresses are those of the GDT and ap_entry32 in the image.
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    mov ax, cs
    mov ds, ax
    // lgdt with a 32-bit operand, [ds:ap_gdt_pointer - ap_trampoline_start]: 66 0f 01 16 disp16.
    .byte 0x66, 0x0f, 0x01, 0x16
    .word ap_gdt_pointer - ap_trampoline_start
    mov eax, cr0
    or al, 1
    mov cr0, eax
    // jmp far CODE32:ap_entry32 with a 32-bit offset: 66 ea ptr32 sel16.
    .byte 0x66, 0xea
    .long ap_entry32
    .word {code32}
    .balign 4
ap_gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt
    .global ap_trampoline_end
ap_trampoline_end:

    .code32
ap_entry32:
    mov ax, {data}
    mov ds, ax
    mov es, ax
    mov ss, ax
    ENABLE_LONG_MODE
    .byte 0xea
    .long ap_entry64
    .word {code64}

    .code64
ap_entry64:
    lidt [rip + idt_pointer]
    mov eax, 1
    lock xadd dword ptr [rip + {tickets}], eax
    cmp eax, {max_aps}
    jae 4f
    // rsp = AP_STACKS_BASE + (ticket + 1) * AP_STACK_SIZE
    lea ecx, [eax + 1]
    shl rcx, {stack_shift}
    add rcx, qword ptr [rip + {stacks_base}]
    mov rsp, rcx
    cld
    sti
    call {ap_main}
4:
    cli
    hlt
    jmp 4b

    .popsection
    "#,
    code32 = const CODE32_SELECTOR,
    code64 = const CODE64_SELECTOR,
    data = const DATA_SELECTOR,
    protocol_pvh = const PROTOCOL_PVH,
    protocol_linux64 = const PROTOCOL_LINUX64,
    keel_main = sym crate::keel_main,
    tickets = sym AP_TICKETS,
    max_aps = const MAX_APS,
    stack_shift = const AP_STACK_SHIFT,
    stacks_base = sym AP_STACKS_BASE,
    ap_main = sym crate::smp::ap_main,
);

// GDT, IDT and the interrupt stubs.
//
// The IDT is static data: each gate stores its handler address split into 16-bit halves, which no
// assembler relocation can express for an arbitrary label. Instead all stubs sit in 16-byte slots
// from `isr_stubs` (which the linker script keeps inside one 64 KiB window) and the linker script
// defines `isr_stubs_lo` and `isr_stubs_hi`, the halves of `isr_stubs`; slot n's low half is
// `isr_stubs_lo + 16 * n`.
//
// Slots 0-31: exceptions (trap gates: the handler runs with interrupts as they were, so outside the
// emulator wherever the CPU runs the guest natively), each pushing an error code (0 if the CPU
// pushes none) and the vector. Slot 32: any other vector
// 32-254, which sends the local APIC an EOI and returns. Slot 33: the spurious vector 255, which
// returns without EOI.
global_asm!(
    r#"
    .macro ISR_NO_ERROR_CODE vector
        .balign 16
        push 0
        push \vector
        jmp isr_exception_common
    .endm
    .macro ISR_ERROR_CODE vector
        .balign 16
        push \vector
        jmp isr_exception_common
    .endm
    .macro IDT_GATE slot, type
        .word isr_stubs_lo + 16 * \slot
        .word {code64}
        .byte 0
        .byte \type
        .word isr_stubs_hi
        .long 0
        .long 0
    .endm

    .pushsection .text.isr, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    ISR_NO_ERROR_CODE 0
    ISR_NO_ERROR_CODE 1
    ISR_NO_ERROR_CODE 2
    ISR_NO_ERROR_CODE 3
    ISR_NO_ERROR_CODE 4
    ISR_NO_ERROR_CODE 5
    ISR_NO_ERROR_CODE 6
    ISR_NO_ERROR_CODE 7
    ISR_ERROR_CODE 8
    ISR_NO_ERROR_CODE 9
    ISR_ERROR_CODE 10
    ISR_ERROR_CODE 11
    ISR_ERROR_CODE 12
    ISR_ERROR_CODE 13
    ISR_ERROR_CODE 14
    ISR_NO_ERROR_CODE 15
    ISR_NO_ERROR_CODE 16
    ISR_ERROR_CODE 17
    ISR_NO_ERROR_CODE 18
    ISR_NO_ERROR_CODE 19
    ISR_NO_ERROR_CODE 20
    ISR_ERROR_CODE 21
    ISR_NO_ERROR_CODE 22
    ISR_NO_ERROR_CODE 23
    ISR_NO_ERROR_CODE 24
    ISR_NO_ERROR_CODE 25
    ISR_NO_ERROR_CODE 26
    ISR_NO_ERROR_CODE 27
    ISR_NO_ERROR_CODE 28
    ISR_ERROR_CODE 29
    ISR_ERROR_CODE 30
    ISR_NO_ERROR_CODE 31
    .balign 16
    .global isr_eoi
isr_eoi:
    push rax
    mov eax, {lapic_eoi}
    mov dword ptr [rax], 0
    pop rax
    iretq
    .balign 16
    .global isr_spurious
isr_spurious:
    iretq
    .balign 16
    .global isr_stubs_end
isr_stubs_end:

    // Stack: vector, error code, then the CPU's frame (rip, cs, rflags, rsp, ss).
isr_exception_common:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    and rsp, -16
    call {exception}
5:
    cli
    hlt
    jmp 5b
    .popsection

    .pushsection .data.descriptors, "aw"
    // Accessed bits preset, so loading a selector never writes to the GDT.
    .balign 16
    .global gdt
gdt:
    .quad 0
    .quad 0x00af9b000000ffff    // CODE64_SELECTOR: 64-bit code
    .quad 0x00cf93000000ffff    // DATA_SELECTOR: flat 4 GiB data
    .quad 0x00cf9b000000ffff    // CODE32_SELECTOR: flat 4 GiB 32-bit code
    .global gdt_end
gdt_end:
    // Read as limit + 32-bit base by the 32-bit lgdt, limit + 64-bit base by the 64-bit one.
    .balign 8
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .balign 16
idt:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        IDT_GATE \vector, 0x8f
    .endr
    .rept 255 - 32
        IDT_GATE 32, 0x8e
    .endr
    IDT_GATE 33, 0x8e
idt_end:
    .balign 8
idt_pointer:
    .word idt_end - idt - 1
    .quad idt
    .popsection
    "#,
    code64 = const CODE64_SELECTOR,
    lapic_eoi = const crate::smp::LAPIC_EOI_ADDR,
    exception = sym crate::interrupts::exception_entry,
);

// Page tables identity-mapping 0-4 GiB with 2 MiB pages (PML4 -> 1 PDPT -> 4 page directories), and
// the boot stack. Both are file-backed data of the image. The top GiB (the 32-bit MMIO hole with
// the local APIC) is mapped uncached.
global_asm!(
    r#"
    .pushsection .data.pagetables, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3           // present, writable
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x0003
    .quad boot_pd + 0x1003
    .quad boot_pd + 0x2003
    .quad boot_pd + 0x3003
    .fill 508, 8, 0
boot_pd:
    .set boot_pd_index, 0
    .rept 3 * 512
        .quad (boot_pd_index << 21) | 0x83     // present, writable, 2 MiB page
        .set boot_pd_index, boot_pd_index + 1
    .endr
    .rept 512
        .quad (boot_pd_index << 21) | 0x9b     // ... and cache-disabled, write-through
        .set boot_pd_index, boot_pd_index + 1
    .endr
    .popsection

    .pushsection .bootstack, "aw"
    .balign 16
bsp_stack_bottom:
    .fill {bsp_stack_size}, 1, 0
    .global bsp_stack_top
bsp_stack_top:
    .popsection
    "#,
    bsp_stack_size = const BSP_STACK_SIZE,
);
