//! The MC146818 CMOS real-time clock at ports 0x70 (index) / 0x71 (data).
//!
//! Guests read the wall-clock time at boot from here; without it Linux logs "Unable to read
//! current time from RTC" after polling for about two seconds. The time comes from an injected
//! [`Clock`], so tests can pin it. The device reports time in BCD or binary and in 24- or
//! 12-hour format as status register B asks.
//!
//! The guest may set the clock (Linux's `hwclock --systohc`, or its 11-minute NTP sync): as on
//! the chip, setting status B's SET bit freezes the time registers, the guest writes them, and
//! clearing SET starts the clock from the written time. Keel keeps that as an offset from the
//! host clock, so the guest's time goes on ticking with the host's. A write without SET changes
//! that one field at once. Values that are not a valid date or time (bad BCD digits, month 13,
//! February 30) are refused and logged, and the clock keeps its previous offset. Alarm and
//! periodic interrupts are not raised; the rest of the 128-byte CMOS RAM is plain storage.

use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;

use crate::bus::BusDevice;

/// First port: the index register (bit 7 masks NMIs on real hardware).
pub const RTC_PORT_BASE: u64 = 0x70;
/// Ports 0x70 and 0x71.
pub const RTC_PORT_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
/// Status A: bit 7 is "update in progress" (never set here), bits 0-6 the divider and rate.
const REG_STATUS_A: u8 = 0x0a;
/// Status B: bit 1 selects 24-hour mode, bit 2 binary (instead of BCD) data, bit 7 (SET)
/// halts updates while the guest sets the time.
const REG_STATUS_B: u8 = 0x0b;
/// Status C: interrupt flags (always clear: no interrupts are raised).
const REG_STATUS_C: u8 = 0x0c;
/// Status D: bit 7 says the RAM and time are valid (battery good).
const REG_STATUS_D: u8 = 0x0d;
/// Century, as PC firmware (and the ACPI FADT default) places it.
const REG_CENTURY: u8 = 0x32;

const STATUS_A_DEFAULT: u8 = 0x26; // 32.768 kHz time base, 1.024 kHz rate
const STATUS_B_24H: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
const STATUS_B_SET: u8 = 0x80;
const STATUS_D_VALID: u8 = 0x80;
const HOUR_PM: u8 = 0x80;
const INDEX_MASK: u8 = 0x7f;

/// A source of wall-clock time.
pub trait Clock: Send {
    /// Seconds since the Unix epoch, UTC.
    fn unix_seconds(&self) -> i64;
}

/// The host's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// A calendar date and time of day, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    weekday: u8, // 1 = Sunday, as the RTC counts
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    /// Converts Unix seconds to a civil date (proleptic Gregorian calendar).
    // The narrowed fields are bounded by the arithmetic: month 1..=12, day 1..=31, weekday
    // 1..=7 (`rem_euclid(7) + 1`), hour < 24, minute and second < 60 (from `rem_euclid(86_400)`).
    #[allow(clippy::cast_possible_truncation)]
    fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(86_400);
        let secs_of_day = seconds.rem_euclid(86_400);
        // Days since 0000-03-01, in 400-year eras (Howard Hinnant's civil_from_days).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday (weekday 5 when Sunday is 1).
        let weekday = (days + 4).rem_euclid(7) + 1;
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            weekday: weekday as u8,
            hour: (secs_of_day / 3600) as u8,
            minute: (secs_of_day / 60 % 60) as u8,
            second: (secs_of_day % 60) as u8,
        }
    }
}

impl DateTime {
    /// Unix seconds of this date and time, or `None` if it is not a valid one.
    fn to_unix(self) -> Option<i64> {
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let month_days = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap(self.year) => 29,
            2 => 28,
            _ => return None,
        };
        if self.day == 0 || self.day > month_days || self.hour > 23 || self.minute > 59 {
            return None;
        }
        if self.second > 59 {
            return None;
        }
        // Days from 0000-03-01 (Howard Hinnant's days_from_civil), back to the Unix epoch.
        let (month, day) = (i64::from(self.month), i64::from(self.day));
        let year = self.year - i64::from(month <= 2);
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era.checked_mul(146_097)?.checked_add(doe - 719_468)?;
        let seconds_of_day =
            i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second);
        days.checked_mul(86_400)?.checked_add(seconds_of_day)
    }
}

fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The value of a BCD byte, or `None` when a digit is above 9.
fn from_bcd(value: u8) -> Option<u8> {
    let (high, low) = (value >> 4, value & 0x0f);
    (high <= 9 && low <= 9).then_some(high * 10 + low)
}

/// The CMOS RTC and its 128 bytes of RAM.
///
/// ```
/// use devices::bus::BusDevice;
/// use devices::legacy::{Clock, CmosRtc};
///
/// struct Fixed;
/// impl Clock for Fixed {
///     fn unix_seconds(&self) -> i64 { 1_795_776_045 } // 2026-11-27 10:40:45 UTC
/// }
/// let mut rtc = CmosRtc::new(Fixed);
/// let mut read = |index: u8| {
///     rtc.write(0, &[index]);
///     let mut data = [0u8];
///     rtc.read(1, &mut data);
///     data[0]
/// };
/// assert_eq!(read(0x09), 0x26); // year, BCD
/// assert_eq!(read(0x32), 0x20); // century
/// assert_eq!(read(0x04), 0x10); // hours
/// ```
pub struct CmosRtc<C: Clock> {
    clock: C,
    /// Seconds the guest's time is ahead of the clock (it set the RTC).
    offset: i64,
    /// While status B's SET bit is on: the frozen time the guest is editing.
    setting: Option<DateTime>,
    index: u8,
    ram: [u8; 128],
}

/// What the RTC saves in a snapshot: the guest's offset from the host clock (so its time goes
/// on from the host's clock, as after a suspend) and its registers and CMOS RAM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcState {
    /// Seconds the guest's time is ahead of the host clock.
    pub offset: i64,
    /// Selected register.
    pub index: u8,
    /// CMOS RAM (128 bytes).
    pub ram: Vec<u8>,
}

impl<C: Clock> CmosRtc<C> {
    /// The state for a snapshot. A guest in the middle of setting the clock (status B's SET
    /// bit on) is saved with the time it was editing folded into the offset.
    pub fn state(&self) -> RtcState {
        let offset = match self.setting {
            Some(time) => time.to_unix().map_or(self.offset, |at| {
                at.saturating_sub(self.clock.unix_seconds())
            }),
            None => self.offset,
        };
        RtcState {
            offset,
            index: self.index,
            ram: self.ram.to_vec(),
        }
    }

    /// Takes a saved state; a RAM image of the wrong size is refused.
    pub fn restore(&mut self, state: &RtcState) -> Result<(), String> {
        self.ram = state
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| format!("CMOS RAM of {} bytes, expected 128", state.ram.len()))?;
        self.offset = state.offset;
        self.index = state.index & 0x7f;
        self.setting = None;
        Ok(())
    }

    /// Creates the RTC in 24-hour BCD mode, as PC firmware leaves it.
    pub fn new(clock: C) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_STATUS_A)] = STATUS_A_DEFAULT;
        ram[usize::from(REG_STATUS_B)] = STATUS_B_24H;
        ram[usize::from(REG_STATUS_D)] = STATUS_D_VALID;
        CmosRtc {
            clock,
            offset: 0,
            setting: None,
            index: 0,
            ram,
        }
    }

    /// The guest's current time: the frozen one while it sets the clock, else the clock's plus
    /// the offset the guest chose.
    fn now(&self) -> DateTime {
        self.setting.unwrap_or_else(|| {
            DateTime::from_unix(self.clock.unix_seconds().saturating_add(self.offset))
        })
    }

    fn decode(&self, value: u8) -> Option<u8> {
        if self.ram[usize::from(REG_STATUS_B)] & STATUS_B_BINARY != 0 {
            Some(value)
        } else {
            from_bcd(value)
        }
    }

    /// The hour from a register value in the current 12/24-hour mode.
    fn decode_hour(&self, value: u8) -> Option<u8> {
        if self.ram[usize::from(REG_STATUS_B)] & STATUS_B_24H != 0 {
            return self.decode(value);
        }
        let twelve = self.decode(value & !HOUR_PM)?;
        if !(1..=12).contains(&twelve) {
            return None;
        }
        Some(twelve % 12 + if value & HOUR_PM != 0 { 12 } else { 0 })
    }

    /// A guest write to one time register: the new field, in `time`.
    fn set_field(&self, time: &mut DateTime, index: u8, value: u8) -> Option<()> {
        match index {
            REG_SECONDS => time.second = self.decode(value)?,
            REG_MINUTES => time.minute = self.decode(value)?,
            REG_HOURS => time.hour = self.decode_hour(value)?,
            REG_DAY => time.day = self.decode(value)?,
            REG_MONTH => time.month = self.decode(value)?,
            REG_YEAR => {
                let year = i64::from(self.decode(value).filter(|y| *y <= 99)?);
                time.year = time.year.div_euclid(100) * 100 + year;
            }
            REG_CENTURY => {
                let century = i64::from(self.decode(value).filter(|c| *c <= 99)?);
                time.year = century * 100 + time.year.rem_euclid(100);
            }
            // The weekday follows from the date.
            _ => {}
        }
        Some(())
    }

    /// Starts the clock from `time`, if it is a valid date and time.
    fn commit(&mut self, time: DateTime) {
        match time.to_unix() {
            Some(seconds) => {
                self.offset = seconds.saturating_sub(self.clock.unix_seconds());
                debug!(
                    "rtc: guest set the time; {} s from the host clock",
                    self.offset
                );
            }
            None => debug!("rtc: guest set an invalid time {time:?}; kept the previous one"),
        }
    }

    /// Presets a byte of CMOS RAM (firmware uses some for memory sizes); time and status
    /// registers are computed and cannot be preset.
    pub fn set_ram_byte(&mut self, index: u8, value: u8) {
        self.ram[usize::from(index & INDEX_MASK)] = value;
    }

    fn encode(&self, value: u8) -> u8 {
        if self.ram[usize::from(REG_STATUS_B)] & STATUS_B_BINARY != 0 {
            value
        } else {
            to_bcd(value)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[usize::from(REG_STATUS_B)] & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | pm
    }

    fn read_register(&self, index: u8) -> u8 {
        let now = || self.now();
        match index {
            REG_SECONDS => self.encode(now().second),
            REG_MINUTES => self.encode(now().minute),
            REG_HOURS => self.encode_hour(now().hour),
            REG_WEEKDAY => self.encode(now().weekday),
            REG_DAY => self.encode(now().day),
            REG_MONTH => self.encode(now().month),
            // In 0..100 (`rem_euclid(100)`): fits a u8.
            #[allow(clippy::cast_possible_truncation)]
            REG_YEAR => self.encode(now().year.rem_euclid(100) as u8),
            // In 0..=99 (`clamp`): fits a u8.
            #[allow(clippy::cast_possible_truncation)]
            REG_CENTURY => self.encode(now().year.div_euclid(100).clamp(0, 99) as u8),
            REG_STATUS_C => 0,
            _ => self.ram[usize::from(index)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => {
                let mut time = self.now();
                if self.set_field(&mut time, index, value).is_none() {
                    debug!("rtc: guest wrote {value:#x} to time register {index:#x}: not a valid value");
                    return;
                }
                match &mut self.setting {
                    Some(frozen) => *frozen = time,
                    None => self.commit(time),
                }
            }
            REG_STATUS_B => {
                let was_set = self.ram[usize::from(REG_STATUS_B)] & STATUS_B_SET != 0;
                let set = value & STATUS_B_SET != 0;
                if set && !was_set {
                    self.setting = Some(self.now());
                }
                self.ram[usize::from(REG_STATUS_B)] = value;
                if !set {
                    if let Some(time) = self.setting.take() {
                        self.commit(time);
                    }
                }
            }
            REG_STATUS_C | REG_STATUS_D => {}
            // Keep the divider bits but never report an update in progress.
            REG_STATUS_A => self.ram[usize::from(index)] = value & 0x7f,
            _ => self.ram[usize::from(index)] = value,
        }
    }
}

impl<C: Clock> BusDevice for CmosRtc<C> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            0 => self.index,
            1 => self.read_register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            0 => self.index = value & INDEX_MASK,
            1 => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(i64);
    impl Clock for Fixed {
        fn unix_seconds(&self) -> i64 {
            self.0
        }
    }

    fn read(rtc: &mut CmosRtc<impl Clock>, index: u8) -> u8 {
        rtc.write(0, &[index]);
        let mut data = [0u8];
        rtc.read(1, &mut data);
        data[0]
    }

    #[test]
    fn civil_dates_match_known_instants() {
        let cases = [
            (0, (1970, 1, 1, 5, 0, 0, 0)),
            (951_782_400, (2000, 2, 29, 3, 0, 0, 0)),
            (1_795_776_045, (2026, 11, 27, 6, 10, 40, 45)),
            (4_107_542_399, (2100, 2, 28, 1, 23, 59, 59)),
            (-1, (1969, 12, 31, 4, 23, 59, 59)),
        ];
        for (seconds, (year, month, day, weekday, hour, minute, second)) in cases {
            let expected = DateTime {
                year,
                month,
                day,
                weekday,
                hour,
                minute,
                second,
            };
            assert_eq!(DateTime::from_unix(seconds), expected, "at {seconds}");
        }
    }

    #[test]
    fn reports_bcd_24h_by_default_and_binary_12h_on_request() {
        // 2026-11-27 22:05:09 UTC, a Friday.
        let mut rtc = CmosRtc::new(Fixed(1_795_776_045 + 11 * 3600 + 24 * 60 + 24));
        assert_eq!(read(&mut rtc, REG_HOURS), 0x22);
        assert_eq!(read(&mut rtc, REG_MINUTES), 0x05);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x09);
        assert_eq!(read(&mut rtc, REG_DAY), 0x27);
        assert_eq!(read(&mut rtc, REG_MONTH), 0x11);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 6);
        assert_eq!(read(&mut rtc, REG_STATUS_D), STATUS_D_VALID);
        assert_eq!(
            read(&mut rtc, REG_STATUS_A) & 0x80,
            0,
            "no update in progress"
        );

        rtc.write(0, &[REG_STATUS_B]);
        rtc.write(1, &[STATUS_B_BINARY]);
        assert_eq!(read(&mut rtc, REG_HOURS), 10 | HOUR_PM);
        assert_eq!(read(&mut rtc, REG_YEAR), 26);
        assert_eq!(read(&mut rtc, REG_CENTURY), 20);
    }

    fn write(rtc: &mut CmosRtc<impl Clock>, index: u8, value: u8) {
        rtc.write(0, &[index]);
        rtc.write(1, &[value]);
    }

    /// A clock the test moves.
    #[derive(Clone)]
    struct Moving(std::sync::Arc<std::sync::atomic::AtomicI64>);
    impl Clock for Moving {
        fn unix_seconds(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn dates_round_trip_through_unix_seconds() {
        for seconds in [
            0,
            951_782_400,
            1_795_776_045,
            4_107_542_399,
            -1,
            -86_400 * 366,
        ] {
            assert_eq!(DateTime::from_unix(seconds).to_unix(), Some(seconds));
        }
        let feb30 = DateTime {
            year: 2026,
            month: 2,
            day: 30,
            weekday: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(feb30.to_unix(), None);
        assert_eq!(DateTime { month: 13, ..feb30 }.to_unix(), None);
        let leap_day = DateTime {
            year: 2024,
            day: 29,
            ..feb30
        };
        assert!(leap_day.to_unix().is_some());
        // A year so far out that its seconds overflow i64 is refused, not wrapped.
        let far = DateTime {
            year: i64::MAX / 400,
            ..feb30
        };
        assert_eq!(far.to_unix(), None);
    }

    #[test]
    fn the_guest_sets_the_time_the_way_linux_does_and_it_keeps_ticking() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let host = Moving(std::sync::Arc::new(AtomicI64::new(1_795_776_045)));
        let mut rtc = CmosRtc::new(host.clone());
        // SET on, then 2001-02-03 04:05:06 in BCD, SET off (drivers/rtc/rtc-mc146818-lib.c's order).
        write(&mut rtc, REG_STATUS_B, STATUS_B_24H | STATUS_B_SET);
        host.0.fetch_add(7, Ordering::Relaxed); // time passes while the registers are frozen
        for (index, value) in [
            (REG_YEAR, 0x01),
            (REG_MONTH, 0x02),
            (REG_DAY, 0x03),
            (REG_HOURS, 0x04),
            (REG_MINUTES, 0x05),
            (REG_SECONDS, 0x06),
            (REG_CENTURY, 0x20),
        ] {
            write(&mut rtc, index, value);
        }
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x06, "frozen while SET");
        write(&mut rtc, REG_STATUS_B, STATUS_B_24H);
        assert_eq!(read(&mut rtc, REG_YEAR), 0x01);
        assert_eq!(read(&mut rtc, REG_MONTH), 0x02);
        assert_eq!(read(&mut rtc, REG_DAY), 0x03);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 7, "2001-02-03 was a Saturday");
        assert_eq!(read(&mut rtc, REG_HOURS), 0x04);
        host.0.fetch_add(61, Ordering::Relaxed);
        assert_eq!(
            read(&mut rtc, REG_MINUTES),
            0x06,
            "it ticks with the host clock"
        );
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x07);
        assert_eq!(read(&mut rtc, REG_CENTURY), 0x20);
    }

    #[test]
    fn binary_12_hour_writes_and_single_field_writes_apply() {
        let mut rtc = CmosRtc::new(Fixed(0)); // 1970-01-01 00:00:00
        write(&mut rtc, REG_STATUS_B, STATUS_B_BINARY);
        write(&mut rtc, REG_HOURS, 11 | HOUR_PM); // 11 PM
        assert_eq!(read(&mut rtc, REG_HOURS), 11 | HOUR_PM);
        write(&mut rtc, REG_STATUS_B, STATUS_B_BINARY | STATUS_B_24H);
        assert_eq!(read(&mut rtc, REG_HOURS), 23);
        write(&mut rtc, REG_HOURS, 12 | HOUR_PM); // a 12-hour value in 24-hour mode: 0x8c
        assert_eq!(read(&mut rtc, REG_HOURS), 23, "refused");
    }

    #[test]
    fn invalid_times_are_refused_and_the_clock_keeps_its_time() {
        let mut rtc = CmosRtc::new(Fixed(1_795_776_045));
        let before = read(&mut rtc, REG_MINUTES);
        write(&mut rtc, REG_MINUTES, 0x6a); // not BCD
        write(&mut rtc, REG_MINUTES, 0x75); // BCD, but minute 75
        assert_eq!(read(&mut rtc, REG_MINUTES), before);
        // February 30th, set through SET: refused as a whole at commit.
        write(&mut rtc, REG_STATUS_B, STATUS_B_24H | STATUS_B_SET);
        write(&mut rtc, REG_MONTH, 0x02);
        write(&mut rtc, REG_DAY, 0x30);
        write(&mut rtc, REG_STATUS_B, STATUS_B_24H);
        assert_eq!(read(&mut rtc, REG_MONTH), 0x11);
        assert_eq!(read(&mut rtc, REG_DAY), 0x27);
    }

    #[test]
    fn ram_is_kept() {
        let mut rtc = CmosRtc::new(Fixed(0));
        rtc.write(0, &[0x80 | 0x40]); // NMI-mask bit set on the index
        rtc.write(1, &[0xab]);
        assert_eq!(read(&mut rtc, 0x40), 0xab);
        rtc.set_ram_byte(0x34, 7);
        assert_eq!(read(&mut rtc, 0x34), 7);
        let mut wide = [0u8; 4];
        rtc.read(5, &mut wide);
        assert_eq!(wide, [0xff; 4]);
    }
}
