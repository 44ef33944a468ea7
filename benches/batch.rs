//! Benchmark #11: a no-op batch function at batch size 100, in events/s
//! per core, beside the same no-op as a one-event function on the same
//! queue (issue 21 §2).
//!
//! Each side gets a fresh process and data directory whose embedded queue
//! is prefilled before runnel starts; it is timed by
//! `runnel_events_completed_total` from the first completed event to the
//! last, with the process's CPU time over the same interval, so the figure
//! is events per second of CPU (events/s per core) and its inverse, CPU
//! per event. Every guarantee stays on: each event claimed and completed
//! in the idempotency store, offsets committed past finished work only.
//!
//! `cargo bench --bench batch` (scripts/bench runs it); prints a Markdown
//! row and writes `$CARGO_TARGET_DIR/bench/batch.json`.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};

use harness::Runnel;

/// Events through the batch function, and through the one-event one (which
/// is ten times slower: fewer events keep its side as long).
const BATCH_EVENTS: usize = 200_000;
const SINGLE_EVENTS: usize = 40_000;
const BATCH_SIZE: usize = 100;
const PAYLOAD: usize = 100;
/// Events per second of CPU the batch side is to reach.
const GOAL_PER_CORE: f64 = 200_000.0;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// One side's figures.
struct Side {
    events: usize,
    rate: f64,
    cores: f64,
}

impl Side {
    fn per_core(&self) -> f64 {
        self.rate / self.cores.max(1e-3)
    }

    fn cpu_us(&self) -> f64 {
        1e6 / self.per_core()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events, "events_per_s": self.rate, "cores_busy": self.cores,
            "events_per_s_per_core": self.per_core(), "cpu_us_per_event": self.cpu_us(),
        })
    }
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let batch = side(&dir.path().join("batch"), true, BATCH_EVENTS).await;
    // `RUNNEL_BENCH_ONLY=batch`: the batch side alone (for profiling).
    if std::env::var("RUNNEL_BENCH_ONLY").as_deref() == Ok("batch") {
        eprintln!(
            "batch: {:.0} events/s per core, {:.1} µs of CPU per event",
            batch.per_core(),
            batch.cpu_us()
        );
        return;
    }
    let single = side(&dir.path().join("single"), false, SINGLE_EVENTS).await;
    for (name, s) in [("batch", &batch), ("one-event", &single)] {
        eprintln!(
            "{name}: {:.0} events/s, {:.2} cores busy, {:.0} events/s per core, {:.1} µs of CPU per event",
            s.rate,
            s.cores,
            s.per_core(),
            s.cpu_us()
        );
    }
    let met = batch.per_core() >= GOAL_PER_CORE;
    println!(
        "| 11 | no-op batch function, batches of {BATCH_SIZE}, embedded queue | {:.0} events/s per core ({:.1} µs of CPU per event; {:.0} events/s on {:.2} cores) | the same no-op one event per instance: {:.0} events/s per core ({:.1} µs) | {:.1}× | ≥ {:.0} events/s per core | {} |",
        batch.per_core(),
        batch.cpu_us(),
        batch.rate,
        batch.cores,
        single.per_core(),
        single.cpu_us(),
        batch.per_core() / single.per_core(),
        GOAL_PER_CORE,
        if met { "yes" } else { "no" }
    );
    let out =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()))
            .join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("batch.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "batch_size": BATCH_SIZE, "payload_bytes": PAYLOAD,
            "batch": batch.json(), "one_event": single.json(),
            "goal_events_per_s_per_core": GOAL_PER_CORE,
        }))
        .unwrap(),
    )
    .unwrap();
}

/// A process on a queue prefilled with `events` events, through the no-op
/// batch function (`batched`) or the one-event probe in its no-op mode.
async fn side(work: &Path, batched: bool, events: usize) -> Side {
    let payload = |i: usize| {
        let mut payload = format!("event {i:08} ").into_bytes();
        payload.resize(PAYLOAD, b'.');
        payload
    };
    harness::prefill_embedded(&work.join("data"), "bench-in", events, payload).await;
    let (function, batch, concurrency) = match batched {
        true => (
            "batch-probe",
            format!("batch = {{ max_events = {BATCH_SIZE}, max_wait = \"50ms\" }}"),
            String::new(),
        ),
        false => ("probe", String::new(), "concurrency = 64\n".to_owned()),
    };
    let pipeline = work.join("noop.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"noop\"\n{concurrency}[source]\ntype = \"topic\"\ntopic = \"bench-in\"\n{batch}\n[function]\npath = {:?}\nmemory_limit = \"16MiB\"\ntimeout = \"5s\"\n[function.config]\nmode = \"noop\"\n[sinks.out]\ntype = \"topic\"\ntopic = \"bench-out\"\n",
            harness::repo().join("functions/testing").join(function)
        ),
    )
    .unwrap();
    let process = Runnel::start(work, &[pipeline], &[], "").await;
    let (rate, cores) = process.throughput("noop", events, |_, _| {}).await;
    Side {
        events,
        rate,
        cores,
    }
}
