//! The `keel` VMM program; see the `keel` library's documentation and `keel --help`.

fn main() -> std::process::ExitCode {
    keel::main()
}
