//! The running process: backends, functions, pipelines, HTTP, shutdown.
//!
//! `runnel up` binds its listener, builds and loads every pipeline's
//! function (all before serving anything, so a broken function fails the
//! start, not the first event), then runs a [`Process`]: opens the backends
//! the runtime config names, starts each pipeline's trigger and the HTTP
//! API, and on SIGINT/SIGTERM stops taking events, lets those in flight
//! finish within the grace period, and exits. A second signal exits at
//! once. [`Process::run`] takes its listener and shutdown signal from the
//! caller, so tests run the whole process in theirs, with functions of
//! their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, EmbeddedBroker};
use crate::config::pipeline::PipelineConfig;
use crate::config::runtime::{
    BrokerConfig, FunctionsConfig, IdempotencyConfig, RuntimeConfig, StorageConfig,
};
use crate::engine::{Handler, Threads, feed_driver};
use crate::idempotency::{EmbeddedIdempotency, IdempotencyStore};
use crate::runtime::{FunctionConfig, FunctionLocation, Invoke, Runtime, RuntimeSettings, build};
use crate::server::jwt::JwtVerifier;
use crate::server::{ApiState, Functions as _, router};
use crate::sinks::Backends;
use crate::storage::{LocalStorage, ObjectStore};
use crate::triggers::http::{Gateway, Mode};
use crate::triggers::{Trigger, TriggerConfig};

/// The backends named by the runtime config, opened.
pub struct Opened {
    pub backends: Backends,
    pub idempotency: Arc<dyn IdempotencyStore>,
    embedded_broker: Option<Arc<EmbeddedBroker>>,
    retention: Duration,
}

pub async fn open_backends(config: &RuntimeConfig) -> anyhow::Result<Opened> {
    let (broker, embedded_broker, retention): (Arc<dyn Broker>, _, _) = match &config.broker {
        BrokerConfig::Embedded {
            path,
            partitions,
            durability,
            retention,
        } => {
            let embedded = Arc::new(
                EmbeddedBroker::open(path, *durability, *partitions).with_context(|| {
                    format!("opening the embedded broker at {}", path.display())
                })?,
            );
            (embedded.clone(), Some(embedded), *retention)
        }
        #[cfg(feature = "kafka")]
        BrokerConfig::Kafka { properties } => (
            Arc::new(crate::broker::kafka::KafkaBroker::new(
                properties.clone(),
                config.instance_id.clone(),
            )?),
            None,
            Duration::ZERO,
        ),
        #[cfg(not(feature = "kafka"))]
        BrokerConfig::Kafka { .. } => {
            anyhow::bail!("broker.type = \"kafka\" needs a runnel built with the `kafka` feature")
        }
    };
    let store: Arc<dyn ObjectStore> = match &config.storage {
        StorageConfig::Local { root, durability } => Arc::new(
            LocalStorage::open(root, *durability)
                .await
                .with_context(|| format!("opening local storage at {}", root.display()))?,
        ),
        #[cfg(feature = "s3")]
        StorageConfig::S3(s3) => {
            Arc::new(crate::storage::s3::S3Storage::connect((**s3).clone(), broker.clone()).await)
        }
    };
    let idempotency: Arc<dyn IdempotencyStore> = match &config.idempotency {
        IdempotencyConfig::Embedded { path, ttl } => Arc::new(
            EmbeddedIdempotency::open(path, crate::sqlite::Durability::Full, *ttl)
                .with_context(|| format!("opening the idempotency store at {}", path.display()))?,
        ),
        #[cfg(feature = "redis")]
        IdempotencyConfig::Redis { url, prefix, ttl } => Arc::new(
            crate::idempotency::redis::RedisIdempotency::connect(
                url,
                prefix,
                *ttl,
                config.instance_id.as_deref(),
            )
            .await
            .context("connecting the idempotency store (idempotency.url)")?,
        ),
        #[cfg(not(feature = "redis"))]
        IdempotencyConfig::Redis { .. } => {
            anyhow::bail!(
                "idempotency.type = \"redis\" needs a runnel built with the `redis` feature"
            )
        }
    };
    crate::install_tls_provider();
    let http = reqwest::Client::builder()
        .user_agent(concat!("runnel/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    Ok(Opened {
        backends: Backends {
            store,
            broker,
            http,
        },
        idempotency,
        embedded_broker,
        retention,
    })
}

/// The component file of a function: for a project, the prebuilt
/// component in `functions.components_dir` when that is set, else the
/// project built now (when its sources changed).
pub fn component_path(
    function: &FunctionConfig,
    config: &FunctionsConfig,
) -> anyhow::Result<PathBuf> {
    match &function.location {
        FunctionLocation::Component(path) => Ok(path.clone()),
        FunctionLocation::Project { dir, language } => {
            if let Some(components) = &config.components_dir {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().replace('-', "_"))
                    .unwrap_or_default();
                let path = components.join(format!("{name}.wasm"));
                anyhow::ensure!(
                    path.is_file(),
                    "function {}: no prebuilt component at {} (functions.components_dir)",
                    function.name,
                    path.display()
                );
                return Ok(path);
            }
            anyhow::ensure!(
                config.build,
                "function {} is a {} project ({}) and functions.build is off; set functions.components_dir or point `path` at a .wasm component",
                function.name,
                language.name(),
                dir.display()
            );
            tracing::info!(function = %function.name, function_dir = %dir.display(), language = language.name(), "building function");
            let world = build::World::of(&function.capabilities);
            Ok(build::build(dir, *language, world, &config.cache_dir)?)
        }
    }
}

/// Builds (when needed), compiles and pre-links every pipeline's function.
pub fn load_functions(
    config: &RuntimeConfig,
    pipelines: &[PipelineConfig],
) -> anyhow::Result<(Runtime, Vec<Arc<dyn Invoke>>)> {
    let mut built: BTreeMap<(PathBuf, build::World), PathBuf> = BTreeMap::new();
    let mut components = Vec::new();
    for pipeline in pipelines {
        // A project granted outbound HTTP is built against another world.
        let key = match &pipeline.function.location {
            FunctionLocation::Project { dir: p, .. } | FunctionLocation::Component(p) => {
                (p.clone(), build::World::of(&pipeline.function.capabilities))
            }
        };
        let path = match built.get(&key) {
            Some(path) => path.clone(),
            None => {
                let path = component_path(&pipeline.function, &config.functions)
                    .with_context(|| format!("pipeline {}", pipeline.name))?;
                built.insert(key, path.clone());
                path
            }
        };
        components.push(path);
    }
    // Instances live while they run: an event function's on one of the
    // shared invocation threads, a sync HTTP function's on the async
    // runtime, as many as its pipeline's concurrency. (Twice that, as
    // before the threads were shared, so a slot is never what a burst
    // waits for.)
    let (mut threaded, mut on_runtime) = (0u32, 0u32);
    for p in pipelines {
        match &p.source {
            TriggerConfig::Http(http) if http.mode == Mode::Sync => {
                on_runtime += p.concurrency as u32
            }
            _ => threaded += p.concurrency as u32,
        }
    }
    let threaded = threaded.min(config.functions.max_threads as u32);
    let settings = RuntimeSettings {
        pooling: config.functions.pooling,
        max_instances: (threaded + on_runtime) * 2 + 8,
        max_memory: pipelines
            .iter()
            .map(|p| p.function.memory_limit)
            .max()
            .unwrap_or(crate::runtime::DEFAULT_MEMORY_LIMIT),
        keep_resident: config.functions.keep_resident,
        cache_dir: config
            .functions
            .cache
            .then(|| config.functions.cache_dir.clone()),
    };
    let runtime = Runtime::new(&settings)?;
    let kv = kv_store(config, pipelines)?;
    let functions = pipelines
        .iter()
        .zip(&components)
        .map(|(p, wasm)| {
            let function: Arc<dyn Invoke> = match &p.source {
                TriggerConfig::Http(http) if http.mode == Mode::Sync => Arc::new(
                    runtime.load_http(&p.name, &p.function, wasm, http.max_response_size)?,
                ),
                _ => {
                    let function = runtime.load(&p.function, wasm)?;
                    check_batch(p, Invoke::batched(&function))?;
                    match (&p.function.capabilities.kv, &kv) {
                        (Some(name), Some(store)) => {
                            Arc::new(function.granting_kv(crate::kv::KvGrant {
                                store: store.clone(),
                                scope: format!("{name}/{}", p.name),
                                name: name.clone(),
                            }))
                        }
                        _ => Arc::new(function),
                    }
                }
            };
            Ok(function)
        })
        .map(|loaded: anyhow::Result<_>| loaded.with_context(|| "loading a function"))
        .zip(pipelines)
        .map(|(loaded, p)| loaded.with_context(|| format!("pipeline {}", p.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((runtime, functions))
}

/// A batch function (`handle-batch`) runs where the source gathers
/// batches, and only there.
fn check_batch(pipeline: &PipelineConfig, batched: bool) -> anyhow::Result<()> {
    let function = &pipeline.function.name;
    match (pipeline.batch.is_some(), batched) {
        (true, false) => anyhow::bail!(
            "[source] batch is set, but function {function} exports `handle`, which takes one event: \
             a batch function exports `handle-batch` (WIT world `batch-function`; runnel-sdk's `batch` module)"
        ),
        (false, true) => anyhow::bail!(
            "function {function} exports `handle-batch` (WIT world `batch-function`): \
             set [source] batch = {{ max_events = 100, max_wait = \"50ms\" }} to hand it batches"
        ),
        _ => Ok(()),
    }
}

/// The key-value store, opened when a pipeline grants one.
pub fn kv_store(
    config: &RuntimeConfig,
    pipelines: &[PipelineConfig],
) -> anyhow::Result<Option<Arc<dyn crate::kv::KvStore>>> {
    if !pipelines
        .iter()
        .any(|p| p.function.capabilities.kv.is_some())
    {
        return Ok(None);
    }
    if let Some((url, prefix)) = &config.kv.redis {
        #[cfg(feature = "redis")]
        {
            // Its calls block invocation threads on this runtime.
            let runtime = tokio::runtime::Handle::try_current()
                .context("the Redis key-value store is opened within a tokio runtime")?;
            let connect = crate::kv::redis::RedisKv::connect(url, prefix, config.kv.limits);
            let store = runtime
                .block_on(connect)
                .context("connecting the key-value store (kv.url)")?;
            return Ok(Some(Arc::new(store)));
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (url, prefix);
            anyhow::bail!("kv.type = \"redis\" needs a runnel built with the `redis` feature");
        }
    }
    let store = crate::kv::embedded::EmbeddedKv::open(
        &config.kv.path,
        config.kv.durability,
        config.kv.limits,
    )
    .with_context(|| format!("opening the key-value store {}", config.kv.path.display()))?;
    Ok(Some(Arc::new(store)))
}

/// `runnel up`: binds `http.listen`, loads the functions and runs until a
/// signal.
pub async fn up(config: RuntimeConfig, pipelines: Vec<PipelineConfig>) -> anyhow::Result<()> {
    let metrics = crate::metrics::install()?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("listening on {} (http.listen)", config.http.listen))?;
    let (runtime, functions) = {
        let (config, pipelines) = (config.clone(), pipelines.clone());
        tokio::task::spawn_blocking(move || load_functions(&config, &pipelines)).await??
    };
    tracing::info!(
        pooling = runtime.pooling(),
        functions = functions.len(),
        "runtime ready"
    );
    let shutdown = stop_on_signals();
    let _exporting = crate::telemetry::start(&config.telemetry)
        .context("exporting traces ([telemetry], OTEL_EXPORTER_OTLP_*)")?;
    let process = Process {
        config,
        pipelines,
        functions,
        metrics,
    };
    process.run(listener, shutdown).await?;
    drop(runtime);
    tracing::info!("stopped");
    Ok(())
}

/// A token cancelled by SIGINT or SIGTERM; a second signal exits at once.
fn stop_on_signals() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing events in flight (a second signal exits at once)");
        stop.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    shutdown
}

/// What `runnel up --watch` reloads from: the configs as `runnel up` reads
/// them (`None` after printing their problems), and the paths it was given.
pub struct Watching {
    pub load: Box<dyn Fn() -> Option<(RuntimeConfig, Vec<PipelineConfig>)> + Send + Sync>,
    pub paths: Vec<PathBuf>,
    pub config_file: Option<PathBuf>,
}

/// `runnel up --watch`: runs as `up` does and, when a pipeline file, the
/// runtime config or a function's sources change, reads and builds
/// everything again while the old process goes on; only once that
/// succeeded does the old one stop as on SIGTERM (no new events, those in
/// flight finish and are acknowledged within `shutdown_grace`) and the new
/// one start on the same address. A change that does not validate or
/// build is reported and leaves the running pipelines as they are.
pub async fn up_watching(
    watching: Watching,
    mut config: RuntimeConfig,
    mut pipelines: Vec<PipelineConfig>,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::install()?;
    let signal = stop_on_signals();
    let _exporting = crate::telemetry::start(&config.telemetry)
        .context("exporting traces ([telemetry], OTEL_EXPORTER_OTLP_*)")?;
    let load = |config: &RuntimeConfig, pipelines: &[PipelineConfig]| {
        let (config, pipelines) = (config.clone(), pipelines.to_vec());
        tokio::task::spawn_blocking(move || load_functions(&config, &pipelines))
    };
    let (mut runtime, mut functions) = load(&config, &pipelines).await??;
    loop {
        let roots =
            crate::watch::roots(&watching.paths, watching.config_file.as_deref(), &pipelines);
        let mut seen = tokio::task::spawn_blocking({
            let roots = roots.clone();
            move || crate::watch::fingerprint(&roots)
        })
        .await?;
        let listener = bind_again(config.http.listen).await?;
        tracing::info!(
            pipelines = pipelines.len(),
            watched = roots.len(),
            "watching for changes"
        );
        let stop = signal.child_token();
        let process = Process {
            config: config.clone(),
            pipelines: pipelines.clone(),
            functions,
            metrics: metrics.clone(),
        };
        let mut running = tokio::spawn(process.run(listener, stop.clone()));
        let (next_config, next_pipelines, loaded) = loop {
            tokio::select! {
                ended = &mut running => {
                    ended??;
                    drop(runtime);
                    tracing::info!("stopped");
                    return Ok(());
                }
                now = crate::watch::changed(&roots, seen) => {
                    seen = now;
                    tracing::info!("a watched file changed: reading and building again");
                    let Some((config, pipelines)) = (watching.load)() else {
                        tracing::warn!("keeping the running pipelines until the problems above are fixed");
                        continue;
                    };
                    match load(&config, &pipelines).await? {
                        Ok(loaded) => break (config, pipelines, loaded),
                        Err(error) => {
                            tracing::warn!(error = %format!("{error:#}"), "keeping the running pipelines: the build failed");
                        }
                    }
                }
            }
        };
        tracing::info!("reloading: finishing the events in flight first");
        stop.cancel();
        running.await??;
        drop(runtime);
        (config, pipelines) = (next_config, next_pipelines);
        (runtime, functions) = loaded;
        tracing::info!(pipelines = pipelines.len(), "reloaded");
    }
}

/// Binds `addr`, waiting a moment for the previous process's listener to
/// let go of it.
async fn bind_again(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("listening on {addr} (http.listen)")),
        }
    }
}

/// What `runnel up` runs, assembled: the configs and a loaded function per
/// pipeline (in the order of `pipelines`).
pub struct Process {
    pub config: RuntimeConfig,
    pub pipelines: Vec<PipelineConfig>,
    pub functions: Vec<Arc<dyn Invoke>>,
    pub metrics: PrometheusHandle,
}

impl Process {
    /// Opens the backends, starts every pipeline's trigger and serves the
    /// HTTP API on `listener` until `shutdown` is cancelled; then stops
    /// taking events and lets those in flight finish within
    /// `shutdown_grace`. Taking the listener and the signal from the caller
    /// lets tests run the whole process in theirs.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Process {
            config,
            pipelines,
            functions,
            metrics,
        } = self;
        anyhow::ensure!(
            functions.len() == pipelines.len(),
            "one function per pipeline"
        );
        let addr = listener.local_addr()?;
        let auth = &config.http.auth;
        anyhow::ensure!(
            addr.ip().is_loopback() || auth.required() || auth.allow_anonymous,
            "listening on {addr} (http.listen), which other hosts can reach, with no API keys: \
             add keys under [http.auth.keys.<name>], or set http.auth.allow_anonymous = true \
             to serve every route to anyone who reaches the port"
        );
        let opened = open_backends(&config).await?;
        let checked = crate::health::Backends {
            store: opened.backends.store.clone(),
            broker: opened.backends.broker.clone(),
            idempotency: opened.idempotency.clone(),
            databases: Arc::new(config.databases.clone()),
            sources: Default::default(),
        };
        let health = crate::health::Health::start(checked.clone(), shutdown.clone()).await;
        if !health.is_healthy() {
            tracing::warn!(checks = ?health.report(), "starting with backends unavailable; events wait for them");
        }
        let mut running = tokio::task::JoinSet::new();
        // Every pipeline's invocations share these, started as events come.
        let threads = Arc::new(Threads::new("runnel-fn", config.functions.max_threads));
        let auth = Arc::new(config.http.auth.clone());
        let jwt = match &config.http.auth.jwt {
            None => None,
            Some(jwt) => Some(Arc::new(
                JwtVerifier::open(jwt.clone(), opened.backends.http.clone()).await?,
            )),
        };
        let mut gateway = Gateway::new(auth.clone(), jwt.clone());
        // Pipelines whose routes have a listener of their own (`listen`).
        let mut own: BTreeMap<SocketAddr, Gateway> = BTreeMap::new();
        // What the dashboard shows and replays through.
        let mut handlers = Vec::new();
        for (pipeline, function) in pipelines.iter().zip(functions) {
            let opened_trigger = pipeline
                .source
                .open(&pipeline.name, &checked)
                .await
                .with_context(|| format!("pipeline {}: opening its source", pipeline.name))?;
            let handler = Handler::new(
                pipeline,
                function,
                &opened.backends,
                opened.idempotency.clone(),
                health.clone(),
                threads.clone(),
            );
            // An async HTTP pipeline's status says "running" for what
            // this process runs.
            let handler = match &opened_trigger {
                Trigger::Queued { .. } => Arc::new(handler.reporting()),
                _ => Arc::new(handler),
            };
            handlers.push((pipeline.clone(), handler.clone()));
            match opened_trigger {
                Trigger::Pulled(trigger) => {
                    running.spawn(feed_driver::run(
                        handler,
                        trigger,
                        shutdown.clone(),
                        config.shutdown_grace,
                    ));
                }
                Trigger::Routes(routes) => {
                    let serving = match routes.listen {
                        None => &mut gateway,
                        Some(addr) => own
                            .entry(addr)
                            .or_insert_with(|| Gateway::new(auth.clone(), jwt.clone())),
                    };
                    serving
                        .add(&routes, handler, None)
                        .map_err(|e| anyhow::anyhow!("pipeline {}: {e}", pipeline.name))?
                }
                Trigger::Queued {
                    routes,
                    queue,
                    feed,
                } => {
                    gateway
                        .add(&routes, handler.clone(), Some(queue))
                        .map_err(|e| anyhow::anyhow!("pipeline {}: {e}", pipeline.name))?;
                    running.spawn(feed_driver::run(
                        handler,
                        feed,
                        shutdown.clone(),
                        config.shutdown_grace,
                    ));
                }
            }
        }
        if let Some(broker) = opened.embedded_broker.clone() {
            tokio::spawn(prune(broker, opened.retention, shutdown.clone()));
        }

        let dashboard = config.http.dashboard.then(|| {
            crate::dashboard::activity::enable();
            Arc::new(crate::dashboard::Dashboard {
                pipelines: handlers,
                backends: opened.backends.clone(),
                health: health.clone(),
                auth: auth.clone(),
                metrics: metrics.clone(),
                stop: shutdown.clone(),
            })
        });
        let state = ApiState {
            store: opened.backends.store.clone(),
            broker: opened.backends.broker.clone(),
            metrics,
            max_upload_size: config.http.max_upload_size,
            max_body_size: config.http.max_body_size,
            known_buckets: Arc::new(pipelines.iter().flat_map(PipelineConfig::buckets).collect()),
            s3_webhook: s3_webhook(&config.storage),
            health,
            functions: Arc::new(gateway),
            auth: auth.clone(),
        };
        let mut servers = Vec::new();
        for (addr, gateway) in own {
            anyhow::ensure!(
                addr.ip().is_loopback() || auth.required() || auth.allow_anonymous,
                "a pipeline's source.listen is {addr}, which other hosts can reach, with no API keys: \
                 add keys under [http.auth.keys.<name>], or set http.auth.allow_anonymous = true"
            );
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (a pipeline's source.listen)"))?;
            let gateway = Arc::new(gateway);
            let routes = axum::Router::new().fallback(move |request| {
                let gateway = gateway.clone();
                async move { gateway.serve(request).await }
            });
            tracing::info!(listen = %addr, "serving HTTP functions' routes");
            servers.push(serve(listener, routes, shutdown.clone()));
        }
        let addr = listener.local_addr()?;
        let mut routes = router(state);
        if let Some(dashboard) = dashboard {
            routes = routes.merge(crate::dashboard::router(dashboard));
            tracing::info!(url = %format!("http://{addr}/"), "dashboard");
        }
        tracing::info!(listen = %addr, pipelines = pipelines.len(), "runnel is up");
        servers.push(serve(listener, routes, shutdown.clone()));
        shutdown.cancelled().await;
        // New connections are refused now; requests in flight and pulled
        // events get the same grace.
        let grace = config.shutdown_grace;
        let finished = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
            for server in servers {
                let _ = server.await;
            }
        });
        if finished.await.is_err() {
            tracing::warn!(
                ?grace,
                "grace period over; requests still in flight are cut off"
            );
        }
        Ok(())
    }
}

/// Serves `routes` on `listener` until `stop`; then refuses new
/// connections and lets those in flight finish.
fn serve(
    listener: tokio::net::TcpListener,
    routes: axum::Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, routes)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    })
}

/// Deletes the embedded broker's messages past `retention`, hourly.
async fn prune(broker: Arc<EmbeddedBroker>, retention: Duration, stop: CancellationToken) {
    loop {
        if let Some(cutoff) = SystemTime::now().checked_sub(retention) {
            match broker.journal().prune(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned messages past retention"),
                Err(error) => tracing::warn!(%error, "pruning the broker failed"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

fn s3_webhook(storage: &StorageConfig) -> Option<crate::server::S3Webhook> {
    match storage {
        #[cfg(feature = "s3")]
        StorageConfig::S3(s3) => match &s3.events {
            crate::storage::s3::S3Events::Webhook { topic, auth_token } => {
                Some(crate::server::S3Webhook {
                    topic: topic.clone(),
                    auth_token: auth_token.clone(),
                })
            }
            _ => None,
        },
        _ => None,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
