//! The topic trigger: one event per message, consumed as a consumer group
//! (a pulled feed).

use std::sync::Arc;

use async_trait::async_trait;

use super::database::debezium;
use super::key::{KeyExpression, Kind};
use crate::broker::{Broker, validate_topic};
use crate::config::reader::Table;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::engine::{Delivery, Pending};
use crate::event::{Consumed, Event};
use crate::feed::{Acks, Feed, FeedError};

#[derive(Clone, Debug)]
pub struct TopicTriggerConfig {
    /// The topic to consume.
    pub topic: String,
    /// Consumer group (default: the pipeline's name). Processes sharing a
    /// group share the work; different groups each see every message.
    pub group: Option<String>,
    /// `idempotency_key`: how to name an event for deduplication (default:
    /// the CloudEvents id runnel's own outputs carry, else
    /// topic/partition/offset).
    pub idempotency_key: Option<KeyExpression>,
    /// `format`: what the messages are.
    pub format: Format,
}

/// How a topic's messages become events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `"message"`: each message as it is (runnel's own CloudEvents
    /// headers lifted back into the envelope).
    #[default]
    Message,
    /// `"debezium"`: Kafka Connect's JSON of Debezium change events, as
    /// the database trigger's events; tombstones are skipped.
    Debezium,
}

impl TopicTriggerConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let topic = table.required_name("topic", validate_topic);
        let group = table.string("group");
        let idempotency_key = super::key::read(table, Kind::Topic);
        let format = match table.get("format") {
            None => Some(Format::Message),
            Some(field) => match field.string()?.as_str() {
                "message" => Some(Format::Message),
                "debezium" => Some(Format::Debezium),
                other => {
                    field.error(format!(
                        "unknown format {other:?}; expected \"message\" or \"debezium\""
                    ));
                    None
                }
            },
        };
        Some(Self {
            topic: topic?,
            group,
            idempotency_key: idempotency_key?,
            format: format?,
        })
    }
}

pub(super) struct TopicTrigger {
    feed: Box<dyn Feed<Consumed>>,
    acks: Arc<Acks>,
    key: Option<KeyExpression>,
    format: Format,
    description: String,
}

pub(super) async fn open(
    config: &TopicTriggerConfig,
    pipeline: &str,
    broker: Arc<dyn Broker>,
) -> Result<TopicTrigger, FeedError> {
    let group = config.group.as_deref().unwrap_or(pipeline);
    let feed = broker
        .subscribe(&config.topic, group)
        .await
        .map_err(|e| FeedError(e.to_string()))?;
    Ok(TopicTrigger {
        acks: Acks::new(feed.committer()),
        description: format!("topic {} (group {group})", config.topic),
        key: config.idempotency_key.clone(),
        format: config.format,
        feed,
    })
}

#[async_trait]
impl Pull for TopicTrigger {
    fn acks(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    async fn next(&mut self, max: usize) -> Result<Pulled, FeedError> {
        let mut pulled = Pulled::default();
        for item in self.feed.poll(max).await? {
            let position = item.position;
            let decoded = item.item.and_then(|consumed| self.event(consumed));
            let delivery = match decoded {
                Ok(Some(event)) => Delivery {
                    position,
                    idempotency_key: event.idempotency_key.clone(),
                    ordering_key: event.subject.clone(),
                    pending: Pending::Event(Box::new(event)),
                },
                Ok(None) => {
                    pulled.skipped.push(position);
                    continue;
                }
                Err(reason) => Delivery {
                    position,
                    idempotency_key: format!("{}/{}", position.partition, position.offset),
                    ordering_key: None,
                    pending: Pending::Undecodable(reason),
                },
            };
            pulled.deliveries.push(delivery);
        }
        Ok(pulled)
    }
}

impl TopicTrigger {
    /// The event for a message (`None`: nothing to handle, as a
    /// Debezium tombstone), named by the pipeline's `idempotency_key`
    /// when it has one.
    fn event(&self, consumed: Consumed) -> Result<Option<Event>, String> {
        let custom = self.key.as_ref().map(|k| k.for_message(&consumed));
        let event = match self.format {
            Format::Message => Some(consumed.into_event()),
            Format::Debezium => debezium::decode(consumed)?,
        };
        let Some(mut event) = event else {
            return Ok(None);
        };
        if let Some(key) = custom {
            event.idempotency_key = key?;
        }
        Ok(Some(event))
    }
}
