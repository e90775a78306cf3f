//! The ACPI power button, as `keel.power_button` watches it.
//!
//! The guest does no ACPI, so it does not take the Generic Event Device's interrupt or run
//! its `_EVT` method: it reads the GED's event register (port 0x610, Keel's layout; reading
//! clears it) now and then while it ticks or echoes, and when the power-button bit is set it
//! does what an OS does on that button: power off through ACPI S5.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::console::report;
use crate::cpu::{inl, rdtsc};
use crate::exit;

/// Keel's GED event register.
const GED_EVENTS_PORT: u16 = 0x610;
/// Power-button bit in it.
const GED_POWER_BUTTON: u32 = 1;
/// TSC ticks between two reads of the register (each read is a VM exit).
const POLL_TICKS: u64 = 2_000_000;

static WATCHING: AtomicBool = AtomicBool::new(false);

/// Starts watching the power button.
pub fn watch() {
    WATCHING.store(true, Ordering::Relaxed);
}

/// Reads the event register and powers off if the button was pressed. Returns at once when
/// the button is not watched.
pub fn check() {
    if !WATCHING.load(Ordering::Relaxed) {
        return;
    }
    if inl(GED_EVENTS_PORT) & GED_POWER_BUTTON != 0 {
        report!("power button");
        exit::power_off()
    }
}

/// Spins for at least `ticks` TSC ticks, checking the power button every [`POLL_TICKS`] and
/// once at the end.
pub fn spin_checking(ticks: u64) {
    let start = rdtsc();
    let mut last_check = start;
    loop {
        let now = rdtsc();
        if now.wrapping_sub(start) >= ticks {
            check();
            return;
        }
        if now.wrapping_sub(last_check) >= POLL_TICKS {
            check();
            last_check = now;
        }
        core::hint::spin_loop();
    }
}

/// Whether [`POLL_TICKS`] passed since `*last` (and if so, moves `*last` to now).
pub fn due(last: &mut u64) -> bool {
    let now = rdtsc();
    if now.wrapping_sub(*last) >= POLL_TICKS {
        *last = now;
        true
    } else {
        false
    }
}
