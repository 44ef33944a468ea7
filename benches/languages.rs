//! Benchmark #9: functions in Rust, Python and JavaScript.
//!
//! - Per-event overhead (fresh instance + call + drop) of a no-op function
//!   in each language, through runnel's runtime exactly as a pipeline
//!   invokes it (pooling allocator, copy-on-write memory images), p50/p99,
//!   with the instantiation's share.
//! - Events per second of the notify function in each language on one
//!   report (one thread: the function's cost per event, without the
//!   queues around it).
//!
//! The languages alternate in rounds, so the figures are measured side by
//! side on a noisy machine. `cargo bench --bench languages` (scripts/bench
//! runs it); prints rows of the suite's Markdown table and writes
//! `target/bench/languages.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::event::Event;
use runnel::runtime::build::{self, Language};
use runnel::runtime::{
    Context, Function, FunctionConfig, FunctionLocation, LogLabel, Runtime, RuntimeSettings,
};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 400;
/// Goal: p99 per event for Python and JavaScript (issue: fresh instance
/// every event, pre-initialised snapshots, copy-on-write memories).
const GOAL_P99_US: f64 = 1000.0;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Subject {
    language: &'static str,
    function: Function,
    context: Context,
    event: Event,
}

fn load(
    runtime: &Runtime,
    name: &str,
    dir: &Path,
    language: Language,
    config: Vec<(String, String)>,
    cache: &Path,
) -> Function {
    let wasm = build::build(dir, language, build::World::Function, cache)
        .unwrap_or_else(|e| panic!("building {name}: {e}"));
    let config = FunctionConfig {
        name: name.into(),
        location: FunctionLocation::Component(wasm.clone()),
        memory_limit: 64 << 20,
        timeout: Duration::from_secs(10),
        config,
        max_outputs: runnel::runtime::DEFAULT_MAX_OUTPUTS,
        max_output_bytes: runnel::runtime::DEFAULT_MAX_OUTPUT_BYTES,
        variables: Default::default(),
        capabilities: Default::default(),
    };
    runtime.load(&config, &wasm).unwrap()
}

fn event(data: &[u8]) -> Event {
    Event {
        id: "e".into(),
        source: "topic://image-processed".into(),
        event_type: "runnel.message".into(),
        subject: Some("photos/a.jpg".into()),
        content_type: Some("application/json".into()),
        attributes: Default::default(),
        data: Bytes::copy_from_slice(data),
        idempotency_key: "e".into(),
    }
}

/// The process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces: count fields after its ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// Per-event wall time and instantiation time of `rounds` × `per_round`
/// invocations of each subject, the subjects alternating round by round,
/// and the minor page faults per event.
fn measure(
    subjects: &[Subject],
    rounds: usize,
    per_round: usize,
) -> Vec<(Vec<Duration>, Vec<Duration>, f64)> {
    let mut times = vec![(Vec::new(), Vec::new(), 0.0); subjects.len()];
    for subject in subjects {
        for _ in 0..50 {
            let (result, _) =
                subject
                    .function
                    .invoke(&subject.context, &subject.event, LogLabel::default());
            result.unwrap_or_else(|e| panic!("{}: {e}", subject.language));
        }
    }
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..subjects.len()).collect();
        order.rotate_left(round % subjects.len());
        for i in order {
            let subject = &subjects[i];
            let faults = minor_faults();
            for _ in 0..per_round {
                let started = Instant::now();
                let (result, stats) =
                    subject
                        .function
                        .invoke(&subject.context, &subject.event, LogLabel::default());
                drop(result);
                times[i].0.push(started.elapsed());
                times[i].1.push(stats.instantiation);
            }
            times[i].2 += (minor_faults() - faults) as f64 / (rounds * per_round) as f64;
        }
    }
    for (total, instantiation, _) in &mut times {
        total.sort();
        instantiation.sort();
    }
    times
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let target =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()));
    let cache = target.join("bench-builds");
    let runtime = Runtime::new(&RuntimeSettings {
        pooling: true,
        max_instances: 16,
        max_memory: 64 << 20,
        keep_resident: runnel::config::runtime::DEFAULT_KEEP_RESIDENT,
        cache_dir: Some(target.join("bench-components")),
    })
    .unwrap();
    let functions = repo().join("functions");
    let context = |config: Vec<(String, String)>, sinks: Vec<(String, String, String)>| Context {
        pipeline: "bench".into(),
        config,
        sinks,
        attempt: 1,
    };
    let noop_config = vec![("mode".to_owned(), "noop".to_owned())];
    let noop = |language: &'static str, dir: &str, lang: Language| Subject {
        language,
        function: load(
            &runtime,
            &format!("noop-{language}"),
            &functions.join(dir),
            lang,
            noop_config.clone(),
            &cache,
        ),
        context: context(noop_config.clone(), Vec::new()),
        event: event(&[0u8; 100]),
    };
    let noops = [
        noop("rust", "testing/probe", Language::Rust),
        noop("python", "testing/noop-python", Language::Python),
        noop("javascript", "testing/noop-js", Language::JavaScript),
    ];
    let report = br#"{"source":{"bucket":"uploads","key":"photos/a.jpg","etag":"e","size":204800},"metadata":{"user":"alice"},"thumbnails":[{"bucket":"thumbnails","key":"photos/a-128.jpg","width":128,"height":96,"bytes":4100},{"bucket":"thumbnails","key":"photos/a-512.jpg","width":512,"height":384,"bytes":40100},{"bucket":"thumbnails","key":"photos/a-1024.jpg","width":1024,"height":768,"bytes":140100}]}"#;
    let sinks = vec![
        (
            "notifications".to_owned(),
            "topic".to_owned(),
            "notifications".to_owned(),
        ),
        (
            "webhook".to_owned(),
            "webhook".to_owned(),
            "http://127.0.0.1:9/hook".to_owned(),
        ),
    ];
    let notify = |language: &'static str, dir: &str, lang: Language| Subject {
        language,
        function: load(
            &runtime,
            &format!("notify-{language}"),
            &functions.join(dir),
            lang,
            Vec::new(),
            &cache,
        ),
        context: context(Vec::new(), sinks.clone()),
        event: event(report),
    };
    let notifies = [
        notify("rust", "notify", Language::Rust),
        notify("python", "notify-python", Language::Python),
        notify("javascript", "notify-js", Language::JavaScript),
    ];
    for subject in &notifies {
        let (result, _) =
            subject
                .function
                .invoke(&subject.context, &subject.event, LogLabel::default());
        assert_eq!(
            result.unwrap().len(),
            2,
            "{}: a notification per sink",
            subject.language
        );
    }

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let overhead = measure(&noops, ROUNDS, PER_ROUND);
    let mut json = serde_json::Map::new();
    let rust_p50 = us(percentile(&overhead[0].0, 0.5));
    for (subject, (total, instantiation, faults)) in noops.iter().zip(&overhead) {
        let (p50, p99) = (us(percentile(total, 0.5)), us(percentile(total, 0.99)));
        let (i50, i99) = (
            us(percentile(instantiation, 0.5)),
            us(percentile(instantiation, 0.99)),
        );
        let (goal, met) = match subject.language {
            "rust" => (
                "(#1's goal: p99 ≤ 50 µs)".to_owned(),
                if p99 <= 50.0 { "yes" } else { "**no**" },
            ),
            _ => (
                format!("p99 ≤ {GOAL_P99_US:.0} µs"),
                if p99 <= GOAL_P99_US { "yes" } else { "**no**" },
            ),
        };
        println!(
            "| 9 | per-event overhead of a no-op {} function (fresh instance + call + drop), p50 / p99 | {p50:.1} / {p99:.1} µs (instantiation {i50:.1} / {i99:.1} µs; {faults:.0} page faults per event) | Rust's no-op: {rust_p50:.1} µs p50 | {:.1}× Rust | {goal} | {met} |",
            subject.language,
            p50 / rust_p50,
        );
        json.insert(
            format!("noop_{}", subject.language),
            serde_json::json!({"p50_us": p50, "p99_us": p99, "instantiation_p50_us": i50, "instantiation_p99_us": i99, "minor_faults_per_event": faults}),
        );
    }
    let throughput = measure(&notifies, ROUNDS / 2, PER_ROUND / 2);
    let rust_rate = 1e6 / us(percentile(&throughput[0].0, 0.5));
    for (subject, (total, _, _)) in notifies.iter().zip(&throughput) {
        let mean = total.iter().sum::<Duration>() / total.len() as u32;
        let rate = 1.0 / mean.as_secs_f64();
        let (p50, p99) = (us(percentile(total, 0.5)), us(percentile(total, 0.99)));
        println!(
            "| 9 | the notify function in {}, events/s on one thread (p50 / p99 per event) | {rate:.0} events/s ({p50:.0} / {p99:.0} µs) | notify in Rust: {rust_rate:.0} events/s | {:.2}× Rust | (no goal) | — |",
            subject.language,
            rate / rust_rate,
        );
        json.insert(
            format!("notify_{}", subject.language),
            serde_json::json!({"events_per_s": rate, "p50_us": p50, "p99_us": p99}),
        );
    }
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("languages.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}
