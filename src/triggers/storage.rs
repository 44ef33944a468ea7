//! The storage trigger: one event per object created in a bucket, read
//! from the store's notifications (a pulled feed). The object's bytes are
//! read when the handler gets to the event.

use std::sync::Arc;

use async_trait::async_trait;

use super::key::{KeyExpression, Kind};
use crate::config::reader::Table;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::engine::{Delivery, Load, LoadError, Pending};
use crate::event::{Event, ObjectCreated};
use crate::feed::{Acks, Feed, FeedError};
use crate::storage::{ObjectStore, StorageError, Version, validate_bucket};

#[derive(Clone, Debug)]
pub struct StorageTriggerConfig {
    /// The bucket whose new objects are events.
    pub bucket: String,
    /// Only keys starting with this prefix (default: all).
    pub prefix: Option<String>,
    /// Only keys ending with one of these, compared case-insensitively
    /// (default: all).
    pub suffixes: Vec<String>,
    /// Objects larger than this go to the dead letters unread (default 64 MiB).
    pub max_object_size: u64,
    /// `idempotency_key`: how to name an event for deduplication (default
    /// `{bucket}/{key}@{etag}`).
    pub idempotency_key: Option<KeyExpression>,
}

pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 64 << 20;

impl StorageTriggerConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let bucket = table.required_name("bucket", validate_bucket);
        let prefix = table.string("prefix");
        let suffixes = table
            .get("suffixes")
            .and_then(|f| f.strings())
            .unwrap_or_default();
        let max_object_size = table
            .size("max_object_size")
            .unwrap_or(DEFAULT_MAX_OBJECT_SIZE);
        let idempotency_key = super::key::read(table, Kind::Storage)?;
        Some(Self {
            idempotency_key,
            bucket: bucket?,
            prefix,
            suffixes: suffixes
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            max_object_size,
        })
    }

    /// Whether an event is this source's: its bucket (a topic or queue of
    /// notifications may carry several buckets'), under its filters.
    fn wants(&self, created: &ObjectCreated) -> bool {
        let key = &created.key;
        if created.bucket != self.bucket {
            return false;
        }
        let prefix_ok = self.prefix.as_deref().is_none_or(|p| key.starts_with(p));
        let lower = key.to_ascii_lowercase();
        let suffix_ok =
            self.suffixes.is_empty() || self.suffixes.iter().any(|s| lower.ends_with(s));
        prefix_ok && suffix_ok
    }
}

pub(super) struct StorageTrigger {
    config: StorageTriggerConfig,
    feed: Box<dyn Feed<ObjectCreated>>,
    acks: Arc<Acks>,
    store: Arc<dyn ObjectStore>,
}

/// Reads the object an event is about.
struct ObjectLoader {
    created: ObjectCreated,
    store: Arc<dyn ObjectStore>,
    max_object_size: u64,
}

pub(super) async fn open(
    config: &StorageTriggerConfig,
    pipeline: &str,
    store: Arc<dyn ObjectStore>,
) -> Result<StorageTrigger, FeedError> {
    let feed = store
        .subscribe(&config.bucket, pipeline)
        .await
        .map_err(|e| FeedError(e.to_string()))?;
    Ok(StorageTrigger {
        acks: Acks::new(feed.committer()),
        config: config.clone(),
        feed,
        store,
    })
}

#[async_trait]
impl Pull for StorageTrigger {
    async fn next(&mut self, max: usize) -> Result<Pulled, FeedError> {
        let mut pulled = Pulled::default();
        for item in self.feed.poll(max).await? {
            let delivery = match item.item {
                Ok(created) if !self.config.wants(&created) => {
                    pulled.skipped.push(item.position);
                    continue;
                }
                Ok(created) => {
                    let key = match &self.config.idempotency_key {
                        Some(expression) => expression.for_object(&created),
                        None => Ok(created.idempotency_key()),
                    };
                    match key {
                        Ok(key) => Delivery {
                            position: item.position,
                            idempotency_key: key,
                            ordering_key: Some(created.key.clone()),
                            pending: Pending::Deferred(Box::new(ObjectLoader {
                                created,
                                store: self.store.clone(),
                                max_object_size: self.config.max_object_size,
                            })),
                        },
                        Err(reason) => Delivery {
                            position: item.position,
                            idempotency_key: created.idempotency_key(),
                            ordering_key: None,
                            pending: Pending::Undecodable(reason),
                        },
                    }
                }
                Err(reason) => Delivery {
                    position: item.position,
                    idempotency_key: format!(
                        "{}@{}/{}",
                        self.config.bucket, item.position.partition, item.position.offset
                    ),
                    ordering_key: None,
                    pending: Pending::Undecodable(reason),
                },
            };
            pulled.deliveries.push(delivery);
        }
        Ok(pulled)
    }

    fn acks(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    fn description(&self) -> String {
        format!("bucket {}", self.config.bucket)
    }
}

#[async_trait]
impl Load for ObjectLoader {
    async fn load(&self) -> Result<Event, LoadError> {
        let created = &self.created;
        match self
            .store
            .get(
                &created.bucket,
                &created.key,
                self.max_object_size,
                Some(Version::of(created)),
            )
            .await
        {
            // The notification's etag names the version the event is about.
            // Content type and user metadata come from the object itself:
            // AWS's notifications do not carry them.
            Ok((stored, body)) => {
                let mut created = created.clone();
                created.content_type = stored.content_type.or(created.content_type);
                if !stored.metadata.is_empty() {
                    created.metadata = stored.metadata;
                }
                Ok(created.into_event(body))
            }
            Err(error @ StorageError::NotFound { .. }) => Err(LoadError {
                message: format!("{error} (deleted after the event was emitted)"),
                retryable: false,
            }),
            Err(error) => Err(LoadError {
                retryable: error.retryable(),
                message: error.to_string(),
            }),
        }
    }
}
