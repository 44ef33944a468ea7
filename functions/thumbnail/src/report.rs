//! The JSON report written to the result sink once the thumbnails are out.
//!
//! It is the contract with whatever consumes the result topic (the `notify`
//! function reads it back), so its shape is spelled out as serde structs
//! rather than assembled ad hoc.

use std::collections::BTreeMap;

use serde::Serialize;

use runnel_sdk::Event;

/// `{"source": .., "metadata": .., "thumbnails": [..]}`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub source: SourceObject,
    /// The uploader's `meta-*` attributes, without the prefix (`meta-user` → `user`).
    pub metadata: BTreeMap<String, String>,
    pub thumbnails: Vec<ThumbnailEntry>,
}

/// The object the event is about.
#[derive(Debug, Clone, Serialize)]
pub struct SourceObject {
    pub bucket: Option<String>,
    pub key: String,
    pub etag: Option<String>,
    /// Bytes, as the storage reported them.
    pub size: u64,
}

/// One thumbnail as written.
#[derive(Debug, Clone, Serialize)]
pub struct ThumbnailEntry {
    /// The thumbnail sink's target: where a reader finds `key`.
    pub bucket: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    pub content_type: String,
}

impl SourceObject {
    /// Reads the object's identity from an object-created event: the key is
    /// the subject (or the `key` attribute); the bucket falls back to the
    /// source's `storage://<bucket>` and the size to the payload's length.
    /// `None` when the event names no object at all.
    pub fn from_event(event: &Event) -> Option<SourceObject> {
        let key = event
            .subject
            .clone()
            .or_else(|| attribute(event, "key").map(str::to_owned))?;
        let bucket = attribute(event, "bucket")
            .or_else(|| event.source.strip_prefix("storage://"))
            .map(str::to_owned);
        let size = attribute(event, "size")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(event.data.len() as u64);
        Some(SourceObject {
            bucket,
            key,
            etag: attribute(event, "etag").map(str::to_owned),
            size,
        })
    }
}

/// The `meta-*` attributes of `event`, prefix removed.
pub fn user_metadata(event: &Event) -> BTreeMap<String, String> {
    event
        .attributes
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("meta-")?.to_owned(), v.clone())))
        .collect()
}

fn attribute<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event
        .attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
