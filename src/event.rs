//! The one event envelope that crosses every boundary.
//!
//! Sources turn what they receive (an object-created notification, a message
//! on a topic) into an [`Event`]; the runtime hands it to the function as the
//! WIT `event` record; dead-letter records carry it whole. Its shape follows
//! CloudEvents so that it maps onto Kafka headers (`ce_*`) without loss.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Event type of an object-created notification.
pub const OBJECT_CREATED: &str = "runnel.object.created";
/// Event type of a message consumed from a topic.
pub const MESSAGE: &str = "runnel.message";
/// The `type` of a schedule's tick.
pub const SCHEDULE_TICK: &str = "runnel.schedule.tick";
/// A row a database committed, as a Debezium change event.
pub const DATABASE_CHANGE: &str = "runnel.database.change";

/// One unit of work for a pipeline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unique per event and stable across redeliveries of it.
    pub id: String,
    /// Where it came from: `storage://uploads`, `topic://image-processed`.
    pub source: String,
    /// What happened: [`OBJECT_CREATED`], [`MESSAGE`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// What it happened to: the object key or the message key.
    pub subject: Option<String>,
    pub content_type: Option<String>,
    /// Source-specific facts (bucket, etag, size, `meta-*`; topic, partition,
    /// offset, headers).
    pub attributes: BTreeMap<String, String>,
    /// The payload, base64 in JSON form so dead letters keep any bytes.
    #[serde(with = "base64_bytes")]
    pub data: Bytes,
    /// The key under which the event's completion is remembered, so that a
    /// redelivered event is recognised. Derived from the source by default.
    pub idempotency_key: String,
}

/// Prefix under which object user metadata travels in event attributes.
pub const META_PREFIX: &str = "meta-";

/// An object that has just been written to a bucket, in the shape every
/// object store's notifications share (S3 event records carry the same).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ObjectCreated {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub content_type: Option<String>,
    /// User metadata (`x-runnel-meta-*` / `x-amz-meta-*`), names lower-cased.
    pub metadata: BTreeMap<String, String>,
    /// The S3 version id, in a bucket with versioning on: with it the
    /// version the event names can be read even after an overwrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

impl ObjectCreated {
    /// The default idempotency key of an object event: the same bytes under
    /// the same key are the same event.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}@{}", self.bucket, self.key, self.etag)
    }

    /// The event for this object, with `data` holding its bytes.
    pub fn into_event(self, data: Bytes) -> Event {
        let id = self.idempotency_key();
        let mut attributes = BTreeMap::from([
            ("bucket".to_owned(), self.bucket.clone()),
            ("key".to_owned(), self.key.clone()),
            ("etag".to_owned(), self.etag.clone()),
            ("size".to_owned(), self.size.to_string()),
        ]);
        if let Some(version) = &self.version_id {
            attributes.insert("version_id".to_owned(), version.clone());
        }
        for (name, value) in self.metadata {
            attributes.insert(format!("{META_PREFIX}{name}"), value);
        }
        Event {
            idempotency_key: id.clone(),
            id,
            source: format!("storage://{}", self.bucket),
            event_type: OBJECT_CREATED.to_owned(),
            subject: Some(self.key),
            content_type: self.content_type,
            attributes,
            data,
        }
    }
}

/// A message as a broker stores and delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Ordering is kept per key: equal keys land in the same partition.
    pub key: Option<String>,
    /// CloudEvents attributes as `ce_*` plus the output's own attributes.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

/// Where a record sits in a partitioned log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A message consumed from a topic, with its place in the topic.
#[derive(Clone, Debug)]
pub struct Consumed {
    pub topic: String,
    pub position: Position,
    pub message: Message,
}

impl Consumed {
    /// The event for this message. CloudEvents headers written by runnel's
    /// own topic sink (`ce_id`, `ce_type`, ...) are lifted back into the
    /// envelope; every other header becomes an attribute.
    pub fn into_event(self) -> Event {
        let Position { partition, offset } = self.position;
        // A CloudEvents id (runnel's topic sink writes one per output, stable
        // across redeliveries) names the event wherever it lands; without
        // one, the message's place in the topic does.
        let ce_id = self
            .message
            .headers
            .iter()
            .find(|(n, _)| n == "ce_id")
            .map(|(_, v)| v.clone());
        let idempotency_key = match ce_id {
            Some(id) => format!("{}/ce:{id}", self.topic),
            None => format!("{}/{partition}/{offset}", self.topic),
        };
        let mut attributes = BTreeMap::from([
            ("topic".to_owned(), self.topic.clone()),
            ("partition".to_owned(), partition.to_string()),
            ("offset".to_owned(), offset.to_string()),
        ]);
        let mut content_type = None;
        for (name, value) in self.message.headers {
            match name.as_str() {
                "content-type" => content_type = Some(value),
                _ => {
                    attributes.insert(name, value);
                }
            }
        }
        Event {
            id: format!("{}/{partition}/{offset}", self.topic),
            source: format!("topic://{}", self.topic),
            event_type: MESSAGE.to_owned(),
            subject: self.message.key,
            content_type,
            attributes,
            data: self.message.payload,
            idempotency_key,
        }
    }
}

mod base64_bytes {
    //! Dead-letter records are JSON; payloads are arbitrary bytes.
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_event_carries_metadata_as_attributes() {
        let created = ObjectCreated {
            bucket: "uploads".into(),
            key: "photos/a.jpg".into(),
            etag: "abc".into(),
            size: 3,
            content_type: Some("image/jpeg".into()),
            metadata: BTreeMap::from([("user".into(), "alice".into())]),
            version_id: None,
        };
        let event = created.into_event(Bytes::from_static(b"xyz"));
        assert_eq!(event.idempotency_key, "uploads/photos/a.jpg@abc");
        assert_eq!(event.attributes["meta-user"], "alice");
        assert_eq!(event.attributes["size"], "3");
        assert_eq!(event.subject.as_deref(), Some("photos/a.jpg"));
    }

    #[test]
    fn event_round_trips_through_json_with_binary_data() {
        let event = Consumed {
            topic: "t".into(),
            position: Position {
                partition: 1,
                offset: 7,
            },
            message: Message {
                key: Some("k".into()),
                headers: vec![("content-type".into(), "application/json".into())],
                payload: Bytes::from_static(&[0, 159, 146, 150]),
            },
        }
        .into_event();
        assert_eq!(event.idempotency_key, "t/1/7");
        assert_eq!(event.content_type.as_deref(), Some("application/json"));
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
    }
}
