//! `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` tokens of the command line, Linux's syntax for
//! virtio-mmio devices that no firmware table describes (QEMU's microvm adds them by default).
//!
//! The size takes Linux's `memparse` suffixes (`K`, `M`, `G`, either case); size, base and IRQ are
//! decimal or `0x` hexadecimal. Linux's optional platform-device id after a second colon is
//! accepted and ignored. The IRQ is kept for reports only: the drivers poll.

use core::fmt;

/// The command-line key that describes one device.
pub const KEY: &str = "virtio_mmio.device";

/// One virtio-mmio device as the command line describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// The interrupt line (GSI) the device raises.
    pub irq: u32,
}

/// A `virtio_mmio.device=` token that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadDevice<'a> {
    /// The whole token.
    pub token: &'a str,
}

impl fmt::Display for BadDevice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad device {:?}: expected {KEY}=<size>@<base>:<irq>",
            self.token
        )
    }
}

/// The devices of a command line, in order; tokens with the key but a bad value come out as
/// errors.
pub fn devices(cmdline: &str) -> impl Iterator<Item = Result<MmioDevice, BadDevice<'_>>> + '_ {
    cmdline.split(' ').filter_map(|token| {
        let value = token.strip_prefix(KEY)?.strip_prefix('=')?;
        Some(parse_device(value).ok_or(BadDevice { token }))
    })
}

/// Parses `<size>@<base>:<irq>[:<id>]`.
pub fn parse_device(value: &str) -> Option<MmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = match rest.split_once(':') {
        Some((irq, id)) => {
            parse_number(id)?;
            irq
        }
        None => rest,
    };
    let device = MmioDevice {
        base: parse_number(base)?,
        size: parse_size(size)?,
        irq: u32::try_from(parse_number(irq)?).ok()?,
    };
    (device.size > 0 && device.base.checked_add(device.size).is_some()).then_some(device)
}

/// A size with an optional `K`/`M`/`G` suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let number = parse_number(digits)?;
    (number.leading_zeros() >= shift).then(|| number << shift)
}

/// Decimal, or hexadecimal with `0x`.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_and_qemu_syntax() {
        assert_eq!(
            parse_device("4K@0xd0000000:5"),
            Some(MmioDevice {
                base: 0xd000_0000,
                size: 4096,
                irq: 5
            })
        );
        // QEMU microvm writes "virtio_mmio.device=512@0xfeb00e00:23".
        assert_eq!(
            parse_device("512@0xfeb00e00:23"),
            Some(MmioDevice {
                base: 0xfeb0_0e00,
                size: 512,
                irq: 23
            })
        );
        assert_eq!(
            parse_device("0x1000@3489660928:10:3").unwrap().base,
            0xd000_0000
        );
        assert_eq!(parse_device("1m@0x1000:1").unwrap().size, 1 << 20);
        assert_eq!(parse_device("1G@0x0:0").unwrap().size, 1 << 30);
    }

    #[test]
    fn bad_values_are_rejected() {
        for value in [
            "",
            "4K",
            "4K@0xd0000000",
            "@0xd0000000:5",
            "4K@:5",
            "4X@0xd0000000:5",
            "0@0xd0000000:5",
            "4K@0xd0000000:5:x",
            "4K@0xd0000000:0x100000000",
            "4K@0xfffffffffffff000:5",
            "0xffffffffffffffffK@0:1",
            "4K@-1:5",
        ] {
            assert_eq!(parse_device(value), None, "{value:?}");
        }
    }

    #[test]
    fn devices_come_out_in_order() {
        let cmdline = "keel.blk virtio_mmio.device=4K@0xd0000000:5 quiet \
                       virtio_mmio.device=bad virtio_mmio.devices=1 virtio_mmio.device=4K@0xd0001000:6";
        let found: Vec<_> = devices(cmdline).collect();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].unwrap().base, 0xd000_0000);
        assert_eq!(
            found[1],
            Err(BadDevice {
                token: "virtio_mmio.device=bad"
            })
        );
        assert_eq!(found[2].unwrap().irq, 6);
        assert_eq!(devices("keel.net").count(), 0);
    }
}
