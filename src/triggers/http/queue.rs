//! `mode = "async"`: the queue requests wait on, read back as a pulled
//! trigger, and what `GET /v1/invocations/{id}` can say.

use std::sync::Arc;

use async_trait::async_trait;

use crate::broker::Broker;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::engine::{Delivery, Pending};
use crate::event::{Consumed, Event};
use crate::feed::{Acks, Feed, FeedError};

/// Where an `async` pipeline's requests are queued.
#[derive(Clone)]
pub struct Queue {
    pub broker: Arc<dyn Broker>,
    pub topic: String,
}

/// The queue of an `async` pipeline read back, as a pulled trigger: each
/// message is a request event as JSON.
pub(crate) struct QueueTrigger {
    feed: Box<dyn Feed<Consumed>>,
    acks: Arc<Acks>,
    description: String,
}

pub(crate) async fn open_queue(
    topic: &str,
    pipeline: &str,
    broker: Arc<dyn Broker>,
) -> Result<QueueTrigger, FeedError> {
    let feed = broker
        .subscribe(topic, pipeline)
        .await
        .map_err(|e| FeedError(e.to_string()))?;
    Ok(QueueTrigger {
        acks: Acks::new(feed.committer()),
        description: format!("HTTP requests queued on topic {topic}"),
        feed,
    })
}

#[async_trait]
impl Pull for QueueTrigger {
    async fn next(&mut self, max: usize) -> Result<Pulled, FeedError> {
        let items = self.feed.poll(max).await?;
        let deliveries = (items.into_iter())
            .map(|item| {
                let decoded = item.item.and_then(|consumed| {
                    serde_json::from_slice::<Event>(&consumed.message.payload)
                        .map_err(|e| format!("a queued request that is not a request event: {e}"))
                });
                let (key, pending) = match decoded {
                    Ok(event) => (
                        event.idempotency_key.clone(),
                        Pending::Event(Box::new(event)),
                    ),
                    Err(reason) => (
                        format!("{}/{}", item.position.partition, item.position.offset),
                        Pending::Undecodable(reason),
                    ),
                };
                Delivery {
                    position: item.position,
                    idempotency_key: key,
                    ordering_key: None,
                    pending,
                }
            })
            .collect();
        Ok(Pulled {
            deliveries,
            skipped: Vec::new(),
        })
    }

    fn acks(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    fn description(&self) -> String {
        self.description.clone()
    }
}

/// The store's record that a request was queued: a "delivered output"
/// of the request's event, which its completion replaces.
pub(super) const QUEUED: &str = "#queued";
