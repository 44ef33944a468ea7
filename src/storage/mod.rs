//! The backends behind the name "bucket".
//!
//! Pipelines name buckets; the runtime config decides what a bucket is.
//! [`ObjectStore`] is what every backend provides: writing and reading
//! objects with their content type and user metadata, and a feed of
//! object-created notifications (S3 stores push these to a queue; local
//! storage keeps its own durable change feed).

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;
/// Plain decoding, no S3 client: compiled without the `s3` feature too,
/// for the fuzz targets.
pub mod s3_events;
#[cfg(feature = "s3")]
mod s3_poll;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::event::ObjectCreated;
use crate::feed::Feed;

pub use local::LocalStorage;

/// What a writer hands to [`ObjectStore::put`].
#[derive(Clone, Debug, Default)]
pub struct NewObject {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// User metadata; names are lower-cased by the store.
    pub metadata: BTreeMap<String, String>,
}

/// Which version of an object a read must return: the one an event names.
#[derive(Clone, Copy, Debug)]
pub struct Version<'a> {
    /// The object's ETag (MD5 hex for single-part uploads), unquoted.
    pub etag: &'a str,
    /// The S3 version id, where the bucket keeps versions.
    pub version_id: Option<&'a str>,
}

impl<'a> Version<'a> {
    pub fn of(object: &'a ObjectCreated) -> Self {
        Self {
            etag: &object.etag,
            version_id: object.version_id.as_deref(),
        }
    }
}

/// Errors say whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "invalid bucket name {0:?}: use 3-63 lowercase letters, digits, '-' or '.', starting with a letter or digit"
    )]
    InvalidBucket(String),
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("object {bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    #[error("object {bucket}/{key} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        bucket: String,
        key: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "object {bucket}/{key} is no longer the version the event names (etag {etag}): it was overwritten or removed after its notification"
    )]
    Changed {
        bucket: String,
        key: String,
        etag: String,
    },
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request (access denied, bad request, missing
    /// bucket, misconfiguration): retrying will not help.
    #[error("storage refused: {0}")]
    Rejected(String),
}

impl StorageError {
    /// Only an unavailable store can start working by itself.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Stores an object (replacing any object under the key) and emits its
    /// object-created notification; returns what the notification says.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        object: NewObject,
    ) -> Result<ObjectCreated, StorageError>;

    /// Reads an object, refusing objects larger than `max_size` bytes
    /// before reading them. With `version`, exactly that version or
    /// [`StorageError::Changed`]: never other bytes under its name.
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        max_size: u64,
        version: Option<Version<'_>>,
    ) -> Result<(ObjectCreated, Bytes), StorageError>;

    /// Keys in `bucket` starting with `prefix`, in key order (at most `limit`).
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError>;

    /// Object-created notifications of `bucket`, for the named consumer,
    /// starting after what it last committed.
    async fn subscribe(
        &self,
        bucket: &str,
        consumer: &str,
    ) -> Result<Box<dyn Feed<ObjectCreated>>, StorageError>;

    /// Whether the store answers (for `/healthz`); local: always.
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// S3's bucket naming rules, so names stay portable to every backend.
pub fn validate_bucket(bucket: &str) -> Result<(), StorageError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidBucket(bucket.to_owned()))
    }
}

/// Keys become paths in local storage, so anything that could leave the
/// bucket's directory, or that a file system cannot hold, is refused.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let reason = if key.is_empty() {
        Some("empty")
    } else if key.len() > 1024 {
        Some("longer than 1024 bytes")
    } else if key.contains('\0') {
        Some("contains NUL")
    } else if key.starts_with('/') {
        Some("absolute path")
    } else if key.contains('\\') {
        Some("contains a backslash")
    } else if key.split('/').any(|s| s == ".." || s == ".") {
        Some("contains a '.' or '..' segment")
    } else if key.split('/').any(str::is_empty) {
        Some("contains an empty segment ('//' or a trailing '/')")
    } else if key.split('/').any(|s| s.len() > 255) {
        Some("has a segment longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StorageError::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_are_refused() {
        for key in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\0b",
            "a//b",
            "",
            "a/",
            "./a",
        ] {
            assert!(validate_key(key).is_err(), "{key:?} must be refused");
        }
        for key in ["photo.jpg", "photos/2024/a b.jpg", "a..b", ".hidden"] {
            assert!(validate_key(key).is_ok(), "{key:?} must be accepted");
        }
    }

    #[test]
    fn bucket_names_follow_s3() {
        assert!(validate_bucket("uploads").is_ok());
        for bad in ["Up", "ab", ".x1", "a..b", "a_b"] {
            assert!(validate_bucket(bad).is_err(), "{bad:?}");
        }
    }
}
