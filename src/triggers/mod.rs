//! Triggers: what turns outside events into a pipeline's events (its
//! `[source]` table).
//!
//! A trigger owns its loop. A pulled one (a bucket's object-created
//! notifications, a topic, a schedule's clock) reads a committable [`Feed`](crate::feed::Feed)
//! and is run by the engine's [feed driver](crate::engine::feed_driver),
//! which acknowledges by offset once the handler is done with each delivery. Adding a trigger kind is one
//! file here and one variant of [`TriggerConfig`]; every `match` on it says
//! what else the kind must decide.

pub mod database;
pub mod http;
pub mod key;
pub mod schedule;
pub mod storage;
pub mod topic;

use crate::config::reader::Table;
use crate::engine::feed_driver::Pull;
use crate::feed::FeedError;
use crate::health::Backends;
use crate::sinks::SinkConfig;

pub use storage::StorageTriggerConfig;
pub use topic::TopicTriggerConfig;

/// A pipeline's `[source]`, by `type`.
#[derive(Clone, Debug)]
pub enum TriggerConfig {
    /// Objects created in a bucket.
    Storage(StorageTriggerConfig),
    /// Messages on a topic.
    Topic(TopicTriggerConfig),
    /// Requests to HTTP routes, answered by the function.
    Http(http::HttpTriggerConfig),
    /// The ticks of a clock.
    Schedule(schedule::ScheduleTriggerConfig),
    /// The rows a PostgreSQL database commits.
    Database(database::DatabaseTriggerConfig),
}

impl TriggerConfig {
    pub fn read(table: Table<'_, '_>) -> Option<Self> {
        let kind = table.required_string("type");
        let config = match kind.as_deref() {
            Some("storage") => StorageTriggerConfig::read(&table).map(Self::Storage),
            Some("topic") => TopicTriggerConfig::read(&table).map(Self::Topic),
            Some("http") => http::HttpTriggerConfig::read(&table).map(Self::Http),
            Some("schedule") => schedule::ScheduleTriggerConfig::read(&table).map(Self::Schedule),
            Some("database") => database::DatabaseTriggerConfig::read(&table).map(Self::Database),
            Some(other) => {
                if let Some(field) = table.get("type") {
                    field.error(format!(
                        "unknown source type {other:?}; expected \"storage\", \"topic\", \"http\", \"schedule\" or \"database\""
                    ));
                }
                None
            }
            None => None,
        };
        // Unknown keys are only meaningful once the type is known; then
        // they are worth reporting with the other problems.
        if matches!(
            kind.as_deref(),
            Some("storage" | "topic" | "http" | "schedule" | "database")
        ) {
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
            (Self::Http(source), SinkConfig::Topic(sink))
                if source.mode == http::Mode::Async
                    && source.topic.as_ref() == Some(&sink.topic) =>
            {
                Some(format!(
                    "publishes to topic {:?}, where the source queues its requests",
                    sink.topic
                ))
            }
            _ => None,
        }
    }

    /// Its kind and what it reads, for people (the dashboard):
    /// `("storage", "uploads/*.png")`.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Self::Storage(c) => {
                let mut what = c.bucket.clone();
                if let Some(prefix) = &c.prefix {
                    what.push('/');
                    what.push_str(prefix);
                }
                if !c.suffixes.is_empty() {
                    what.push_str(&format!(" *{}", c.suffixes.join("|*")));
                }
                ("storage", what)
            }
            Self::Topic(c) => ("topic", c.topic.clone()),
            Self::Http(c) => {
                let methods: Vec<_> = c.methods.iter().map(|m| m.as_str()).collect();
                let routes: Vec<_> = c.routes.iter().map(|r| r.pattern.as_str()).collect();
                (
                    "http",
                    format!("{} {}", methods.join("|"), routes.join(" ")),
                )
            }
            Self::Schedule(c) => ("schedule", c.describe()),
            Self::Database(c) => {
                let tables: Vec<_> = c.tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
                ("database", format!("{} {}", c.database, tables.join(" ")))
            }
        }
    }

    /// The bucket the trigger reads, if it reads one.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            Self::Storage(config) => Some(&config.bucket),
            Self::Topic(_) | Self::Http(_) | Self::Schedule(_) | Self::Database(_) => None,
        }
    }

    /// Opens the trigger for `pipeline` on the configured backends: a
    /// pulled trigger's feed, for the
    /// [`feed_driver`](crate::engine::feed_driver), or the routes a pushed
    /// one serves.
    pub async fn open(&self, pipeline: &str, backends: &Backends) -> Result<Trigger, FeedError> {
        let (store, broker) = (backends.store.clone(), backends.broker.clone());
        Ok(match self {
            Self::Storage(config) => {
                Trigger::Pulled(Box::new(storage::open(config, pipeline, store).await?))
            }
            Self::Topic(config) => {
                Trigger::Pulled(Box::new(topic::open(config, pipeline, broker).await?))
            }
            // Its marks are kept where completions are: shared by the
            // processes that share completions.
            Self::Schedule(config) => Trigger::Pulled(Box::new(schedule::open(
                config,
                pipeline,
                backends.idempotency.clone(),
            ))),
            Self::Database(config) => {
                Trigger::Pulled(Box::new(database::open(config, pipeline, backends)?))
            }
            Self::Http(config) => match config.mode {
                http::Mode::Sync => Trigger::Routes(config.clone()),
                http::Mode::Async => {
                    let topic = config.queue_topic(pipeline);
                    let feed = http::open_queue(&topic, pipeline, broker.clone()).await?;
                    let queue = http::Queue { broker, topic };
                    Trigger::Queued {
                        routes: config.clone(),
                        queue,
                        feed: Box::new(feed),
                    }
                }
            },
        })
    }
}

/// An opened trigger, by how it acknowledges (as Vector's sources say
/// whether they can): by committing offsets, or with a reply.
pub enum Trigger {
    /// Read through the feed driver; acknowledged by offset.
    Pulled(Box<dyn Pull>),
    /// Served by the gateway; acknowledged by the response.
    Routes(http::HttpTriggerConfig),
    /// Served by the gateway, which queues each request on `queue` (and
    /// acknowledges it with a 202 once it is there); read back through
    /// the feed driver like a topic.
    Queued {
        routes: http::HttpTriggerConfig,
        queue: http::Queue,
        feed: Box<dyn Pull>,
    },
}
