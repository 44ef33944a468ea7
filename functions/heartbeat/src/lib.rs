//! The `heartbeat` function: on each tick of a schedule, a short "runnel is
//! up" message to every sink its pipeline declares.
//!
//! Pointed at an uptime monitor's push URL (healthchecks.io, Uptime Kuma's
//! push monitors, Cronitor), it is a dead man's switch: the monitor alerts
//! when the beats stop, which is what no check runnel makes of itself can
//! say. Each beat is keyed by the tick's scheduled time, so a tick run
//! again after a crash repeats the same beat, never a new one.

mod beat;

wit_bindgen::generate!({ path: "../wit", world: "function" });

struct Heartbeat;

export!(Heartbeat);

impl Guest for Heartbeat {
    fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        let beat = beat::Beat::for_tick(&ctx.pipeline, &event.data).map_err(|message| Error {
            message: format!("event {}: {message}", event.id),
            // A payload that is not a tick never becomes one.
            retryable: false,
        })?;
        let body = serde_json::to_vec(&beat).expect("a beat is plain data");
        runnel::function::log::log(
            runnel::function::log::Level::Info,
            &format!("beat for {} to {} sinks", beat.scheduled, ctx.sinks.len()),
        );
        Ok(ctx
            .sinks
            .iter()
            .map(|sink| Output {
                sink: sink.name.clone(),
                key: Some(beat.scheduled.clone()),
                content_type: Some("application/json".into()),
                attributes: Vec::new(),
                data: body.clone(),
            })
            .collect())
    }
}
