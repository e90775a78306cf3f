//! The legacy port-I/O devices a guest reaches with `in`/`out`: the 16550 UART, the i8042
//! controller, the CMOS RTC, the ACPI power-management registers and the Generic Event Device. The bytes are a sequence
//! of register accesses (device, direction, offset, width, value) and the RTC's clock reading.

use devices::bus::BusDevice;
use devices::legacy::{AcpiPm, Clock, CmosRtc, EventFdTrigger, Ged, Serial, I8042};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Most accesses one input makes.
const MAX_ACCESSES: usize = 4096;

/// A clock that reads whatever the input says (any i64, including before 1970 and far future).
struct FuzzClock(i64);

impl Clock for FuzzClock {
    fn unix_seconds(&self) -> i64 {
        self.0
    }
}

fn trigger() -> Option<EventFdTrigger> {
    EventFd::new(EFD_NONBLOCK).ok().map(EventFdTrigger::new)
}

/// Drives the five legacy devices with the accesses the input encodes.
pub fn legacy_registers(data: &[u8]) {
    let (clock, ops) = match data.split_first_chunk::<8>() {
        Some((clock, ops)) => (i64::from_le_bytes(*clock), ops),
        None => (0, data),
    };
    let (Some(irq), Some(reset), Some(power_off), Some(pm_reset), Some(ged_irq)) =
        (trigger(), trigger(), trigger(), trigger(), trigger())
    else {
        return;
    };
    let Ok(serial) = Serial::new(irq, std::io::sink()) else {
        return;
    };
    let mut ged = Ged::new(ged_irq);
    // Events pending from the host side (the power button), as the guest would find them.
    let _ = ged.notify(u32::from(clock as u8));
    let mut devices: [Box<dyn BusDevice>; 5] = [
        Box::new(serial),
        Box::new(I8042::new(reset)),
        Box::new(CmosRtc::new(FuzzClock(clock))),
        Box::new(AcpiPm::new(power_off, pm_reset)),
        Box::new(ged),
    ];
    // 4 bytes an access: device (low bits) and direction (top bit), offset, width, value.
    for access in ops.chunks_exact(4).take(MAX_ACCESSES) {
        let device = &mut devices[usize::from(access[0] & 0x7f) % 5];
        let offset = u64::from(access[1]);
        // Widths 0..=8: zero-length and odd widths are what a broken bus could hand a device.
        let width = usize::from(access[2] % 9);
        let value = [access[3]; 8];
        if access[0] & 0x80 == 0 {
            let mut out = [0u8; 8];
            device.read(offset, &mut out[..width]);
        } else {
            device.write(offset, &value[..width]);
        }
    }
}
