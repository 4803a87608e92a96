//! Go-style duration strings (`"10s"`, `"500ms"`, `"1m30s"`, `"1.5s"`), the form the
//! OpenTelemetry Collector's configuration uses for every wait and window.

use core::fmt;
use core::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// The longest duration accepted: Go's `time.Duration` is a signed 64-bit count of nanoseconds.
pub const MAX_DURATION_NANOS: u64 = i64::MAX as u64;

/// Fraction digits read after the decimal point; further digits are below a nanosecond for every
/// unit and are ignored, as Go does.
pub const MAX_FRACTION_DIGITS: usize = 18;

/// The units Go accepts, with their length in nanoseconds.
const UNITS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration string. Negative durations are refused: every duration in this
/// configuration is a wait or a window.
pub fn parse(s: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration \"{s}\": {why}");
    let rest = match s.as_bytes().first() {
        Some(b'-') => return Err(invalid("must not be negative")),
        Some(b'+') => &s[1..],
        _ => s,
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid("empty"));
    }
    let mut total: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let int_len = digits_len(rest);
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => f.split_at(digits_len(f)),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid("missing unit (use ns, us, ms, s, m or h)"));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(invalid(&format!(
                "unknown unit \"{unit}\" (use ns, us, ms, s, m or h)"
            )));
        };
        let too_long = || invalid("too long");
        let mut int_value: u128 = 0;
        for d in int_part.bytes() {
            int_value = int_value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d - b'0')))
                .filter(|v| *v <= u128::from(MAX_DURATION_NANOS))
                .ok_or_else(too_long)?;
        }
        let mut frac_value: u128 = 0;
        let mut frac_scale: u128 = 1;
        for d in frac_part.bytes().take(MAX_FRACTION_DIGITS) {
            frac_value = frac_value * 10 + u128::from(d - b'0');
            frac_scale *= 10;
        }
        let scale = u128::from(scale);
        total = int_value
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_value * scale / frac_scale))
            .and_then(|v| v.checked_add(total))
            .filter(|v| *v <= u128::from(MAX_DURATION_NANOS))
            .ok_or_else(too_long)?;
        rest = after;
    }
    let nanos = u64::try_from(total).map_err(|_| invalid("too long"))?;
    Ok(Duration::from_nanos(nanos))
}

fn digits_len(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string with a unit, like \"30s\" or \"500ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }
}

/// `deserialize_with` for a required duration field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

struct OptionalDurationVisitor;

impl<'de> Visitor<'de> for OptionalDurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string with a unit, like \"30s\" or \"500ms\", or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        deserialize(d).map(Some)
    }
}

/// `deserialize_with` for an optional duration field (absent or `null` means unset).
pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_option(OptionalDurationVisitor)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Result<u64, String> {
        parse(s).map(|d| d.as_nanos() as u64)
    }

    #[test]
    fn go_forms() {
        assert_eq!(ns("10s"), Ok(10_000_000_000));
        assert_eq!(ns("500ms"), Ok(500_000_000));
        assert_eq!(ns("1m30s"), Ok(90_000_000_000));
        assert_eq!(ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(ns(".5s"), Ok(500_000_000));
        assert_eq!(ns("5.s"), Ok(5_000_000_000));
        assert_eq!(ns("2h45m"), Ok(9_900_000_000_000));
        assert_eq!(ns("1us"), Ok(1_000));
        assert_eq!(ns("1\u{b5}s"), Ok(1_000));
        assert_eq!(ns("1\u{3bc}s"), Ok(1_000));
        assert_eq!(ns("7ns"), Ok(7));
        assert_eq!(ns("+3s"), Ok(3_000_000_000));
        assert_eq!(ns("0"), Ok(0));
        assert_eq!(ns("0s"), Ok(0));
        assert_eq!(ns("1.000000000000000000001s"), Ok(1_000_000_000));
    }

    #[test]
    fn bad_forms() {
        for bad in [
            "", "10", "s", "10x", "1.s.", "-1s", ".s", "1 s", "10S", "1e3s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(ns("10x").unwrap_err().contains("unknown unit \"x\""));
        assert!(ns("-1s").unwrap_err().contains("negative"));
        assert!(ns("3000000h").unwrap_err().contains("too long"));
        assert!(ns("99999999999999999999999999999999999999999s").is_err());
        assert_eq!(ns("2562047h"), Ok(2_562_047 * 3_600_000_000_000));
    }
}
