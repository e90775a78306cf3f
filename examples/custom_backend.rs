//! An embedder's own device back ends: Keel's test guest boots with a disk that lives in this
//! program's memory and a NIC whose frames cross a socketpair to this program, and drives
//! both. See `examples::custom_backend` for the code.
//!
//! `cargo run --release --example custom_backend`

use std::process::ExitCode;

fn main() -> ExitCode {
    match examples::custom_backend::run() {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("custom_backend: {err}");
            ExitCode::FAILURE
        }
    }
}
