//! Converts a KubeVirt VirtualMachine or VirtualMachineInstance manifest (a file, or standard
//! input with `-`) to Keel's `keel.dev/v1alpha1`, printed on standard output. Fields Keel does
//! not support are named and the exit status is 1; server-set fields are dropped with a note on
//! standard error.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: keel-kubevirt-convert FILE|-");
        return ExitCode::from(2);
    };
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    let text = match text {
        Ok(t) => t,
        Err(err) => {
            eprintln!("keel-kubevirt-convert: cannot read {path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let converted = k8s_adapter::convert::convert(&text).and_then(|c| Ok((c.to_yaml()?, c)));
    match converted {
        Ok((yaml, c)) => {
            for field in c.dropped() {
                eprintln!("keel-kubevirt-convert: dropped {field} (set by the API server)");
            }
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("keel-kubevirt-convert: {path}: {err}");
            ExitCode::FAILURE
        }
    }
}
