//! Benchmarks #3 and #4: passthrough events/s with at-least-once commits.
//!
//! #3: a Kafka topic → runnel (the probe component echoing each event) →
//! a Kafka topic, against a minimal native rdkafka consume → produce loop
//! with the same commit policy (commit per partition up to the lowest
//! offset whose output is not yet acknowledged), on the same broker (tansu,
//! in-memory storage) with the same window of events in flight. #3b puts
//! runnel next to the floor that matters: the same client moving the same
//! events as fast as it can, with a large window and its commits batched
//! (every 100 ms). The sides alternate over several rounds, each on fresh
//! topics prefilled with 100-byte events; all are timed the same way, from
//! outside, by the consumer group's committed offsets, and each side's CPU
//! time is taken over the same interval (for the native loops, the bench
//! process's, which includes the watcher's polling of the offsets).
//!
//! #4: the same pipeline on the embedded defaults (embedded queue in and
//! out), timed by `runnel_events_completed_total`, with the process's CPU
//! time to give events/s per core, its peak RSS, and its RSS after 10k and
//! 100k events (benchmark #7's leak check).
//!
//! `cargo bench --features kafka --bench passthrough` (scripts/bench runs
//! it); prints Markdown rows and writes `$CARGO_TARGET_DIR/bench/passthrough.json`.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use harness::Runnel;
use harness::services::{self, Service};

/// Events per round (#3).
const EVENTS: usize = 20_000;
/// The embedded run (#4), and the leak check's two points (#7): RSS after
/// `SHORT_RUN` and after `LONG_RUN` events.
const LONG_RUN: usize = 100_000;
const SHORT_RUN: usize = 10_000;
/// Rounds of each side (#3); `RUNNEL_BENCH_ROUNDS` overrides it.
const ROUNDS: usize = 5;
const PARTITIONS: i32 = 4;
/// Events in flight at once: the pipeline's `concurrency`, and the native
/// loop's window of unacknowledged produces.
const WINDOW: usize = 64;
/// The floor's window (#3b), how often it commits, and its events per
/// round: ten times as many, so that its round (about a second) spans ten
/// commits rather than one or two.
const FLOOR_WINDOW: usize = 10_000;
const FLOOR_EVENTS: usize = 200_000;
const FLOOR_COMMIT_EVERY: Duration = Duration::from_millis(100);
const PAYLOAD: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let only = std::env::var("RUNNEL_BENCH_ONLY").ok();
    if only.as_deref() == Some("embedded") {
        let embedded = embedded_run(dir.path()).await;
        println!("{}", embedded.json());
        return;
    }
    let kafka = services::tansu_in_memory(dir.path());
    let bootstrap = format!("127.0.0.1:{}", kafka.port);

    let rounds = std::env::var("RUNNEL_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS);
    let (mut native, mut floor, mut runnel) = (Vec::new(), Vec::new(), Vec::new());
    let (mut native_cpu, mut floor_cpu, mut runnel_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Rotate which side goes first, so drift hurts all alike.
        let mut order = [Side::Native, Side::Floor, Side::Runnel];
        order.rotate_left(round % 3);
        for side in order {
            let (rate, cpu) = kafka_round(dir.path(), &kafka, &bootstrap, round, side).await;
            eprintln!("round {round}: {side:?} {rate:.0} events/s, {cpu:.1} µs of CPU per event");
            let (rates, cpus) = match side {
                Side::Native => (&mut native, &mut native_cpu),
                Side::Floor => (&mut floor, &mut floor_cpu),
                Side::Runnel => (&mut runnel, &mut runnel_cpu),
            };
            rates.push(rate);
            cpus.push(cpu);
        }
    }
    let ratio_to =
        |other: &[f64]| -> Vec<f64> { runnel.iter().zip(other).map(|(r, n)| r / n).collect() };
    let (ratios, floor_ratios) = (ratio_to(&native), ratio_to(&floor));

    if only.as_deref() == Some("kafka") {
        println!(
            "ratios {ratios:?} floor ratios {floor_ratios:?} runnel {runnel:?} native {native:?} floor {floor:?} cpu_us runnel {runnel_cpu:?} native {native_cpu:?} floor {floor_cpu:?}"
        );
        return;
    }
    let embedded = embedded_run(dir.path()).await;

    let json = serde_json::json!({
        "kafka": {
            "events_per_round": EVENTS, "window": WINDOW, "payload_bytes": PAYLOAD,
            "runnel_events_per_s": runnel, "native_events_per_s": native, "ratios": ratios,
            "runnel_cpu_us_per_event": runnel_cpu, "native_cpu_us_per_event": native_cpu,
            "floor_window": FLOOR_WINDOW, "floor_events_per_s": floor,
            "floor_ratios": floor_ratios, "floor_cpu_us_per_event": floor_cpu,
        },
        "embedded": embedded.json(),
    });
    let out =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()))
            .join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("passthrough.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();

    let ratio = median(&ratios);
    println!(
        "| 3 | passthrough, Kafka → Kafka, {PAYLOAD}-byte events, {WINDOW} in flight, at-least-once commits (median of {rounds} rounds) | {:.0} events/s ({:.0} µs of CPU per event) | native rdkafka loop: {:.0} events/s | {ratio:.2}× ({:.2}–{:.2}) | ≥ 0.8× | {} |",
        median(&runnel),
        median(&runnel_cpu),
        median(&native),
        min(&ratios),
        max(&ratios),
        if ratio >= 0.8 { "yes" } else { "**no**" },
    );
    let floor_ratio = median(&floor_ratios);
    println!(
        "| 3b | the same, against the floor: the same client with {FLOOR_WINDOW} in flight and commits batched every {} ms | {:.0} events/s ({:.0} µs of CPU per event; goal ≤ 20 µs: {}) | native rdkafka floor: {:.0} events/s ({:.1} µs of CPU per event) | {floor_ratio:.2}× ({:.2}–{:.2}) | ≥ 0.5× | {} |",
        FLOOR_COMMIT_EVERY.as_millis(),
        median(&runnel),
        median(&runnel_cpu),
        if median(&runnel_cpu) <= 20.0 {
            "yes"
        } else {
            "**no**"
        },
        median(&floor),
        median(&floor_cpu),
        min(&floor_ratios),
        max(&floor_ratios),
        if floor_ratio >= 0.5 { "yes" } else { "**no**" },
    );
    println!(
        "| 4 | passthrough, embedded queue → embedded queue, {PAYLOAD}-byte events | {:.0} events/s; {:.0} events/s per core ({:.2} cores busy) | — | — | report | — |",
        embedded.rate, embedded.per_core, embedded.cores,
    );
    let growth = embedded.rss_long_mib - embedded.rss_short_mib;
    println!(
        "| 7 | memory at max throughput (embedded passthrough): peak RSS; RSS after {}k vs {}k events | peak {:.0} MiB; {:.1} → {:.1} MiB ({growth:+.1}) | — | — | peak ≤ 300 MiB, no growth beyond noise | {} |",
        SHORT_RUN / 1000,
        LONG_RUN / 1000,
        embedded.peak_mib,
        embedded.rss_short_mib,
        embedded.rss_long_mib,
        if embedded.peak_mib <= 300.0 && growth < 8.0 {
            "yes"
        } else {
            "**no**"
        },
    );
}

#[derive(Clone, Copy, Debug)]
enum Side {
    /// The native loop with runnel's window.
    Native,
    /// The native loop as fast as it goes (#3b).
    Floor,
    Runnel,
}

/// One side's run on fresh topics: events/s between the group's first
/// commit and the commit that covers every event, and the CPU time per
/// event that the side's process used meanwhile.
async fn kafka_round(
    dir: &Path,
    kafka: &Service,
    bootstrap: &str,
    round: usize,
    side: Side,
) -> (f64, f64) {
    let name = format!("{side:?}-{round}").to_lowercase();
    let (input, output, group) = (
        format!("in-{name}"),
        format!("out-{name}"),
        format!("g-{name}"),
    );
    services::create_topics(bootstrap, &[(&input, PARTITIONS), (&output, PARTITIONS)]).await;
    let events = match side {
        Side::Floor => FLOOR_EVENTS,
        Side::Native | Side::Runnel => EVENTS,
    };
    prefill_kafka(bootstrap, &input, events).await;

    let watch = |pid| {
        tokio::spawn(watch_commits(
            bootstrap.to_owned(),
            input.clone(),
            group.clone(),
            pid,
            events,
        ))
    };
    match side {
        Side::Native | Side::Floor => {
            let watch = watch(std::process::id());
            let stop = Arc::new(AtomicBool::new(false));
            let (window, commit_every) = match side {
                Side::Floor => (FLOOR_WINDOW, Some(FLOOR_COMMIT_EVERY)),
                _ => (WINDOW, None),
            };
            let looping = tokio::spawn(native_loop(
                bootstrap.to_owned(),
                input.clone(),
                output,
                group.clone(),
                (window, commit_every),
                stop.clone(),
            ));
            let measured = watch.await.unwrap();
            stop.store(true, Ordering::Relaxed);
            looping.await.unwrap();
            measured
        }
        Side::Runnel => {
            let work = dir.join(&name);
            std::fs::create_dir_all(&work).unwrap();
            let pipeline = work.join("passthrough.toml");
            std::fs::write(&pipeline, pipeline_toml(&input, Some(&group), &output)).unwrap();
            let broker = format!(
                "[broker]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:{}\"\n",
                kafka.port
            );
            let process = Runnel::start(&work, &[pipeline], &[], &broker).await;
            let measured = watch(process.pid()).await.unwrap();
            eprintln!(
                "round {round}: runnel's stages, mean ms per event: {}",
                stages(&process).await
            );
            drop(process);
            measured
        }
    }
}

/// The mean of each of `runnel_stage_duration_seconds`'s stages, in ms.
async fn stages(process: &Runnel) -> String {
    let mut means = Vec::new();
    for stage in [
        "queued", "load", "claim", "invoke", "write", "complete", "ack",
    ] {
        let labels = [("pipeline", "passthrough"), ("stage", stage)];
        let sum = process
            .metric("runnel_stage_duration_seconds_sum", &labels)
            .await;
        let count = process
            .metric("runnel_stage_duration_seconds_count", &labels)
            .await;
        means.push(format!("{stage} {:.2}", sum * 1e3 / count.max(1.0)));
    }
    means.join(", ")
}

fn pipeline_toml(input: &str, group: Option<&str>, output: &str) -> String {
    let probe = harness::repo().join("functions/testing/probe");
    let group = group
        .map(|g| format!("group = {g:?}\n"))
        .unwrap_or_default();
    format!(
        r#"name = "passthrough"
concurrency = {WINDOW}

[source]
type = "topic"
topic = {input:?}
{group}
[function]
path = {probe:?}
memory_limit = "16MiB"
timeout = "1s"

[function.config]
mode = "echo"
sink = "out"

[sinks.out]
type = "topic"
topic = {output:?}
"#
    )
}

fn payload(i: usize) -> Vec<u8> {
    let mut bytes = format!("event {i:08} ").into_bytes();
    bytes.resize(PAYLOAD, b'.');
    bytes
}

async fn prefill_kafka(bootstrap: &str, topic: &str, events: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut sends = FuturesUnordered::new();
    for i in 0..events {
        let (key, payload) = (format!("k{i}"), payload(i));
        loop {
            let record = FutureRecord::to(topic).key(&key).payload(&payload[..]);
            match producer.send_result(record) {
                Ok(delivery) => {
                    sends.push(delivery);
                    break;
                }
                // The local queue is full: let deliveries drain.
                Err(_) => {
                    sends.next().await;
                }
            }
        }
    }
    while let Some(done) = sends.next().await {
        done.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Polls the group's committed offsets on `topic`; returns events/s from
/// the first commit to the one covering every event, and the CPU time per
/// event that process `pid` used in between (µs).
async fn watch_commits(
    bootstrap: String,
    topic: String,
    group: String,
    pid: u32,
    events: usize,
) -> (f64, f64) {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            partitions.add_partition(&topic, p);
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first: Option<(Instant, i64, f64)> = None;
        loop {
            assert!(Instant::now() < deadline, "{group} did not finish {topic}");
            let committed = consumer
                .committed_offsets(partitions.clone(), Duration::from_secs(5))
                .unwrap();
            let done: i64 = committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(n) => n,
                    _ => 0,
                })
                .sum();
            let now = Instant::now();
            if done > 0 && first.is_none() {
                first = Some((now, done, harness::cpu_seconds(pid)));
            }
            if done >= events as i64 {
                let (at, from, cpu) = first.unwrap();
                let events = (done - from) as f64;
                let cpu_us = (harness::cpu_seconds(pid) - cpu) * 1e6 / events;
                return (events / (now - at).as_secs_f64().max(1e-3), cpu_us);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap()
}

/// The native loop: consume, produce each message to `output` (idempotent
/// producer, acks from all replicas, as runnel's), and once its delivery is
/// acknowledged commit per partition up to the lowest offset still in
/// flight: at once, or with `commit_every` every partition's watermark
/// together at that interval. At most `window` messages in flight.
async fn native_loop(
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    (window, commit_every): (usize, Option<Duration>),
    stop: Arc<AtomicBool>,
) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&input]).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let mut in_flight = FuturesUnordered::new();
    let mut partitions: BTreeMap<i32, Watermark> = BTreeMap::new();
    let mut moved: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let commit = |offsets: &BTreeMap<i32, i64>| {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in offsets {
            list.add_partition_offset(&input, partition, Offset::Offset(next))
                .unwrap();
        }
        consumer.commit(&list, CommitMode::Async).unwrap();
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(every) = commit_every
            && !moved.is_empty()
            && last_commit.elapsed() >= every
        {
            commit(&moved);
            moved.clear();
            last_commit = Instant::now();
        }
        tokio::select! {
            message = consumer.recv(), if in_flight.len() < window => {
                let message = message.unwrap();
                let (partition, offset) = (message.partition(), message.offset());
                let mut record = FutureRecord::to(&output)
                    .payload(message.payload().unwrap_or_default());
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
                partitions.entry(partition).or_default().start(offset);
                in_flight.push(async move { (partition, offset, delivery.await) });
            }
            Some((partition, offset, delivered)) = in_flight.next() => {
                delivered.unwrap().map_err(|(e, _)| e).unwrap();
                if let Some(next) = partitions.get_mut(&partition).unwrap().finish(offset) {
                    moved.insert(partition, next);
                    if commit_every.is_none() {
                        commit(&moved);
                        moved.clear();
                    }
                }
            }
            _ = tokio::time::sleep(commit_every.unwrap_or(Duration::from_millis(50))) => {}
        }
    }
}

/// Offsets in flight in one partition, and what was last committed.
#[derive(Default)]
struct Watermark {
    in_flight: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl Watermark {
    fn start(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next = self.next.max(offset + 1);
    }

    /// The offset to commit, when it moved.
    fn finish(&mut self, offset: i64) -> Option<i64> {
        self.in_flight.remove(&offset);
        let watermark = self.in_flight.first().copied().unwrap_or(self.next);
        (watermark > self.committed).then(|| {
            self.committed = watermark;
            watermark
        })
    }
}

struct Embedded {
    rate: f64,
    cores: f64,
    per_core: f64,
    peak_mib: f64,
    rss_short_mib: f64,
    rss_long_mib: f64,
}

impl Embedded {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": LONG_RUN, "events_per_s": self.rate, "cores_busy": self.cores,
            "events_per_s_per_core": self.per_core, "peak_rss_mib": self.peak_mib,
            "rss_mib_after_short_run": self.rss_short_mib,
            "rss_mib_after_long_run": self.rss_long_mib, "short_run_events": SHORT_RUN,
        })
    }
}

/// #4 and #7: the embedded queue prefilled with `LONG_RUN` events (written
/// into the journal before runnel starts), all passed through.
async fn embedded_run(dir: &Path) -> Embedded {
    let work = dir.join("embedded");
    harness::prefill_embedded(&work.join("data"), "bench-in", LONG_RUN, payload).await;
    let pipeline = work.join("passthrough.toml");
    std::fs::write(&pipeline, pipeline_toml("bench-in", None, "bench-out")).unwrap();
    let process = Runnel::start(&work, &[pipeline], &[], "").await;
    // Rate and CPU over the whole run, from the first completed event; RSS
    // once SHORT_RUN events are done and again at the end.
    let mut rss_short = None;
    let mut traced = 0;
    let (rate, cores) = process
        .throughput("passthrough", LONG_RUN, |process, done| {
            if done >= SHORT_RUN && rss_short.is_none() {
                rss_short = Some(process.rss_mib());
            }
            // The trace behind the leak check: RSS and threads every 10k events.
            if done / SHORT_RUN > traced {
                traced = done / SHORT_RUN;
                eprintln!(
                    "after {done} events: RSS {:.1} MiB ({:.1} anonymous, {:.1} files), {} threads",
                    process.rss_mib(),
                    process.status_mib("RssAnon:"),
                    process.status_mib("RssFile:"),
                    process.threads()
                );
            }
        })
        .await;
    eprintln!(
        "embedded: runnel's stages, mean ms per event: {}",
        stages(&process).await
    );
    let rss_short_mib = rss_short.unwrap();
    Embedded {
        rate,
        cores,
        per_core: rate / cores.max(1e-3),
        peak_mib: process.peak_rss_mib(),
        rss_short_mib,
        rss_long_mib: process.rss_mib(),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
