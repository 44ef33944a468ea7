//! The topic sink: each output is a message keyed by the output's key, with
//! CloudEvents attributes as `ce_*` headers (the Kafka binding), published
//! under a producer id so that republishing it is a no-op.

use std::sync::Arc;

use super::{SinkError, WriteId};
use crate::broker::{Broker, validate_topic};
use crate::config::reader::Table;
use crate::event::Message;
use crate::runtime::Output;

#[derive(Clone, Debug)]
pub struct TopicSinkConfig {
    /// The topic outputs are published to.
    pub topic: String,
}

impl TopicSinkConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let topic = table.required_name("topic", validate_topic)?;
        Some(Self { topic })
    }
}

pub struct TopicSink {
    topic: String,
    source: String,
    broker: Arc<dyn Broker>,
}

impl TopicSink {
    pub fn new(config: &TopicSinkConfig, pipeline: &str, broker: Arc<dyn Broker>) -> Self {
        Self {
            topic: config.topic.clone(),
            source: format!("runnel://pipelines/{pipeline}"),
            broker,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub async fn write(&self, output: &Output, id: &WriteId<'_>) -> Result<(), SinkError> {
        let mut headers = vec![
            ("ce_specversion".to_owned(), "1.0".to_owned()),
            ("ce_id".to_owned(), id.id.to_owned()),
            ("ce_source".to_owned(), self.source.clone()),
            ("ce_type".to_owned(), format!("{}.output", id.event_type)),
        ];
        if let Some(key) = &output.key {
            headers.push(("ce_subject".to_owned(), key.clone()));
        }
        if let Some(content_type) = &output.content_type {
            headers.push(("content-type".to_owned(), content_type.clone()));
        }
        if let Some(traceparent) = id.traceparent {
            headers.push((
                crate::telemetry::TRACEPARENT.to_owned(),
                traceparent.to_owned(),
            ));
        }
        for (name, value) in &output.attributes {
            // The function may override the CloudEvents attributes it knows better.
            headers.retain(|(n, _)| n != name);
            headers.push((name.clone(), value.clone()));
        }
        let message = Message {
            key: output.key.clone(),
            headers,
            payload: output.data.clone(),
        };
        self.broker
            .publish(&self.topic, Some(id.id.to_owned()), message)
            .await
            .map(drop)
            .map_err(|e| SinkError {
                retry_after: None,
                retryable: e.retryable(),
                message: format!("publishing to topic {}: {e}", self.topic),
            })
    }
}
