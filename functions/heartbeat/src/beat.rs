//! A schedule tick's event data in, the beat a monitor receives out.

use serde::{Deserialize, Serialize};

/// The fields of a `runnel.schedule.tick` event's data this function reads.
#[derive(Deserialize)]
struct Tick {
    scheduled: String,
    actual: String,
    #[serde(default)]
    catch_up: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Beat {
    pub status: &'static str,
    pub pipeline: String,
    /// The tick's scheduled time (UTC, RFC 3339).
    pub scheduled: String,
    /// When it fired.
    pub actual: String,
    /// A tick that fell due while runnel was down, run late.
    pub catch_up: bool,
}

impl Beat {
    pub fn for_tick(pipeline: &str, data: &[u8]) -> Result<Self, String> {
        let tick: Tick = serde_json::from_slice(data).map_err(|e| {
            format!("not a schedule tick ({e}); use a [source] of type \"schedule\"")
        })?;
        Ok(Beat {
            status: "up",
            pipeline: pipeline.to_owned(),
            scheduled: tick.scheduled,
            actual: tick.actual,
            catch_up: tick.catch_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_becomes_a_beat() {
        let data = br#"{"schedule":"every 5m","timezone":"UTC","scheduled":"2026-12-03T12:05:00Z",
            "scheduled_local":"2026-12-03T12:05:00+00:00[UTC]","actual":"2026-12-03T12:05:03.2Z","catch_up":false}"#;
        let beat = Beat::for_tick("heartbeat", data).unwrap();
        assert_eq!(beat.scheduled, "2026-12-03T12:05:00Z");
        assert_eq!(beat.actual, "2026-12-03T12:05:03.2Z");
        assert_eq!(
            serde_json::to_string(&beat).unwrap(),
            r#"{"status":"up","pipeline":"heartbeat","scheduled":"2026-12-03T12:05:00Z","actual":"2026-12-03T12:05:03.2Z","catch_up":false}"#
        );
    }

    #[test]
    fn anything_else_is_refused_saying_what_it_wants() {
        let error = Beat::for_tick("heartbeat", b"photos/a.jpg").unwrap_err();
        assert!(error.contains("not a schedule tick"), "{error}");
    }
}
