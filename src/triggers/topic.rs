//! The topic trigger: one event per message, consumed as a consumer group
//! (a pulled feed).

use std::sync::Arc;

use async_trait::async_trait;

use super::key::{KeyExpression, Kind};
use crate::broker::{Broker, validate_topic};
use crate::config::reader::Table;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::engine::{Delivery, Pending};
use crate::event::Consumed;
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
}

impl TopicTriggerConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let topic = table.required_name("topic", validate_topic);
        let group = table.string("group");
        let idempotency_key = super::key::read(table, Kind::Topic);
        Some(Self {
            topic: topic?,
            group,
            idempotency_key: idempotency_key?,
        })
    }
}

pub(super) struct TopicTrigger {
    feed: Box<dyn Feed<Consumed>>,
    acks: Arc<Acks>,
    key: Option<KeyExpression>,
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
        let items = self.feed.poll(max).await?;
        let deliveries = items
            .into_iter()
            .map(|item| match item.item {
                Ok(consumed) => {
                    let custom = self.key.as_ref().map(|k| k.for_message(&consumed));
                    let mut event = consumed.into_event();
                    match custom {
                        Some(Err(reason)) => Delivery {
                            position: item.position,
                            idempotency_key: event.idempotency_key,
                            ordering_key: None,
                            pending: Pending::Undecodable(reason),
                        },
                        custom => {
                            if let Some(Ok(key)) = custom {
                                event.idempotency_key = key;
                            }
                            Delivery {
                                position: item.position,
                                idempotency_key: event.idempotency_key.clone(),
                                ordering_key: event.subject.clone(),
                                pending: Pending::Event(Box::new(event)),
                            }
                        }
                    }
                }
                Err(reason) => Delivery {
                    position: item.position,
                    idempotency_key: format!(
                        "{}/{}",
                        item.position.partition, item.position.offset
                    ),
                    ordering_key: None,
                    pending: Pending::Undecodable(reason),
                },
            })
            .collect();
        Ok(Pulled {
            deliveries,
            skipped: Vec::new(),
        })
    }
}
