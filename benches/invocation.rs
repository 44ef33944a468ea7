//! Benchmark #1: per-event invocation overhead (instantiate + call + drop)
//! of a no-op component, runnel's runtime as the pipeline uses it versus
//! bare wasmtime (`InstancePre` + pooling allocator + an empty WASI
//! context: the engine's floor). Both run in this process, alternating in
//! rounds, so the ratio is measured side by side on a noisy machine.
//!
//! `cargo bench --bench invocation` (scripts/bench runs it); prints a
//! row of the suite's Markdown table and writes `target/bench/invocation.json`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::event::Event;
use runnel::runtime::{
    Context, FunctionConfig, FunctionLocation, LogLabel, Runtime, RuntimeSettings, build,
};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bare {
    wasmtime::component::bindgen!({ path: "functions/wit", world: "function" });
}

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bare::runnel::function::types::Host for BareState {}
impl bare::runnel::function::log::Host for BareState {
    fn log(&mut self, _: bare::runnel::function::log::Level, _: String) {}
}
impl bare::runnel::function::kv::Host for BareState {
    fn get(&mut self, _: String) -> Result<Option<Vec<u8>>, bare::runnel::function::kv::KvError> {
        Ok(None)
    }
    fn set(
        &mut self,
        _: String,
        _: Vec<u8>,
        _: Option<u64>,
    ) -> Result<(), bare::runnel::function::kv::KvError> {
        Ok(())
    }
    fn delete(&mut self, _: String) -> Result<bool, bare::runnel::function::kv::KvError> {
        Ok(false)
    }
    fn compare_and_swap(
        &mut self,
        _: String,
        _: Option<Vec<u8>>,
        _: Vec<u8>,
        _: Option<u64>,
    ) -> Result<bool, bare::runnel::function::kv::KvError> {
        Ok(false)
    }
    fn increment(&mut self, _: String, _: i64) -> Result<i64, bare::runnel::function::kv::KvError> {
        Ok(0)
    }
}
impl bare::runnel::function::variables::Host for BareState {
    fn get(&mut self, _: String) -> Option<String> {
        None
    }
}

const ROUNDS: usize = 15;
const PER_ROUND: usize = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let crate_dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("functions/testing/probe");
    let wasm = build::build_crate(&crate_dir).expect("probe builds");

    // runnel's side: exactly what a pipeline invocation does.
    let config = FunctionConfig {
        name: "probe".into(),
        location: FunctionLocation::Component(wasm.clone()),
        memory_limit: 64 << 20,
        timeout: Duration::from_secs(10),
        config: vec![("mode".into(), "noop".into())],
        max_outputs: runnel::runtime::DEFAULT_MAX_OUTPUTS,
        max_output_bytes: runnel::runtime::DEFAULT_MAX_OUTPUT_BYTES,
        variables: Default::default(),
        capabilities: Default::default(),
    };
    let runtime = Runtime::new(&RuntimeSettings {
        pooling: true,
        max_instances: 16,
        max_memory: 64 << 20,
        keep_resident: runnel::config::runtime::DEFAULT_KEEP_RESIDENT,
        cache_dir: None,
    })
    .unwrap();
    let function = runtime.load(&config, &wasm).unwrap();
    let context = Context {
        pipeline: "bench".into(),
        config: config.config.clone(),
        sinks: vec![],
        attempt: 1,
    };
    let event = Event {
        id: "e".into(),
        source: "bench".into(),
        event_type: "runnel.message".into(),
        subject: Some("k".into()),
        content_type: None,
        attributes: Default::default(),
        data: Bytes::from_static(&[0u8; 100]),
        idempotency_key: "e".into(),
    };

    // The floor: the same component, pooling allocator, minimal store.
    let mut engine_config = Config::new();
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(16)
        .total_core_instances(256)
        .total_memories(64)
        .total_tables(128)
        .max_memory_size(64 << 20);
    engine_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&engine_config).unwrap();
    let mut linker: Linker<BareState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    bare::Function::add_to_linker::<BareState, HasSelf<BareState>>(&mut linker, |s| s).unwrap();
    let component = Component::from_file(&engine, &wasm).unwrap();
    let pre = bare::FunctionPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let bare_ctx = bare::runnel::function::types::Context {
        pipeline: "bench".into(),
        config: vec![("mode".into(), "noop".into())],
        sinks: vec![],
        attempt: 1,
    };
    let bare_event = bare::runnel::function::types::Event {
        id: "e".into(),
        source: "bench".into(),
        event_type: "runnel.message".into(),
        subject: Some("k".into()),
        content_type: None,
        attributes: vec![],
        data: vec![0u8; 100],
    };

    let mut runnel_times = Vec::new();
    let mut bare_times = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let mut a = Vec::with_capacity(PER_ROUND);
        let mut b = Vec::with_capacity(PER_ROUND);
        // Alternate which side goes first, so drift does not favour one.
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            for _ in 0..PER_ROUND {
                let started = Instant::now();
                if side == 0 {
                    let (result, _) = function.invoke(&context, &event, LogLabel::default());
                    assert!(result.unwrap().is_empty());
                    a.push(started.elapsed());
                } else {
                    let mut store = Store::new(
                        &engine,
                        BareState {
                            wasi: WasiCtx::builder().build(),
                            table: ResourceTable::new(),
                        },
                    );
                    let instance = pre.instantiate(&mut store).unwrap();
                    let outputs = instance
                        .call_handle(&mut store, &bare_ctx, &bare_event)
                        .unwrap()
                        .unwrap();
                    assert!(outputs.is_empty());
                    drop(store);
                    b.push(started.elapsed());
                }
            }
        }
        a.sort();
        b.sort();
        ratios.push(percentile(&a, 0.5).as_secs_f64() / percentile(&b, 0.5).as_secs_f64());
        runnel_times.extend(a);
        bare_times.extend(b);
    }
    runnel_times.sort();
    bare_times.sort();
    ratios.sort_by(f64::total_cmp);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (r50, r99) = (
        percentile(&runnel_times, 0.5),
        percentile(&runnel_times, 0.99),
    );
    let (b50, b99) = (percentile(&bare_times, 0.5), percentile(&bare_times, 0.99));
    let ratio = ratios[ratios.len() / 2];
    let (low, high) = (ratios[0], ratios[ratios.len() - 1]);
    println!(
        "| 1 | per-event overhead (instantiate + call + drop), no-op component, p50 / p99 | {:.1} / {:.1} µs | bare wasmtime: {:.1} / {:.1} µs | {ratio:.2}× ({low:.2}–{high:.2} over {ROUNDS} rounds) | ≤ 1.5×, p99 ≤ 50 µs | {} |",
        us(r50),
        us(r99),
        us(b50),
        us(b99),
        if ratio <= 1.5 && us(r99) <= 50.0 {
            "yes"
        } else {
            "**no**"
        }
    );
    let json = serde_json::json!({
        "benchmark": "invocation",
        "rounds": ROUNDS, "per_round": PER_ROUND,
        "runnel_us": {"p50": us(r50), "p99": us(r99)},
        "bare_wasmtime_us": {"p50": us(b50), "p99": us(b99)},
        "ratio_p50": {"median": ratio, "min": low, "max": high},
    });
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("invocation.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
