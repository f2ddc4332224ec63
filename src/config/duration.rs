//! Go duration strings (`"1s"`, `"200ms"`, `"1m30s"`), as containerd reads them.
//!
//! containerd parses `dial_timeout` and `image_pull_progress_timeout` with Go's
//! `time.ParseDuration`; this accepts the same grammar so that a value containerd takes
//! is never refused here, and the reverse. Negative durations, which Go accepts, are
//! refused: containerd would time out every dial, or panic in its progress ticker.

use std::time::Duration;

/// Nanoseconds in each unit Go knows. `µs` is U+00B5 (micro sign), `μs` U+03BC (Greek mu).
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// The largest duration Go represents (`1<<63 - 1` ns, about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration string: a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `"1m30s"`, `"1.5h"`;
/// `"0"` alone needs no unit. The error is the reason, for a message that already names
/// the file and key.
pub(crate) fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(len)
            }
            None => ("", after),
        };
        // Go wants a digit on at least one side of the point: ".5s" and "5.s" are fine,
        // "." is not.
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("missing unit in duration {text:?}"));
        }
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, nanos)| nanos)
            .ok_or_else(|| format!("unknown unit {unit:?} in duration {text:?}"))?;

        let overflow = || format!("duration {text:?} is too long");
        let whole: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(overflow)?;
        if !frac_digits.is_empty() {
            // Past 20 digits a fraction cannot move the result by a nanosecond (the
            // largest unit is below 10^13 ns), and 10^20 * unit still fits in a u128.
            let kept = &frac_digits[..frac_digits.len().min(20)];
            let fraction: u128 = kept.parse().map_err(|_| overflow())?;
            nanos += fraction * scale / 10u128.pow(kept.len() as u32);
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
        rest = after;
    }
    if negative && total > 0 {
        return Err(format!("duration {text:?} is negative"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way Go prints one (`1m30s`, `200ms`, `0s`), for messages.
pub(crate) fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = match nanos {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("\u{b5}s", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = nanos % 60_000_000_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", decimal(seconds, 1_000_000_000)));
    out
}

/// `value / scale` with the fraction's trailing zeros dropped, as Go prints it.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::zero("0", 0)]
    #[case::zero_seconds("0s", 0)]
    #[case::plus("+5s", 5_000_000_000)]
    #[case::minus_zero("-0", 0)]
    #[case::seconds("1s", 1_000_000_000)]
    #[case::millis("200ms", 200_000_000)]
    #[case::compound("1m30s", 90_000_000_000)]
    #[case::hours_minutes("2h45m", 9_900_000_000_000)]
    #[case::fraction("1.5h", 5_400_000_000_000)]
    #[case::leading_point(".5s", 500_000_000)]
    #[case::trailing_point("5.s", 5_000_000_000)]
    #[case::micro_sign("3\u{b5}s", 3_000)]
    #[case::greek_mu("3\u{3bc}s", 3_000)]
    #[case::us("3us", 3_000)]
    #[case::nanos("7ns", 7)]
    #[case::fraction_below_nanos("1.0000000009s", 1_000_000_000)]
    #[case::many_fraction_digits("0.123456789012345678901234567890123s", 123_456_789)]
    #[case::repeated_unit("1s1s", 2_000_000_000)]
    #[case::max("2562047h47m16.854775807s", i64::MAX as u64)]
    fn parses(#[case] text: &str, #[case] nanos: u64) {
        assert_eq!(parse_go_duration(text), Ok(Duration::from_nanos(nanos)));
    }

    #[rstest]
    #[case::empty("", "invalid duration")]
    #[case::sign_only("-", "invalid duration")]
    #[case::no_unit("5", "missing unit")]
    #[case::no_unit_after_unit("1s5", "missing unit")]
    #[case::unknown_unit("5d", "unknown unit \"d\"")]
    #[case::space("5 s", "unknown unit \" s\"")]
    #[case::point_only(".s", "invalid duration")]
    #[case::negative("-1s", "is negative")]
    #[case::too_long("2562047h47m16.854775808s", "too long")]
    #[case::huge("99999999999999999999999999999999999999999h", "too long")]
    #[case::table_default("default = \"5m\"", "invalid duration")]
    fn refuses(#[case] text: &str, #[case] reason: &str) {
        let err = parse_go_duration(text).unwrap_err();
        assert!(err.contains(reason), "{text:?}: {err}");
    }

    #[rstest]
    #[case(0, "0s")]
    #[case(7, "7ns")]
    #[case(1_500, "1.5\u{b5}s")]
    #[case(200_000_000, "200ms")]
    #[case(1_000_000_000, "1s")]
    #[case(90_000_000_000, "1m30s")]
    #[case(300_000_000_000, "5m0s")]
    #[case(3_600_000_000_000, "1h0m0s")]
    #[case(5_400_500_000_000, "1h30m0.5s")]
    fn formats_like_go(#[case] nanos: u64, #[case] text: &str) {
        let d = Duration::from_nanos(nanos);
        assert_eq!(format_go_duration(d), text);
        assert_eq!(parse_go_duration(text), Ok(d));
    }
}
