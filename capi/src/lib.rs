//! libkeel: Keel's C ABI.
//!
//! Everything a C caller holds is a generation-checked 64-bit handle (see `handles`), every
//! function returns a `keel_status` and leaves a message naming the argument or field in the
//! thread's `keel_last_error()`, and no Rust panic crosses the boundary (`status::guard`). The
//! header `include/keel.h` is generated from these sources by cbindgen and committed; a test
//! fails when it drifts. Build the library with `cargo build --profile capi -p keel-capi`
//! (`target/capi/libkeel.so` and `libkeel.a`): that profile unwinds on panic, so `guard` can
//! catch one, where the workspace's release profile aborts.

#![allow(non_camel_case_types)]

mod handles;
mod placement;
mod status;
mod strings;
mod vm;

use std::ffi::c_char;

pub use placement::*;
pub use status::*;
pub use vm::*;

/// The ABI's major version: a change that breaks callers bumps it, and the soname
/// (`libkeel.so.<major>`) with it.
pub const KEEL_ABI_MAJOR: u32 = 0;
/// The ABI's minor version: additions only.
pub const KEEL_ABI_MINOR: u32 = 1;

/// The ABI version the library implements: `major << 16 | minor`. Compare the major with
/// `KEEL_ABI_MAJOR` from the header the caller was compiled against.
#[unsafe(no_mangle)]
pub extern "C" fn keel_abi_version() -> u32 {
    KEEL_ABI_MAJOR << 16 | KEEL_ABI_MINOR
}

/// Keel's version ("0.1.0"), a static string.
#[unsafe(no_mangle)]
pub extern "C" fn keel_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// How many handles (configs, VMs, clusters, placers, claims) are live: issued and not freed.
/// For leak checks in tests.
#[unsafe(no_mangle)]
pub extern "C" fn keel_live_handles() -> u64 {
    handles::live() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soname_carries_the_abi_major() {
        let build = include_str!("../build.rs");
        assert!(build.contains(&format!("const ABI_MAJOR: u32 = {KEEL_ABI_MAJOR};")));
        assert_eq!(keel_abi_version() >> 16, KEEL_ABI_MAJOR);
    }

    /// keel.h is generated from the sources; a change to the API shows up as a diff here.
    #[test]
    fn the_committed_header_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut generated = Vec::new();
        cbindgen::Builder::new()
            .with_crate(root)
            .with_config(
                cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml"),
            )
            .generate()
            .expect("cbindgen")
            .write(&mut generated);
        let generated = String::from_utf8(generated).expect("UTF-8 header");
        let path = root.join("include/keel.h");
        if std::env::var_os("KEEL_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("write keel.h");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "capi/include/keel.h is stale; regenerate it with \
             `KEEL_BLESS=1 cargo test -p keel-capi the_committed_header_is_current`"
        );
    }
}
