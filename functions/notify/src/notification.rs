//! Reading the thumbnail function's report and writing the notification a
//! person (or a webhook) gets about it.
//!
//! The report's `source` and `thumbnails` are passed through untouched, so a
//! field the thumbnail function adds later reaches the receiver without a
//! change here; only the object key, the uploader and the count are read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The parts of the `image-processed` report this function needs.
#[derive(Debug, Deserialize)]
pub struct Processed {
    pub source: Source,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub thumbnails: Vec<Value>,
}

/// The report's `source` object: its key is read, everything is kept.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Value")]
pub struct Source {
    pub key: String,
    pub value: Value,
}

impl TryFrom<Value> for Source {
    type Error = &'static str;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        let key = value
            .get("key")
            .and_then(Value::as_str)
            .ok_or("`source.key` is missing or not a string")?
            .to_owned();
        Ok(Source { key, value })
    }
}

/// What is sent to each notification sink.
#[derive(Debug, Serialize)]
pub struct Notification {
    /// One human-readable line, e.g. `photos/a.jpg for alice: 3 thumbnails ready`.
    pub message: String,
    /// The uploader (`meta-user` on the upload), or null.
    pub user: Option<String>,
    pub source: Value,
    pub thumbnails: Vec<Value>,
}

impl Notification {
    pub fn for_report(report: Processed) -> Notification {
        let user = report.metadata.get("user").cloned();
        let count = report.thumbnails.len();
        let noun = if count == 1 {
            "thumbnail"
        } else {
            "thumbnails"
        };
        let message = match &user {
            Some(user) => format!("{} for {user}: {count} {noun} ready", report.source.key),
            None => format!("{}: {count} {noun} ready", report.source.key),
        };
        Notification {
            message,
            user,
            source: report.source.value,
            thumbnails: report.thumbnails,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(metadata: Value, thumbnails: usize) -> Processed {
        let thumbnails: Vec<Value> = (0..thumbnails)
            .map(|i| json!({"bucket": "thumbs", "key": format!("p-{i}.jpg"), "width": 128}))
            .collect();
        serde_json::from_value(json!({
            "source": {"bucket": "uploads", "key": "photos/photo.jpg", "etag": "e", "size": 10},
            "metadata": metadata,
            "thumbnails": thumbnails,
        }))
        .unwrap()
    }

    /// The message names the object, the uploader and the count.
    #[test]
    fn message_with_user() {
        let n = Notification::for_report(report(json!({"user": "alice"}), 3));
        assert_eq!(n.message, "photos/photo.jpg for alice: 3 thumbnails ready");
        assert_eq!(n.user.as_deref(), Some("alice"));
    }

    /// Without an uploader the message says so less; one thumbnail is singular.
    #[test]
    fn message_without_user_and_singular() {
        let n = Notification::for_report(report(json!({}), 1));
        assert_eq!(n.message, "photos/photo.jpg: 1 thumbnail ready");
        assert_eq!(n.user, None);
    }

    /// `source` and `thumbnails` reach the receiver exactly as reported.
    #[test]
    fn passes_source_and_thumbnails_through() {
        let n = Notification::for_report(report(json!({"user": "bob"}), 2));
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(
            json["source"],
            json!({"bucket": "uploads", "key": "photos/photo.jpg", "etag": "e", "size": 10})
        );
        assert_eq!(
            json["thumbnails"][1],
            json!({"bucket": "thumbs", "key": "p-1.jpg", "width": 128})
        );
    }

    /// A report whose source has no key is refused.
    #[test]
    fn source_needs_a_key() {
        let bad = json!({"source": {"bucket": "b"}, "thumbnails": []});
        assert!(serde_json::from_value::<Processed>(bad).is_err());
    }
}
