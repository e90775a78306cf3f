//! Every library crate's public API, item by item, checked in under `public-api/<crate>.txt`.
//!
//! The listing comes from rustdoc's JSON output (read by the `public-api` crate, as
//! `cargo public-api` does), so it names every public item with its signature: a changed
//! function, a new variant or a module made public shows up as a diff and fails this test
//! until the listing is updated on purpose with `KEEL_BLESS=1 cargo test -p testkit --test
//! public_api`. rustdoc's JSON output is unstable, so it is enabled with `RUSTC_BOOTSTRAP` on
//! the pinned toolchain, whose format `public-api` 0.52.0 reads.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates embedders depend on.
const CRATES: [&str; 5] = [
    "devices",
    "vmm-core",
    "scheduling",
    "scheduling-postgres",
    "keel",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

/// Runs rustdoc once for all crates, into a target directory of its own (the one this test
/// runs from is locked by the cargo that runs it).
fn rustdoc_json(root: &Path) -> PathBuf {
    let target = root.join("target").join("public-api");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTDOCFLAGS", "-Z unstable-options --output-format json")
        .args(["doc", "--no-deps", "--quiet", "--target-dir"])
        .arg(&target);
    for krate in CRATES {
        command.args(["-p", krate]);
    }
    let status = command.status().expect("run cargo doc");
    assert!(status.success(), "cargo doc with JSON output failed");
    target.join("doc")
}

fn listing(json: &Path) -> String {
    // Blanket impls (`From<T> for T`, `Borrow<T>`...) come with every type and say nothing about
    // it; auto traits (`Send`, `Sync`) and derived impls stay, since losing one breaks users.
    let api = public_api::Builder::from_rustdoc_json(json)
        .omit_blanket_impls(true)
        .build()
        .unwrap_or_else(|err| panic!("{}: {err}", json.display()));
    let mut items: Vec<String> = api.items().map(ToString::to_string).collect();
    items.sort();
    items.dedup();
    items.join("\n") + "\n"
}

#[test]
fn public_items_match_the_checked_in_listing() {
    let root = workspace();
    let docs = rustdoc_json(&root);
    let bless = std::env::var_os("KEEL_BLESS").is_some();
    let mut changed = Vec::new();
    for krate in CRATES {
        let json = docs.join(format!("{}.json", krate.replace('-', "_")));
        let now = listing(&json);
        let path = root.join("public-api").join(format!("{krate}.txt"));
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        if now == before {
            continue;
        }
        if bless {
            std::fs::write(&path, &now).expect("write the listing");
            continue;
        }
        let added: Vec<&str> = now
            .lines()
            .filter(|line| !before.lines().any(|old| old == *line))
            .collect();
        let removed: Vec<&str> = before
            .lines()
            .filter(|line| !now.lines().any(|new| new == *line))
            .collect();
        changed.push(format!(
            "{krate}: {} added, {} removed\n  + {}\n  - {}",
            added.len(),
            removed.len(),
            added.join("\n  + "),
            removed.join("\n  - ")
        ));
    }
    assert!(
        changed.is_empty(),
        "the public API changed; if on purpose, update the listings with \
         `KEEL_BLESS=1 cargo test -p testkit --test public_api`:\n{}",
        changed.join("\n")
    );
}
