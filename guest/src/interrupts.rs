//! What happens when the CPU raises an exception: a `FAIL exception` line, then the exit plan.
//!
//! The IDT and the stubs that lead here are static (`boot.rs`); this is the Rust end of the 32
//! exception vectors. Interrupts (vectors 32-255) never reach Rust: their stubs only acknowledge
//! them.

use crate::console::report_urgent;
use crate::exit::exit_vm;

/// Page fault: CR2 holds the faulting address.
const PAGE_FAULT: u64 = 14;

/// Called by `isr_exception_common` with the vector, the error code (0 if the CPU pushes none) and
/// the faulting instruction's address.
pub extern "C" fn exception_entry(vector: u64, error_code: u64, rip: u64) -> ! {
    if vector == PAGE_FAULT {
        let cr2: u64;
        // SAFETY: reading CR2 in ring 0 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
        };
        report_urgent!("FAIL exception {vector} rip={rip:#x} error={error_code:#x} cr2={cr2:#x}");
    } else {
        report_urgent!("FAIL exception {vector} rip={rip:#x} error={error_code:#x}");
    }
    exit_vm()
}
