//! Device sections of a [`VmConfig`](super::VmConfig): disks, network cards, vsock, entropy.
//!
//! These are what a user writes; [`validate_devices`] checks them (files exist and have the
//! right size, ids are unique, MACs and CIDs are valid) before anything is created.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rate_limit::{LimiterField, RateLimiterConfig};
use super::ConfigError;

/// Sector size of virtio-blk.
pub const SECTOR_SIZE: u64 = 512;
/// Longest disk id: it is the virtio-blk serial number (`GET_ID`), 20 bytes.
pub const MAX_DISK_ID_LEN: usize = 20;
/// Longest Linux network interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest Unix socket path (sun_path holds 108 bytes including the NUL).
pub const MAX_UDS_PATH_LEN: usize = 107;

/// A disk backed by a raw image file.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Unique device id (also the disk's serial, truncated to 20 bytes).
    pub id: String,
    /// Raw image; its size must be a multiple of 512 bytes.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub path: PathBuf,
    /// Expose the disk read-only (writes fail with an I/O error in the guest).
    #[serde(default)]
    pub read_only: bool,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct: bool,
    /// Limit on the guest's requests (bytes read and written, requests); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// A network card backed by a TAP device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unique device id.
    pub id: String,
    /// Name of the TAP interface (created if missing, when the process may). Empty when the
    /// program building the VM supplies the TAP as a descriptor
    /// ([`VmBuilder::tap_fd`](crate::VmBuilder::tap_fd)): a descriptor number does not belong
    /// in a document that is stored or sent to another node.
    #[serde(default)]
    pub tap: String,
    /// MAC address as `52:54:00:12:34:56`; when absent the device offers none and the guest
    /// picks its own.
    #[serde(default)]
    pub mac: Option<String>,
    /// Limit on frames delivered to the guest; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limit on frames the guest sends; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// A vsock device whose host side is a Unix socket (Firecracker's model).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Unique device id.
    #[serde(default = "default_vsock_id")]
    pub id: String,
    /// The guest's context ID: 3 or more (0-2 are reserved), below 2^32 - 1.
    pub guest_cid: u64,
    /// Unix socket the host connects to; guest connections to port P go to `<uds_path>_<P>`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub uds_path: PathBuf,
}

fn default_vsock_id() -> String {
    "vsock0".to_string()
}

/// An entropy device fed by the host's getrandom.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Unique device id.
    #[serde(default = "default_rng_id")]
    pub id: String,
    /// Limit on the guest's requests (entropy bytes asked for, requests); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

fn default_rng_id() -> String {
    "rng0".to_string()
}

/// Parses `52:54:00:12:34:56`; refuses multicast and all-zero addresses.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("`{text}` is not six colon-separated hex bytes"));
    }
    for (slot, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(format!("`{text}`: `{part}` is not a two-digit hex byte"));
        }
        *slot = u8::from_str_radix(part, 16)
            .map_err(|_| format!("`{text}`: `{part}` is not a hex byte"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("`{text}` is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(format!("`{text}` is the all-zero address"));
    }
    Ok(mac)
}

fn check_id(seen: &mut HashSet<String>, field: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::invalid(
            field,
            format!("id `{id}` must be non-empty ASCII letters, digits, '-', '_' or '.'"),
        ));
    }
    if !seen.insert(id.to_string()) {
        return Err(ConfigError::invalid(
            field,
            format!("id `{id}` is used by another device"),
        ));
    }
    Ok(())
}

fn check_disk(disk: &DiskConfig) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(&disk.path).map_err(|err| {
        ConfigError::invalid(
            "disks.path",
            format!(
                "disk `{}`: cannot read {}: {err}",
                disk.id,
                disk.path.display()
            ),
        )
    })?;
    if !meta.is_file() {
        return Err(ConfigError::invalid(
            "disks.path",
            format!(
                "disk `{}`: {} is not a regular file",
                disk.id,
                disk.path.display()
            ),
        ));
    }
    if meta.len() == 0 || meta.len() % SECTOR_SIZE != 0 {
        return Err(ConfigError::invalid(
            "disks.path",
            format!(
                "disk `{}`: {} is {} bytes, not a non-zero multiple of {SECTOR_SIZE}",
                disk.id,
                disk.path.display(),
                meta.len()
            ),
        ));
    }
    Ok(())
}

fn check_uds_path(path: &Path) -> Result<(), ConfigError> {
    let text = path.as_os_str();
    // Room for the longest `_<port>` suffix guest connections append.
    if text.is_empty() || text.len() + 11 > MAX_UDS_PATH_LEN {
        return Err(ConfigError::invalid(
            "vsock.uds_path",
            format!(
                "`{}` must be non-empty and at most {} bytes (Unix socket paths are short)",
                path.display(),
                MAX_UDS_PATH_LEN - 11
            ),
        ));
    }
    Ok(())
}

fn check_uds_dir(path: &Path) -> Result<(), ConfigError> {
    match path.parent() {
        Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => Ok(()),
        _ => Err(ConfigError::invalid(
            "vsock.uds_path",
            format!("the directory of `{}` does not exist", path.display()),
        )),
    }
}

/// Checks every device section without touching the host: ids, names, addresses, CIDs and
/// path lengths. A control plane can run it for a config meant for another node.
pub fn check_devices(
    disks: &[DiskConfig],
    nets: &[NetConfig],
    vsock: Option<&VsockConfig>,
    rng: Option<&RngConfig>,
) -> Result<(), ConfigError> {
    let mut ids = HashSet::new();
    for disk in disks {
        check_id(&mut ids, "disks.id", &disk.id)?;
        if disk.id.len() > MAX_DISK_ID_LEN {
            return Err(ConfigError::invalid(
                "disks.id",
                format!(
                    "id `{}` is longer than {MAX_DISK_ID_LEN} bytes (it is the disk's serial number)",
                    disk.id
                ),
            ));
        }
        if disk.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "disks.path",
                format!("disk `{}`: the path is empty", disk.id),
            ));
        }
        if let Some(limiter) = &disk.rate_limiter {
            limiter.check(LimiterField::Disk, &format!("disk `{}`", disk.id))?;
        }
    }
    for net in nets {
        check_id(&mut ids, "nets.id", &net.id)?;
        // Empty: the builder supplies the TAP as a descriptor (checked when the VM is built).
        if !net.tap.is_empty() && (net.tap.len() > MAX_IFNAME_LEN || net.tap.contains(['/', ' '])) {
            return Err(ConfigError::invalid(
                "nets.tap",
                format!(
                    "nic `{}`: `{}` is not an interface name (1-{MAX_IFNAME_LEN} bytes, no '/' or spaces)",
                    net.id, net.tap
                ),
            ));
        }
        if let Some(mac) = &net.mac {
            parse_mac(mac).map_err(|reason| {
                ConfigError::invalid("nets.mac", format!("nic `{}`: {reason}", net.id))
            })?;
        }
        let owner = format!("nic `{}`", net.id);
        for (limiter, field) in [
            (&net.rx_rate_limiter, LimiterField::NetRx),
            (&net.tx_rate_limiter, LimiterField::NetTx),
        ] {
            if let Some(limiter) = limiter {
                limiter.check(field, &owner)?;
            }
        }
    }
    if let Some(vsock) = vsock {
        check_id(&mut ids, "vsock.id", &vsock.id)?;
        if vsock.guest_cid < 3 || vsock.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "vsock.guest_cid",
                format!(
                    "{} is reserved: guest CIDs are 3 to {}",
                    vsock.guest_cid,
                    u32::MAX - 1
                ),
            ));
        }
        check_uds_path(&vsock.uds_path)?;
    }
    if let Some(rng) = rng {
        check_id(&mut ids, "rng.id", &rng.id)?;
        if let Some(limiter) = &rng.rate_limiter {
            limiter.check(LimiterField::Rng, &format!("rng `{}`", rng.id))?;
        }
    }
    Ok(())
}

/// Checks what the device sections name on this host: disk images exist and are whole
/// sectors, the vsock socket's directory exists.
pub fn check_devices_on_host(
    disks: &[DiskConfig],
    vsock: Option<&VsockConfig>,
) -> Result<(), ConfigError> {
    for disk in disks {
        check_disk(disk)?;
    }
    if let Some(vsock) = vsock {
        check_uds_dir(&vsock.uds_path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both: [`check_devices`] then [`check_devices_on_host`].
    fn validate_devices(
        disks: &[DiskConfig],
        nets: &[NetConfig],
        vsock: Option<&VsockConfig>,
        rng: Option<&RngConfig>,
    ) -> Result<(), ConfigError> {
        check_devices(disks, nets, vsock, rng)?;
        check_devices_on_host(disks, vsock)
    }

    fn image(name: &str, len: usize) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-devcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        path
    }

    fn disk(id: &str, path: PathBuf) -> DiskConfig {
        DiskConfig {
            id: id.into(),
            path,
            read_only: false,
            direct: false,
            rate_limiter: None,
        }
    }

    fn field(result: Result<(), ConfigError>) -> &'static str {
        result.unwrap_err().field
    }

    #[test]
    fn disks_must_exist_and_be_whole_sectors() {
        let good = disk("root", image("good.img", 4096));
        validate_devices(std::slice::from_ref(&good), &[], None, None).unwrap();
        let missing = disk("d", "/no/such/disk.img".into());
        assert_eq!(
            field(validate_devices(&[missing], &[], None, None)),
            "disks.path"
        );
        let odd = disk("d", image("odd.img", 1000));
        let err = validate_devices(&[odd], &[], None, None).unwrap_err();
        assert!(err.reason.contains("1000 bytes"), "{err}");
        let empty = disk("d", image("empty.img", 0));
        assert_eq!(
            field(validate_devices(&[empty], &[], None, None)),
            "disks.path"
        );
    }

    #[test]
    fn ids_are_unique_across_device_kinds() {
        let a = disk("same", image("a.img", 512));
        let b = disk("same", image("b.img", 512));
        let err = validate_devices(&[a.clone(), b], &[], None, None).unwrap_err();
        assert_eq!(err.field, "disks.id");
        let nic = NetConfig {
            id: "same".into(),
            tap: "tap0".into(),
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert_eq!(field(validate_devices(&[a], &[nic], None, None)), "nets.id");
        let bad = disk("has space", image("c.img", 512));
        assert_eq!(field(validate_devices(&[bad], &[], None, None)), "disks.id");
    }

    #[test]
    fn macs_must_be_unicast_hex() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5g",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "525:4:00:12:34:56",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let nic = NetConfig {
            id: "n".into(),
            tap: "tap0".into(),
            mac: Some("ff:ff:ff:ff:ff:ff".into()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert_eq!(
            field(validate_devices(
                &[],
                std::slice::from_ref(&nic),
                None,
                None
            )),
            "nets.mac"
        );
        let long = NetConfig {
            tap: "a-very-long-interface-name".into(),
            mac: None,
            ..nic.clone()
        };
        assert_eq!(
            field(validate_devices(&[], &[long], None, None)),
            "nets.tap"
        );
        // No name: the builder must supply a descriptor, which the config cannot know.
        let nameless = NetConfig {
            tap: String::new(),
            mac: None,
            ..nic
        };
        assert!(validate_devices(&[], &[nameless], None, None).is_ok());
    }

    #[test]
    fn pure_checks_need_no_host_and_host_checks_find_what_is_missing() {
        // A config for another node: its disk does not exist here.
        let elsewhere = disk("root", "/srv/images/root.img".into());
        check_devices(std::slice::from_ref(&elsewhere), &[], None, None).unwrap();
        assert_eq!(
            field(check_devices_on_host(&[elsewhere], None)),
            "disks.path"
        );
        let unnamed = disk("root", PathBuf::new());
        assert_eq!(
            field(check_devices(&[unnamed], &[], None, None)),
            "disks.path"
        );
    }

    #[test]
    fn vsock_cids_and_socket_paths_are_checked() {
        let dir = std::env::temp_dir();
        let vsock = |cid: u64, path: PathBuf| VsockConfig {
            id: "v".into(),
            guest_cid: cid,
            uds_path: path,
        };
        validate_devices(&[], &[], Some(&vsock(3, dir.join("v.sock"))), None).unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
            let result = validate_devices(&[], &[], Some(&vsock(cid, dir.join("v.sock"))), None);
            assert_eq!(field(result), "vsock.guest_cid", "cid {cid}");
        }
        let nowhere = vsock(3, "/no/such/dir/v.sock".into());
        assert_eq!(
            field(validate_devices(&[], &[], Some(&nowhere), None)),
            "vsock.uds_path"
        );
        let long = vsock(3, dir.join("x".repeat(120)));
        assert_eq!(
            field(validate_devices(&[], &[], Some(&long), None)),
            "vsock.uds_path"
        );
    }
}
