//! Snapshot and restore times of Keel's test guest, for 128 MiB and 1 GiB of guest memory.
//!
//! `cargo bench -p benches --bench snapshot -- [RUNS]`
//!
//! - snapshot: `VmHandle::snapshot` of the paused VM (vCPU and device state, the memory file
//!   written and synced);
//! - restore to running: from `VmBuilder::restore(..).build()` until the restored guest's first
//!   serial byte (its next tick), the memory mapped `MAP_PRIVATE` and read in on demand.
//!
//! Firecracker publishes single-digit-millisecond restores with `MAP_PRIVATE`; the target for
//! Keel is at most 10 ms to running for 128 MiB. The snapshot directory is on the machine's
//! temporary directory (its disk speed bounds the 1 GiB snapshot).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_core::{MemSize, VirtioTransport, VmBuilder, VmConfig};

/// Records when the first byte arrives.
#[derive(Clone, Default)]
struct FirstByte(Arc<Mutex<Option<Instant>>>);

impl Write for FirstByte {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() && !buf.is_empty() {
            *first = Some(Instant::now());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(guest: &std::path::Path, mib: u64) -> VmConfig {
    let mut config = VmConfig::new(guest);
    config.memory = MemSize::mib(mib);
    config.virtio_transport = VirtioTransport::Pci;
    config.cmdline = "keel.cpus=1 keel.pci keel.rng keel.ticks=0 keel.tick_tsc=300000".into();
    config.rng = Some(vmm_core::config::RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    config
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(10);
    let guest = testkit::build_test_guest().expect("test guest");
    println!("snapshot / restore, test guest, 1 vCPU, virtio-rng on PCI ({runs} runs each):");
    for mib in [128u64, 1024] {
        let dir = std::env::temp_dir().join(format!("keel-bench-snapshot-{mib}"));
        let (mut snapshots, mut restores) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let _ = std::fs::remove_dir_all(&dir);
            let mut vm = VmBuilder::new(config(&guest, mib))
                .serial_output(std::io::sink())
                .build()
                .expect("build");
            vm.start().expect("start");
            std::thread::sleep(Duration::from_millis(50));
            let handle = vm.handle();
            handle.pause().expect("pause");
            let start = Instant::now();
            handle.snapshot(&dir).expect("snapshot");
            snapshots.push(start.elapsed().as_secs_f64() * 1e3);
            handle.stop();
            drop(vm);

            let first = FirstByte::default();
            let start = Instant::now();
            let mut restored = VmBuilder::new(config(&guest, mib))
                .restore(&dir)
                .serial_output(first.clone())
                .build()
                .expect("restore");
            restored.start().expect("start");
            let deadline = Instant::now() + Duration::from_secs(10);
            let at = loop {
                if let Some(at) = *first.0.lock().unwrap_or_else(|p| p.into_inner()) {
                    break at;
                }
                assert!(
                    Instant::now() < deadline,
                    "the restored guest printed nothing"
                );
                std::thread::sleep(Duration::from_micros(200));
            };
            restores.push((at - start).as_secs_f64() * 1e3);
            restored.handle().stop();
        }
        let _ = std::fs::remove_dir_all(&dir);
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (s_min, r_min) = (min(&snapshots), min(&restores));
        let (s_med, r_med) = (median(&mut snapshots), median(&mut restores));
        let target = if mib == 128 {
            "  (target <= 10 ms)"
        } else {
            ""
        };
        println!(
            "  {mib:>5} MiB  snapshot min {s_min:8.1} ms  median {s_med:8.1} ms   restore to running min {r_min:6.2} ms  median {r_med:6.2} ms{target}"
        );
    }
}
