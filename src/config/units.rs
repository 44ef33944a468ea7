//! Durations and sizes as people write them in config ("250ms", "64MiB"),
//! parsed once at the config boundary into `Duration` and bytes.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text)?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => {
            return Err(format!(
                "missing unit in duration {text:?}; use ms, s, m, h or d"
            ));
        }
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}; use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(number * scale)
        .map_err(|_| format!("duration {text:?} is too long; use at most 100 years"))
        .and_then(|d| {
            // Far past any limit runnel has, and safe to add to an `Instant`.
            if d > Duration::from_secs(100 * 365 * 86400) {
                Err(format!(
                    "duration {text:?} is too long; use at most 100 years"
                ))
            } else {
                Ok(d)
            }
        })
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let bytes = number * scale as f64;
    // `as u64` would saturate silently.
    if bytes >= u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(bytes as u64)
}

fn split_number(text: &str) -> Result<(f64, &str), String> {
    let trimmed = text.trim();
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(end);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a number followed by a unit, found {text:?}"))?;
    Ok((number, unit.trim()))
}

/// Formats a byte count the way config writes it ("64MiB").
pub fn format_size(bytes: u64) -> String {
    for (unit, scale) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1 GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("12 parsecs").is_err());
    }

    /// Numbers too large for a `Duration` or a byte count are reported,
    /// not a panic (found by hand: `timeout = "300000000000000d"`).
    #[test]
    fn overflowing_numbers_are_errors() {
        let e = parse_duration("300000000000000d").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse_duration("101000000000000000000000000000000000000s").is_err());
        assert!(parse_duration("36600000d").is_err());
        assert_eq!(
            parse_duration("36500d").unwrap(),
            Duration::from_secs(36500 * 86400)
        );
        assert!(parse_size("1e30GiB").is_err());
        assert!(
            parse_size("99999999999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
