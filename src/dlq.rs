//! `runnel dlq`: reading a pipeline's dead letters back, and sending them
//! through the pipeline again once the function or the input is fixed.
//!
//! Dead letters in a bucket are objects under `<pipeline>/`; replaying one
//! successfully deletes it. Dead letters on a topic stay on the topic (a
//! topic cannot forget), so listing shows them all; replay records each
//! success in the idempotency store.

use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::pipeline::PipelineConfig;
use crate::engine::{Handler, OnFailure, Outcome, Pending, Track, Work};
use crate::event::Event;
use crate::idempotency::IdempotencyStore;
use crate::runtime::Invoke;
use crate::sinks::{Backends, SinkConfig};

/// One dead letter and where it is kept.
pub struct Entry {
    /// `bucket/key` or `topic/partition/offset`.
    pub location: String,
    /// The object key, for deleting it after a replay.
    pub object_key: Option<String>,
    /// The record as written (see `engine::dead_letter::DeadLetter`).
    pub record: serde_json::Value,
}

impl Entry {
    /// The idempotency key of the event, which `--id` selects by.
    pub fn key(&self) -> &str {
        self.record["key"].as_str().unwrap_or_default()
    }

    pub fn event(&self) -> Option<Event> {
        serde_json::from_value(self.record.get("event")?.clone()).ok()
    }

    /// One line for `dlq list`.
    pub fn summary(&self) -> String {
        let r = &self.record;
        format!(
            "{}\t{}\tattempts={}\tfailed_at={}\t{}",
            self.key(),
            r["outcome"]
                .as_str()
                .unwrap_or(r["stage"].as_str().unwrap_or("-")),
            r["attempts"],
            r["failed_at"].as_str().unwrap_or("-"),
            r["error"].as_str().unwrap_or("-")
        )
    }
}

/// Most dead letters read at once.
const LIMIT: usize = 10_000;

pub async fn list(pipeline: &PipelineConfig, backends: &Backends) -> anyhow::Result<Vec<Entry>> {
    let name = &pipeline.name;
    match &pipeline.dead_letter {
        SinkConfig::Storage(sink) => {
            let keys = backends
                .store
                .list(&sink.bucket, &format!("{name}/"), LIMIT)
                .await?;
            let mut entries = Vec::new();
            for key in keys {
                let (_, body) = backends
                    .store
                    .get(&sink.bucket, &key, 64 << 20, None)
                    .await?;
                let record = serde_json::from_slice(&body).with_context(|| {
                    format!("{}/{key} is not a dead-letter record", sink.bucket)
                })?;
                entries.push(Entry {
                    location: format!("{}/{key}", sink.bucket),
                    object_key: Some(key),
                    record,
                });
            }
            Ok(entries)
        }
        SinkConfig::Topic(sink) => {
            let mut entries = Vec::new();
            let mut from = 0;
            loop {
                let batch = backends.broker.peek(&sink.topic, from, 1000).await?;
                if batch.is_empty() {
                    break;
                }
                from = batch.iter().map(|c| c.position.offset).max().unwrap_or(0) + 1;
                for consumed in batch {
                    let ours = consumed
                        .message
                        .headers
                        .iter()
                        .any(|(k, v)| k == "runnel-pipeline" && v == name);
                    if !ours {
                        continue;
                    }
                    let record =
                        serde_json::from_slice(&consumed.message.payload).with_context(|| {
                            format!(
                                "{}/{}/{} is not a dead-letter record",
                                sink.topic, consumed.position.partition, consumed.position.offset
                            )
                        })?;
                    entries.push(Entry {
                        location: format!(
                            "{}/{}/{}",
                            sink.topic, consumed.position.partition, consumed.position.offset
                        ),
                        object_key: None,
                        record,
                    });
                }
                if entries.len() >= LIMIT {
                    break;
                }
            }
            Ok(entries)
        }
        SinkConfig::Webhook(sink) => bail!(
            "pipeline {name} sends its dead letters to {}; runnel cannot read them back",
            sink.url
        ),
    }
}

/// What happened to one dead letter on replay.
pub enum Replayed {
    Done {
        attempts: u32,
    },
    FailedAgain(String),
    /// The record holds no event (its payload could not be read or decoded).
    NoEvent,
}

/// Replays the dead letters whose key is in `ids` (all when empty).
pub async fn replay(
    pipeline: &PipelineConfig,
    function: Arc<dyn Invoke>,
    backends: &Backends,
    idempotency: Arc<dyn IdempotencyStore>,
    ids: &[String],
) -> anyhow::Result<Vec<(Entry, Replayed)>> {
    let handler = Handler::new(
        pipeline,
        function,
        backends,
        idempotency,
        crate::health::Health::unchecked(),
        Arc::new(crate::engine::Threads::new(
            "runnel-fn",
            pipeline.concurrency,
        )),
    );
    replay_through(&handler, pipeline, backends, ids).await
}

/// Replays through `handler`, the pipeline's own (a running process's,
/// for the dashboard), so a replay shares its permits and its order.
pub async fn replay_through(
    handler: &Handler,
    pipeline: &PipelineConfig,
    backends: &Backends,
    ids: &[String],
) -> anyhow::Result<Vec<(Entry, Replayed)>> {
    let entries = list(pipeline, backends).await?;
    let mut results = Vec::new();
    for entry in entries {
        if !ids.is_empty() && !ids.iter().any(|id| id == entry.key()) {
            continue;
        }
        let outcome = match entry.event() {
            None => Replayed::NoEvent,
            // The same handler as the pipeline's trigger uses; the event
            // ended before (dead-lettered), and failing again leaves its
            // dead letter where it is.
            Some(event) => {
                let work = Work {
                    on_failure: OnFailure::Return,
                    track: Track::Again,
                    ..Work::new(
                        event.idempotency_key.clone(),
                        Pending::Event(Box::new(event)),
                    )
                };
                let handled = handler.handle(handler.admit().await, work).await;
                match handled.outcome {
                    Outcome::Done { attempts, .. } => {
                        if let (SinkConfig::Storage(sink), Some(key)) =
                            (&pipeline.dead_letter, &entry.object_key)
                        {
                            backends.store.delete(&sink.bucket, key).await?;
                        }
                        Replayed::Done { attempts }
                    }
                    Outcome::Failed { attempts, failure } => Replayed::FailedAgain(format!(
                        "{} (after {attempts} attempts)",
                        failure.message
                    )),
                    other => {
                        unreachable!("a replay is neither skipped nor dead-lettered: {other:?}")
                    }
                }
            }
        };
        results.push((entry, outcome));
    }
    Ok(results)
}

/// `runnel dlq list`: prints one line per dead letter.
pub async fn print_list(
    config: &crate::config::runtime::RuntimeConfig,
    pipeline: &PipelineConfig,
) -> anyhow::Result<()> {
    let opened = crate::app::open_backends(config).await?;
    let entries = list(pipeline, &opened.backends).await?;
    for entry in &entries {
        println!("{}", entry.summary());
    }
    eprintln!(
        "{} dead letter(s) for pipeline {}",
        entries.len(),
        pipeline.name
    );
    Ok(())
}

/// `runnel dlq replay`: replays and prints what happened to each; fails
/// when any failed again.
pub async fn print_replay(
    config: &crate::config::runtime::RuntimeConfig,
    pipeline: &PipelineConfig,
    ids: &[String],
) -> anyhow::Result<bool> {
    let opened = crate::app::open_backends(config).await?;
    let (config_c, pipelines) = (config.clone(), vec![pipeline.clone()]);
    let (_runtime, mut functions) =
        tokio::task::spawn_blocking(move || crate::app::load_functions(&config_c, &pipelines))
            .await??;
    let function: Arc<dyn Invoke> = functions.pop().expect("one function per pipeline");
    let results = replay(
        pipeline,
        function,
        &opened.backends,
        opened.idempotency.clone(),
        ids,
    )
    .await?;
    let mut all_ok = true;
    for (entry, outcome) in &results {
        match outcome {
            Replayed::Done { attempts } => {
                println!("{}\treplayed ({attempts} attempt(s))", entry.key())
            }
            Replayed::FailedAgain(reason) => {
                all_ok = false;
                println!("{}\tfailed again: {reason}", entry.key());
            }
            Replayed::NoEvent => {
                all_ok = false;
                println!(
                    "{}\tcannot replay: the dead letter holds no event",
                    entry.key()
                );
            }
        }
    }
    if results.is_empty() {
        eprintln!("no dead letters matched for pipeline {}", pipeline.name);
    }
    Ok(all_ok)
}
