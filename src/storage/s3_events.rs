//! Decoding S3 event notifications (the JSON AWS S3, MinIO, RustFS and Ceph
//! send to queues, topics and webhooks) into [`ObjectCreated`] events.
//!
//! Keys arrive URL-encoded with `+` for spaces; `eTag` may be quoted;
//! MinIO adds `userMetadata` (with `X-Amz-Meta-` names and the content
//! type), AWS does not (the object's metadata is read when it is fetched).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::event::ObjectCreated;

#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "Records")]
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "eventName")]
    event_name: String,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: BucketEntity,
    object: ObjectEntity,
}

#[derive(Deserialize)]
struct BucketEntity {
    name: String,
}

#[derive(Deserialize)]
struct ObjectEntity {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "eTag", default)]
    etag: String,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    #[serde(rename = "userMetadata", default)]
    user_metadata: BTreeMap<String, String>,
}

/// An EventBridge event from S3 (`"source": "aws.s3"`).
#[derive(Deserialize)]
struct EventBridge {
    #[serde(rename = "detail-type")]
    detail_type: String,
    detail: EventBridgeDetail,
}

#[derive(Deserialize)]
struct EventBridgeDetail {
    bucket: BucketEntity,
    object: EventBridgeObject,
}

#[derive(Deserialize)]
struct EventBridgeObject {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    etag: String,
    #[serde(rename = "version-id")]
    version_id: Option<String>,
}

/// How deep SNS envelopes may nest (SNS → SNS fan-out is one level more).
const MAX_ENVELOPES: usize = 3;

/// The object-created events in one notification message, in any of the
/// shapes object stores deliver them:
///
/// - S3 event records (`{"Records": [...]}`), as AWS S3 sends them to SQS,
///   SNS (raw delivery) and Lambda, and MinIO, RustFS and Ceph to their
///   Kafka and webhook targets;
/// - an SNS notification (`"Type": "Notification"`) whose `Message` holds
///   one of these as text: S3 → SNS → SQS without raw delivery;
/// - an EventBridge event from S3 (`"source": "aws.s3"`, `detail-type`
///   `"Object Created"`).
///
/// What is understood and carries no work — other event kinds (removals,
/// restores, other EventBridge detail types) and S3's `s3:TestEvent` —
/// yields no events. Anything else is an error naming what it was, so the
/// message is dead-lettered with the reason rather than dropped unseen.
pub fn decode(body: &[u8]) -> Result<Vec<ObjectCreated>, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("malformed S3 event notification: {e}"))?;
    decode_value(value, 0)
}

fn decode_value(value: serde_json::Value, depth: usize) -> Result<Vec<ObjectCreated>, String> {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str());
    if value.get("Records").is_some() {
        let notification: Notification = serde_json::from_value(value)
            .map_err(|e| format!("malformed S3 event notification: {e}"))?;
        return notification
            .records
            .into_iter()
            .filter_map(record)
            .collect();
    }
    if field("Event") == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if field("Type") == Some("Notification") {
        let Some(message) = field("Message") else {
            return Err("SNS notification without a Message".to_owned());
        };
        if depth >= MAX_ENVELOPES {
            return Err(format!(
                "SNS notification nested more than {MAX_ENVELOPES} deep"
            ));
        }
        let inner: serde_json::Value = serde_json::from_str(message).map_err(|e| {
            format!("SNS notification whose Message is not an S3 event notification: {e}")
        })?;
        return decode_value(inner, depth + 1)
            .map_err(|e| format!("in an SNS notification's Message: {e}"));
    }
    if let Some(kind @ ("SubscriptionConfirmation" | "UnsubscribeConfirmation")) = field("Type") {
        return Err(format!(
            "SNS {kind} message: confirm the subscription at its SubscribeURL; it carries no object event"
        ));
    }
    if field("source") == Some("aws.s3") && value.get("detail-type").is_some() {
        let event: EventBridge = serde_json::from_value(value)
            .map_err(|e| format!("malformed EventBridge S3 event: {e}"))?;
        if event.detail_type != "Object Created" {
            return Ok(Vec::new());
        }
        let object = event.detail.object;
        return Ok(vec![ObjectCreated {
            bucket: event.detail.bucket.name,
            key: decode_key(&object.key)?,
            etag: object.etag.trim_matches('"').to_owned(),
            size: object.size,
            content_type: None,
            metadata: BTreeMap::new(),
            version_id: object.version_id,
        }]);
    }
    let keys: Vec<&str> = value
        .as_object()
        .map(|o| o.keys().map(String::as_str).take(8).collect())
        .unwrap_or_default();
    Err(format!(
        "not an S3 event notification (expected S3 event records, an SNS notification or an EventBridge S3 event; found a JSON {} with keys [{}])",
        json_kind(&value),
        keys.join(", ")
    ))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Object(_) => "object",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Null => "null",
    }
}

fn decode_key(key: &str) -> Result<String, String> {
    url_decode(key).ok_or_else(|| format!("S3 event key {key:?} is not valid URL encoding"))
}

/// The event of one S3 record, if it is an object creation.
fn record(record: Record) -> Option<Result<ObjectCreated, String>> {
    if !record
        .event_name
        .trim_start_matches("s3:")
        .starts_with("ObjectCreated:")
    {
        return None;
    }
    let object = record.s3.object;
    let key = match decode_key(&object.key) {
        Ok(key) => key,
        Err(e) => return Some(Err(e)),
    };
    let mut metadata = BTreeMap::new();
    let mut content_type = object.content_type;
    for (name, value) in object.user_metadata {
        let lower = name.to_ascii_lowercase();
        if let Some(meta) = lower.strip_prefix("x-amz-meta-") {
            metadata.insert(meta.to_owned(), value);
        } else if lower == "content-type" {
            content_type.get_or_insert(value);
        }
    }
    Some(Ok(ObjectCreated {
        bucket: record.s3.bucket.name,
        key,
        etag: object.etag.trim_matches('"').to_owned(),
        size: object.size,
        content_type,
        metadata,
        version_id: object.version_id.filter(|v| !v.is_empty() && v != "null"),
    }))
}

/// `application/x-www-form-urlencoded` decoding, as S3 encodes keys.
fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_aws_and_minio_records() {
        let aws = br#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put",
            "s3":{"bucket":{"name":"uploads"},"object":{"key":"photos/my+photo%281%29.jpg","size":1234,"eTag":"abc","sequencer":"0A1"}}}]}"#;
        let events = decode(aws).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "photos/my photo(1).jpg");
        assert_eq!(events[0].etag, "abc");
        assert_eq!(events[0].size, 1234);

        let minio = br#"{"EventName":"s3:ObjectCreated:Put","Records":[{"eventName":"s3:ObjectCreated:Put",
            "s3":{"bucket":{"name":"uploads"},"object":{"key":"a.jpg","size":3,"eTag":"\"e1\"","contentType":"image/jpeg",
            "userMetadata":{"X-Amz-Meta-User":"alice","content-type":"image/jpeg"}}}}]}"#;
        let events = decode(minio).unwrap();
        assert_eq!(events[0].etag, "e1");
        assert_eq!(events[0].metadata["user"], "alice");
        assert_eq!(events[0].content_type.as_deref(), Some("image/jpeg"));
    }

    #[test]
    fn ignores_test_events_and_removals_and_rejects_garbage() {
        assert!(
            decode(br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#)
                .unwrap()
                .is_empty()
        );
        let removed = br#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        assert!(decode(removed).unwrap().is_empty());
        assert!(
            decode(b"not json")
                .unwrap_err()
                .contains("malformed S3 event")
        );
        let bad_key = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}"#;
        assert!(decode(bad_key).is_err());
    }

    const RECORD: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"uploads"},"object":{"key":"photos/a+b.jpg","size":7,"eTag":"e7","versionId":"v1","sequencer":"01"}}}]}"#;

    /// S3 → SNS → SQS without raw delivery: the S3 JSON is a string in the
    /// SNS envelope's `Message`.
    #[test]
    fn decodes_records_inside_an_sns_envelope() {
        let envelope = serde_json::json!({
            "Type": "Notification",
            "MessageId": "5b1b2f4c",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:uploads",
            "Subject": "Amazon S3 Notification",
            "Message": RECORD,
            "Timestamp": "2026-12-02T10:00:00.000Z",
        });
        let events = decode(envelope.to_string().as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].bucket, "uploads");
        assert_eq!(events[0].key, "photos/a b.jpg");
        assert_eq!(events[0].etag, "e7");
        assert_eq!(events[0].version_id.as_deref(), Some("v1"));
        // SNS's own test notification wraps S3's test event: no work.
        let test = serde_json::json!({"Type": "Notification",
            "Message": r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"uploads"}"#});
        assert!(decode(test.to_string().as_bytes()).unwrap().is_empty());
        let garbage = serde_json::json!({"Type": "Notification", "Message": "hello"});
        let e = decode(garbage.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("SNS notification"), "{e}");
    }

    /// EventBridge's "Object Created" (also as an SQS target's body).
    #[test]
    fn decodes_eventbridge_object_created() {
        let event = br#"{"version":"0","id":"17793124","detail-type":"Object Created","source":"aws.s3",
            "account":"111122223333","time":"2021-11-12T00:00:00Z","region":"ca-central-1","resources":["arn:aws:s3:::uploads"],
            "detail":{"version":"0","bucket":{"name":"uploads"},"object":{"key":"photos/x.jpg","size":5,
            "etag":"b1946ac92492d2347c6235b4d2611184","version-id":"IYV3p45B","sequencer":"617f08299329d189"},
            "request-id":"N4N7","requester":"123456789012","reason":"PutObject"}}"#;
        let events = decode(event).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "photos/x.jpg");
        assert_eq!(events[0].size, 5);
        assert_eq!(events[0].etag, "b1946ac92492d2347c6235b4d2611184");
        assert_eq!(events[0].version_id.as_deref(), Some("IYV3p45B"));
        let deleted = br#"{"version":"0","detail-type":"Object Deleted","source":"aws.s3",
            "detail":{"bucket":{"name":"uploads"},"object":{"key":"photos/x.jpg"}}}"#;
        assert!(decode(deleted).unwrap().is_empty());
    }

    /// JSON that is no notification runnel knows is an error naming what it
    /// was, never zero events (which would delete it unseen).
    #[test]
    fn unknown_shapes_are_errors_not_empty() {
        for body in [
            &br#"{}"#[..],
            br#"{"hello":"world"}"#,
            br#"[1,2]"#,
            br#""Records""#,
            br#"{"Type":"SubscriptionConfirmation","SubscribeURL":"https://sns"}"#,
            br#"{"source":"aws.s3","detail-type":"Object Created","detail":{}}"#,
        ] {
            let result = decode(body);
            assert!(
                result.is_err(),
                "{}: {result:?}",
                String::from_utf8_lossy(body)
            );
        }
        let e = decode(br#"{"hello":"world"}"#).unwrap_err();
        assert!(
            e.contains("not an S3 event notification") && e.contains("hello"),
            "{e}"
        );
    }
}
