//! Remembering which events are done, so a redelivered event is not
//! processed twice.
//!
//! Sources deliver at least once: after a crash everything past the last
//! commit comes again. Before running the function the pipeline *claims*
//! the event's idempotency key: already complete means skip it; in
//! progress elsewhere (a shared store, another process) means wait, since
//! that process may still finish it — or crash, in which case its lease
//! runs out and the claim succeeds. After the outputs are written (or the
//! event is dead-lettered) the pipeline records completion, and only then
//! acknowledges the source. Completed keys are kept for a TTL (default 7
//! days). Until then each output is recorded as its sink acknowledges it,
//! so a retried or redelivered event writes only what is still missing.

pub mod embedded;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::HashSet;

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

    /// The inverse of [`as_str`](Self::as_str), as stores read it back.
    pub fn parse(text: &str) -> Self {
        match text {
            "dead-lettered" => Self::DeadLettered,
            _ => Self::Done,
        }
    }
}

/// The answer to a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours to process (until the lease runs out; claim again to extend).
    Acquired,
    /// Already finished, within the TTL.
    Completed(Completion),
    /// Another process holds a live lease on it.
    Busy,
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims the event for this process for `lease`. A store used by one
    /// process only needs no leases: the default answers from
    /// [`completion`](Self::completion).
    async fn claim(
        &self,
        pipeline: &str,
        key: &str,
        lease: std::time::Duration,
    ) -> Result<Claim, IdempotencyError> {
        let _ = lease;
        Ok(match self.completion(pipeline, key).await? {
            Some(how) => Claim::Completed(how),
            None => Claim::Acquired,
        })
    }

    /// [`claim`](Self::claim), and when the claim is acquired, which of
    /// the event's outputs were delivered already (otherwise none): what
    /// an event's first attempt needs before writing, read in one round
    /// trip where the store can (benchmark #3). The default asks twice.
    async fn claim_with_delivered(
        &self,
        pipeline: &str,
        key: &str,
        lease: std::time::Duration,
    ) -> Result<(Claim, HashSet<String>), IdempotencyError> {
        claim_then_delivered(self, pipeline, key, lease).await
    }

    /// [`claim_with_delivered`](Self::claim_with_delivered) for many
    /// events at once (a batch's), in order: in one read where the store
    /// can. The default claims them all at once, each on its own.
    async fn claim_many(
        &self,
        pipeline: &str,
        keys: &[&str],
        lease: std::time::Duration,
    ) -> Result<Vec<(Claim, HashSet<String>)>, IdempotencyError> {
        let claims = keys
            .iter()
            .map(|key| self.claim_with_delivered(pipeline, key, lease));
        futures_util::future::try_join_all(claims).await
    }

    /// [`complete`](Self::complete) for many events at once (a batch's):
    /// in one transaction where the store can. The default records them
    /// all at once, each on its own.
    async fn complete_many(
        &self,
        pipeline: &str,
        completions: &[(&str, Completion)],
    ) -> Result<(), IdempotencyError> {
        let recorded = completions
            .iter()
            .map(|(key, how)| self.complete(pipeline, key, *how));
        futures_util::future::try_join_all(recorded).await.map(drop)
    }

    /// How the event with this key ended, if it did (within the TTL).
    async fn completion(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<Option<Completion>, IdempotencyError>;

    /// The outputs of an unfinished event that their sinks already
    /// acknowledged (by write id), so a retry or a redelivery after a crash
    /// skips them.
    async fn delivered(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<HashSet<String>, IdempotencyError>;

    /// Records that a sink acknowledged the output `output` (its write id).
    async fn record_delivery(
        &self,
        pipeline: &str,
        key: &str,
        output: &str,
    ) -> Result<(), IdempotencyError>;

    /// Whether the store answers (for `/healthz`); embedded: always.
    async fn check(&self) -> Result<(), IdempotencyError> {
        Ok(())
    }

    /// Records that the event ended (and forgets its delivered outputs:
    /// the completion covers them).
    async fn complete(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
    ) -> Result<(), IdempotencyError> {
        self.complete_with_reply(pipeline, key, how, None).await
    }

    /// [`complete`](Self::complete), keeping `reply` with the completion
    /// for as long (an idempotent request's stored response): both are
    /// recorded or neither.
    async fn complete_with_reply(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
        reply: Option<Vec<u8>>,
    ) -> Result<(), IdempotencyError>;

    /// The reply kept with the completion of `key`, if there is one.
    async fn reply(&self, pipeline: &str, key: &str) -> Result<Option<Vec<u8>>, IdempotencyError>;

    /// A trigger's durable mark that is not a feed's offset (how far a
    /// schedule got), if one was recorded: kept without a TTL, and shared
    /// by the processes that share the store.
    async fn mark(&self, pipeline: &str, name: &str) -> Result<Option<u64>, IdempotencyError>;

    /// Moves the mark `name` forward to `to`; a mark never moves back, so
    /// two processes advancing it at once keep the higher.
    async fn advance_mark(
        &self,
        pipeline: &str,
        name: &str,
        to: u64,
    ) -> Result<(), IdempotencyError>;
}

/// [`IdempotencyStore::claim_with_delivered`] in two round trips: the claim,
/// then (when acquired) the delivered outputs.
async fn claim_then_delivered<S: IdempotencyStore + ?Sized>(
    store: &S,
    pipeline: &str,
    key: &str,
    lease: std::time::Duration,
) -> Result<(Claim, HashSet<String>), IdempotencyError> {
    let claim = store.claim(pipeline, key, lease).await?;
    let delivered = match claim {
        Claim::Acquired => store.delivered(pipeline, key).await?,
        Claim::Completed(_) | Claim::Busy => HashSet::new(),
    };
    Ok((claim, delivered))
}
