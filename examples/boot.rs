//! The demo: Keel's `keel` program with Keel's test guest as the default kernel.
//!
//! `cargo run --release --example boot` builds the test guest (installing its Rust target if
//! the toolchain lacks it) and boots it with 2 vCPUs and 128 MiB: the guest prints a banner,
//! starts its application processors, runs a self-check and resets the machine, and this
//! program exits 0. Every `keel` flag works the same (`-- --help`): `--kernel` boots any other
//! kernel (stock Linux needs hardware KVM, see the README), `--api-socket` serves the REST API.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use keel::cli::Cli;

fn main() -> ExitCode {
    let started = Instant::now();
    let mut cli = Cli::parse();
    let vmm = &mut cli.vmm;
    let describes_a_vm = vmm.kernel.is_some() || vmm.config.is_some() || vmm.api_socket.is_some();
    if cli.command.is_none() && !describes_a_vm {
        eprintln!("keel: building the test guest ...");
        match testkit::build_test_guest() {
            Ok(guest) => vmm.kernel = Some(guest),
            Err(err) => {
                eprintln!("keel: {err}");
                return ExitCode::from(2);
            }
        }
        if vmm.cpus.is_none() {
            vmm.cpus = Some("2".into());
            // The guest also finds its vCPU count in CPUID; saying it makes it check.
            vmm.cmdline.get_or_insert_with(|| "keel.cpus=2".into());
        }
        vmm.cmdline.get_or_insert_with(String::new);
    }
    keel::run(cli, started)
}
