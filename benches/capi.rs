//! The cost of the C ABI: the same work through libkeel (loaded with dlopen, as a C, Python or Go
//! caller would) and from Rust directly, in alternating rounds of one run.
//!
//! `cargo bench -p benches --bench capi -- [VM_RUNS]`
//!
//! - placement: decide + commit + release of one request on a 200-host cluster, per call. The C
//!   path takes the request as JSON (as every binding does), so it is shown beside Rust parsing
//!   the same JSON and beside Rust with a ready-made request.
//! - VM: Keel's test guest (1 vCPU, 128 MiB) from config to exit and free: build, start, wait.
//!
//! The library is built with `cargo build --profile capi -p keel-capi` first.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduling::{Cluster, PlacementRequest, Placer, Policy, Profile};
use vmm_core::{MemSize, VmBuilder, VmConfig};

type Status = i32;

/// The libkeel functions this bench calls.
struct Keel {
    _lib: libloading::Library,
    last_error: unsafe extern "C" fn() -> *const c_char,
    cluster_load: unsafe extern "C" fn(*const c_char, i32, *mut u64) -> Status,
    placer_new: unsafe extern "C" fn(u64, *const c_char, u64, *mut u64) -> Status,
    placer_decide: unsafe extern "C" fn(u64, *const c_char, *mut u64) -> Status,
    claim_commit: unsafe extern "C" fn(u64) -> Status,
    claim_free: unsafe extern "C" fn(u64) -> Status,
    placer_release: unsafe extern "C" fn(u64, *const c_char) -> Status,
    config_new: unsafe extern "C" fn(*const c_char, *mut u64) -> Status,
    config_set_cmdline: unsafe extern "C" fn(u64, *const c_char) -> Status,
    config_set_console_callback: unsafe extern "C" fn(
        u64,
        unsafe extern "C" fn(*mut c_void, *const u8, usize),
        *mut c_void,
    ) -> Status,
    config_free: unsafe extern "C" fn(u64) -> Status,
    vm_build: unsafe extern "C" fn(u64, *mut u64) -> Status,
    vm_start: unsafe extern "C" fn(u64) -> Status,
    vm_wait: unsafe extern "C" fn(u64, u64, *mut i32) -> Status,
    vm_free: unsafe extern "C" fn(u64) -> Status,
}

impl Keel {
    fn load(path: &Path) -> Keel {
        // SAFETY: libkeel runs no code on load beyond Rust's std initialisation.
        let lib = unsafe { libloading::Library::new(path) }
            .unwrap_or_else(|err| panic!("dlopen {}: {err}", path.display()));
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: each symbol is declared with the signature keel.h gives it.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .unwrap_or_else(|err| panic!("{}: {err}", $name))
            };
        }
        Keel {
            last_error: symbol!("keel_last_error"),
            cluster_load: symbol!("keel_cluster_load"),
            placer_new: symbol!("keel_placer_new"),
            placer_decide: symbol!("keel_placer_decide"),
            claim_commit: symbol!("keel_claim_commit"),
            claim_free: symbol!("keel_claim_free"),
            placer_release: symbol!("keel_placer_release"),
            config_new: symbol!("keel_config_new"),
            config_set_cmdline: symbol!("keel_config_set_cmdline"),
            config_set_console_callback: symbol!("keel_config_set_console_callback"),
            config_free: symbol!("keel_config_free"),
            vm_build: symbol!("keel_vm_build"),
            vm_start: symbol!("keel_vm_start"),
            vm_wait: symbol!("keel_vm_wait"),
            vm_free: symbol!("keel_vm_free"),
            _lib: lib,
        }
    }

    fn ok(&self, status: Status) {
        if status != 0 {
            // SAFETY: keel_last_error returns a valid NUL-terminated string.
            let message = unsafe { CStr::from_ptr((self.last_error)()) };
            panic!("libkeel status {status}: {}", message.to_string_lossy());
        }
    }
}

unsafe extern "C" fn discard(_: *mut c_void, _: *const u8, _: usize) {}

fn cluster_json(hosts: usize) -> String {
    let hosts: Vec<String> = (0..hosts)
        .map(|i| {
            format!(
                r#"{{"name": "h{i}", "inventories": {{"VCPU": {{"total": 64}}, "MEMORY_MB": {{"total": 262144}}}}}}"#
            )
        })
        .collect();
    format!(r#"{{"hosts": [{}]}}"#, hosts.join(","))
}

const REQUEST: &str = r#"{"id": "vm", "resources": {"VCPU": 2, "MEMORY_MB": 4096}}"#;

fn per_call(elapsed: Duration, calls: usize) -> f64 {
    elapsed.as_secs_f64() * 1e9 / calls as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let vm_runs: usize = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(20);
    let root = testkit::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "--profile", "capi", "-p", "keel-capi"])
        .status()
        .expect("cargo build libkeel");
    assert!(status.success(), "building libkeel failed");
    let keel = Keel::load(&root.join("target/capi/libkeel.so"));
    let guest = testkit::build_test_guest().expect("test guest");

    // Placement: decide + commit + release, per call.
    let json = cluster_json(200);
    let cluster = Arc::new(Cluster::from_json(&json).expect("cluster"));
    let mut rust = Placer::new(cluster.clone(), Profile::for_policy(Policy::Spread), 7);
    let ready: PlacementRequest = serde_json::from_str(REQUEST).expect("request");
    let c_json = CString::new(json).expect("json");
    let c_request = CString::new(REQUEST).expect("request");
    let (mut c_cluster, mut placer) = (0u64, 0u64);
    // SAFETY: the arguments follow keel.h: NUL-terminated strings, valid out pointers.
    unsafe {
        keel.ok((keel.cluster_load)(c_json.as_ptr(), 1, &mut c_cluster));
        keel.ok((keel.placer_new)(
            c_cluster,
            c"spread".as_ptr(),
            7,
            &mut placer,
        ));
    }
    let calls = 20_000;
    let (mut through_c, mut rust_json, mut rust_ready) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..calls {
            let mut claim = 0u64;
            // SAFETY: as above; `claim` is the handle the decide call returned.
            unsafe {
                keel.ok((keel.placer_decide)(placer, c_request.as_ptr(), &mut claim));
                keel.ok((keel.claim_commit)(claim));
                keel.ok((keel.claim_free)(claim));
                keel.ok((keel.placer_release)(placer, c"vm".as_ptr()));
            }
        }
        through_c.push(per_call(start.elapsed(), calls));

        let start = Instant::now();
        for _ in 0..calls {
            let request: PlacementRequest = serde_json::from_str(REQUEST).expect("request");
            rust.place(&request).expect("place");
            rust.state_mut().release("vm").expect("release");
        }
        rust_json.push(per_call(start.elapsed(), calls));

        let start = Instant::now();
        for _ in 0..calls {
            rust.place(&ready).expect("place");
            rust.state_mut().release("vm").expect("release");
        }
        rust_ready.push(per_call(start.elapsed(), calls));
    }
    let (c_ns, json_ns, ready_ns) = (
        median(&mut through_c),
        median(&mut rust_json),
        median(&mut rust_ready),
    );
    println!("placement, decide+commit+release on 200 hosts (median of 5 rounds of {calls}):");
    println!("  C ABI (JSON request)          {c_ns:8.0} ns/call");
    println!(
        "  Rust, parsing the same JSON   {json_ns:8.0} ns/call   C ABI / Rust: {:.2}",
        c_ns / json_ns
    );
    println!(
        "  Rust, request ready-made      {ready_ns:8.0} ns/call   C ABI / Rust: {:.2}",
        c_ns / ready_ns
    );

    // VM: config -> build -> start -> wait -> free, alternating.
    let cmdline = "keel.exit=reset";
    let c_kernel = CString::new(guest.to_string_lossy().as_bytes()).expect("path");
    let c_cmdline = CString::new(cmdline).expect("cmdline");
    let (mut c_times, mut rust_times) = (Vec::new(), Vec::new());
    for _ in 0..vm_runs {
        let start = Instant::now();
        let (mut config, mut vm, mut reason) = (0u64, 0u64, 0i32);
        // SAFETY: as above; `discard` matches keel_console_cb.
        unsafe {
            keel.ok((keel.config_new)(c_kernel.as_ptr(), &mut config));
            keel.ok((keel.config_set_cmdline)(config, c_cmdline.as_ptr()));
            keel.ok((keel.config_set_console_callback)(
                config,
                discard,
                std::ptr::null_mut(),
            ));
            keel.ok((keel.vm_build)(config, &mut vm));
            keel.ok((keel.config_free)(config));
            keel.ok((keel.vm_start)(vm));
            keel.ok((keel.vm_wait)(vm, 10_000, &mut reason));
            keel.ok((keel.vm_free)(vm));
        }
        assert_eq!(reason, 1, "guest reset");
        c_times.push(start.elapsed().as_secs_f64() * 1e3);

        let start = Instant::now();
        let mut config = VmConfig::new(&guest);
        config.memory = MemSize::mib(128);
        config.cmdline = cmdline.into();
        let mut vm = VmBuilder::new(config)
            .serial_output(std::io::sink())
            .build()
            .expect("build");
        vm.start().expect("start");
        let exit = vm.wait_timeout(Duration::from_secs(10)).expect("exit");
        drop(vm);
        assert_eq!(exit, vmm_core::ExitReason::Reset);
        rust_times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let c_min = c_times.iter().copied().fold(f64::INFINITY, f64::min);
    let rust_min = rust_times.iter().copied().fold(f64::INFINITY, f64::min);
    let (c_median, rust_median) = (median(&mut c_times), median(&mut rust_times));
    println!(
        "VM, test guest config -> exit -> freed, 1 vCPU, 128 MiB ({vm_runs} alternating runs):"
    );
    println!("  C ABI   min {c_min:6.2} ms   median {c_median:6.2} ms");
    println!(
        "  Rust    min {rust_min:6.2} ms   median {rust_median:6.2} ms   C ABI / Rust: min {:.2}, median {:.2}",
        c_min / rust_min,
        c_median / rust_median
    );
}
