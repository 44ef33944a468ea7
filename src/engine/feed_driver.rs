//! The feed driver: a pulled trigger's loop, the same for every feed.
//!
//! It reads deliveries in batches from a [`Pull`] trigger, takes a slot of
//! the handler for each (so a busy pipeline reads no further), keeps
//! deliveries with the same ordering key one after another in feed order,
//! and likewise deliveries of the same event (the same idempotency key),
//! and acknowledges each position through [`Acks`] once the handler is done
//! with it, whatever the outcome. On shutdown it stops reading and gives
//! what is in flight a grace period; what does not finish is redelivered on
//! the next start, since its offset was never committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::meters::Stage;
use super::{Delivery, Handler, Work};
use crate::event::Position;
use crate::feed::{Acks, FeedError};

/// Deliveries asked of the trigger at a time.
const BATCH: usize = 64;

/// A trigger read from a committable feed (a bucket's notifications, a
/// topic): it acknowledges by offset.
#[async_trait]
pub trait Pull: Send {
    /// Waits for the next items and returns up to `max`, in feed order.
    async fn next(&mut self, max: usize) -> Result<Pulled, FeedError>;

    /// The offsets bookkeeping of the trigger's feed.
    fn acks(&self) -> Arc<Acks>;

    /// What it reads, for the log: `bucket uploads`.
    fn description(&self) -> String;
}

/// What one read of a feed gave.
#[derive(Default)]
pub struct Pulled {
    pub deliveries: Vec<Delivery>,
    /// Items the trigger filters out: acknowledged at once, never handled.
    pub skipped: Vec<Position>,
}

/// Runs `trigger` through `handler` until `shutdown` is cancelled, then
/// finishes what is in flight (abandoning it after `grace`).
pub async fn run(
    handler: Arc<Handler>,
    mut trigger: Box<dyn Pull>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let ordering = Arc::new(Ordering::default());
    // The same event twice in flight in this process (two messages a key
    // expression calls one, an upload repeated at once) takes turns too:
    // the second then finds the first complete. The store's claims are
    // between processes, and the first one's completion is recorded after
    // its slot is given up.
    let same_event = Arc::new(Ordering::default());
    let mut tasks = JoinSet::new();
    let acks = trigger.acks();
    tracing::info!(pipeline = %handler.name(), source = %trigger.description(), "pipeline running");
    let mut failures = 0u32;
    'feed: loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = read(&mut *trigger, &acks) => batch,
        };
        let deliveries = match batch {
            Ok(deliveries) => {
                failures = 0;
                deliveries
            }
            Err(error) => {
                handler.meters.source_errors.increment(1);
                failures = failures.saturating_add(1);
                // Short enough to resume within seconds of recovery.
                let delay = Duration::from_millis(100 << failures.min(5));
                tracing::warn!(pipeline = %handler.name(), %error, ?delay, "reading the source failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        for delivery in deliveries {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break 'feed,
                slot = handler.admit() => slot,
            };
            let mut turn = ordering.queue(delivery.ordering_key.clone());
            let mut event_turn = same_event.queue(Some(delivery.idempotency_key.clone()));
            let (handler, acks) = (handler.clone(), acks.clone());
            let taken = Instant::now();
            tasks.spawn(async move {
                turn.wait().await;
                event_turn.wait().await;
                handler.meters.stage(Stage::Queued, taken);
                let position = delivery.position;
                let work = Work::new(delivery.idempotency_key, delivery.pending);
                let handled = handler.handle(slot, work).await;
                event_turn.done();
                let ack = handler.meters.timed(Stage::Ack, acks.finished(position));
                if let Err(error) = crate::telemetry::scoped(handled.span.clone(), ack).await {
                    handler.meters.source_errors.increment(1);
                    tracing::warn!(pipeline = %handler.name(), %error, "committing the source failed; the event may be redelivered");
                }
                turn.done();
                drop(handled);
            });
            while tasks.try_join_next().is_some() {}
        }
    }
    tracing::info!(pipeline = %handler.name(), in_flight = tasks.len(), "pipeline stopping");
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(pipeline = %handler.name(), abandoned = tasks.len(), "grace period over; unfinished events will be redelivered");
        tasks.abort_all();
    }
}

/// Waits for the next deliveries. Items the trigger filters out are
/// acknowledged here and never reach the handler.
async fn read(trigger: &mut dyn Pull, acks: &Acks) -> Result<Vec<Delivery>, FeedError> {
    loop {
        let Pulled {
            deliveries,
            skipped,
        } = trigger.next(BATCH).await?;
        for position in deliveries
            .iter()
            .map(|d| d.position)
            .chain(skipped.iter().copied())
        {
            acks.started(position).await;
        }
        // A failed commit must not drop the deliveries already marked
        // started: their watermark would never move again. The next commit
        // covers these offsets too.
        for position in skipped {
            if let Err(error) = acks.finished(position).await {
                tracing::warn!(%error, "committing filtered-out events failed; a later commit covers them");
            }
        }
        if !deliveries.is_empty() {
            return Ok(deliveries);
        }
    }
}

/// Keeps deliveries with equal ordering keys one at a time, in order.
///
/// Each delivery gets a [`Turn`]: it waits for the previous delivery with
/// its key to finish. Deliveries without a key never wait.
#[derive(Default)]
struct Ordering {
    /// The latest turn of each key still running: (turn id, its "done").
    tails: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    key: Option<(String, u64)>,
    ordering: Arc<Ordering>,
}

impl Ordering {
    fn queue(self: &Arc<Self>, key: Option<String>) -> Turn {
        let mut turn = Turn {
            previous: None,
            done: None,
            key: None,
            ordering: self.clone(),
        };
        if let Some(key) = key {
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
            turn.previous = tails.insert(key.clone(), (id, rx)).map(|(_, rx)| rx);
            turn.done = Some(tx);
            turn.key = Some((key, id));
        }
        turn
    }
}

impl Turn {
    async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the previous turn was dropped: its task ended.
            let _ = previous.await;
        }
    }

    fn done(self) {
        if let Some(done) = self.done {
            let _ = done.send(());
        }
        if let Some((key, id)) = self.key {
            let mut tails = self
                .ordering
                .tails
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if tails.get(&key).is_some_and(|(tail, _)| *tail == id) {
                tails.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn equal_keys_take_turns_in_order() {
        let ordering = Arc::new(Ordering::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        for (i, key) in ["a", "a", "b", "a"].into_iter().enumerate() {
            let mut turn = ordering.queue(Some(key.to_owned()));
            let log = log.clone();
            tasks.spawn(async move {
                turn.wait().await;
                // The first "a" is slow: the others with key "a" must wait.
                if i == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                log.lock().unwrap().push(i);
                turn.done();
            });
        }
        while tasks.join_next().await.is_some() {}
        let log = log.lock().unwrap().clone();
        let a_order: Vec<_> = log.iter().filter(|&&i| i != 2).copied().collect();
        assert_eq!(a_order, vec![0, 1, 3]);
        assert_eq!(log[0], 2, "key b does not wait for key a");
        assert!(ordering.tails.lock().unwrap().is_empty());
    }
}
