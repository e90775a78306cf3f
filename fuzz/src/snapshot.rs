//! What a restore reads: a snapshot's state file (header, checksum, JSON payload of vCPU,
//! interrupt-controller and device states). A damaged or hostile file must be refused with an
//! error, never a panic or an allocation beyond the header's limit.

use vmm_core::snapshot::file;

/// Inputs starting with `{` are wrapped in a valid header (so the JSON payload's parser is
/// reached); others are read as a whole state file (header checks first).
pub fn snapshot_state(data: &[u8]) {
    if data.first() == Some(&b'{') {
        let _ = vmm_core::snapshot::parse_state_file(&file::encode(data));
    } else {
        let _ = vmm_core::snapshot::parse_state_file(data);
    }
}
