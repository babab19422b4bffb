//! Go-style duration strings (`90s`, `10m`, `1h30m`), the form Kubernetes users
//! already write and CEL's `duration()` understands, so the apiserver and the
//! operator agree on what a field means.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected a sequence like 90s, 10m or 1h30m")]
    Invalid(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `[0-9]+(h|m|s|ms)` repeated, e.g. `1h30m`. Fractions and signs are
/// refused: every duration agentid takes is a positive policy bound.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    let overflow = || DurationError::Overflow(input.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(invalid());
        }
        let n: u64 = s[start..i].parse().map_err(|_| overflow())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor_ms: u64 = match &s[unit_start..i] {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(invalid()),
        };
        let part = n.checked_mul(factor_ms).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way `parse` reads it (largest units first).
pub fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    let h = secs / 3600;
    secs %= 3600;
    let m = secs / 60;
    secs %= 60;
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse(" 5m ").unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn refuses_malformed_durations() {
        for bad in ["", "10", "m", "10x", "-5m", "1.5h", "10 m", "h10", "10mm"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(parse("99999999999999999999h"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse("9999999999999999h"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn format_round_trips() {
        for s in ["10m", "1h", "1h30m", "45s", "2h5m7s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
