//! What a dead letter says: the event as it arrived, why it failed, how
//! often it was tried and when. Written as JSON to the pipeline's
//! dead-letter sink, so it can be inspected and sent through again.

use serde::Serialize;

use crate::event::Event;

#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub pipeline: &'a str,
    pub function: &'a str,
    /// The idempotency key of the event.
    pub key: &'a str,
    /// The event, when it could be built (absent when its payload could
    /// not be read or its record decoded).
    pub event: Option<&'a Event>,
    /// What went wrong last, as the error chain's text.
    pub error: String,
    /// `load`, `invoke` or `write`: where the last attempt failed.
    pub stage: &'static str,
    /// The `outcome` of the last invocation, when it got that far.
    pub outcome: Option<&'static str>,
    pub retryable: bool,
    pub attempts: u32,
    /// RFC 3339 timestamps.
    pub first_attempt_at: String,
    pub failed_at: String,
}

/// Formats a time as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
