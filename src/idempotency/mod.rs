//! Remembering which events are done, so a redelivered event is not
//! processed twice.
//!
//! Sources deliver at least once: after a crash everything past the last
//! commit comes again. Before running the function the pipeline asks the
//! store whether the event's idempotency key is already complete; after
//! its outputs are written (or it is dead-lettered) it records completion,
//! and only then acknowledges the source. Completed keys are kept for a
//! TTL (default 7 days).

pub mod embedded;
#[cfg(feature = "redis")]
pub mod redis;

use async_trait::async_trait;

pub use embedded::EmbeddedIdempotency;

#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdempotencyError(pub String);

/// How an event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Every output was written.
    Done,
    /// It went to the dead-letter sink.
    DeadLettered,
}

impl Completion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::DeadLettered => "dead-lettered",
        }
    }
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// How the event with this key ended, if it did (within the TTL).
    async fn completion(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<Option<Completion>, IdempotencyError>;

    /// Records that the event ended.
    async fn complete(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
    ) -> Result<(), IdempotencyError>;
}
