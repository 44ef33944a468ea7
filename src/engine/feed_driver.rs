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
//!
//! For a pipeline whose function takes batches (`[source] batch`), it
//! gathers up to `max_events` deliveries, waiting at most `max_wait` after
//! the first, takes one slot for them, and has the handler claim them and
//! run the function once ([`Handler::prepare_batch`]); from there each
//! event goes its own way (its outputs, retries, dead letter, completion
//! and acknowledgement), in the same per-key order.

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

/// `[source] batch = { max_events, max_wait }`: how a batch function's
/// events are gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most events in one batch (default 100).
    pub max_events: usize,
    /// Longest wait for a batch to fill, from its first event (default 50ms).
    pub max_wait: Duration,
}

impl BatchConfig {
    pub const MAX_EVENTS: i64 = 10_000;
    pub const MAX_WAIT: Duration = Duration::from_secs(60);

    pub fn read(table: crate::config::reader::Table<'_, '_>) -> Option<Self> {
        let max_events = match table.get("max_events") {
            Some(field) => field.integer_in(1..=Self::MAX_EVENTS).map(|n| n as usize),
            None => Some(100),
        };
        let max_wait = match table.get("max_wait") {
            Some(field) => field.duration().filter(|wait| {
                let ok = *wait <= Self::MAX_WAIT;
                if !ok {
                    field.error(format!("at most {:?}", Self::MAX_WAIT));
                }
                ok
            }),
            None => Some(Duration::from_millis(50)),
        };
        table.finish();
        Some(Self {
            max_events: max_events?,
            max_wait: max_wait?,
        })
    }
}

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
    if let Some(batch) = handler.batch() {
        return run_batches(handler, trigger, shutdown, grace, batch).await;
    }
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
    'feed: loop {
        let Some(deliveries) = next(&mut *trigger, &acks, BATCH, &handler, &shutdown).await else {
            break;
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
    stop(&handler, tasks, grace).await;
}

/// Gives what is in flight `grace` to finish, then abandons it.
async fn stop(handler: &Handler, mut tasks: JoinSet<()>, grace: Duration) {
    tracing::info!(pipeline = %handler.name(), in_flight = tasks.len(), "pipeline stopping");
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(pipeline = %handler.name(), abandoned = tasks.len(), "grace period over; unfinished events will be redelivered");
        tasks.abort_all();
    }
}

/// [`run`] for a function that takes batches.
async fn run_batches(
    handler: Arc<Handler>,
    mut trigger: Box<dyn Pull>,
    shutdown: CancellationToken,
    grace: Duration,
    batch: BatchConfig,
) {
    let ordering = Arc::new(Ordering::default());
    let same_event = Arc::new(Ordering::default());
    let mut tasks = JoinSet::new();
    let acks = trigger.acks();
    tracing::info!(pipeline = %handler.name(), source = %trigger.description(), max_events = batch.max_events, max_wait = ?batch.max_wait, "pipeline running");
    // Reads on a task of its own, so that waiting for a batch to fill can
    // stop at `max_wait` without cutting a read short.
    let (sender, mut received) = tokio::sync::mpsc::channel::<Vec<Delivery>>(1);
    let reading = {
        let (handler, shutdown, acks) = (handler.clone(), shutdown.clone(), acks.clone());
        let want = batch.max_events.clamp(BATCH, 1024);
        tokio::spawn(async move {
            while let Some(deliveries) = next(&mut *trigger, &acks, want, &handler, &shutdown).await
            {
                if sender.send(deliveries).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut gathered: std::collections::VecDeque<Delivery> = Default::default();
    'feed: loop {
        if gathered.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                read = received.recv() => match read {
                    Some(deliveries) => gathered.extend(deliveries),
                    None => break,
                },
            }
        }
        let deadline = tokio::time::Instant::now() + batch.max_wait;
        while gathered.len() < batch.max_events {
            tokio::select! {
                _ = shutdown.cancelled() => break 'feed,
                _ = tokio::time::sleep_until(deadline) => break,
                read = received.recv() => match read {
                    Some(deliveries) => gathered.extend(deliveries),
                    None => break,
                },
            }
        }
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = handler.admit() => slot,
        };
        // A batch holds an event once: the same event again (two messages
        // a key expression calls one) starts the next batch, and finds the
        // first complete.
        let mut keys = std::collections::HashSet::new();
        let take = (gathered.iter().take(batch.max_events))
            .take_while(|d| keys.insert(d.idempotency_key.as_str()))
            .count();
        let events: Vec<Delivery> = gathered.drain(..take).collect();
        tasks.spawn(handle_batch(
            handler.clone(),
            slot,
            events,
            ordering.clone(),
            same_event.clone(),
            acks.clone(),
        ));
        while tasks.try_join_next().is_some() {}
    }
    reading.abort();
    stop(&handler, tasks, grace).await;
}

/// Handles one batch in `slot`: the function runs once on its events,
/// then each is written, retried or dead-lettered on its own, in its turn;
/// their completions are recorded together, then each is acknowledged.
async fn handle_batch(
    handler: Arc<Handler>,
    slot: super::Slot,
    deliveries: Vec<Delivery>,
    ordering: Arc<Ordering>,
    same_event: Arc<Ordering>,
    acks: Arc<Acks>,
) {
    let taken = Instant::now();
    // Only a function with side effects waits for the keys before its
    // batch; a pure one's batch needs no key sets.
    let pure = handler.pure();
    let mut seen_keys = std::collections::HashSet::new();
    let mut events: Vec<_> = (deliveries.into_iter())
        .map(|delivery| {
            let turn = ordering.queue(delivery.ordering_key.clone());
            let event_turn = same_event.queue(Some(delivery.idempotency_key.clone()));
            // The first of its key in the batch waits for the events
            // before the batch; the others wait for it.
            let first_of_key = match &delivery.ordering_key {
                Some(key) if !pure => seen_keys.insert(key.clone()),
                _ => true,
            };
            (delivery, turn, event_turn, first_of_key)
        })
        .collect();
    // The same event in an earlier batch still in flight ends first. A
    // function that acts on the world (key-value state, requests) runs
    // only once the events before its batch with the same keys are done;
    // a pure one's outputs are the same either way, and are written in
    // turn below.
    for (_, turn, event_turn, first_of_key) in &mut events {
        event_turn.wait().await;
        if *first_of_key && !pure {
            turn.wait().await;
        }
    }
    handler.meters.stage(Stage::Queued, taken);
    let items: Vec<(&str, &super::Pending)> = (events.iter())
        .map(|(delivery, ..)| (delivery.idempotency_key.as_str(), &delivery.pending))
        .collect();
    let prepared = handler.prepare_batch(&items).await;
    drop(items);
    // An event with nothing left to do and no earlier event of its key in
    // flight ends at once; the others go their own way, each in its turn,
    // which ends once its outputs are written, so the next with its key
    // (maybe in this batch) goes on.
    let (mut finishes, mut done) = (Vec::new(), Vec::new());
    let mut rest = Vec::new();
    for ((delivery, mut turn, event_turn, _), prepared) in events.into_iter().zip(prepared) {
        let Delivery {
            idempotency_key: key,
            pending,
            position,
            ..
        } = delivery;
        if handler.ends_in_batch(&prepared) && turn.ready() {
            finishes.extend(handler.end_in_batch(key, prepared));
            turn.done();
            done.push((position, event_turn));
            continue;
        }
        let handler = &handler;
        rest.push(async move {
            turn.wait().await;
            let work = Work::new(key, pending);
            let handled = (handler)
                .handle_unrecorded(super::Slot::in_batch(), work, Some(prepared))
                .await;
            turn.done();
            (position, handled, event_turn)
        });
    }
    let mut handled = Vec::new();
    for (position, (outcome, finish), event_turn) in futures_util::future::join_all(rest).await {
        done.push((position, event_turn));
        handled.push(outcome);
        finishes.extend(finish);
    }
    handler.complete_batch(finishes).await;
    drop(slot);
    // The whole batch acknowledged at once; the events' spans end after.
    let (positions, event_turns): (Vec<Position>, Vec<_>) = done.into_iter().unzip();
    event_turns.into_iter().for_each(Turn::done);
    let ack = acks.finished_many(&positions);
    if let Err(error) = handler.meters.timed(Stage::Ack, ack).await {
        handler.meters.source_errors.increment(1);
        tracing::warn!(pipeline = %handler.name(), %error, events = positions.len(), "committing the source failed; the events may be redelivered");
    }
    drop(handled);
}

/// The next deliveries, reading again after a pause while the source
/// fails; `None` once `shutdown` is cancelled.
async fn next(
    trigger: &mut dyn Pull,
    acks: &Acks,
    max: usize,
    handler: &Handler,
    shutdown: &CancellationToken,
) -> Option<Vec<Delivery>> {
    let mut failures = 0u32;
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return None,
            read = read(trigger, acks, max) => read,
        };
        match read {
            Ok(deliveries) => return Some(deliveries),
            Err(error) => {
                handler.meters.source_errors.increment(1);
                failures = failures.saturating_add(1);
                // Short enough to resume within seconds of recovery.
                let delay = Duration::from_millis(100 << failures.min(5));
                tracing::warn!(pipeline = %handler.name(), %error, ?delay, "reading the source failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Waits for the next deliveries. Items the trigger filters out are
/// acknowledged here and never reach the handler.
async fn read(trigger: &mut dyn Pull, acks: &Acks, max: usize) -> Result<Vec<Delivery>, FeedError> {
    loop {
        let Pulled {
            deliveries,
            skipped,
        } = trigger.next(max).await?;
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

    /// Whether [`wait`](Self::wait) would return at once: the previous
    /// delivery with its key is done (or there is none).
    fn ready(&mut self) -> bool {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.previous.as_mut().map(oneshot::Receiver::try_recv) {
            None | Some(Ok(())) | Some(Err(TryRecvError::Closed)) => {
                self.previous = None;
                true
            }
            Some(Err(TryRecvError::Empty)) => false,
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
