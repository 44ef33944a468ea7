//! The engine: what happens to an event once a trigger has it.
//!
//! Every trigger hands its events to one [`Handler`]: claim → invoke →
//! deliver → complete or dead-letter → [`Outcome`]. Pulled triggers (a
//! bucket's notifications, a topic) go through the [`feed_driver`], which
//! adds what a committable feed needs: batches, a bounded number in flight,
//! per-key order, acknowledgement by offset, and a grace period on
//! shutdown. Pushed triggers (HTTP) call the handler themselves and turn its
//! outcome into their reply; `runnel dlq replay` calls it too. So there is
//! one code path for "handle this event", and a new trigger is one file in
//! [`triggers`](crate::triggers) that feeds it.
//!
//! The engine knows nothing of trigger kinds: it sees [`Delivery`]s, whose
//! payload a trigger may leave to be loaded later ([`Pending::Deferred`]),
//! and a function behind [`Invoke`](crate::runtime::Invoke).

pub mod dead_letter;
pub mod feed_driver;
mod handler;
mod meters;
mod threads;
pub use threads::Threads;

#[cfg(test)]
mod tests;

use async_trait::async_trait;

use crate::event::{Event, Position};

pub use handler::{Failure, Handled, Handler, OnFailure, Outcome, Slot, Track, Work};

/// What a trigger hands the engine: the event, or what makes it.
pub enum Pending {
    Event(Box<Event>),
    /// An event whose payload is read when the handler gets to it (an
    /// object's bytes), so reads run in parallel and retry under the
    /// pipeline's policy.
    Deferred(Box<dyn Load>),
    /// A record that could not be decoded; it goes to the dead letters.
    Undecodable(String),
}

impl Pending {
    /// Turns a pending delivery into the event the function sees.
    pub async fn load(&self) -> Result<Event, LoadError> {
        match self {
            Self::Event(event) => Ok((**event).clone()),
            Self::Deferred(load) => load.load().await,
            Self::Undecodable(reason) => Err(LoadError {
                message: reason.clone(),
                retryable: false,
            }),
        }
    }
}

/// Reads the payload of a deferred event.
#[async_trait]
pub trait Load: Send + Sync {
    async fn load(&self) -> Result<Event, LoadError>;
}

/// Why an event's payload could not be loaded.
#[derive(Debug)]
pub struct LoadError {
    pub message: String,
    pub retryable: bool,
}

/// One event of a pulled feed, at its position.
pub struct Delivery {
    pub position: Position,
    /// Known before the payload is read, so duplicates cost no I/O.
    pub idempotency_key: String,
    /// Keeps ordering per key: deliveries with equal keys run one at a time.
    pub ordering_key: Option<String>,
    pub pending: Pending,
}
