//! Sinks: where a function's outputs go.
//!
//! A pipeline declares its sinks by name; each output of the function names
//! the sink it is for. Every sink kind writes idempotently under an id that
//! is stable for the event and the output's place in it, so writing the
//! outputs of a redelivered event again does not duplicate them: storage
//! overwrites the same key, topics drop a producer id seen before, webhooks
//! send it as `Idempotency-Key`. Adding a sink kind is one file here and one
//! variant of [`SinkConfig`] and [`Sink`].

pub mod storage;
pub mod topic;
pub mod webhook;

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::broker::Broker;
use crate::config::reader::Table;
use crate::retry::RetryConfig;
use crate::runtime::Output;
use crate::storage::ObjectStore;

pub use storage::{StorageSink, StorageSinkConfig};
pub use topic::{TopicSink, TopicSinkConfig};
pub use webhook::{WebhookSink, WebhookSinkConfig};

#[derive(Clone, Debug)]
pub enum SinkConfig {
    /// Objects written to a bucket.
    Storage(StorageSinkConfig),
    /// Messages published to a topic.
    Topic(TopicSinkConfig),
    /// HTTP POSTs to a URL.
    Webhook(WebhookSinkConfig),
}

impl SinkConfig {
    /// Its kind and where it writes, for people (the dashboard).
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Self::Storage(c) => ("storage", c.bucket.clone()),
            Self::Topic(c) => ("topic", c.topic.clone()),
            // The URL's host only: a path or query may hold a secret.
            Self::Webhook(c) => (
                "webhook",
                reqwest::Url::parse(&c.url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_else(|| "(off)".to_owned()),
            ),
        }
    }

    /// Reads a sink table (the dead-letter sink's: it has no retry policy
    /// of its own, it retries until written).
    pub fn read(table: Table<'_, '_>) -> Option<Self> {
        Self::read_inner(table, false).map(|(config, _)| config)
    }

    /// Reads a named sink's table, with its optional `retry` table: a
    /// policy for its writes that replaces the pipeline's.
    pub fn read_with_retry(table: Table<'_, '_>) -> Option<(Self, Option<RetryConfig>)> {
        Self::read_inner(table, true)
    }

    fn read_inner(table: Table<'_, '_>, with_retry: bool) -> Option<(Self, Option<RetryConfig>)> {
        // Asked only of named sinks, so a dead-letter sink's `retry` is
        // reported as unknown.
        let retry = with_retry
            .then(|| table.get("retry"))
            .flatten()
            .map(|field| field.table().and_then(RetryConfig::read));
        let kind = table.required_string("type");
        let config = match kind.as_deref() {
            Some("storage") => StorageSinkConfig::read(&table).map(Self::Storage),
            Some("topic") => TopicSinkConfig::read(&table).map(Self::Topic),
            Some("webhook") => WebhookSinkConfig::read(&table).map(Self::Webhook),
            Some(other) => {
                if let Some(field) = table.get("type") {
                    field.error(format!(
                        "unknown sink type {other:?}; expected \"storage\", \"topic\" or \"webhook\""
                    ));
                }
                None
            }
            None => None,
        };
        if config.is_some() {
            table.finish();
        }
        let retry = match retry {
            Some(read) => Some(read?),
            None => None,
        };
        Some((config?, retry))
    }

    /// `storage`, `topic` or `webhook`: what functions see as the sink's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Storage(_) => "storage",
            Self::Topic(_) => "topic",
            Self::Webhook(_) => "webhook",
        }
    }

    /// The bucket, topic or URL: what functions see as the sink's target.
    pub fn target(&self) -> &str {
        match self {
            Self::Storage(c) => &c.bucket,
            Self::Topic(c) => &c.topic,
            Self::Webhook(c) => &c.url,
        }
    }

    pub fn build(&self, pipeline: &str, backends: &Backends) -> Sink {
        match self {
            Self::Storage(c) => Sink::Storage(StorageSink::new(c, backends.store.clone())),
            Self::Topic(c) => Sink::Topic(TopicSink::new(c, pipeline, backends.broker.clone())),
            Self::Webhook(c) => Sink::Webhook(WebhookSink::new(c, pipeline, backends.http.clone())),
        }
    }
}

/// What sinks are built on, from the runtime config.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn ObjectStore>,
    pub broker: Arc<dyn Broker>,
    pub http: reqwest::Client,
}

/// Why a write failed, classified where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub retryable: bool,
    /// How long the receiver asked us to wait (`Retry-After`), if it did.
    pub retry_after: Option<std::time::Duration>,
}

impl SinkError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }
}

/// A built sink, ready to write.
pub enum Sink {
    Storage(StorageSink),
    Topic(TopicSink),
    Webhook(WebhookSink),
}

/// Identifies one write: stable across redeliveries of the same event.
pub struct WriteId<'a> {
    /// `<idempotency key>#<sink>/<output index>`.
    pub id: &'a str,
    /// The event the output came from.
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// The W3C trace context the output carries on (`traceparent`).
    pub traceparent: Option<&'a str>,
}

impl Sink {
    pub async fn write(&self, output: &Output, id: &WriteId<'_>) -> Result<(), SinkError> {
        match self {
            Self::Storage(s) => s.write(output, id).await,
            Self::Topic(s) => s.write(output, id).await,
            Self::Webhook(s) => s.write(output, id).await,
        }
    }

    /// A write's span: its kind and attributes in OpenTelemetry's
    /// conventions.
    pub fn span(&self, name: &str, output: &Output) -> (SpanKind, Vec<KeyValue>) {
        let mut attributes = vec![KeyValue::new("runnel.sink", name.to_owned())];
        let kind = match self {
            Self::Storage(s) => {
                attributes.push(KeyValue::new("runnel.bucket", s.bucket().to_owned()));
                if let Some(key) = &output.key {
                    attributes.push(KeyValue::new("runnel.key", key.clone()));
                }
                SpanKind::Client
            }
            Self::Topic(s) => {
                attributes.push(KeyValue::new("messaging.operation.type", "send"));
                attributes.push(KeyValue::new(
                    "messaging.destination.name",
                    s.topic().to_owned(),
                ));
                SpanKind::Producer
            }
            Self::Webhook(s) => {
                attributes.push(KeyValue::new("http.request.method", "POST"));
                attributes.push(KeyValue::new("url.full", s.url().to_owned()));
                SpanKind::Client
            }
        };
        attributes.push(KeyValue::new(
            "runnel.output.bytes",
            output.data.len() as i64,
        ));
        (kind, attributes)
    }

    /// False for a sink switched off by configuration (a webhook whose URL
    /// is empty): its outputs are counted and dropped.
    pub fn enabled(&self) -> bool {
        match self {
            Self::Webhook(s) => s.enabled(),
            _ => true,
        }
    }
}
