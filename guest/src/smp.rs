//! Starting the application processors (APs) and counting those that come online.
//!
//! The BSP copies the real-mode trampoline (`boot.rs`) to [`AP_TRAMPOLINE_ADDR`], then broadcasts
//! INIT and two startup IPIs to all other processors through the xAPIC. Each AP climbs to long mode
//! on the BSP's page tables, takes a stack from the area after the image (by arrival ticket),
//! enables interrupts, prints its `ap` line and parks in `sti; hlt`. The BSP waits for the expected
//! number, or, when no number is known, until no AP has arrived for a while.
//!
//! Only the xAPIC (MMIO at 0xfee00000) is supported; x2APIC-only set-ups are reported as failures.

use core::fmt;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use keel_test_guest::bootinfo::BootInfo;

use crate::boot::{self, AP_STACKS_BASE, AP_STACK_SIZE, AP_TRAMPOLINE_ADDR, MAX_APS};
use crate::console::with_console;
use crate::cpu::{self, cpuid, rdmsr, rdtsc, spin_for_ticks};

/// Physical (and, identity-mapped, virtual) base of the xAPIC registers.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// The EOI register, written by the interrupt stub in `boot.rs`.
pub const LAPIC_EOI_ADDR: u64 = LAPIC_BASE + 0xb0;

/// Local APIC ID register (ID in bits 31:24).
const LAPIC_ID: u64 = 0x20;
/// Spurious interrupt vector register.
const LAPIC_SPURIOUS: u64 = 0xf0;
/// Interrupt command register, low half (writing it sends the IPI).
const LAPIC_ICR_LOW: u64 = 0x300;
/// Interrupt command register, high half (destination).
const LAPIC_ICR_HIGH: u64 = 0x310;

/// SVR: APIC software enable.
const SVR_APIC_ENABLE: u32 = 1 << 8;
/// SVR: the spurious vector (the IDT returns from it without EOI).
const SPURIOUS_VECTOR: u32 = 0xff;
/// ICR: delivery mode INIT.
const ICR_INIT: u32 = 0b101 << 8;
/// ICR: delivery mode start-up; the vector is the trampoline's page number.
const ICR_STARTUP: u32 = 0b110 << 8;
/// ICR: delivery still pending.
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// ICR: level assert (required for INIT and start-up IPIs).
const ICR_ASSERT: u32 = 1 << 14;
/// ICR: destination shorthand "all excluding self".
const ICR_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;

/// IA32_APIC_BASE MSR.
const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE: the APIC is globally enabled.
const APIC_BASE_ENABLED: u64 = 1 << 11;
/// IA32_APIC_BASE: x2APIC mode (the MMIO interface is off).
const APIC_BASE_X2APIC: u64 = 1 << 10;
/// IA32_APIC_BASE: the base address bits.
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// CPUID.1:EDX: the processor has a local APIC.
const CPUID_1_EDX_APIC: u32 = 1 << 9;

/// TSC ticks between INIT and the first start-up IPI, and between the two start-up IPIs. Virtual
/// local APICs do not need the 10 ms of the MP specification; this only keeps the IPIs apart.
const IPI_GAP_TICKS: u64 = 200_000;
/// How long to wait for the expected number of APs.
const EXPECTED_WAIT_TICKS: u64 = 2_000_000_000;
/// With no expected number: give up once no AP has arrived for this long.
const QUIET_WAIT_TICKS: u64 = 300_000_000;
/// Polls of the ICR delivery status before an IPI counts as sent anyway.
const MAX_ICR_POLLS: u32 = 100_000;

/// APs that printed their `ap ... online` line.
static APS_ONLINE: AtomicU32 = AtomicU32::new(0);

/// Why the APs could not be started.
#[derive(Clone, Copy, Debug)]
pub enum SmpError {
    /// CPUID says there is no local APIC.
    NoLocalApic,
    /// IA32_APIC_BASE says the local APIC is disabled, in x2APIC mode or not at [`LAPIC_BASE`].
    UnusableLocalApic {
        /// The value of IA32_APIC_BASE.
        apic_base_msr: u64,
    },
    /// The trampoline page or the AP stacks are not RAM.
    NotRam {
        /// What should be there.
        what: &'static str,
        /// First byte.
        addr: u64,
        /// Length.
        len: u64,
    },
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLocalApic => write!(f, "no local APIC (CPUID.1:EDX[9] clear)"),
            Self::UnusableLocalApic { apic_base_msr } => write!(
                f,
                "IA32_APIC_BASE={apic_base_msr:#x}: need an enabled xAPIC at {LAPIC_BASE:#x}"
            ),
            Self::NotRam { what, addr, len } => {
                write!(f, "{what} [{addr:#x}, {:#x}) is not RAM", addr + len)
            }
        }
    }
}

/// How many vCPUs should come online: `keel.cpus` if given, else CPUID leaf 0xB subleaf 1 EBX[15:0]
/// (logical processors in the package) if that leaf exists and is nonzero, else unknown.
pub fn expected_cpus(from_cmdline: Option<u32>) -> Option<u32> {
    from_cmdline.or_else(|| {
        let max_leaf = cpuid(0, 0).eax;
        let logical = cpuid(0xb, 1).ebx & 0xffff;
        (max_leaf >= 0xb && logical != 0).then_some(logical)
    })
}

/// Starts all APs and waits for them (see the module documentation); returns how many vCPUs are
/// online, the BSP included.
pub fn start_application_processors(
    boot: &BootInfo,
    expected: Option<u32>,
) -> Result<u32, SmpError> {
    check_local_apic()?;
    let trampoline = boot::ap_trampoline();
    require_ram(boot, "AP trampoline page", AP_TRAMPOLINE_ADDR, 0x1000)?;
    let stacks = boot::image_end();
    require_ram(
        boot,
        "AP stacks",
        stacks,
        u64::from(MAX_APS) * AP_STACK_SIZE,
    )?;

    AP_STACKS_BASE.store(stacks, Ordering::Relaxed);
    // SAFETY: the destination page is RAM (checked above) that the VMM leaves free for this
    // purpose, the trampoline fits in it (asserted by the linker script), and the boot information
    // was copied out before.
    unsafe {
        core::ptr::copy_nonoverlapping(
            trampoline.as_ptr(),
            AP_TRAMPOLINE_ADDR as *mut u8,
            trampoline.len(),
        );
    }
    // The APs read the trampoline and the stack base as soon as the IPIs arrive.
    fence(Ordering::SeqCst);

    Lapic::write(LAPIC_SPURIOUS, SVR_APIC_ENABLE | SPURIOUS_VECTOR);
    Lapic::send_ipi(ICR_ALL_EXCLUDING_SELF | ICR_ASSERT | ICR_INIT);
    spin_for_ticks(IPI_GAP_TICKS);
    let startup =
        ICR_ALL_EXCLUDING_SELF | ICR_ASSERT | ICR_STARTUP | (AP_TRAMPOLINE_ADDR >> 12) as u32;
    Lapic::send_ipi(startup);
    spin_for_ticks(IPI_GAP_TICKS);
    Lapic::send_ipi(startup);

    Ok(1 + wait_for_aps(expected.map(|cpus| cpus.saturating_sub(1))))
}

/// Where an AP arrives in Rust, on its own stack with interrupts enabled (called from `boot.rs`).
pub extern "C" fn ap_main() -> ! {
    let apic_id = Lapic::id();
    with_console(|console| {
        console.line(format_args!("ap apic_id={apic_id} online"));
        // Counted while the console is still held, so the BSP's summary line comes after every AP
        // line.
        APS_ONLINE.fetch_add(1, Ordering::Release);
    });
    loop {
        cpu::wait_for_interrupt();
    }
}

/// Waits until `expected` APs are online (or the timeout passes), or with no expectation until none
/// has arrived for [`QUIET_WAIT_TICKS`]; returns the number online.
fn wait_for_aps(expected: Option<u32>) -> u32 {
    let start = rdtsc();
    let mut seen = 0;
    let mut last_arrival = start;
    loop {
        let online = APS_ONLINE.load(Ordering::Acquire);
        let now = rdtsc();
        let done = match expected {
            Some(expected) => online >= expected || now.wrapping_sub(start) >= EXPECTED_WAIT_TICKS,
            None => {
                if online != seen {
                    seen = online;
                    last_arrival = now;
                }
                now.wrapping_sub(last_arrival) >= QUIET_WAIT_TICKS
            }
        };
        if done {
            return online;
        }
        core::hint::spin_loop();
    }
}

fn check_local_apic() -> Result<(), SmpError> {
    if cpuid(1, 0).edx & CPUID_1_EDX_APIC == 0 {
        return Err(SmpError::NoLocalApic);
    }
    let apic_base_msr = rdmsr(IA32_APIC_BASE);
    let usable = apic_base_msr & APIC_BASE_ENABLED != 0
        && apic_base_msr & APIC_BASE_X2APIC == 0
        && apic_base_msr & APIC_BASE_ADDRESS == LAPIC_BASE;
    if !usable {
        return Err(SmpError::UnusableLocalApic { apic_base_msr });
    }
    Ok(())
}

fn require_ram(boot: &BootInfo, what: &'static str, addr: u64, len: u64) -> Result<(), SmpError> {
    if boot.is_ram(addr, len) {
        Ok(())
    } else {
        Err(SmpError::NotRam { what, addr, len })
    }
}

/// The current vCPU's local APIC in xAPIC mode (identity-mapped MMIO, uncached).
struct Lapic;

impl Lapic {
    fn read(register: u64) -> u32 {
        // SAFETY: the xAPIC page is mapped (static page tables cover 0-4 GiB) and the register is a
        // 32-bit, 16-byte-aligned MMIO register; reading it has no side effect.
        unsafe { core::ptr::read_volatile((LAPIC_BASE + register) as *const u32) }
    }

    fn write(register: u64, value: u32) {
        // SAFETY: as for `read`; the writes the guest makes (SVR, ICR) touch no memory of this
        // program.
        unsafe { core::ptr::write_volatile((LAPIC_BASE + register) as *mut u32, value) }
    }

    /// The xAPIC ID of the calling vCPU.
    fn id() -> u32 {
        Self::read(LAPIC_ID) >> 24
    }

    /// Sends an IPI (the destination is in the shorthand bits of `command`) and waits until it is
    /// delivered.
    fn send_ipi(command: u32) {
        Self::write(LAPIC_ICR_HIGH, 0);
        Self::write(LAPIC_ICR_LOW, command);
        for _ in 0..MAX_ICR_POLLS {
            if Self::read(LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}
