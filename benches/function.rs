//! Benchmark #5c: the thumbnail function alone, one photo after another on
//! one thread — in Wasm through runnel's runtime (`Function::invoke`, as a
//! pipeline calls it: fresh instance, pooling allocator, memory kept
//! resident), and the same code compiled natively
//! (`functions/thumbnail/examples/native_thumbnails.rs`, 1 thread). It splits
//! #5a's gap into what Wasm costs the function and what the host adds
//! around it (HTTP, storage, journal), which #5a measures together.
//!
//! `cargo bench --bench function -- PHOTO_DIR` (scripts/bench runs it);
//! prints a row of the suite's Markdown table and writes
//! `$CARGO_TARGET_DIR/bench/function.json`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::event::Event;
use runnel::runtime::{
    Context, FunctionConfig, FunctionLocation, LogLabel, Runtime, RuntimeSettings, build,
};

const ROUNDS: usize = 5;
/// Photos per round and side: enough for a stable median, few enough that
/// the benchmark takes seconds.
const PHOTOS: usize = 40;
const WIDTH: u32 = 720;
const QUALITY: u32 = 80;

fn main() {
    let photo_dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .expect("usage: cargo bench --bench function -- PHOTO_DIR");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&photo_dir)
        .unwrap_or_else(|e| panic!("{photo_dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(PHOTOS);
    assert!(!photos.is_empty(), "no photos in {photo_dir}");
    let target =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()));
    let native = target.join("release/examples/native_thumbnails");
    assert!(
        native.is_file(),
        "{} is missing: cargo build --release --example native_thumbnails -p thumbnail in functions/",
        native.display()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("functions/thumbnail");
    let wasm = build::build_crate(&crate_dir).expect("the thumbnail function builds");
    let config = FunctionConfig {
        name: "thumbnail".into(),
        location: FunctionLocation::Component(wasm.clone()),
        memory_limit: 512 << 20,
        timeout: Duration::from_secs(30),
        config: vec![
            ("widths".into(), format!("[{WIDTH}]")),
            ("quality".into(), QUALITY.to_string()),
            ("thumbnail_sink".into(), "thumbnails".into()),
            ("result_sink".into(), "processed".into()),
        ],
        max_outputs: runnel::runtime::DEFAULT_MAX_OUTPUTS,
        max_output_bytes: runnel::runtime::DEFAULT_MAX_OUTPUT_BYTES,
        variables: Default::default(),
        capabilities: Default::default(),
    };
    let runtime = Runtime::new(&RuntimeSettings {
        pooling: true,
        max_instances: 4,
        max_memory: config.memory_limit,
        keep_resident: runnel::config::runtime::DEFAULT_KEEP_RESIDENT,
        cache_dir: Some(target.join("bench/component-cache")),
    })
    .unwrap();
    let function = runtime.load(&config, &wasm).unwrap();
    let context = Context {
        pipeline: "bench".into(),
        config: config.config.clone(),
        sinks: vec![
            ("thumbnails".into(), "storage".into(), "thumbnails".into()),
            ("processed".into(), "topic".into(), "image-processed".into()),
        ],
        attempt: 1,
    };
    let events: Vec<Event> = photos
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            Event {
                id: name.clone(),
                source: "bench".into(),
                event_type: "runnel.object.created".into(),
                subject: Some(name.clone()),
                content_type: Some("image/jpeg".into()),
                attributes: Default::default(),
                data: Bytes::from(std::fs::read(p).unwrap()),
                idempotency_key: name,
            }
        })
        .collect();

    // The first invocations fault the pool slot's memory in; the rounds
    // measure the steady state.
    for event in &events[..3.min(events.len())] {
        function
            .invoke(&context, event, LogLabel::default())
            .0
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let (mut wasm_ms, mut native_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (mut w, mut n) = (0.0, 0.0);
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            if side == 0 {
                let started = Instant::now();
                for event in &events {
                    let (result, _) = function.invoke(&context, event, LogLabel::default());
                    let outputs = result.unwrap_or_else(|e| panic!("{}: {e}", event.id));
                    assert_eq!(outputs.len(), 2, "a thumbnail and a report");
                }
                w = started.elapsed().as_secs_f64() * 1e3 / events.len() as f64;
            } else {
                let output = Command::new(&native)
                    .args(["1", &WIDTH.to_string(), &QUALITY.to_string()])
                    .arg(out.path())
                    .args(&photos)
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let seconds: f64 = String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .parse()
                    .unwrap();
                n = seconds * 1e3 / photos.len() as f64;
            }
        }
        eprintln!("round {round}: wasm {w:.1} ms/photo, native {n:.1} ms/photo");
        wasm_ms.push(w);
        native_ms.push(n);
        ratios.push(n / w);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "| 5c | the thumbnail function alone, one thread, {} photos (median of {ROUNDS} rounds) | Wasm in runnel's runtime: {:.1} ms/photo | native: {:.1} ms/photo | {:.2}× ({lo:.2}–{hi:.2}) | report: what Wasm costs the function | — |",
        events.len(),
        median(&wasm_ms),
        median(&native_ms),
        median(&ratios),
    );
    let json = serde_json::json!({
        "benchmark": "function",
        "photos": events.len(), "rounds": ROUNDS,
        "wasm_ms_per_photo": wasm_ms, "native_ms_per_photo": native_ms,
        "native_over_wasm": ratios,
    });
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("function.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
