//! The embedded broker: topics in a local, durable [`Journal`].
//!
//! A publish returns only after its transaction is committed to the
//! write-ahead log, so an acknowledged message survives `kill -9` (and power
//! loss with `durability = "full"`). Good for one machine; the same
//! pipelines move to Kafka by changing the runtime config.

use std::path::Path;

use async_trait::async_trait;

use super::{Broker, BrokerError, validate_topic};
use crate::event::{Consumed, Message, Position};
use crate::feed::{Feed, JournalFeed};
use crate::journal::{Journal, JournalError};
use crate::sqlite::Durability;

pub struct EmbeddedBroker {
    journal: Journal,
}

impl From<JournalError> for BrokerError {
    fn from(error: JournalError) -> Self {
        BrokerError::Unavailable(error.to_string())
    }
}

/// Topics are journal streams under their own prefix.
fn stream(topic: &str) -> String {
    format!("topic:{topic}")
}

impl EmbeddedBroker {
    pub fn open(path: &Path, durability: Durability, partitions: u32) -> Result<Self, BrokerError> {
        Ok(Self {
            journal: Journal::open(path, durability, partitions)?,
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn publish(
        &self,
        topic: &str,
        producer_id: Option<String>,
        message: Message,
    ) -> Result<Position, BrokerError> {
        validate_topic(topic)?;
        Ok(self
            .journal
            .append(&stream(topic), producer_id, message)
            .await?)
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Box<dyn Feed<Consumed>>, BrokerError> {
        validate_topic(topic)?;
        let cursor = self.journal.subscribe(&stream(topic), group).await?;
        Ok(Box::new(TopicFeed {
            topic: topic.to_owned(),
            inner: JournalFeed::new(cursor, Ok),
        }))
    }

    async fn peek(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Consumed>, BrokerError> {
        validate_topic(topic)?;
        let records = self.journal.peek(&stream(topic), from, limit).await?;
        Ok(records
            .into_iter()
            .map(|r| Consumed {
                topic: topic.to_owned(),
                position: r.position,
                message: r.message,
            })
            .collect())
    }
}

/// Adds the topic name to each journal record.
struct TopicFeed {
    topic: String,
    inner: JournalFeed<Message>,
}

#[async_trait]
impl Feed<Consumed> for TopicFeed {
    async fn poll(
        &mut self,
        max: usize,
    ) -> Result<Vec<crate::feed::Item<Consumed>>, crate::feed::FeedError> {
        let items = self.inner.poll(max).await?;
        Ok(items
            .into_iter()
            .map(|item| crate::feed::Item {
                position: item.position,
                item: item.item.map(|message| Consumed {
                    topic: self.topic.clone(),
                    position: item.position,
                    message,
                }),
            })
            .collect())
    }

    fn committer(&self) -> std::sync::Arc<dyn crate::feed::Commit> {
        self.inner.committer()
    }
}
