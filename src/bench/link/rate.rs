//! Link rates as people write them ("100mbit", "12.5MB/s") and as reports print them.

use std::fmt;
use std::str::FromStr;

/// Parses a rate into bytes per second.
///
/// Accepted: a positive decimal number, optional space, then a unit, optionally
/// followed by `/s`:
///
/// - bits: `bit` or `bits` with an optional SI prefix `k`, `M`, `G`, `T` (any case,
///   powers of 1000) or binary prefix `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024):
///   `800kbit`, `100mbit`, `25Mbit/s`, `1gbit`;
/// - bytes: `B`, `byte` or `bytes` with the same prefixes: `12.5MB/s`, `64KiB/s`;
/// - no unit at all: bytes per second (`12500000`).
///
/// Spellings that people use for both bits and bytes are refused rather than guessed:
/// a lone lowercase `b` (`100mb`), `bps` (`100Mbps` is megabits to most people and
/// megabytes to `tc`), and a prefix without a unit (`100M`). Bits are rounded to the
/// nearest byte; a rate below 1 byte/s is refused.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let fail = |reason: &str| format!("invalid rate {text:?}: {reason}");
    let trimmed = text.trim();
    let body = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    if number.is_empty() {
        return Err(fail("expected a number first"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| fail("the number is malformed"))?;
    let per_second = value * unit_factor(unit.trim()).map_err(|reason| fail(&reason))?;
    if !per_second.is_finite() || per_second > u64::MAX as f64 {
        return Err(fail("too large"));
    }
    let rounded = per_second.round();
    if rounded < 1.0 {
        return Err(fail("below 1 byte/s"));
    }
    Ok(rounded as u64)
}

/// Bytes per second that one of `unit` stands for.
fn unit_factor(unit: &str) -> Result<f64, String> {
    if unit.is_empty() {
        return Ok(1.0);
    }
    let (scale, rest) = split_prefix(unit);
    let lower = rest.to_ascii_lowercase();
    match (rest, lower.as_str()) {
        (_, "bit" | "bits") => Ok(scale / 8.0),
        ("B", _) | (_, "byte" | "bytes") => Ok(scale),
        (_, "bps") => Err(format!(
            "{unit:?} is ambiguous; write \"{p}bit\" for bits or \"{p}B/s\" for bytes",
            p = &unit[..unit.len() - rest.len()]
        )),
        ("b", _) => Err(format!(
            "{unit:?} is ambiguous; write \"{p}bit\" for bits or \"{p}B\" for bytes",
            p = &unit[..unit.len() - rest.len()]
        )),
        (_, "") => Err(format!(
            "{unit:?} has no unit; write \"{unit}bit\" for bits or \"{unit}B\" for bytes"
        )),
        _ => Err(format!(
            "unknown unit {unit:?}; use bits (\"mbit\") or bytes (\"MB\")"
        )),
    }
}

/// Splits an SI or binary prefix off `unit`: its factor and the rest.
fn split_prefix(unit: &str) -> (f64, &str) {
    let mut chars = unit.chars();
    let power = match chars.next().map(|c| c.to_ascii_lowercase()) {
        Some('k') => 1,
        Some('m') => 2,
        Some('g') => 3,
        Some('t') => 4,
        _ => return (1.0, unit),
    };
    let rest = chars.as_str();
    match rest.strip_prefix('i') {
        Some(after) => (1024f64.powi(power), after),
        None => (1000f64.powi(power), rest),
    }
}

/// A rate in bytes per second that prints the way network people read it.
///
/// `{}` prints bits with an SI prefix (`100 Mbit/s`); `{:#}` prints bytes
/// (`12.5 MB/s`). Up to three decimals are kept: exact for round rates, whose text
/// parses back with [`parse_rate`] (or [`str::parse`]) to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (value, unit) = if f.alternate() {
            (self.0 as f64, "B/s")
        } else {
            (self.0 as f64 * 8.0, "bit/s")
        };
        let (scaled, prefix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
            .into_iter()
            .find(|(scale, _)| value >= *scale)
            .map_or((value, ""), |(scale, prefix)| (value / scale, prefix));
        let number = format!("{scaled:.3}");
        let number = number.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{number} {prefix}{unit}")
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_rate(text).map(Rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("100mbit", 12_500_000)]
    #[case("1gbit", 125_000_000)]
    #[case("1Gbit/s", 125_000_000)]
    #[case("25Mbit/s", 3_125_000)]
    #[case("12.5MB/s", 12_500_000)]
    #[case("800kbit", 100_000)]
    #[case("800Kbit", 100_000)]
    #[case("10 mbit", 1_250_000)]
    #[case(" 10mbits/s ", 1_250_000)]
    #[case("64KiB/s", 65_536)]
    #[case("1MiB", 1_048_576)]
    #[case("8Mibit", 1_048_576)]
    #[case("2 kB", 2_000)]
    #[case("3 bytes/s", 3)]
    #[case("1byte", 1)]
    #[case("12500000", 12_500_000)]
    #[case("0.5MB/s", 500_000)]
    #[case("8bit", 1)]
    #[case("12bit", 2)]
    #[case("1Tbit", 125_000_000_000)]
    fn parses(#[case] text: &str, #[case] bytes_per_second: u64) {
        assert_eq!(parse_rate(text), Ok(bytes_per_second));
    }

    #[rstest]
    #[case("", "expected a number")]
    #[case("mbit", "expected a number")]
    #[case("1..2mbit", "malformed")]
    #[case("100mb", "ambiguous")]
    #[case("100Mb/s", "ambiguous")]
    #[case("100b", "ambiguous")]
    #[case("100Mbps", "ambiguous")]
    #[case("100M", "has no unit")]
    #[case("100 furlongs", "unknown unit")]
    #[case("-5mbit", "expected a number")]
    #[case("0mbit", "below 1 byte/s")]
    #[case("3bit", "below 1 byte/s")]
    #[case("1e3mbit", "unknown unit")]
    #[case("99999999999999999999TB", "too large")]
    fn refuses(#[case] text: &str, #[case] reason: &str) {
        let error = parse_rate(text).unwrap_err();
        assert!(error.contains(reason), "{text:?}: {error}");
        assert!(error.contains(&format!("{text:?}")), "{error}");
    }

    #[rstest]
    #[case(12_500_000, "100 Mbit/s", "12.5 MB/s")]
    #[case(125_000_000, "1 Gbit/s", "125 MB/s")]
    #[case(3_125_000, "25 Mbit/s", "3.125 MB/s")]
    #[case(100_000, "800 kbit/s", "100 kB/s")]
    #[case(1_250_000, "10 Mbit/s", "1.25 MB/s")]
    #[case(50, "400 bit/s", "50 B/s")]
    #[case(1, "8 bit/s", "1 B/s")]
    #[case(123_456_789, "987.654 Mbit/s", "123.457 MB/s")]
    fn displays(#[case] bytes_per_second: u64, #[case] bits: &str, #[case] bytes: &str) {
        assert_eq!(Rate(bytes_per_second).to_string(), bits);
        assert_eq!(format!("{:#}", Rate(bytes_per_second)), bytes);
    }

    #[rstest]
    #[case(12_500_000)]
    #[case(125_000_000)]
    #[case(3_125_000)]
    #[case(100_000)]
    #[case(1)]
    #[case(7)]
    #[case(654_000)]
    fn display_parses_back(#[case] bytes_per_second: u64) {
        let rate = Rate(bytes_per_second);
        assert_eq!(rate.to_string().parse(), Ok(rate));
        assert_eq!(format!("{rate:#}").parse(), Ok(rate));
    }
}
