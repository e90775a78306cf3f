//! ACPI tables through `iasl -d` (acpica-tools): an independent parser that tells whether the
//! bytes Keel wrote mean what Keel meant.

use std::path::Path;
use std::process::Command;

/// Whether `iasl` is installed. Without it the caller should skip; with
/// `KEEL_REQUIRE_TOOLS=1` (as CI sets) a missing `iasl` panics instead, so a check is never
/// skipped silently.
pub fn available() -> bool {
    let present = Command::new("iasl").arg("-v").output().is_ok();
    if !present {
        if std::env::var_os("KEEL_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
            panic!("KEEL_REQUIRE_TOOLS=1 but iasl (acpica-tools) is not installed");
        }
        eprintln!("KEEL-IASL-SKIP: iasl not installed (apt-get install acpica-tools)");
    }
    present
}

/// Disassembles one table (`bytes`, named `name`, e.g. `DSDT`) in `dir` and returns the
/// source text. Panics, with iasl's output, if iasl fails or reports an error.
pub fn disassemble(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, bytes).unwrap_or_else(|err| panic!("write {}: {err}", dat.display()));
    let output = Command::new("iasl")
        .current_dir(dir)
        .arg("-d")
        .arg(&dat)
        .output()
        .unwrap_or_else(|err| panic!("run iasl: {err}"));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "iasl -d {name} failed:\n{log}");
    assert!(
        !log.contains("Error"),
        "iasl -d {name} reported errors:\n{log}"
    );
    let dsl = dir.join(format!("{name}.dsl"));
    std::fs::read_to_string(&dsl).unwrap_or_else(|err| panic!("read {}: {err}", dsl.display()))
}
