//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `1.5Gi`) to integers and back.
//!
//! Only the forms Kubernetes itself accepts: a decimal number (optionally signed, with a fraction)
//! and one suffix, binary (`Ki`…`Ei`), decimal (`k`, `M`…`E`, `m`, `u`, `n`) or an exponent
//! (`1e3`). Amounts are rounded up to whole units, as the API server does for requests.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{text}` is not a resource quantity: {why}")]
pub struct QuantityError {
    /// The text.
    pub text: String,
    /// Why.
    pub why: &'static str,
}

/// The quantity as a number of units times 10^-9 (nano units), exact for every suffix but `Ei`
/// amounts beyond 2^127 / 10^9.
fn nanos(text: &str) -> Result<i128, QuantityError> {
    let err = |why| QuantityError {
        text: text.to_string(),
        why,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return Err(err("no number"));
    }
    let (negative, digits) = match number.as_bytes()[0] {
        b'-' => (true, &number[1..]),
        b'+' => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err("malformed number"));
    }
    // Multiplier as (numerator, power of ten) applied to nano units.
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| err("malformed exponent"))?;
            if !(-9..=18).contains(&e) {
                return Err(err("exponent out of range"));
            }
            (1, e)
        }
        _ => return Err(err("unknown suffix")),
    };
    if fraction.len() > 9 {
        return Err(err("more than 9 fractional digits"));
    }
    let too_big = || err("too large");
    let parse = |s: &str| -> Result<i128, QuantityError> {
        if s.is_empty() {
            Ok(0)
        } else {
            s.parse::<i128>().map_err(|_| too_big())
        }
    };
    // value = (whole + fraction / 10^len) * mul * 10^exp10, in nanos: * 10^9.
    let scale = 10i128.pow(u32::try_from(fraction.len()).map_err(|_| too_big())?);
    let mantissa = parse(whole)?
        .checked_mul(scale)
        .and_then(|w| w.checked_add(parse(fraction).ok()?))
        .ok_or_else(too_big)?;
    let mut value = mantissa.checked_mul(mul).ok_or_else(too_big)?;
    // Now value is in units of 10^-len; bring it to 10^-9 with exp10.
    let shift = 9 + exp10 - i32::try_from(fraction.len()).map_err(|_| too_big())?;
    if shift >= 0 {
        value = value
            .checked_mul(10i128.pow(shift.unsigned_abs()))
            .ok_or_else(too_big)?;
    } else {
        let div = 10i128.pow(shift.unsigned_abs());
        value = (value + div - 1) / div;
    }
    Ok(if negative { -value } else { value })
}

/// A quantity in whole units, rounded up (`1500m` → 2, `1Mi` → 1048576).
pub fn units(q: &Quantity) -> Result<u64, QuantityError> {
    let n = nanos(&q.0)?;
    if n < 0 {
        return Err(QuantityError {
            text: q.0.clone(),
            why: "negative",
        });
    }
    let whole = (n + 999_999_999) / 1_000_000_000;
    u64::try_from(whole).map_err(|_| QuantityError {
        text: q.0.clone(),
        why: "too large",
    })
}

/// A memory quantity in bytes.
pub fn bytes(q: &Quantity) -> Result<u64, QuantityError> {
    units(q)
}

/// A CPU quantity in thousandths of a CPU (`500m` → 500, `2` → 2000).
pub fn millis(q: &Quantity) -> Result<u64, QuantityError> {
    let n = nanos(&q.0)?;
    if n < 0 {
        return Err(QuantityError {
            text: q.0.clone(),
            why: "negative",
        });
    }
    u64::try_from((n + 999_999) / 1_000_000).map_err(|_| QuantityError {
        text: q.0.clone(),
        why: "too large",
    })
}

/// Bytes as a quantity in `Mi` when they are whole MiB, else in `Ki`, else plain.
pub fn from_bytes(bytes: u64) -> Quantity {
    if bytes.is_multiple_of(1 << 20) {
        Quantity(format!("{}Mi", bytes >> 20))
    } else if bytes.is_multiple_of(1 << 10) {
        Quantity(format!("{}Ki", bytes >> 10))
    } else {
        Quantity(bytes.to_string())
    }
}

/// Thousandths of a CPU as a quantity (`2000` → `2`, `2100` → `2100m`).
pub fn from_millis(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn memory_quantities_in_every_suffix_become_bytes() {
        for (text, want) in [
            ("128Mi", 128u64 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("64Ki", 64 << 10),
            ("1G", 1_000_000_000),
            ("500M", 500_000_000),
            ("12e6", 12_000_000),
            ("1024", 1024),
            ("0.5Ki", 512),
            ("1m", 1),
        ] {
            assert_eq!(bytes(&q(text)), Ok(want), "{text}");
        }
    }

    #[test]
    fn cpu_quantities_become_millis() {
        assert_eq!(millis(&q("500m")), Ok(500));
        assert_eq!(millis(&q("2")), Ok(2000));
        assert_eq!(millis(&q("1.25")), Ok(1250));
        assert_eq!(millis(&q("100u")), Ok(1));
    }

    #[test]
    fn malformed_quantities_are_refused_with_the_reason() {
        assert_eq!(bytes(&q("12XB")).unwrap_err().why, "unknown suffix");
        assert_eq!(bytes(&q("Mi")).unwrap_err().why, "no number");
        assert_eq!(bytes(&q("1.2.3")).unwrap_err().why, "malformed number");
        assert_eq!(bytes(&q("-1Mi")).unwrap_err().why, "negative");
        assert_eq!(
            bytes(&q("1.5Gi")).map(from_bytes),
            Ok(Quantity("1536Mi".into()))
        );
        assert_eq!(from_millis(2100), Quantity("2100m".into()));
        assert_eq!(from_millis(3000), Quantity("3".into()));
    }
}
