//! The WebAssembly runtime: prepare once, instantiate per event.
//!
//! One [`Engine`] serves every function. At start-up each function's
//! component is compiled (or loaded precompiled from the cache) and linked
//! into an `InstancePre`, so an invocation only has to create a fresh
//! `Store`, instantiate from the pre-linked template (the pooling
//! allocator makes that a few microseconds) and call `handle`. Nothing
//! survives from one event to the next: the serverless promise of
//! statelessness holds by construction.
//!
//! Each invocation runs under a memory limit (a `ResourceLimiter`) and a
//! timeout (epoch interruption: a background thread ticks the engine's
//! epoch, and the store's deadline is the timeout in ticks). Failures come
//! back classified as [`InvokeError`].

pub mod build;
mod capabilities;
mod host;
pub mod http;
mod limits;
pub mod outbound;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::config::reader::Table;
use crate::event::Event;
use host::HostState;
pub use host::LogLabel;

mod bindings {
    wasmtime::component::bindgen!({
        path: "functions/wit",
        world: "function",
        // The event and context are lowered into the guest from borrowed
        // strings and bytes: no copy of them per invocation (benchmark #3).
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// A batch function's export; its imports are the `function` world's.
mod batch_bindings {
    wasmtime::component::bindgen!({
        path: "functions/wit",
        world: "batch-function",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "runnel:function/types": super::bindings::runnel::function::types,
            "runnel:function/log": super::bindings::runnel::function::log,
            "runnel:function/variables": super::bindings::runnel::function::variables,
            "runnel:function/kv": super::bindings::runnel::function::kv,
        },
    });
}

use bindings::runnel::function::types as wit;

pub const DEFAULT_MEMORY_LIMIT: u64 = 128 << 20;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the epoch advances; timeouts are precise to about this much.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Where a function comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum FunctionLocation {
    /// A project (a Rust crate, a Python or a JavaScript project), built
    /// when its sources changed.
    Project {
        dir: PathBuf,
        language: build::Language,
    },
    /// A component file, used as it is.
    Component(PathBuf),
}

/// A pipeline's `[function]` table.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// Name in metrics and logs (default: the project's directory or the
    /// file's name).
    pub name: String,
    pub location: FunctionLocation,
    /// Linear memory an invocation may use (default 128 MiB).
    pub memory_limit: u64,
    /// Wall time an invocation may take (default 10s).
    pub timeout: Duration,
    /// `[function.config]`: strings as they are, other values as JSON.
    pub config: Vec<(String, String)>,
    /// Most outputs one invocation may return (default 1000).
    pub max_outputs: usize,
    /// Most bytes all outputs of one invocation may hold (default 256 MiB).
    pub max_output_bytes: u64,
    /// `[function.variables]`, read through the `variables` import.
    pub variables: Variables,
    /// `[function.capabilities]`: what the function may do beyond
    /// returning outputs (default nothing).
    pub capabilities: Capabilities,
}

/// `[function.capabilities]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capabilities {
    /// `kv = "<store>"`: the key-value store the function may use.
    pub kv: Option<String>,
    /// `http = [<URL pattern>...]` (with `http_timeout` and
    /// `http_max_response_size`): the URLs the function may request.
    pub http: Option<outbound::HttpCapability>,
}

impl Capabilities {
    /// Whether the function can act on anything but its outputs (then a
    /// first attempt must not run before its event is claimed).
    pub fn has_side_effects(&self) -> bool {
        self.kv.is_some() || self.http.is_some()
    }
}

/// A function's `[function.variables]`. Values may be secrets: `Debug`
/// shows the names only.
#[derive(Clone, Default, PartialEq)]
pub struct Variables(Arc<std::collections::BTreeMap<String, String>>);

impl Variables {
    pub fn new(variables: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(Arc::new(variables.into_iter().collect()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

pub const DEFAULT_MAX_OUTPUTS: usize = 1000;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 256 << 20;

impl FunctionConfig {
    pub fn read(table: Table<'_, '_>, base: &Path) -> Option<Self> {
        let location = table.required("path").and_then(|f| {
            let path = base.join(f.string()?);
            if path.extension().is_some_and(|e| e == "wasm") {
                if !path.is_file() {
                    f.error(format!("component {} does not exist", path.display()));
                    return None;
                }
                Some(FunctionLocation::Component(path))
            } else {
                match build::Language::detect(&path) {
                    Ok(language) => Some(FunctionLocation::Project {
                        dir: path,
                        language,
                    }),
                    Err(reason) => {
                        f.error(reason);
                        None
                    }
                }
            }
        });
        let name = table.string("name");
        let memory_limit = match table.get("memory_limit") {
            Some(f) => f.size().filter(|&m| {
                let ok = (1 << 20..=4 << 30).contains(&m);
                if !ok {
                    f.error("must be between 1MiB and 4GiB");
                }
                ok
            }),
            None => Some(DEFAULT_MEMORY_LIMIT),
        };
        let timeout = match table.get("timeout") {
            Some(f) => f.duration().filter(|t| {
                let ok = !t.is_zero() && *t <= Duration::from_secs(15 * 60);
                if !ok {
                    f.error("must be more than 0 and at most 15m");
                }
                ok
            }),
            None => Some(DEFAULT_TIMEOUT),
        };
        let max_outputs = match table.get("max_outputs") {
            Some(f) => f.integer_in(1..=1_000_000).map(|n| n as usize),
            None => Some(DEFAULT_MAX_OUTPUTS),
        };
        let max_output_bytes = table
            .size("max_output_bytes")
            .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        let mut capabilities = Capabilities::default();
        if let Some(t) = table.table("capabilities") {
            if let Some(f) = t.get("kv") {
                capabilities.kv = f.string().filter(|name| {
                    let ok = !name.is_empty()
                        && name.len() <= 64
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if !ok {
                        f.error("a store's name is 1-64 letters, digits, '-' or '_'");
                    }
                    ok
                });
            }
            capabilities.http = read_http_capability(&t);
            if let (Some(FunctionLocation::Project { language, .. }), Some(_), Some(f)) =
                (&location, &capabilities.http, t.get("http"))
                && *language == build::Language::JavaScript
            {
                f.error(build::JS_NO_HTTP);
            }
            t.finish();
        }
        let mut variables = Vec::new();
        if let Some(t) = table.table("variables") {
            for (name, field) in t.entries() {
                let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    field.error(
                        "a variable's name is letters, digits and `_`, not starting with a digit",
                    );
                } else if let Some(value) = field.string() {
                    variables.push((name, value));
                }
            }
        }
        let mut config = Vec::new();
        if let Some(t) = table.table("config") {
            for (key, field) in t.entries() {
                if let Some(value) = field.to_config_string() {
                    config.push((key, value));
                }
            }
        }
        table.finish();
        let location = location?;
        let name = name.unwrap_or_else(|| match &location {
            FunctionLocation::Project { dir, .. } => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            FunctionLocation::Component(file) => file
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        });
        Some(Self {
            name,
            location,
            memory_limit: memory_limit?,
            timeout: timeout?,
            config,
            max_outputs: max_outputs?,
            max_output_bytes,
            variables: Variables::new(variables),
            capabilities,
        })
    }
}

/// `http`, `http_timeout` and `http_max_response_size` of
/// `[function.capabilities]`; the limits need the list.
fn read_http_capability(
    t: &crate::config::reader::Table<'_, '_>,
) -> Option<outbound::HttpCapability> {
    let timeout = t.get("http_timeout").and_then(|f| {
        f.duration().filter(|d| {
            let ok = !d.is_zero() && *d <= Duration::from_secs(15 * 60);
            if !ok {
                f.error("must be more than 0 and at most 15m");
            }
            ok
        })
    });
    let max_response_size = t.get("http_max_response_size").and_then(|f| {
        f.size().filter(|&s| {
            let ok = (1..=1 << 30).contains(&s);
            if !ok {
                f.error("must be between 1B and 1GiB");
            }
            ok
        })
    });
    let Some(field) = t.get("http") else {
        for limit in ["http_timeout", "http_max_response_size"] {
            if let Some(f) = t.get(limit) {
                f.error("limits outbound HTTP, which this function is not granted: add `http = [<URL pattern>...]`");
            }
        }
        return None;
    };
    let mut allow = Vec::new();
    for (i, text) in field.strings()?.into_iter().enumerate() {
        match outbound::UrlPattern::parse(&text) {
            Ok(pattern) => allow.push(pattern),
            Err(why) => field.error(format!("http[{i}] {text:?}: {why}")),
        }
    }
    if allow.is_empty() {
        field.error("lists no URL pattern: grant outbound HTTP to at least one (`\"https://api.example.com/v1/*\"`) or leave `http` out");
        return None;
    }
    Some(outbound::HttpCapability {
        allow,
        timeout: timeout.unwrap_or(outbound::DEFAULT_TIMEOUT),
        max_response_size: max_response_size.unwrap_or(outbound::DEFAULT_MAX_RESPONSE_SIZE),
    })
}

/// Engine-wide settings, from the runtime config.
#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// Use the pooling instance allocator (falls back when unavailable).
    pub pooling: bool,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
    /// The largest memory limit of any function.
    pub max_memory: u64,
    /// Bytes of each pooled instance's memory kept resident between
    /// instances (zeroed by memset, not returned to the kernel).
    pub keep_resident: u64,
    /// Where compiled components are cached (none: compile every start).
    pub cache_dir: Option<PathBuf>,
}

/// One engine, its linker and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// For HTTP functions (`wasi:http/proxy`), on the same engine.
    http_linker: Linker<http::HttpHost>,
    pooling: bool,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
    /// Every function's outbound HTTP, one connection pool.
    http_client: reqwest::Client,
    /// Components compiled or loaded so far, by [`cache_key`](Self::cache_key).
    compiled: std::sync::Mutex<std::collections::HashMap<String, Component>>,
}

impl Runtime {
    pub fn new(settings: &RuntimeSettings) -> anyhow::Result<Self> {
        let (engine, pooling) = match settings.pooling {
            true => match Engine::new(&engine_config(Some(settings))) {
                Ok(engine) => (engine, true),
                Err(error) => {
                    tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                    (Engine::new(&engine_config(None)).map_err(to_anyhow)?, false)
                }
            },
            false => (Engine::new(&engine_config(None)).map_err(to_anyhow)?, false),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(to_anyhow)?;
        // Outbound HTTP is linked for every function, so a component that
        // imports it loads; a request is refused unless granted (`outbound`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(to_anyhow)?;
        bindings::Function::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(to_anyhow)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("runnel-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Self {
            http_linker: http::linker(&engine)?,
            engine,
            linker,
            pooling,
            cache_dir: settings.cache_dir.clone(),
            ticker_stop,
            http_client: outbound::client()?,
            compiled: Default::default(),
        })
    }

    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compiles (or loads from cache) and pre-links a component.
    pub fn load(&self, config: &FunctionConfig, wasm: &Path) -> anyhow::Result<Function> {
        let pre = self.prepare(
            config,
            wasm,
            &self.linker,
            "runnel:function's `handle` (or `handle-batch`, of the batch-function world)",
            |pre| match bindings::FunctionPre::new(pre.clone()) {
                Ok(one) => Ok(Entry::One(one)),
                Err(error) => batch_bindings::BatchFunctionPre::new(pre)
                    .map(Entry::Batch)
                    .map_err(|_| error),
            },
        )?;
        let http = self.http_grant(config);
        Ok(Function {
            name: config.name.clone(),
            memory_limit: config.memory_limit,
            timeout: config.timeout,
            variables: config.variables.clone(),
            kv: None,
            http,
            pre,
            engine: self.engine.clone(),
        })
    }

    /// Compiles (or loads from cache) and pre-links an HTTP function: a
    /// component exporting `wasi:http/incoming-handler`. It must be called
    /// within the tokio runtime its requests' I/O is to run on.
    pub fn load_http(
        &self,
        pipeline: &str,
        config: &FunctionConfig,
        wasm: &Path,
        max_response_size: u64,
    ) -> anyhow::Result<http::HttpFunction> {
        let export = "wasi:http/incoming-handler (an HTTP function is a wasi:http/proxy component)";
        let pre = self.prepare(config, wasm, &self.http_linker, export, |pre| {
            wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre)
        })?;
        Ok(http::HttpFunction {
            name: config.name.clone(),
            pipeline: pipeline.to_owned(),
            memory_limit: config.memory_limit,
            timeout: config.timeout,
            max_response_size,
            http: self.http_grant(config),
            pre,
            engine: self.engine.clone(),
            tokio: tokio::runtime::Handle::try_current()
                .map_err(|_| anyhow::anyhow!("HTTP functions are loaded within a tokio runtime"))?,
        })
    }

    /// The outbound HTTP `config` grants, on the process's client.
    fn http_grant(&self, config: &FunctionConfig) -> Option<Arc<outbound::HttpGrant>> {
        let capability = config.capabilities.http.clone()?;
        Some(Arc::new(outbound::HttpGrant {
            capability,
            client: self.http_client.clone(),
        }))
    }

    /// The component at `wasm`, compiled (or loaded from the cache), linked
    /// by `linker` and checked by `typed` for the world's `export`.
    fn prepare<T, P>(
        &self,
        config: &FunctionConfig,
        wasm: &Path,
        linker: &Linker<T>,
        export: &str,
        typed: impl FnOnce(wasmtime::component::InstancePre<T>) -> wasmtime::Result<P>,
    ) -> anyhow::Result<P> {
        let started = Instant::now();
        let (component, cached) = self.compile(wasm)?;
        let pre =
            linker
                .instantiate_pre(&component)
                .map_err(
                    |e| match capabilities::unlinked_import(&self.engine, &component, &e) {
                        Some(why) => {
                            anyhow::anyhow!("function {} ({}): {why}", config.name, wasm.display())
                        }
                        None => anyhow::anyhow!("{}: {e:#}", wasm.display()),
                    },
                )?;
        let pre = typed(pre)
            .map_err(|e| anyhow::anyhow!("{} does not export {export}: {e:#}", wasm.display()))?;
        tracing::info!(
            function = %config.name,
            component = %wasm.display(),
            cached,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "function ready"
        );
        Ok(pre)
    }

    /// The component at `wasm`, compiled once per process: pipelines that
    /// run one component share its code and metadata (a thousand pipelines
    /// of one function held a thousand copies: benchmark #10).
    fn compile(&self, wasm: &Path) -> anyhow::Result<(Component, bool)> {
        let bytes =
            std::fs::read(wasm).map_err(|e| anyhow::anyhow!("reading {}: {e}", wasm.display()))?;
        let key = self.cache_key(&bytes);
        let shared = self.lock_compiled().get(&key).cloned();
        if let Some(component) = shared {
            return Ok((component, true));
        }
        let (component, cached) = self.compile_or_load(wasm, &bytes, &key)?;
        self.lock_compiled().insert(key, component.clone());
        Ok((component, cached))
    }

    fn lock_compiled(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Component>> {
        // Nothing panics while holding it.
        (self.compiled.lock()).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Compiles `bytes`, or loads them compiled from the cache directory.
    fn compile_or_load(
        &self,
        wasm: &Path,
        bytes: &[u8],
        key: &str,
    ) -> anyhow::Result<(Component, bool)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((self.compile_bytes(wasm, bytes)?, false));
        };
        let cached = dir.join(format!("{key}.cwasm"));
        if cached.is_file() {
            // SAFETY: the file was written by `Component::serialize` of this
            // engine configuration (the key covers the compatibility hash);
            // a file that is not is rejected by wasmtime's header checks.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok((component, true)),
                Err(error) => {
                    tracing::warn!(%error, path = %cached.display(), "ignoring unusable compiled component")
                }
            }
        }
        let component = self.compile_bytes(wasm, bytes)?;
        if let Ok(serialized) = component.serialize() {
            let _ = std::fs::create_dir_all(dir);
            // One temporary name per process: two starting at once must not
            // write one file, nor map a file another is rewriting.
            let tmp = cached.with_extension(format!("tmp-{}", std::process::id()));
            if std::fs::write(&tmp, serialized)
                .and_then(|_| std::fs::rename(&tmp, &cached))
                .is_err()
            {
                tracing::warn!(path = %cached.display(), "could not cache compiled component");
            }
        }
        Ok((component, false))
    }

    /// Compiles with Cranelift: a fraction of a second for a Rust function,
    /// 10-30 s on two cores for a Python or JavaScript one (an interpreter
    /// in 12-35 MB of Wasm), so a long compile says that it is still going.
    fn compile_bytes(&self, wasm: &Path, bytes: &[u8]) -> anyhow::Result<Component> {
        const PROGRESS: Duration = Duration::from_secs(5);
        let component = wasm.display().to_string();
        let cached = if self.cache_dir.is_some() {
            "once: cached after"
        } else {
            "functions.cache is off: every start"
        };
        tracing::info!(%component, size_mib = bytes.len() >> 20, "compiling ({cached})");
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let shown = &component;
            scope.spawn(move || {
                let mut waited = PROGRESS;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(PROGRESS)
                {
                    tracing::info!(component = %shown, elapsed_s = waited.as_secs(), "still compiling");
                    waited += PROGRESS;
                }
            });
            let compiled = Component::new(&self.engine, bytes)
                .map_err(|e| anyhow::anyhow!("compiling {component}: {e:#}"));
            drop(done);
            compiled
        })
    }

    fn cache_key(&self, bytes: &[u8]) -> String {
        use md5::Digest as _;
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let mut digest = md5::Md5::new();
        digest.update(bytes);
        digest.update(hasher.finish().to_le_bytes());
        hex::encode(digest.finalize())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes of each pooled table kept resident and zeroed with memset.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

fn engine_config(pool: Option<&RuntimeSettings>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.parallel_compilation(true);
    // `perf record` shows guest code by name with RUNNEL_WASM_PROFILER=perfmap
    // (README, "Profiling a function").
    if std::env::var_os("RUNNEL_WASM_PROFILER").is_some_and(|v| v == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(settings) = pool {
        let instances = settings.max_instances.max(1);
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(instances)
            .total_core_instances(instances * 16)
            .total_memories(instances * 4)
            .total_tables(instances * 8)
            .max_memory_size(settings.max_memory as usize);
        // A reused slot is zeroed with memset up to this size rather than
        // handed back to the kernel, so the next instance does not fault
        // its memory in page by page again; with PAGEMAP_SCAN (Linux 6.7+)
        // only the pages the last instance touched are zeroed.
        // Tables likewise: a component's few tables each fit in a page or
        // two, and without this every one of them was a `madvise` (and a
        // TLB shootdown across cores) per event (benchmark #3).
        pooling
            .linear_memory_keep_resident(settings.keep_resident as usize)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

fn to_anyhow(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}

/// One output of a function, as the sinks see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub sink: String,
    pub key: Option<String>,
    pub content_type: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub data: Bytes,
}

/// What a function knows besides the event.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub pipeline: String,
    pub config: Vec<(String, String)>,
    /// (name, kind, target) of each declared sink.
    pub sinks: Vec<(String, String, String)>,
    pub attempt: u32,
}

/// Why an invocation produced no outputs. Each kind is a metric outcome.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The function returned an error.
    #[error("function error: {message}")]
    Function { message: String, retryable: bool },
    #[error("trap: {0}")]
    Trap(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("out of memory: needed more than the limit of {limit} bytes")]
    OutOfMemory { limit: u64 },
    /// The instance could not be created (pool exhausted, link error).
    #[error("could not instantiate: {0}")]
    Instantiate(String),
}

impl InvokeError {
    /// Every `outcome` label of `runnel_invocations_total`: `ok` and what
    /// [`outcome`](Self::outcome) can say.
    pub const OUTCOMES: [&'static str; 5] = ["ok", "error", "trap", "timeout", "oom"];

    /// The `outcome` label of `runnel_invocations_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Function { .. } | Self::Instantiate(_) => "error",
            Self::Trap(_) => "trap",
            Self::Timeout(_) => "timeout",
            Self::OutOfMemory { .. } => "oom",
        }
    }

    /// Functions are deterministic: a trap, timeout or OOM on the same
    /// event will happen again, so only what the function (or the host)
    /// calls transient is retried.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Function { retryable, .. } => *retryable,
            Self::Instantiate(_) => true,
            Self::Trap(_) | Self::Timeout(_) | Self::OutOfMemory { .. } => false,
        }
    }
}

/// Measurements of one invocation, for the log line and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct InvocationStats {
    pub instantiation: Duration,
    pub duration: Duration,
    pub peak_memory: u64,
}

/// What the engine runs for an event: a loaded [`Function`], or a stand-in
/// in the engine's own tests. Blocking: the engine calls it on its
/// invocation threads.
pub trait Invoke: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The memory limit, which billing (GB-seconds) is computed from.
    fn memory_limit(&self) -> u64;
    /// Whether the function acts on nothing but its outputs, so a first
    /// attempt may run while its event is being claimed (default true).
    fn pure(&self) -> bool {
        true
    }
    fn invoke(
        &self,
        context: &Context,
        event: &Event,
        label: LogLabel,
    ) -> (Result<Invocation, InvokeError>, InvocationStats);

    /// Whether the function takes its events in batches (it exports
    /// `handle-batch`); [`invoke`](Self::invoke) then runs a batch of one.
    fn batched(&self) -> bool {
        false
    }

    /// Runs the function on `events` in one instance: a result per event,
    /// in order, or `Err` when the batch failed as a whole (a trap, a
    /// timeout, a list of results of another length). The default runs
    /// each event on its own.
    fn invoke_batch(
        &self,
        context: &Context,
        events: &[Arc<Event>],
        label: LogLabel,
    ) -> (BatchResult, InvocationStats) {
        let mut total = InvocationStats::default();
        let results = (events.iter())
            .map(|event| {
                let (result, stats) = self.invoke(context, event, label.clone());
                total.instantiation += stats.instantiation;
                total.duration += stats.duration;
                total.peak_memory = total.peak_memory.max(stats.peak_memory);
                result
            })
            .collect();
        (Ok(results), total)
    }

    /// For a function that runs on the caller's async runtime (yielding at
    /// epoch ticks) rather than on a thread: the invocation as a future.
    /// `None`, the default, means call [`invoke`](Self::invoke) on a thread.
    /// An HTTP function sends its response to `stream`, when given one,
    /// while it writes the body.
    fn invoke_async<'a>(
        &'a self,
        _event: &'a Event,
        _stream: Option<http::Stream>,
    ) -> Option<InvokeFuture<'a>> {
        None
    }
}

/// What a batch invocation returned: each event's result, or why the
/// batch failed as a whole.
pub type BatchResult = Result<Vec<Result<Invocation, InvokeError>>, InvokeError>;

/// An invocation running on the caller's runtime.
pub type InvokeFuture<'a> = std::pin::Pin<
    Box<dyn Future<Output = (Result<Invocation, InvokeError>, InvocationStats)> + Send + 'a>,
>;

/// What one invocation returned: outputs for the sinks, and for an HTTP
/// function the reply to its request.
#[derive(Debug, Default)]
pub struct Invocation {
    pub outputs: Vec<Output>,
    pub reply: Option<http::Reply>,
}

impl Invocation {
    /// An event function's: its outputs, no reply.
    pub fn of(outputs: Vec<Output>) -> Self {
        Self {
            outputs,
            reply: None,
        }
    }
}

impl Invoke for Function {
    fn name(&self) -> &str {
        Function::name(self)
    }

    fn memory_limit(&self) -> u64 {
        Function::memory_limit(self)
    }

    fn pure(&self) -> bool {
        self.kv.is_none() && self.http.is_none()
    }

    fn invoke(
        &self,
        context: &Context,
        event: &Event,
        label: LogLabel,
    ) -> (Result<Invocation, InvokeError>, InvocationStats) {
        let (result, stats) = Function::invoke(self, context, event, label);
        (result.map(Invocation::of), stats)
    }

    fn batched(&self) -> bool {
        matches!(self.pre, Entry::Batch(_))
    }

    fn invoke_batch(
        &self,
        context: &Context,
        events: &[Arc<Event>],
        label: LogLabel,
    ) -> (BatchResult, InvocationStats) {
        let events: Vec<&Event> = events.iter().map(|e| &**e).collect();
        let (result, stats) = self.call(context, &events, label);
        let result = result.map(|results| {
            (results.into_iter())
                .map(|result| result.map(Invocation::of))
                .collect()
        });
        (result, stats)
    }
}

impl Invoke for http::HttpFunction {
    fn name(&self) -> &str {
        http::HttpFunction::name(self)
    }

    fn memory_limit(&self) -> u64 {
        http::HttpFunction::memory_limit(self)
    }

    fn invoke(
        &self,
        context: &Context,
        event: &Event,
        label: LogLabel,
    ) -> (Result<Invocation, InvokeError>, InvocationStats) {
        http::HttpFunction::invoke(self, context, event, label)
    }

    fn invoke_async<'a>(
        &'a self,
        event: &'a Event,
        stream: Option<http::Stream>,
    ) -> Option<InvokeFuture<'a>> {
        Some(Box::pin(self.call(event, stream)))
    }
}

/// A compiled, pre-linked function.
pub struct Function {
    name: String,
    memory_limit: u64,
    timeout: Duration,
    variables: Variables,
    kv: Option<crate::kv::KvGrant>,
    /// Outbound HTTP, when the pipeline grants it.
    http: Option<Arc<outbound::HttpGrant>>,
    pre: Entry,
    engine: Engine,
}

/// What a component exports: `handle`, or `handle-batch`.
enum Entry {
    One(bindings::FunctionPre<HostState>),
    Batch(batch_bindings::BatchFunctionPre<HostState>),
}

/// Each event's outputs, or why the function failed on it; `Err` when the
/// call failed as a whole.
type Outcomes = Result<Vec<Result<Vec<Output>, InvokeError>>, InvokeError>;

impl Function {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The function with the key-value store its pipeline grants.
    pub fn granting_kv(mut self, grant: crate::kv::KvGrant) -> Self {
        self.kv = Some(grant);
        self
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Runs the function on one event in a fresh instance (a batch
    /// function gets a batch of one). Blocking: call it off the async
    /// workers (the invocation threads).
    pub fn invoke(
        &self,
        context: &Context,
        event: &Event,
        label: LogLabel,
    ) -> (Result<Vec<Output>, InvokeError>, InvocationStats) {
        let (result, stats) = self.call(context, &[event], label);
        let result = result.and_then(|mut results| results.pop().expect("one result per event"));
        (result, stats)
    }

    /// Runs the function on `events` in one fresh instance: `handle` for
    /// the one event of a function that exports it, `handle-batch`
    /// otherwise.
    fn call(
        &self,
        context: &Context,
        events: &[&Event],
        label: LogLabel,
    ) -> (Outcomes, InvocationStats) {
        let started = Instant::now();
        let outbound = outbound::Outbound::new(
            self.http.clone(),
            label,
            started + self.timeout,
            self.memory_limit,
        );
        let state = HostState::new(
            self.memory_limit,
            self.variables.clone(),
            self.kv.clone(),
            outbound,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        let ticks = self.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64;
        store.set_epoch_deadline(ticks + 1);
        store.epoch_deadline_trap();

        // Borrowed from `context` and the events: the lists of pairs are
        // the only allocations.
        let config = str_pairs(context.config.iter().map(|(k, v)| (k, v)));
        let sinks: Vec<wit::Sink<'_>> = context
            .sinks
            .iter()
            .map(|(name, kind, target)| wit::Sink { name, kind, target })
            .collect();
        let ctx = wit::Context {
            pipeline: &context.pipeline,
            config: &config,
            sinks: &sinks,
            attempt: context.attempt,
        };
        let attributes: Vec<_> = events.iter().map(|e| str_pairs(&e.attributes)).collect();
        let mut evs: Vec<wit::Event<'_>> = (events.iter().zip(&attributes))
            .map(|(event, attributes)| wit::Event {
                id: &event.id,
                source: &event.source,
                event_type: &event.event_type,
                subject: event.subject.as_deref(),
                content_type: event.content_type.as_deref(),
                attributes,
                data: &event.data,
            })
            .collect();

        let mut stats = InvocationStats::default();
        let result = match &self.pre {
            Entry::One(pre) => {
                assert_eq!(
                    evs.len(),
                    1,
                    "a function exporting `handle` runs one event at a time"
                );
                let instance = pre.instantiate(&mut store);
                stats.instantiation = started.elapsed();
                instance
                    .and_then(|instance| instance.call_handle(&mut store, ctx, evs.remove(0)))
                    .map(|result| vec![result])
            }
            Entry::Batch(pre) => {
                let instance = pre.instantiate(&mut store);
                stats.instantiation = started.elapsed();
                instance.and_then(|instance| instance.call_handle_batch(&mut store, ctx, &evs))
            }
        };
        stats.duration = started.elapsed();
        stats.peak_memory = store.data().limiter.peak;
        let result = match result {
            Ok(results) if results.len() != events.len() => Err(InvokeError::Function {
                message: format!(
                    "handle-batch returned {} results for {} events",
                    results.len(),
                    events.len()
                ),
                retryable: true,
            }),
            Ok(results) => Ok((results.into_iter())
                .map(|result| match result {
                    Ok(outputs) => Ok(outputs.into_iter().map(from_wit_output).collect()),
                    Err(e) => Err(InvokeError::Function {
                        message: e.message,
                        retryable: e.retryable,
                    }),
                })
                .collect()),
            Err(error) => Err(self.classify(error, store.data())),
        };
        (result, stats)
    }

    fn classify(&self, error: wasmtime::Error, state: &HostState) -> InvokeError {
        classify(
            error,
            state.limiter.refused,
            state.stderr_tail(),
            self.memory_limit,
            self.timeout,
        )
    }
}

/// What an instance's failure was: a refused grow is out of memory (the
/// guest's allocator then traps, indistinguishable otherwise), an
/// interrupt is the epoch deadline.
fn classify(
    error: wasmtime::Error,
    refused: bool,
    stderr: Option<String>,
    memory_limit: u64,
    timeout: Duration,
) -> InvokeError {
    if refused {
        return InvokeError::OutOfMemory {
            limit: memory_limit,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout(timeout),
        Some(trap) => {
            let mut message = trap.to_string();
            if let Some(stderr) = stderr {
                message = format!("{message}; stderr: {stderr}");
            }
            InvokeError::Trap(message)
        }
        None => InvokeError::Instantiate(format!("{error:#}")),
    }
}

fn str_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(&'a str, &'a str)> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn from_wit_output(output: wit::Output) -> Output {
    Output {
        sink: output.sink,
        key: output.key,
        content_type: output.content_type,
        attributes: output.attributes,
        data: Bytes::from(output.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics register one series per listed outcome, and look each
    /// invocation's up there.
    #[test]
    fn every_outcome_is_listed() {
        let errors = [
            InvokeError::Function {
                message: String::new(),
                retryable: false,
            },
            InvokeError::Trap(String::new()),
            InvokeError::Timeout(Duration::ZERO),
            InvokeError::OutOfMemory { limit: 0 },
            InvokeError::Instantiate(String::new()),
        ];
        for error in errors {
            assert!(InvokeError::OUTCOMES.contains(&error.outcome()), "{error}");
        }
    }
}
