//! Minimal polling virtio drivers over virtio-mmio (modern, version 2) and virtio-pci (modern) for
//! Keel's device tests.
//!
//! [`run`] finds the devices the command line lists (`virtio_mmio.device=`), checks each window,
//! with `keel.pci` also the virtio functions on PCI bus 0 (`pci.rs`), and runs the tests the `keel.blk`, `keel.rng`, `keel.net`, `keel.vsock` and `keel.console` options enable: every
//! block device, and the first entropy, network and socket device. Drivers run one after another on
//! the BSP, poll used rings with a TSC deadline, and reset their device when done. Interrupts are
//! never enabled on the devices' side (the IRQ numbers are ignored).
//!
//! The drivers exist to prove the VMM's devices; they do only what the tests need.

mod attack;
mod blk;
mod console;
mod net;
mod pci;
mod queue;
mod rng;
mod transport;
mod vsock;

use keel_test_guest::cmdline::VirtioOptions;
use keel_test_guest::virtio::bench::{BENCH_MEMORY_BASE, BENCH_MEMORY_SIZE};
use keel_test_guest::virtio::discovery::{self, MmioDevice};

use crate::console::report;
use crate::cpu::rdtsc;
use queue::DmaBuffer;
use transport::{Transport, MAGIC, VERSION_MODERN};

/// Lowest base address accepted for a virtio-mmio window or a virtio-pci structure.
const MMIO_LOW: u64 = 0xc000_0000;
/// End of the accepted range: the xAPIC page and everything after it are off limits.
const MMIO_HIGH: u64 = 0xfec0_0000;
/// The register file up to and including the start of the configuration space.
const MIN_WINDOW: u64 = 0x200;
/// Devices the guest keeps track of; later ones are reported and ignored.
const MAX_DEVICES: usize = 16;

/// Device IDs (virtio 1.2, section 5).
const ID_NET: u32 = 1;
const ID_BLOCK: u32 = 2;
const ID_CONSOLE: u32 = 3;
const ID_ENTROPY: u32 = 4;
const ID_VSOCK: u32 = 19;

/// Runs the enabled virtio tests, then the enabled benchmarks, then prints `virtio done`. Does
/// nothing if none is enabled. `bench_ram` tells whether the benchmarks' data area
/// (`BENCH_MEMORY_BASE`, `BENCH_MEMORY_SIZE` bytes) is RAM.
pub fn run(cmdline: &str, options: &VirtioOptions, bench_ram: bool) {
    if !options.any() {
        return;
    }
    let mut devices: [Option<(Transport, u32)>; MAX_DEVICES] = [None; MAX_DEVICES];
    let mut count = 0;
    for device in discovery::devices(cmdline) {
        let device = match device {
            Ok(device) => device,
            Err(error) => {
                report!("FAIL virtio-mmio {error}");
                continue;
            }
        };
        if let Some(found) = probe(&device) {
            match devices.get_mut(count) {
                Some(slot) => {
                    *slot = Some(found);
                    count += 1;
                }
                None => report!("virtio-mmio {:#x} ignored: too many devices", device.base),
            }
        }
    }
    if options.pci {
        pci::scan(options.pci_move_bar, |transport, id| {
            match devices.get_mut(count) {
                Some(slot) => {
                    *slot = Some((transport, id));
                    count += 1;
                }
                None => report!("virtio-pci device {id} ignored: too many devices"),
            }
        });
    }
    let found = || devices.iter().flatten();
    let first = |id| {
        found()
            .find(|(_, device_id)| *device_id == id)
            .map(|(t, _)| *t)
    };

    if let Some(attack) = options.attack {
        attack::run(
            attack,
            first(ID_ENTROPY),
            first(ID_BLOCK),
            first(ID_VSOCK),
            first(ID_CONSOLE),
            first(ID_NET),
            options,
        );
    }
    // A read left in flight on the first disk while the other tests run.
    let background = if options.blk_background {
        match first(ID_BLOCK) {
            Some(transport) => blk::start_background(&transport),
            None => {
                report!("FAIL virtio-blk no device");
                None
            }
        }
    } else {
        None
    };
    if options.blk {
        let mut number = 0;
        for (transport, _) in found().filter(|(_, id)| *id == ID_BLOCK) {
            blk::test(transport, number, options);
            number += 1;
        }
        if number == 0 {
            report!("FAIL virtio-blk no device");
        }
    }
    if options.rng {
        match first(ID_ENTROPY) {
            Some(transport) => rng::test(&transport, options),
            None => report!("FAIL virtio-rng no device"),
        }
    }
    if options.net {
        match first(ID_NET) {
            Some(transport) => net::test(&transport, options),
            None => report!("FAIL virtio-net no device"),
        }
    }
    if options.vsock {
        match first(ID_VSOCK) {
            Some(transport) => vsock::test(&transport, options),
            None => report!("FAIL virtio-vsock no device"),
        }
    }
    if options.console {
        match first(ID_CONSOLE) {
            Some(transport) => console::test(&transport, options),
            None => report!("FAIL virtio-console no device"),
        }
    }
    if let Some(background) = background {
        blk::finish_background(background, options);
    }
    if options.blk_bench.is_some() || options.net_bench || options.vsock_bench {
        if bench_ram {
            // SAFETY: the memory map says the area is RAM; it lies above the image, the AP
            // trampoline and the AP stacks inside the identity-mapped first GiB, and only the one
            // benchmark running at a time hands it to its (then reset) device.
            let memory =
                unsafe { DmaBuffer::from_physical(BENCH_MEMORY_BASE, BENCH_MEMORY_SIZE as usize) };
            if let Some(bench) = options.blk_bench {
                // randread2 drives the first two disks, the others the first.
                let mut disks = found().filter(|(_, id)| *id == ID_BLOCK).map(|(t, _)| t);
                let first = disks.next();
                blk::bench(first, disks.next(), options, bench, memory);
            }
            if options.net_bench {
                match first(ID_NET) {
                    Some(transport) => net::bench(&transport, options),
                    None => report!("FAIL virtio-net no device"),
                }
            }
            if options.vsock_bench {
                match first(ID_VSOCK) {
                    Some(transport) => vsock::bench(&transport, options, memory),
                    None => report!("FAIL virtio-vsock no device"),
                }
            }
        } else {
            report!(
                "FAIL bench memory [{BENCH_MEMORY_BASE:#x}, {:#x}) is not RAM",
                BENCH_MEMORY_BASE + BENCH_MEMORY_SIZE
            );
        }
    }
    report!("virtio done");
}

/// Checks one window and returns its transport and device ID if a modern device sits there.
fn probe(device: &MmioDevice) -> Option<(Transport, u32)> {
    let end = device.base.checked_add(device.size)?;
    if device.base < MMIO_LOW
        || end > MMIO_HIGH
        || device.size < MIN_WINDOW
        || !device.base.is_multiple_of(4)
    {
        report!(
            "FAIL virtio-mmio {:#x} size {:#x} outside the supported range {MMIO_LOW:#x}-{MMIO_HIGH:#x}",
            device.base,
            device.size
        );
        return None;
    }
    // SAFETY: the window lies in the uncached, identity-mapped MMIO hole below the xAPIC, where the
    // VMM said (on the command line) a virtio-mmio device is; only this module drives it.
    let transport = unsafe { Transport::new(device.base) };
    let magic = transport.magic();
    if magic != MAGIC {
        report!("FAIL virtio-mmio {:#x} bad magic {magic:#x}", device.base);
        return None;
    }
    let version = transport.version();
    if version != VERSION_MODERN {
        report!(
            "virtio-mmio {:#x} version {version} unsupported",
            device.base
        );
        return None;
    }
    let id = transport.device_id();
    if id == 0 {
        return None;
    }
    report!(
        "virtio-mmio {:#x} device {id} irq {}",
        device.base,
        device.irq
    );
    Some((transport, id))
}

/// The TSC value `wait` ticks from now.
fn deadline(wait: u64) -> u64 {
    rdtsc().saturating_add(wait)
}
