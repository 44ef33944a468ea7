//! Every metric runnel exports, named once and described at start-up.
//!
//! Labels are low-cardinality by rule: pipeline, function, sink, outcome,
//! never an object key or event id.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_RECEIVED: &str = "runnel_events_received_total";
pub const INVOCATIONS: &str = "runnel_invocations_total";
pub const INVOCATION_DURATION: &str = "runnel_invocation_duration_seconds";
pub const INSTANTIATION_DURATION: &str = "runnel_instantiation_duration_seconds";
pub const STAGE_DURATION: &str = "runnel_stage_duration_seconds";
pub const RETRIES: &str = "runnel_retries_total";
pub const DEAD_LETTERS: &str = "runnel_dead_letters_total";
pub const DUPLICATES_SKIPPED: &str = "runnel_duplicates_skipped_total";
pub const OUTPUTS: &str = "runnel_outputs_total";
pub const OUTPUTS_SKIPPED: &str = "runnel_outputs_skipped_total";
pub const OUTPUTS_DROPPED: &str = "runnel_outputs_dropped_total";
pub const INFLIGHT: &str = "runnel_inflight_events";
pub const BILLED_BYTE_SECONDS: &str = "runnel_billed_byte_seconds_total";
pub const EVENTS_COMPLETED: &str = "runnel_events_completed_total";
pub const SOURCE_ERRORS: &str = "runnel_source_errors_total";
pub const UPLOADS: &str = "runnel_uploads_total";
pub const SCHEDULE_TICKS_SKIPPED: &str = "runnel_schedule_ticks_skipped_total";
pub const SOURCE_LAG: &str = "runnel_source_lag";
pub const SOURCE_PARTITIONS: &str = "runnel_source_partitions";
pub const BACKEND_UP: &str = "runnel_backend_up";
pub const HTTP_REQUESTS: &str = "runnel_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "runnel_http_request_duration_seconds";
pub const FUNCTION_HTTP_REQUESTS: &str = "runnel_function_http_requests_total";
pub const FUNCTION_HTTP_DURATION: &str = "runnel_function_http_request_duration_seconds";

const DURATION_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder, describes every metric, and starts its
/// upkeep (on the tokio runtime it is called from): a histogram keeps each
/// sample until a scrape or an upkeep folds it into the buckets, so without
/// one, an unscraped runnel grew by every duration it recorded (nine an
/// event).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    describe_counter!(EVENTS_RECEIVED, "Events a pipeline took from its source.");
    describe_counter!(
        INVOCATIONS,
        "Function invocations by outcome: ok, error, trap, timeout, oom."
    );
    describe_histogram!(
        INVOCATION_DURATION,
        Unit::Seconds,
        "Wall time of an invocation, instantiation included."
    );
    describe_histogram!(
        INSTANTIATION_DURATION,
        Unit::Seconds,
        "Time to create a fresh instance from the pre-linked component."
    );
    describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Where an event's time goes, by stage: queued (waiting for its turn behind events with the same ordering key or idempotency key), load (reading the object or message), claim (the idempotency store's lookup), invoke (handing the call to a thread, instantiating, running), write (an attempt's outputs to their sinks), complete (recording the completion), ack (acknowledging the source). The first attempt's claim and invoke run at once."
    );
    describe_counter!(
        RETRIES,
        "Attempts that were retried after a retryable failure."
    );
    describe_counter!(DEAD_LETTERS, "Events sent to the dead-letter sink.");
    describe_counter!(
        DUPLICATES_SKIPPED,
        "Redelivered events skipped because their idempotency key was complete."
    );
    describe_counter!(OUTPUTS, "Outputs written, by sink.");
    describe_counter!(
        OUTPUTS_SKIPPED,
        "Outputs not written again because an earlier attempt or process delivered them."
    );
    describe_counter!(
        OUTPUTS_DROPPED,
        "Outputs to a sink switched off by configuration (an empty webhook URL)."
    );
    describe_gauge!(
        INFLIGHT,
        "Events being worked on (claimed, invoked, outputs being written): at most the pipeline's concurrency. Events recording their completion and being acknowledged are not counted."
    );
    describe_counter!(
        BILLED_BYTE_SECONDS,
        "Memory limit in bytes times invocation seconds, summed: how serverless platforms bill (divide by 2^30 for GiB-seconds)."
    );
    describe_counter!(
        EVENTS_COMPLETED,
        "Events finished, by result: done or dead-lettered."
    );
    describe_counter!(
        SOURCE_ERRORS,
        "Failures to read or commit a source; the source retries."
    );
    describe_counter!(UPLOADS, "Objects stored through the HTTP API.");
    describe_counter!(
        SCHEDULE_TICKS_SKIPPED,
        "Schedule ticks that fell due while no runnel process ran and were not run (missed = \"skip\", or beyond catch_up_limit)."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "Requests to HTTP functions' routes, by pipeline, route pattern and status."
    );
    describe_counter!(
        FUNCTION_HTTP_REQUESTS,
        "Outbound HTTP requests of functions (the `http` capability), by pipeline, function, the allow-list pattern's host (\"none\" for a refused request) and outcome (ok: a response came, whatever its status; denied, timeout, too_large, error)."
    );
    describe_histogram!(
        FUNCTION_HTTP_DURATION,
        Unit::Seconds,
        "Time from a function's outbound request to its whole response (read by the host within http_max_response_size), by pipeline and the allow-list pattern's host."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its response, by pipeline and route pattern."
    );
    describe_gauge!(
        SOURCE_LAG,
        "Kafka: messages between the group's committed offset and the end of each assigned partition; database: bytes of WAL between the slot's confirmed position and the server's latest."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 while the backend (storage, broker, idempotency) answers its health check, else 0."
    );
    describe_gauge!(
        SOURCE_PARTITIONS,
        "Kafka: partitions of the topic assigned to this process's consumer."
    );
}
