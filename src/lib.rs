//! runnel: self-hosted, serverless-style event pipelines.
//!
//! A pipeline turns outside events (objects created in a bucket, messages
//! on a topic) into runs of a WebAssembly function, one fresh instance per
//! event, and writes the function's outputs to sinks (buckets, topics,
//! webhooks), with retries, idempotency keys and a dead-letter sink.
//!
//! # Layout
//!
//! The flow is **source → (dedupe) → function → sinks (+ dead letters)**:
//!
//! - [`config`]: pipeline files and the runtime config; read with spans,
//!   every problem reported at once.
//! - [`event`]: the event envelope that crosses every boundary.
//! - [`sources`]: where events come from (bucket notifications, topics),
//!   and the offset bookkeeping that makes acknowledgement safe.
//! - [`idempotency`]: which events are already done.
//! - [`runtime`]: wasmtime: one engine, pre-linked components, a fresh
//!   instance per event with memory and time limits; building function crates.
//! - [`sinks`]: where outputs go (storage, topic, webhook).
//! - [`pipeline`]: the engine wiring a source to a function to sinks:
//!   concurrency, ordering per key, retries, dead letters, acks.
//! - [`storage`] and [`broker`]: the backends behind "bucket" and "topic".
//! - [`journal`] and [`sqlite`]: the durable SQLite log the embedded
//!   backends are built on.
//! - [`http`]: upload API, `/metrics`, `/healthz`; [`health`]: the
//!   backend checks behind `/healthz`, which also hold events in outages.
//! - [`metrics`]: every metric name, described once.
//! - [`app`]: the running process (`runnel up`); [`invoke`]: `runnel invoke`;
//!   [`dlq`]: `runnel dlq list|replay`.

pub mod app;
pub mod broker;
pub mod config;
pub mod dlq;
pub mod event;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod invoke;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod sqlite;
pub mod storage;
