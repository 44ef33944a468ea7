//! A pipeline's metric handles, registered once when it is built.
//!
//! `counter!(name, labels…)` at every use builds the labels (cloning the
//! pipeline's name) and looks the series up in the registry, eight times an
//! event; a handle is an atomic behind an `Arc`. Registering the series up
//! front also exports each at zero from the start, as Prometheus prefers.

use std::collections::BTreeMap;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::idempotency::Completion;
use crate::metrics as m;
use crate::runtime::InvokeError;

pub(super) struct Meters {
    pub received: Counter,
    pub inflight: Gauge,
    pub duplicates_skipped: Counter,
    pub retries: Counter,
    pub dead_letters: Counter,
    pub source_errors: Counter,
    done: Counter,
    dead_lettered: Counter,
    invocations: [Counter; InvokeError::OUTCOMES.len()],
    pub invocation_duration: Histogram,
    pub instantiation_duration: Histogram,
    pub billed_byte_seconds: Counter,
    stages: [Histogram; Stage::ALL.len()],
    sinks: BTreeMap<String, SinkMeters>,
}

/// Where an event's time goes: `runnel_stage_duration_seconds{stage}`.
#[derive(Clone, Copy)]
pub(super) enum Stage {
    Queued,
    Load,
    Claim,
    Invoke,
    Write,
    Complete,
    Ack,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Queued,
        Stage::Load,
        Stage::Claim,
        Stage::Invoke,
        Stage::Write,
        Stage::Complete,
        Stage::Ack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Load => "load",
            Stage::Claim => "claim",
            Stage::Invoke => "invoke",
            Stage::Write => "write",
            Stage::Complete => "complete",
            Stage::Ack => "ack",
        }
    }
}

/// One sink's output counters.
pub(super) struct SinkMeters {
    pub written: Counter,
    pub skipped: Counter,
    pub dropped: Counter,
}

impl Meters {
    pub fn new<'a>(pipeline: &str, function: &str, sinks: impl Iterator<Item = &'a str>) -> Self {
        let p = || ("pipeline", pipeline.to_owned());
        let completed = |result: &'static str| counter!(m::EVENTS_COMPLETED, "pipeline" => pipeline.to_owned(), "result" => result);
        let pf = [p(), ("function", function.to_owned())];
        Self {
            received: counter!(m::EVENTS_RECEIVED, &[p()]),
            inflight: gauge!(m::INFLIGHT, &[p()]),
            duplicates_skipped: counter!(m::DUPLICATES_SKIPPED, &[p()]),
            retries: counter!(m::RETRIES, &[p()]),
            dead_letters: counter!(m::DEAD_LETTERS, &[p()]),
            source_errors: counter!(m::SOURCE_ERRORS, &[p()]),
            done: completed(Completion::Done.as_str()),
            dead_lettered: completed(Completion::DeadLettered.as_str()),
            invocations: InvokeError::OUTCOMES.map(|outcome| {
                counter!(m::INVOCATIONS, "pipeline" => pipeline.to_owned(), "function" => function.to_owned(), "outcome" => outcome)
            }),
            invocation_duration: histogram!(m::INVOCATION_DURATION, &pf),
            instantiation_duration: histogram!(m::INSTANTIATION_DURATION, "function" => function.to_owned()),
            billed_byte_seconds: counter!(m::BILLED_BYTE_SECONDS, &pf),
            stages: Stage::ALL.map(|stage| {
                histogram!(m::STAGE_DURATION, "pipeline" => pipeline.to_owned(), "stage" => stage.as_str())
            }),
            sinks: sinks
                .map(|sink| {
                    let labels = [p(), ("sink", sink.to_owned())];
                    let meters = SinkMeters {
                        written: counter!(m::OUTPUTS, &labels),
                        skipped: counter!(m::OUTPUTS_SKIPPED, &labels),
                        dropped: counter!(m::OUTPUTS_DROPPED, &labels),
                    };
                    (sink.to_owned(), meters)
                })
                .collect(),
        }
    }

    pub fn completed(&self, how: Completion) -> &Counter {
        match how {
            Completion::Done => &self.done,
            Completion::DeadLettered => &self.dead_lettered,
        }
    }

    /// The invocation counter of `outcome`, one of [`InvokeError::OUTCOMES`].
    pub fn invocations(&self, outcome: &str) -> &Counter {
        let index = InvokeError::OUTCOMES.iter().position(|o| *o == outcome);
        &self.invocations[index.expect("InvokeError::OUTCOMES lists every outcome")]
    }

    /// Records how long `stage` took, from `started`.
    pub fn stage(&self, stage: Stage, started: Instant) {
        self.stages[stage as usize].record(started.elapsed().as_secs_f64());
        // A child of the event's span, when one is current.
        crate::telemetry::record(
            stage.as_str(),
            opentelemetry::trace::SpanKind::Internal,
            started,
            Vec::new(),
            None,
        );
    }

    /// `work`, timed as `stage`.
    pub async fn timed<T>(&self, stage: Stage, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let value = work.await;
        self.stage(stage, started);
        value
    }

    /// The counters of a sink the pipeline declares.
    pub fn sink(&self, sink: &str) -> &SinkMeters {
        &self.sinks[sink]
    }
}
