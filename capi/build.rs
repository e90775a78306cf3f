//! Links libkeel.so with its soname (carrying the ABI major version) and the version script
//! that exports the `keel_*` functions only.

/// Must match `KEEL_ABI_MAJOR` in src/lib.rs (a unit test checks).
const ABI_MAJOR: u32 = 0;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeel.so.{ABI_MAJOR}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/keel.map");
    println!("cargo:rerun-if-changed=keel.map");
    println!("cargo:rerun-if-changed=build.rs");
}
