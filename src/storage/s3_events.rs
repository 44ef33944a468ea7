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
    #[serde(rename = "Records", default)]
    records: Vec<Record>,
    /// `s3:TestEvent`, sent when a notification target is configured.
    #[serde(rename = "Event")]
    event: Option<String>,
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
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    #[serde(rename = "userMetadata", default)]
    user_metadata: BTreeMap<String, String>,
}

/// The object-created events in one notification message. Other event
/// kinds (removals, test events) yield none.
pub fn decode(body: &[u8]) -> Result<Vec<ObjectCreated>, String> {
    let notification: Notification = serde_json::from_slice(body)
        .map_err(|e| format!("malformed S3 event notification: {e}"))?;
    if notification.event.is_some() {
        return Ok(Vec::new());
    }
    notification
        .records
        .into_iter()
        .filter(|r| {
            r.event_name
                .trim_start_matches("s3:")
                .starts_with("ObjectCreated:")
        })
        .map(|record| {
            let object = record.s3.object;
            let key = url_decode(&object.key).ok_or_else(|| {
                format!("S3 event key {:?} is not valid URL encoding", object.key)
            })?;
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
            Ok(ObjectCreated {
                bucket: record.s3.bucket.name,
                key,
                etag: object.etag.trim_matches('"').to_owned(),
                size: object.size,
                content_type,
                metadata,
            })
        })
        .collect()
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
}
