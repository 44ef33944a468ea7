//! A pipeline's metric handles, registered once when it is built.
//!
//! `counter!(name, labels…)` at every use builds the labels (cloning the
//! pipeline's name) and looks the series up in the registry, eight times an
//! event; a handle is an atomic behind an `Arc`. Registering the series up
//! front also exports each at zero from the start, as Prometheus prefers.

use std::collections::BTreeMap;

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
    pub billed_gb_seconds: Gauge,
    sinks: BTreeMap<String, SinkMeters>,
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
            billed_gb_seconds: gauge!(m::BILLED_GB_SECONDS, &pf),
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

    /// The counters of a sink the pipeline declares.
    pub fn sink(&self, sink: &str) -> &SinkMeters {
        &self.sinks[sink]
    }
}
