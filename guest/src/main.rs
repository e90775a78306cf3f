//! Keel's test guest: a tiny kernel that a VMM boots like Linux and that reports what it finds on
//! COM1.
//!
//! The boot assembly (`boot.rs`) enters [`keel_main`] on the bootstrap processor in long mode, with
//! its own GDT, page tables, IDT and stack and with interrupts enabled. From there the guest prints
//! the boot protocol, command line and memory size, starts the other vCPUs, runs an integer
//! self-check, does what the command line asks (virtio device tests, ticks, serial echo, a deliberate
//! fault) and ends the VM. `README.md` documents the output lines, which are the protocol Keel's host tests parse.
#![no_std]
#![no_main]

mod boot;
mod console;
mod cpu;
mod drivers;
mod exit;
mod interrupts;
mod power;
mod serial;
mod smp;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use keel_test_guest::bootinfo::{
    self, BootInfo, BootInfoError, BootProtocol, PhysicalMemory, Unreadable,
};
use keel_test_guest::cmdline::{self, Fault};
use keel_test_guest::selfcheck;
use keel_test_guest::virtio::bench::{BENCH_MEMORY_BASE, BENCH_MEMORY_SIZE};

use console::{report, report_urgent, with_console};
use serial::COM1;

/// The bootstrap processor's Rust entry, called from `boot.rs` with the address of the VMM's boot
/// information (`hvm_start_info` or zero page) and the protocol it came through.
pub extern "C" fn keel_main(boot_info_addr: u64, protocol: u32) -> ! {
    COM1.init();
    let boot = match read_boot_info(boot_info_addr, protocol) {
        Ok(boot) => boot,
        Err(error) => {
            report!("FAIL bootinfo {error}");
            exit::exit_vm()
        }
    };
    report!(
        "boot protocol={} cmdline=\"{}\"",
        boot.protocol().name(),
        boot.cmdline()
    );
    let options = match cmdline::parse(boot.cmdline()) {
        Ok(options) => options,
        Err(error) => {
            report!("FAIL cmdline {error}");
            exit::exit_vm()
        }
    };
    exit::set_plan(options.exit_plan);

    let memory = boot.memory_summary();
    report!(
        "memory ram_kib={} mem_mib={} top_mib={}",
        memory.ram_kib(),
        memory.ram_mib(),
        memory.top_mib()
    );

    start_cpus(&boot, options.cpus);

    match selfcheck::run() {
        Ok(value) => report!("selfcheck ok value={value}"),
        Err(error) => report!("FAIL selfcheck {error}"),
    }

    let bench_ram = boot.is_ram(BENCH_MEMORY_BASE, BENCH_MEMORY_SIZE);
    drivers::run(boot.cmdline(), &options.virtio, bench_ram);

    if options.power_button {
        power::watch();
    }
    if let Some(count) = options.ticks {
        let dirty_bytes = options.dirty_kib * 1024;
        let dirty = if dirty_bytes > 0 && boot.is_ram(cmdline::DIRTY_MEMORY_BASE, dirty_bytes) {
            report!("dirtying kib={}", options.dirty_kib);
            Some((cmdline::DIRTY_MEMORY_BASE, dirty_bytes))
        } else {
            if dirty_bytes > 0 {
                report!("FAIL dirty memory is not RAM");
            }
            None
        };
        tick(count, options.tick_tsc, dirty);
    }
    if options.echo {
        echo();
    }
    if let Some(fault) = options.fault {
        report!("fault {}", fault.name());
        match fault {
            Fault::Triple => exit::triple_fault(),
            Fault::Exception => exit::invalid_opcode(),
            Fault::Panic => panic!("keel.fault=panic"),
        }
    }
    exit::exit_vm()
}

/// Copies the VMM's boot information into the guest's memory, checking it.
fn read_boot_info(addr: u64, protocol: u32) -> Result<BootInfo, BootInfoError> {
    match BootProtocol::from_raw(protocol) {
        Some(BootProtocol::Pvh) => bootinfo::parse_pvh(&IdentityMapped, addr),
        Some(BootProtocol::Linux64) => bootinfo::parse_zero_page(&IdentityMapped, addr),
        None => panic!("boot.rs passed unknown protocol {protocol}"),
    }
}

/// Starts the APs unless exactly one vCPU is expected, then prints the `cpus=` line.
fn start_cpus(boot: &BootInfo, cpus_option: Option<u32>) {
    let expected = smp::expected_cpus(cpus_option);
    let online = if expected == Some(1) {
        1
    } else {
        smp::start_application_processors(boot, expected).unwrap_or_else(|error| {
            report!("FAIL smp {error}");
            1
        })
    };
    match expected {
        Some(expected) => {
            report!("cpus={online} expected={expected}");
            if online != expected {
                report!("FAIL cpus");
            }
        }
        None => report!("cpus={online} expected=?"),
    }
}

/// Prints `count` tick lines (forever if 0), `spacing` TSC ticks apart; with `dirty`
/// (address, bytes), writes every page of that memory over and over meanwhile.
fn tick(count: u64, spacing: u64, dirty: Option<(u64, u64)>) {
    let mut index = 1u64;
    let mut offset = 0u64;
    loop {
        report!("tick {index}");
        if index == count {
            return;
        }
        index = index.wrapping_add(1);
        match dirty {
            Some((base, bytes)) => dirty_for(spacing, base, bytes, index, &mut offset),
            None => power::spin_checking(spacing),
        }
    }
}

/// Writes `value` into each 4 KiB page of `base..base + bytes`, round after round, for
/// about `spacing` TSC ticks (checking the power button as [`power::spin_checking`] does),
/// going on from `offset` where the last call stopped.
fn dirty_for(spacing: u64, base: u64, bytes: u64, value: u64, offset: &mut u64) {
    let start = cpu::rdtsc();
    loop {
        // SAFETY: `base..base + bytes` was checked to be RAM in the boot memory map, which the
        // guest identity-maps, and nothing else in the guest uses it.
        unsafe { core::ptr::write_volatile((base + *offset) as *mut u64, value) };
        *offset = (*offset + 4096) % bytes;
        // The clock is read every 64 pages, so tick lines keep their spacing however much
        // memory is written.
        if offset.is_multiple_of(64 * 4096) {
            let now = cpu::rdtsc();
            if now.wrapping_sub(start) >= spacing {
                power::check();
                return;
            }
        }
    }
}

/// Echoes serial input byte for byte until a line that reads `exit`.
fn echo() {
    const EXIT_LINE: &[u8] = b"exit";
    report!("echo ready");
    // Only lines as long as EXIT_LINE matter; `len` keeps counting past the buffer.
    let mut line = [0u8; EXIT_LINE.len()];
    let mut len = 0usize;
    let mut last_check = cpu::rdtsc();
    loop {
        let Some(byte) = COM1.try_read_byte() else {
            if power::due(&mut last_check) {
                power::check();
            }
            core::hint::spin_loop();
            continue;
        };
        with_console(|console| console.raw(&[byte]));
        if byte == b'\r' || byte == b'\n' {
            if line.get(..len) == Some(EXIT_LINE) {
                // After a lone CR, start a new line so that the next line begins with the prefix.
                if byte == b'\r' {
                    with_console(|console| console.raw(b"\n"));
                }
                report!("echo done");
                return;
            }
            len = 0;
        } else {
            if let Some(slot) = line.get_mut(len) {
                *slot = byte;
            }
            len = len.saturating_add(1);
        }
    }
}

/// Guest-physical memory as the boot page tables map it: identity, 0 to 4 GiB.
struct IdentityMapped;

impl IdentityMapped {
    const LIMIT: u64 = 1 << 32;
}

impl PhysicalMemory for IdentityMapped {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
        let end = addr.checked_add(buf.len() as u64).ok_or(Unreadable)?;
        if addr == 0 || end > Self::LIMIT {
            return Err(Unreadable);
        }
        // SAFETY: the range is non-null and inside the identity-mapped 4 GiB, so the reads cannot
        // fault on the page tables; the VMM's boot structures are plain memory that nothing else
        // writes while we copy.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.swap(true, Ordering::Relaxed) {
        // A panic while reporting or exiting after a panic: stop here rather than loop.
        cpu::halt_forever();
    }
    match info.location() {
        Some(location) => report_urgent!(
            "FAIL panic {} at {}:{}",
            info.message(),
            location.file(),
            location.line()
        ),
        None => report_urgent!("FAIL panic {}", info.message()),
    }
    exit::exit_vm()
}
