//! The snapshot state file: a fixed header (magic, format version, length, CRC-32 of the
//! payload) then the payload, JSON. Written to a temporary file, synced and renamed over the
//! old one, so an interrupted snapshot never leaves a half-written file where a good one was;
//! read back with every field of the header checked before the payload is parsed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"KEELSNAP";
/// Version of the state file's layout and payload; another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Header: magic, format version (le32), payload length (le64), CRC-32 of the payload (le32).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Largest payload read (a snapshot of a few hundred vCPUs and devices is far smaller).
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a Keel snapshot.
    #[error("not a Keel snapshot state file (no KEELSNAP header)")]
    Magic,
    /// Written by a Keel with another format.
    #[error("snapshot format {found}, this Keel reads format {FORMAT_VERSION}")]
    Version {
        /// The file's format.
        found: u32,
    },
    /// Shorter or longer than its header says, or over the size limit.
    #[error("state payload of {found} bytes, the header says {expected} (limit {MAX_PAYLOAD})")]
    Length {
        /// What the header says.
        expected: u64,
        /// What is there.
        found: u64,
    },
    /// The payload's checksum does not match: the file was damaged.
    #[error("state payload checksum {found:#010x} does not match the header's {expected:#010x}: the file is damaged")]
    Checksum {
        /// The header's.
        expected: u32,
        /// The payload's.
        found: u32,
    },
}

/// The header and payload of a state file, as bytes.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The payload of a state file's bytes, every header field checked.
pub fn decode(bytes: &[u8]) -> Result<&[u8], StateFileError> {
    let (header, payload) = bytes.split_at_checked(HEADER_LEN).ok_or(StateFileError::Magic)?;
    if header[..8] != MAGIC {
        return Err(StateFileError::Magic);
    }
    let field = |range: std::ops::Range<usize>| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..range.len()].copy_from_slice(&header[range]);
        out
    };
    let version = u32::from_le_bytes(field(8..12)[..4].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(StateFileError::Version { found: version });
    }
    let expected = u64::from_le_bytes(field(12..20));
    let found = payload.len() as u64;
    if expected != found || expected > MAX_PAYLOAD {
        return Err(StateFileError::Length { expected, found });
    }
    let expected = u32::from_le_bytes(field(20..24)[..4].try_into().unwrap_or_default());
    let found = crc32fast::hash(payload);
    if expected != found {
        return Err(StateFileError::Checksum { expected, found });
    }
    Ok(payload)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` durably and atomically: a temporary file next to it, synced,
/// renamed over `path`, and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a state file's payload (at most [`MAX_PAYLOAD`] bytes past the header).
pub fn read(path: &Path) -> Result<Vec<u8>, StateFileError> {
    let file = File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_PAYLOAD + HEADER_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    decode(&bytes).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_damage_is_named() {
        let bytes = encode(b"{\"a\":1}");
        assert_eq!(decode(&bytes).unwrap(), b"{\"a\":1}");
        assert!(matches!(decode(b"short"), Err(StateFileError::Magic)));
        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(matches!(decode(&other), Err(StateFileError::Magic)));
        let mut version = bytes.clone();
        version[8] = 9;
        assert!(matches!(decode(&version), Err(StateFileError::Version { found: 9 })));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&flipped), Err(StateFileError::Checksum { .. })));
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(StateFileError::Length { .. })));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(StateFileError::Length { .. })));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = std::env::temp_dir().join(format!("keel-statefile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        write_atomic(&path, &encode(b"first")).unwrap();
        assert_eq!(read(&path).unwrap(), b"first");
        // A write into a directory that does not exist fails without touching anything.
        assert!(write_atomic(&dir.join("missing/state"), b"x").is_err());
        assert_eq!(read(&path).unwrap(), b"first");
        write_atomic(&path, &encode(b"second")).unwrap();
        assert_eq!(read(&path).unwrap(), b"second");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
