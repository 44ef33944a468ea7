//! Sources: where a pipeline's events come from.
//!
//! A source reads a [`feed`](feed::Feed) (a bucket's object-created
//! notifications, a topic) and hands the pipeline [`Delivery`]s in feed
//! order. Each delivery is acknowledged through [`feed::Acks`] once the
//! pipeline is done with it, whatever the outcome. Adding a source kind is
//! one file here and one variant of [`SourceConfig`].

pub mod feed;
pub mod key;
pub mod storage;
pub mod topic;

use std::sync::Arc;

use crate::broker::Broker;
use crate::config::reader::Table;
use crate::event::{Event, Position};
use crate::sinks::SinkConfig;
use crate::storage::ObjectStore;

pub use storage::StorageSourceConfig;
pub use topic::TopicSourceConfig;

#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// Objects created in a bucket.
    Storage(StorageSourceConfig),
    /// Messages on a topic.
    Topic(TopicSourceConfig),
}

impl SourceConfig {
    pub fn read(table: Table<'_, '_>) -> Option<Self> {
        let kind = table.required_string("type");
        let config = match kind.as_deref() {
            Some("storage") => StorageSourceConfig::read(&table).map(Self::Storage),
            Some("topic") => TopicSourceConfig::read(&table).map(Self::Topic),
            Some(other) => {
                if let Some(field) = table.get("type") {
                    field.error(format!(
                        "unknown source type {other:?}; expected \"storage\" or \"topic\""
                    ));
                }
                None
            }
            None => None,
        };
        // Unknown keys are only meaningful once the type is known.
        if config.is_some() {
            table.finish();
        }
        config
    }

    /// Why writing to `sink` would feed this source, if it would.
    pub fn loops_through(&self, sink: &SinkConfig) -> Option<String> {
        match (self, sink) {
            (Self::Storage(source), SinkConfig::Storage(sink)) if source.bucket == sink.bucket => {
                Some(format!(
                    "writes to bucket {:?}, which the source reads",
                    sink.bucket
                ))
            }
            (Self::Topic(source), SinkConfig::Topic(sink)) if source.topic == sink.topic => {
                Some(format!(
                    "publishes to topic {:?}, which the source reads",
                    sink.topic
                ))
            }
            _ => None,
        }
    }

    /// Opens the source for `pipeline` on the configured backends.
    pub async fn open(
        &self,
        pipeline: &str,
        store: Arc<dyn ObjectStore>,
        broker: Arc<dyn Broker>,
    ) -> Result<Source, feed::FeedError> {
        match self {
            Self::Storage(config) => storage::open(config, pipeline, store).await,
            Self::Topic(config) => topic::open(config, pipeline, broker).await,
        }
    }
}

/// What a source hands the pipeline: the event, or what is needed to make it.
pub enum Pending {
    Event(Box<Event>),
    /// An object event whose bytes are read when the pipeline gets to it,
    /// so reads run in parallel and retry under the pipeline's policy.
    Object(crate::event::ObjectCreated),
    /// A record that could not be decoded; it goes to the dead letters.
    Undecodable(String),
}

pub struct Delivery {
    pub position: Position,
    /// Known before the payload is read, so duplicates cost no I/O.
    pub idempotency_key: String,
    /// Keeps ordering per key: deliveries with equal keys run one at a time.
    pub ordering_key: Option<String>,
    pub pending: Pending,
}

/// A running source: the feed plus what turns its items into deliveries.
pub struct Source {
    pub(crate) kind: SourceKind,
    pub acks: Arc<feed::Acks>,
    /// Loads payloads while the source goes on reading its feed.
    pub loader: Arc<Loader>,
    pub description: String,
}

/// Turns pending deliveries into events.
pub enum Loader {
    /// Object events read their object's bytes from the store.
    Storage(storage::ObjectLoader),
    /// Messages carry their payload.
    Inline,
}

pub(crate) enum SourceKind {
    Storage(storage::StorageSource),
    Topic(topic::TopicSource),
}

/// Why an event's payload could not be loaded.
#[derive(Debug)]
pub struct LoadError {
    pub message: String,
    pub retryable: bool,
}

impl Source {
    /// Waits for the next deliveries. Items the source filters out are
    /// acknowledged here and never reach the pipeline.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Delivery>, feed::FeedError> {
        loop {
            let (deliveries, skipped) = match &mut self.kind {
                SourceKind::Storage(s) => s.next(max).await?,
                SourceKind::Topic(s) => s.next(max).await?,
            };
            for position in deliveries
                .iter()
                .map(|d| d.position)
                .chain(skipped.iter().copied())
            {
                self.acks.started(position).await;
            }
            // A failed commit must not drop the deliveries already marked
            // started: their watermark would never move again. The next
            // commit covers these offsets too.
            for position in skipped {
                if let Err(error) = self.acks.finished(position).await {
                    tracing::warn!(%error, "committing filtered-out events failed; a later commit covers them");
                }
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
        }
    }
}

impl Loader {
    /// Turns a delivery into the event the function sees.
    pub async fn load(&self, pending: &Pending) -> Result<Event, LoadError> {
        match (pending, self) {
            (Pending::Event(event), _) => Ok((**event).clone()),
            (Pending::Undecodable(reason), _) => Err(LoadError {
                message: reason.clone(),
                retryable: false,
            }),
            (Pending::Object(created), Loader::Storage(loader)) => loader.load(created).await,
            (Pending::Object(_), Loader::Inline) => {
                unreachable!("only storage sources deliver objects")
            }
        }
    }
}
