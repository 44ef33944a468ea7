//! The backends behind the name "topic".
//!
//! Pipelines name topics; the runtime config decides what a topic is. The
//! [`Broker`] interface is Kafka's shape: keyed messages with headers,
//! partitions that keep order per key, consumer groups that commit offsets,
//! and a producer id that makes republishing the same output harmless.

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;

use async_trait::async_trait;

use crate::event::{Consumed, Message, Position};
use crate::feed::Feed;

pub use embedded::EmbeddedBroker;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid topic name {0:?}: use 1-249 letters, digits, '.', '_' or '-'")]
    InvalidTopic(String),
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refuses messages this large; retrying cannot help.
    #[error("{0}")]
    TooLarge(String),
}

impl BrokerError {
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes one message. A `producer_id` seen before on the topic
    /// returns the original position instead of publishing again.
    async fn publish(
        &self,
        topic: &str,
        producer_id: Option<String>,
        message: Message,
    ) -> Result<Position, BrokerError>;

    /// Consumes `topic` as consumer group `group`, from its committed
    /// offsets (from the beginning for a new group).
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Box<dyn Feed<Consumed>>, BrokerError>;

    /// Reads up to `limit` messages from `from` onwards in every partition,
    /// without a group: for inspection (`GET /v1/topics/...`), not for work.
    async fn peek(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Consumed>, BrokerError>;

    /// Whether the broker answers (for `/healthz`); embedded: always.
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Kafka's topic naming rules, so names stay portable to every backend.
pub fn validate_topic(topic: &str) -> Result<(), BrokerError> {
    let ok = (1..=249).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && topic != "."
        && topic != "..";
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidTopic(topic.to_owned()))
    }
}
