//! What a caller specifies to create a vsock device, and its validation.

use std::path::PathBuf;

/// Longest Unix socket path (`sun_path` without its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Longest suffix the device appends for guest-initiated connections (`_4294967295`).
const MAX_PORT_SUFFIX: usize = 11;

/// Configuration of one virtio-vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// Identifier used in logs and errors.
    pub id: String,
    /// The guest's context ID: at least 3 (0-2 are reserved) and below `u32::MAX`
    /// (`VMADDR_CID_ANY`), since guests address CIDs with 32 bits.
    pub guest_cid: u64,
    /// Unix socket the device listens on for host-initiated connections; guest connections to
    /// host port `P` go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// A configuration field that is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsockConfigError {
    /// `id` is empty.
    #[error("vsock config field `id` must not be empty")]
    EmptyId,
    /// `guest_cid` is reserved or too large.
    #[error(
        "vsock `{id}`: field `guest_cid`: {cid} is reserved or out of range (3 to 4294967294)"
    )]
    GuestCid {
        /// The device.
        id: String,
        /// The rejected CID.
        cid: u64,
    },
    /// `uds_path` is empty or too long for a Unix socket with a port suffix.
    #[error("vsock `{id}`: field `uds_path`: {path:?} must be non-empty and at most {} bytes", MAX_SOCKET_PATH - MAX_PORT_SUFFIX)]
    UdsPath {
        /// The device.
        id: String,
        /// The rejected path.
        path: PathBuf,
    },
}

impl VsockConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if self.id.is_empty() {
            return Err(VsockConfigError::EmptyId);
        }
        if self.guest_cid < 3 || self.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockConfigError::GuestCid {
                id: self.id.clone(),
                cid: self.guest_cid,
            });
        }
        let len = self.uds_path.as_os_str().len();
        if len == 0 || len + MAX_PORT_SUFFIX > MAX_SOCKET_PATH {
            return Err(VsockConfigError::UdsPath {
                id: self.id.clone(),
                path: self.uds_path.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let config = |cid, path: &str| VsockConfig {
            id: "vsock0".into(),
            guest_cid: cid,
            uds_path: path.into(),
        };
        config(3, "/tmp/v.sock").validate().unwrap();
        config(u64::from(u32::MAX) - 1, "/tmp/v.sock")
            .validate()
            .unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let err = config(cid, "/tmp/v.sock").validate().unwrap_err();
            assert!(err.to_string().contains("field `guest_cid`"), "{err}");
        }
        for path in ["", &"x".repeat(97)] {
            let err = config(3, path).validate().unwrap_err();
            assert!(err.to_string().contains("field `uds_path`"), "{err}");
        }
        config(3, &"x".repeat(96)).validate().unwrap();
        assert_eq!(
            VsockConfig {
                id: String::new(),
                ..config(3, "a")
            }
            .validate(),
            Err(VsockConfigError::EmptyId)
        );
    }
}
