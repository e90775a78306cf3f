//! What a user hands Keel: a VM config in JSON or YAML (the `--config` file, or a manager's API call)
//! and memory sizes as text (`--mem 512M`). Parsing and [`VmConfig::validate`] must turn any
//! input into a value or an error, and a config that parses must survive a JSON round trip.

use vmm_core::{MemSize, VmConfig};

/// A complete, valid config: the template that inputs not starting with `{` edit.
const TEMPLATE: &str = include_str!("../seeds/vm_config/full.json");

/// Characters the edits write: JSON's structure, digits, unit letters and a few oddities.
const ALPHABET: &[u8] = b"{}[]:,\" -.0123456789eEKMGBkmgbtrufalsn/\\\x01\x7f\n";

/// Parses the bytes as a JSON config (and each line as a memory size) and validates the result.
/// Inputs that do not start with `{` are edits of [`TEMPLATE`] instead (pairs of position and
/// character), so random inputs reach the validator and not only the JSON syntax checks.
pub fn vm_config(data: &[u8]) {
    let edited;
    let text = if data.first() == Some(&b'{') {
        match std::str::from_utf8(data) {
            Ok(text) => text,
            Err(_) => return,
        }
    } else {
        let mut bytes = TEMPLATE.as_bytes().to_vec();
        for edit in data.chunks_exact(3).take(16) {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
            bytes[at] = ALPHABET[usize::from(edit[2]) % ALPHABET.len()];
        }
        edited = String::from_utf8_lossy(&bytes).into_owned();
        &edited
    };
    vm_config_text(text);
}

fn vm_config_text(text: &str) {
    for line in text.lines().take(64) {
        if let Ok(size) = line.parse::<MemSize>() {
            // Display then parse gives the same size back.
            let again: MemSize = size.to_string().parse().expect("a displayed size parses");
            assert_eq!(again, size, "size {line:?} shown as {size}");
        }
    }
    if let Ok(config) = serde_json::from_str::<VmConfig>(text) {
        let _ = config.validate();
        let json = serde_json::to_string(&config).expect("a parsed config serializes");
        let again: VmConfig = serde_json::from_str(&json).expect("a serialized config parses");
        assert_eq!(again, config, "JSON round trip changed the config");
    }
    // The same text as YAML (a JSON document is YAML too), as `--config vm.yaml` reads it.
    if let Ok(config) = serde_saphyr::from_str::<VmConfig>(text) {
        let _ = config.validate();
    }
}
