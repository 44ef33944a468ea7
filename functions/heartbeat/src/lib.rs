//! The `heartbeat` function: on each tick of a schedule, a short "runnel is
//! up" message to every sink its pipeline declares.
//!
//! Pointed at an uptime monitor's push URL (healthchecks.io, Uptime Kuma's
//! push monitors, Cronitor), it is a dead man's switch: the monitor alerts
//! when the beats stop, which is what no check runnel makes of itself can
//! say. Each beat is keyed by the tick's scheduled time, so a tick run
//! again after a crash repeats the same beat, never a new one.

mod beat;

use runnel_sdk::{Context, Error, Event, Guest, Output};

struct Heartbeat;

runnel_sdk::export!(Heartbeat);

impl Guest for Heartbeat {
    fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        // A payload that is not a tick never becomes one: not retried.
        let beat = beat::Beat::for_tick(&ctx.pipeline, &event.data)
            .map_err(|message| Error::reject(format!("event {}: {message}", event.id)))?;
        runnel_sdk::log::info(&format!(
            "beat for {} to {} sinks",
            beat.scheduled,
            ctx.sinks.len()
        ));
        ctx.sinks
            .iter()
            .map(|sink| {
                Ok(Output::json(sink.name.as_str(), &beat)?.with_key(Some(beat.scheduled.clone())))
            })
            .collect()
    }
}
