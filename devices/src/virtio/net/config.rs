//! What a caller specifies to create a network device, and its validation.

use std::fmt;
use std::os::fd::OwnedFd;
use std::str::FromStr;

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the terminating NUL).
pub const MAX_IF_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An Ethernet MAC address that may be given to a guest: unicast (the group bit clear).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// Accepts `bytes` if they form a unicast address.
    pub fn new(bytes: [u8; 6]) -> Result<Self, MacAddressError> {
        if bytes[0] & 1 != 0 {
            return Err(MacAddressError::Multicast(MacAddress(bytes).to_string()));
        }
        Ok(MacAddress(bytes))
    }

    /// The six address bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = MacAddressError;

    /// Parses six colon-separated pairs of hex digits, such as `52:54:00:12:34:56`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || MacAddressError::Malformed(text.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(malformed)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
        }
        if parts.next().is_some() {
            return Err(malformed());
        }
        MacAddress::new(bytes)
    }
}

/// Why a MAC address is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacAddressError {
    /// Not six colon-separated pairs of hex digits.
    #[error("MAC address {0:?} is not of the form 52:54:00:12:34:56")]
    Malformed(String),
    /// The group (multicast) bit is set; a NIC needs a unicast address.
    #[error("MAC address {0} is a multicast address")]
    Multicast(String),
}

/// Where the device's frames go on the host.
#[derive(Debug)]
pub enum TapSource {
    /// Open (or create) the TAP interface with this name.
    Name(String),
    /// Use a TAP file descriptor the caller already opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    Fd(OwnedFd),
}

/// Configuration of one virtio-net device.
#[derive(Debug)]
pub struct NetConfig {
    /// Identifier used in logs and errors (for example `"eth0"`).
    pub id: String,
    /// The TAP interface backing the device.
    pub tap: TapSource,
    /// Address the guest should use; without one the guest chooses its own.
    pub mac: Option<[u8; 6]>,
}

/// A configuration field that is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// `id` is empty.
    #[error("net config field `id` must not be empty")]
    EmptyId,
    /// `tap` names an interface Linux cannot have.
    #[error("net `{id}`: field `tap`: interface name {name:?} must be 1 to {MAX_IF_NAME_LEN} bytes without NUL, '/' or whitespace")]
    TapName {
        /// The device.
        id: String,
        /// The rejected name.
        name: String,
    },
    /// `mac` is not a unicast address.
    #[error("net `{id}`: field `mac`: {source}")]
    Mac {
        /// The device.
        id: String,
        /// What is wrong with it.
        source: MacAddressError,
    },
}

impl NetConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.id.is_empty() {
            return Err(NetConfigError::EmptyId);
        }
        if let TapSource::Name(name) = &self.tap {
            if !valid_interface_name(name) {
                return Err(NetConfigError::TapName {
                    id: self.id.clone(),
                    name: name.clone(),
                });
            }
        }
        if let Some(mac) = self.mac {
            MacAddress::new(mac).map_err(|source| NetConfigError::Mac {
                id: self.id.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Whether Linux would accept `name` as a network interface name (`dev_valid_name`).
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IF_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|c| c == 0 || c == b'/' || c == b':' || c.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        let mac: MacAddress = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(mac.bytes(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(
            "AA:bb:cc:dd:ee:fe".parse::<MacAddress>().unwrap().bytes()[0],
            0xaa
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "5:54:00:12:34:56",
            "52:54:00:12:34:5g",
            "+5:54:00:12:34:56",
        ] {
            assert!(
                matches!(
                    bad.parse::<MacAddress>(),
                    Err(MacAddressError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            "01:00:5e:00:00:01".parse::<MacAddress>(),
            Err(MacAddressError::Multicast("01:00:5e:00:00:01".into()))
        );
    }

    #[test]
    fn validation_names_the_field() {
        let config = |tap: &str, mac| NetConfig {
            id: "net0".into(),
            tap: TapSource::Name(tap.into()),
            mac,
        };
        config("tap0", Some([0x52, 0x54, 0, 0, 0, 1]))
            .validate()
            .unwrap();
        config("tap0", None).validate().unwrap();
        let err = config("tap0", Some([0xff; 6])).validate().unwrap_err();
        assert!(err.to_string().contains("field `mac`"), "{err}");
        for name in ["", "a/b", "sixteen-bytes-xx", "a b", ".."] {
            let err = config(name, None).validate().unwrap_err();
            assert!(err.to_string().contains("field `tap`"), "{err}");
        }
        let err = NetConfig {
            id: String::new(),
            ..config("tap0", None)
        }
        .validate()
        .unwrap_err();
        assert!(matches!(err, NetConfigError::EmptyId));
    }
}
