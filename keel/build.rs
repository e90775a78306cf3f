//! Links the `keel` program's release build with the code it runs at start-up packed together.
//!
//! Most of a small VMM's resident memory is its own code: the kernel maps an executable's pages
//! 64 KiB around every one that faults, and the linker scatters the few hundred functions a
//! boot runs over all of `.text`, so nearly every 64 KiB of it ends up resident. Linked with
//! lld and `symbol-order.txt` (the functions a boot runs, in order of first call, recorded by
//! `scripts/keel-symbol-order.sh`), they sit together at the start of `.text`. A name the file
//! lists that the binary lacks is skipped, so a stale file costs memory, never correctness.
//!
//! Only for release builds of the static (musl) program, which the file was recorded from (the
//! glibc build's standard library has other symbol names), where the Rust toolchain ships its
//! `gcc-ld/ld.lld` wrapper (rustup's toolchains do); `KEEL_NO_SYMBOL_ORDER=1` turns it off.
//! Measured with `benches/boot`: peak RSS 2.5 MiB without it, 1.26 MiB with it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=KEEL_NO_SYMBOL_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    if !release
        || target != "x86_64-unknown-linux-musl"
        || std::env::var_os("KEEL_NO_SYMBOL_ORDER").is_some()
    {
        return;
    }
    let Some(gcc_ld) = gcc_ld_dir() else {
        println!("cargo:warning=no gcc-ld/ld.lld in the Rust toolchain: keel is linked without its symbol order (larger resident code)");
        return;
    };
    let order = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("symbol-order.txt");
    println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    println!("cargo:rustc-link-arg-bins=-B{}", gcc_ld.display());
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// `<sysroot>/lib/rustlib/<host>/bin/gcc-ld`, where rustup's toolchains keep `ld.lld` (a
/// wrapper running the toolchain's `rust-lld`).
fn gcc_ld_dir() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(sysroot.stdout).ok()?;
    let host = std::env::var("HOST").ok()?;
    let dir = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}
