//! Thin wrappers over the x86 instructions the guest needs: port I/O, TSC, CPUID, MSRs, halting.
//!
//! Each wrapper is one instruction with no memory effects beyond what it names. Nothing here may
//! emit an instruction that KVM's emulator lacks (see `check-insns.sh`).

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output has no effect on this program's memory; which ports are written is the
    // caller's policy, and every port the guest uses belongs to a device the guest owns.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading the ports the guest uses has no side effect on memory.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags)) }
    value
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nostack, preserves_flags)) }
}

/// Writes a 32-bit doubleword to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

/// Reads a 32-bit doubleword from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags))
    }
    value
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the counter; user-mode restrictions (CR4.TSD) do not apply in ring
    // 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Spins (with `pause`, interrupts as they are) for at least `ticks` TSC ticks.
pub fn spin_for_ticks(ticks: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// The registers CPUID returns that the guest uses (ECX is dropped).
#[derive(Clone, Copy, Debug)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes CPUID for `leaf` and `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, edx): (u32, u64, u32);
    // SAFETY: CPUID only reads identification registers. rbx is reserved by LLVM, so it is saved in
    // a scratch register around the instruction.
    unsafe {
        asm!(
            "mov {saved:r}, rbx",
            "cpuid",
            "xchg {saved:r}, rbx",
            saved = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => _,
            out("edx") edx,
            options(nostack, preserves_flags, nomem),
        );
    }
    let ebx = ebx as u32;
    Cpuid { eax, ebx, edx }
}

/// Reads a model-specific register; the caller names an MSR that exists on every x86-64 CPU.
pub fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: reading an architectural MSR has no side effects; callers only pass such MSRs, so no
    // #GP.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nostack, nomem))
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// Enables interrupts and halts until one arrives (`sti; hlt`, atomically: no wake-up is lost in
/// between).
pub fn wait_for_interrupt() {
    // SAFETY: the IDT handles every vector, so enabling interrupts is sound; hlt only waits.
    unsafe { asm!("sti", "hlt", options(nostack, nomem)) }
}

/// Disables interrupts and halts for good (`cli; hlt`; NMIs and SMIs come back to the loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops this vCPU; nothing is left to run on it.
        unsafe { asm!("cli", "hlt", options(nostack, nomem)) }
    }
}
