//! Ending the VM, and the deliberate faults of `keel.fault`.
//!
//! VMMs differ in what ends a VM, so the guest tries the methods of its [`ExitPlan`] in order,
//! announcing each with `exit via=<name>`. A method that works never returns to the guest; after
//! one that does not, the guest waits [`GRACE_TICKS`] (interrupts enabled, so the VMM can stop the
//! vCPU) and tries the next. The plan lives in an atomic so that panics and exceptions, which may
//! happen before the command line is parsed, use it too.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use keel_test_guest::cmdline::{ExitMethod, ExitPlan};

use crate::console::report_urgent;
use crate::cpu::{halt_forever, outb, spin_for_ticks};

/// i8042 command port; command 0xfe pulses the CPU reset line.
const I8042_COMMAND: (u16, u8) = (0x64, 0xfe);
/// QEMU's isa-debug-exit at iobase 0xf4; QEMU exits with status (value << 1) | 1 = 33.
const DEBUG_EXIT: (u16, u8) = (0xf4, 0x10);
/// Cloud Hypervisor's ACPI sleep control register; SLP_EN | SLP_TYP=5 (S5, soft off).
const ACPI_SLEEP_CONTROL: (u16, u8) = (0x600, 0x34);

/// TSC ticks to wait after a method that did not end the VM.
const GRACE_TICKS: u64 = 5_000_000;

/// The plan in force, packed by [`ExitPlan::to_bits`]; 0 until [`set_plan`] is called.
static PLAN: AtomicU32 = AtomicU32::new(0);

/// Makes `plan` the plan for every later exit.
pub fn set_plan(plan: ExitPlan) {
    PLAN.store(plan.to_bits(), Ordering::Relaxed);
}

/// Ends the VM following the plan (the default plan if none was set), then halts for good.
pub fn exit_vm() -> ! {
    let bits = PLAN.load(Ordering::Relaxed);
    let plan = if bits == 0 {
        ExitPlan::default()
    } else {
        ExitPlan::from_bits(bits)
    };
    for method in plan.methods() {
        report_urgent!("exit via={}", method.name());
        let (port, value) = match method {
            ExitMethod::Reset => I8042_COMMAND,
            ExitMethod::Debug => DEBUG_EXIT,
            ExitMethod::S5 => ACPI_SLEEP_CONTROL,
            ExitMethod::Halt => halt_forever(),
        };
        outb(port, value);
        spin_for_ticks(GRACE_TICKS);
    }
    halt_forever()
}

/// Powers the VM off through ACPI S5, as an OS does when its power button is pressed; halts
/// if the VMM does not end the VM.
pub fn power_off() -> ! {
    report_urgent!("exit via={}", ExitMethod::S5.name());
    let (port, value) = ACPI_SLEEP_CONTROL;
    outb(port, value);
    spin_for_ticks(GRACE_TICKS);
    halt_forever()
}

/// Shuts the vCPU down with a triple fault: with an empty IDT, `ud2` raises #UD, which cannot be
/// delivered (#GP), which cannot be delivered either (#DF), which ends in a shutdown.
pub fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct DescriptorTablePointer {
        limit: u16,
        base: u64,
    }
    let empty = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: deliberately ends execution on this vCPU; no code runs after the fault, so losing the
    // IDT breaks nothing that could observe it.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) &raw const empty, options(noreturn, nostack));
    }
}

/// Raises #UD with the IDT in place: the guest's exception handler reports it and exits.
pub fn invalid_opcode() -> ! {
    // SAFETY: ud2 transfers control to the #UD handler, which never returns (it ends the VM).
    unsafe { asm!("ud2", options(noreturn, nostack)) }
}
