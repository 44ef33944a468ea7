//! runnel: self-hosted, serverless-style event pipelines.
//!
//! A pipeline's trigger turns outside events (objects created in a bucket,
//! messages on a topic) into runs of a WebAssembly function, one fresh
//! instance per event, and writes the function's outputs to sinks (buckets, topics,
//! webhooks), with retries, idempotency keys and a dead-letter sink.
//!
//! # Layout
//!
//! The flow is **trigger → (dedupe) → function → sinks (+ dead letters)**.
//! From the bottom up:
//!
//! - [`config`]: the reading kit (spanned TOML, units, every problem at
//!   once) and what pipeline files and the runtime config mean.
//! - [`event`], [`feed`], [`retry`]: the contracts every layer shares: the
//!   event envelope; the partitioned, committable feed and the offset
//!   bookkeeping that makes acknowledgement safe; the one retry policy.
//! - [`storage`] and [`broker`]: the backends behind "bucket" and "topic";
//!   [`journal`] and [`sqlite`]: the durable SQLite log the embedded ones
//!   are built on. [`idempotency`]: which events are already done.
//! - [`runtime`]: wasmtime: one engine, pre-linked components, a fresh
//!   instance per event with memory and time limits; building function
//!   projects (Rust, Python, JavaScript).
//! - [`sinks`]: where outputs go (storage, topic, webhook).
//! - [`engine`]: the one event handler (claim → invoke → deliver → complete
//!   or dead-letter) and the feed driver that runs pulled triggers through
//!   it (batches, concurrency, order per key, acks, grace).
//! - [`triggers`]: one file per kind of `[source]` (bucket notifications,
//!   topics, HTTP requests), each feeding the engine.
//! - [`server`]: the HTTP surface: the API's routes (objects, topics,
//!   invocations, `/metrics`, health), who may call them (keys, JWTs, rate
//!   limits, CORS), and below them whatever triggers contribute
//!   ([`server::Functions`]); [`health`]: the backend checks behind
//!   `/healthz`, which also hold events in outages.
//! - [`dashboard`]: the live page at `/`, fed by the metrics registry and
//!   the log, replaying dead letters through the pipelines' handlers.
//! - [`metrics`]: every metric name, described once; [`telemetry`]: W3C
//!   trace context through every hop, and spans exported over OTLP.
//! - [`app`]: assembling and running the process (`runnel up`, in-process
//!   for tests; `up --watch` reloading on the changes [`watch`] sees);
//!   [`invoke`]: `runnel invoke`; [`dlq`]: `runnel dlq list|replay`;
//!   [`scaffold`]: `runnel new`.

pub mod app;
pub mod broker;
pub mod config;
pub mod dashboard;
pub mod dlq;
pub mod engine;
pub mod event;
pub mod feed;
pub mod health;
pub mod idempotency;
pub mod invoke;
pub mod journal;
pub mod kv;
pub mod metrics;
pub mod retry;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod sinks;
pub mod sqlite;
pub mod storage;
pub mod telemetry;
pub mod triggers;
pub mod watch;

/// Installs ring as rustls's crypto provider, which every HTTPS client of
/// runnel's (webhooks, JWKS, functions' outbound requests) needs before it
/// is built; later calls do nothing. ring keeps the build free of a C
/// toolchain dependency heavier than the one SQLite already needs.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
