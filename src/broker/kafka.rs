//! Topics on Kafka (any Kafka-API broker), through librdkafka.
//!
//! Publishing uses the idempotent producer (`enable.idempotence`, acks from
//! all in-sync replicas), keyed by the output's key so ordering per key
//! holds, with CloudEvents attributes as `ce_*` headers. Kafka's producer
//! dedupe only covers its own retries; across redeliveries of an event the
//! consumer side recognises a repeat by its `ce_id` (see
//! [`Consumed::into_event`](crate::event::Consumed::into_event)).
//!
//! Consuming uses a consumer group with automatic commits off: the
//! pipeline's [`Acks`](crate::feed::Acks) commit per partition only
//! the offset below which every event is finished. After a rebalance the
//! new owner starts at that commit, so nothing unfinished is skipped.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer as _;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{Broker, BrokerError, validate_topic};
use crate::event::{Consumed, Message, Position};
use crate::feed::{Commit, Feed, FeedError, Item};

/// How long a publish may wait in librdkafka's queue (broker outages
/// included) before it fails and the pipeline's retry policy takes over.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaBroker {
    /// librdkafka properties shared by producer and consumers.
    properties: Vec<(String, String)>,
    /// This process's name in its consumer groups (static membership).
    instance_id: Option<String>,
    /// Replaced when it hits a fatal error (an idempotent producer fenced
    /// after an outage cannot send again).
    producer: std::sync::RwLock<FutureProducer>,
}

fn unavailable(what: &str, error: KafkaError) -> BrokerError {
    BrokerError::Unavailable(format!("{what}: {error}"))
}

impl KafkaBroker {
    /// `properties` are librdkafka settings (`bootstrap.servers`,
    /// `security.protocol`, `sasl.*`, `ssl.*`, ...), passed through.
    /// With an `instance_id` (stable across restarts, unique among the
    /// group's processes) consumers join as static members: a restarted
    /// process takes its partitions back instead of waiting out the dead
    /// member's session.
    pub fn new(
        properties: Vec<(String, String)>,
        instance_id: Option<String>,
    ) -> Result<Self, BrokerError> {
        let producer = new_producer(&properties)?;
        Ok(Self {
            properties,
            instance_id,
            producer: std::sync::RwLock::new(producer),
        })
    }
}

impl KafkaBroker {
    fn producer(&self) -> std::sync::RwLockReadGuard<'_, FutureProducer> {
        self.producer.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps in a new producer for `failed`, unless another publish did
    /// already. Its messages get a new producer id: a message the old one
    /// sent but never saw acknowledged may be in the topic twice, with the
    /// same `ce_id`.
    fn replace_producer(&self, failed: &FutureProducer, code: RDKafkaErrorCode, reason: &str) {
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match new_producer(&self.properties) {
            Ok(fresh) => {
                tracing::warn!(
                    ?code,
                    reason,
                    "the Kafka producer hit a fatal error; using a new one"
                );
                *current = fresh;
            }
            Err(error) => {
                tracing::error!(%error, ?code, reason, "the Kafka producer hit a fatal error and a new one could not be created")
            }
        }
    }
}

fn new_producer(properties: &[(String, String)]) -> Result<FutureProducer, BrokerError> {
    let mut config = client_config(properties);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            PUBLISH_TIMEOUT.as_millis().to_string(),
        );
    config
        .create()
        .map_err(|e| unavailable("creating the Kafka producer", e))
}

fn client_config(properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("client.id", "runnel");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish(
        &self,
        topic: &str,
        _producer_id: Option<String>,
        message: Message,
    ) -> Result<Position, BrokerError> {
        validate_topic(topic)?;
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (key, value) in &message.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(&message.payload[..])
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_bytes());
        }
        let producer = self.producer().clone();
        let result = producer.send(record, PUBLISH_TIMEOUT).await;
        if let Err((error, _)) = &result {
            // Fatal, or a producer id the broker no longer accepts (fenced
            // after an outage): this producer cannot send again.
            let broken =
                producer
                    .client()
                    .fatal_error()
                    .or_else(|| match error.rdkafka_error_code() {
                        Some(
                            code @ (RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            | RDKafkaErrorCode::UnknownProducerId
                            | RDKafkaErrorCode::OutOfOrderSequenceNumber),
                        ) => Some((code, error.to_string())),
                        _ => None,
                    });
            if let Some((code, reason)) = broken {
                self.replace_producer(&producer, code, &reason);
            }
        }
        match result {
            Ok(delivery) => Ok(Position {
                partition: delivery.partition as u32,
                offset: delivery.offset as u64,
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                Err(BrokerError::TooLarge(format!(
                    "message of {} bytes is over the broker's limit for topic {topic}",
                    message.payload.len()
                )))
            }
            Err((error, _)) => Err(unavailable(&format!("publishing to {topic}"), error)),
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Box<dyn Feed<Consumed>>, BrokerError> {
        validate_topic(topic)?;
        let mut config = client_config(&self.properties);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        if let Some(id) = &self.instance_id {
            // One consumer per subscribed topic, so the topic makes the
            // member unique within the group.
            config.set("group.instance.id", format!("{id}.{topic}"));
        }
        let context = GroupContext {
            topic: topic.to_owned(),
            group: group.to_owned(),
        };
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(context)
            .map_err(|e| unavailable("creating the Kafka consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| unavailable(&format!("subscribing to {topic}"), e))?;
        let consumer = Arc::new(consumer);
        tokio::spawn(export_lag(
            Arc::downgrade(&consumer),
            topic.to_owned(),
            group.to_owned(),
        ));
        Ok(Box::new(KafkaFeed {
            topic: topic.to_owned(),
            committer: Arc::new(KafkaCommit {
                topic: topic.to_owned(),
                consumer: consumer.clone(),
            }),
            consumer,
        }))
    }

    /// Any broker answering a metadata request is enough: librdkafka
    /// reaches the others itself.
    async fn check(&self) -> Result<(), String> {
        let producer = self.producer().clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(drop)
                .map_err(|e| format!("Kafka metadata request: {e}"))
        })
        .await
        .expect("metadata task panicked")
    }

    async fn peek(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Consumed>, BrokerError> {
        validate_topic(topic)?;
        let mut config = client_config(&self.properties);
        config
            .set("group.id", "runnel-peek")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || peek_blocking(config, &topic, from, limit))
            .await
            .expect("peek task panicked")
    }
}

/// Assigns every partition at `from` (no group membership, no commits) and
/// reads until each partition's end or `limit` messages.
fn peek_blocking(
    config: ClientConfig,
    topic: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<Consumed>, BrokerError> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| unavailable("creating the Kafka consumer", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| unavailable(&format!("reading metadata of {topic}"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from as i64))
            .map_err(|e| unavailable("assigning partitions", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| unavailable("assigning partitions", e))?;
    let mut out = Vec::new();
    let mut finished = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while out.len() < limit && finished < partitions.len() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => out.push(consumed(topic, &message)),
            Some(Err(KafkaError::PartitionEOF(_))) => finished += 1,
            Some(Err(error)) => return Err(unavailable(&format!("reading {topic}"), error)),
            None => {}
        }
    }
    out.sort_by_key(|c| c.position);
    Ok(out)
}

fn consumed(topic: &str, message: &impl rdkafka::Message) -> Consumed {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    let value = header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    (header.key.to_owned(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        topic: topic.to_owned(),
        position: Position {
            partition: message.partition() as u32,
            offset: message.offset() as u64,
        },
        message: Message {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        },
    }
}

struct KafkaFeed {
    topic: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
    committer: Arc<KafkaCommit>,
}

#[async_trait]
impl Feed<Consumed> for KafkaFeed {
    async fn poll(&mut self, max: usize) -> Result<Vec<Item<Consumed>>, FeedError> {
        let mut items = Vec::new();
        // Wait for the first message, then take what is already fetched.
        let first = self
            .consumer
            .recv()
            .await
            .map_err(|e| FeedError(format!("consuming {}: {e}", self.topic)))?;
        items.push(item(&self.topic, &first));
        // What is fetched already is ready on the first poll of `recv`;
        // not waiting for more keeps the batch from costing a timer (and a
        // millisecond) whenever the fetched queue runs dry (benchmark #3).
        let mut ready = std::task::Context::from_waker(std::task::Waker::noop());
        while items.len() < max {
            let next = std::pin::pin!(self.consumer.recv());
            match next.poll(&mut ready) {
                std::task::Poll::Ready(Ok(message)) => items.push(item(&self.topic, &message)),
                // The messages taken so far are this consumer's to finish:
                // librdkafka's position is past them, so dropping them here
                // would let later commits skip them. Report the error with
                // the next poll instead (librdkafka errors are transient).
                std::task::Poll::Ready(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "consumer error after a partial batch; handing out the batch");
                    break;
                }
                std::task::Poll::Pending => break,
            }
        }
        Ok(items)
    }

    fn committer(&self) -> Arc<dyn Commit> {
        self.committer.clone()
    }
}

fn item(topic: &str, message: &impl rdkafka::Message) -> Item<Consumed> {
    let consumed = consumed(topic, message);
    Item {
        position: consumed.position,
        item: Ok(consumed),
    }
}

struct KafkaCommit {
    topic: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
}

/// Follows the group's partition assignment, for logs and
/// `runnel_source_partitions`.
struct GroupContext {
    topic: String,
    group: String,
}

impl rdkafka::ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        match rebalance {
            Rebalance::Assign(_) | Rebalance::Revoke(_) => tracing::info!(
                topic = %self.topic,
                group = %self.group,
                assigned,
                "consumer group rebalanced"
            ),
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.topic, group = %self.group, %error, "rebalance failed")
            }
        }
        metrics::gauge!(crate::metrics::SOURCE_PARTITIONS, "topic" => self.topic.clone(), "group" => self.group.clone())
            .set(assigned as f64);
    }
}

/// Every few seconds, exports how far the group's committed offsets trail
/// the end of each assigned partition. Ends with the consumer.
async fn export_lag(
    consumer: std::sync::Weak<StreamConsumer<GroupContext>>,
    topic: String,
    group: String,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        let (topic, group) = (topic.clone(), group.clone());
        let lags = tokio::task::spawn_blocking(move || {
            let assignment = consumer.assignment().ok()?;
            let committed = consumer
                .committed_offsets(assignment, Duration::from_secs(5))
                .ok()?;
            let mut lags = Vec::new();
            for element in committed.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, element.partition(), Duration::from_secs(5))
                    .ok()?;
                let done = match element.offset() {
                    Offset::Offset(n) => n,
                    _ => 0,
                };
                lags.push((element.partition(), (high - done).max(0)));
            }
            Some((topic, group, lags))
        })
        .await;
        if let Ok(Some((topic, group, lags))) = lags {
            for (partition, lag) in lags {
                metrics::gauge!(
                    crate::metrics::SOURCE_LAG,
                    "topic" => topic.clone(),
                    "group" => group.clone(),
                    "partition" => partition.to_string()
                )
                .set(lag as f64);
            }
        }
    }
}

#[async_trait]
impl Commit for KafkaCommit {
    async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), FeedError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &self.topic,
                partition as i32,
                Offset::Offset(next_offset as i64),
            )
            .map_err(|e| FeedError(e.to_string()))?;
        // Asynchronous: a lost commit only means redelivery, which the
        // idempotency store absorbs; waiting would stall the pipeline.
        self.consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(|e| FeedError(format!("committing {}/{partition}: {e}", self.topic)))
    }
}
