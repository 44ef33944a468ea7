//! The storage sink: each output is an object, under the key the function
//! chose, so writing it again overwrites rather than duplicates.

use std::sync::Arc;

use super::{SinkError, WriteId};
use crate::config::reader::Table;
use crate::runtime::Output;
use crate::storage::{NewObject, ObjectStore, validate_bucket};

#[derive(Clone, Debug)]
pub struct StorageSinkConfig {
    /// The bucket outputs are written to.
    pub bucket: String,
}

impl StorageSinkConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let bucket = table.required_name("bucket", validate_bucket)?;
        Some(Self { bucket })
    }
}

pub struct StorageSink {
    bucket: String,
    store: Arc<dyn ObjectStore>,
}

impl StorageSink {
    pub fn new(config: &StorageSinkConfig, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            bucket: config.bucket.clone(),
            store,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub async fn write(&self, output: &Output, id: &WriteId<'_>) -> Result<(), SinkError> {
        let key = output.key.as_deref().ok_or_else(|| {
            SinkError::permanent(format!(
                "output to bucket {} has no key (storage outputs need one)",
                self.bucket
            ))
        })?;
        let mut metadata: std::collections::BTreeMap<_, _> =
            output.attributes.iter().cloned().collect();
        if let Some(traceparent) = id.traceparent {
            metadata
                .entry(crate::telemetry::TRACEPARENT.to_owned())
                .or_insert_with(|| traceparent.to_owned());
        }
        let object = NewObject {
            body: output.data.clone(),
            content_type: output.content_type.clone(),
            metadata,
        };
        self.store
            .put(&self.bucket, key, object)
            .await
            .map(drop)
            .map_err(|e| SinkError {
                retry_after: None,
                retryable: e.retryable(),
                message: e.to_string(),
            })
    }
}
