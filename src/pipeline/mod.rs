//! The pipeline engine: source → (dedupe) → function → sinks, then ack.
//!
//! A pipeline takes deliveries from its source and works on up to
//! `concurrency` of them at once (deliveries with the same ordering key one
//! after another, in source order, and likewise deliveries of the same
//! event: the same idempotency key). For each: skip it if its idempotency key
//! is already complete; otherwise write every output of the function (run
//! in a fresh instance on the loaded payload) to its sink, in the order the
//! function returned them. A function has no side effects, so the first run
//! overlaps the lookup of the key, and a skipped event's outputs are
//! dropped. A retryable failure anywhere in that attempt is retried under
//! the pipeline's [`retry`] policy; a permanent one, or the
//! last attempt's, sends the event to the dead-letter sink. Only when the
//! outputs (or the dead letter) are written is completion recorded and the
//! source acknowledged, so a crash at any point means redelivery, never loss.

pub mod dead_letter;
mod meters;
pub mod retry;
mod threads;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backon::Retryable as _;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::pipeline::PipelineConfig;
use crate::event::Event;
use crate::health::Health;
use crate::idempotency::{Claim, Completion, IdempotencyStore};
use crate::runtime::{Context, Function, InvokeError, LogLabel, Output};
use crate::sinks::{Backends, Sink, WriteId};
use crate::sources::{Delivery, Loader, Source};
use dead_letter::{DeadLetter, rfc3339};
use meters::{Meters, Stage};

/// Deliveries asked of the source at a time.
const BATCH: usize = 64;

/// A pipeline ready to run.
pub struct Pipeline {
    name: String,
    function: Arc<Function>,
    /// What the function is told besides the event, for a first attempt:
    /// shared by every invocation (a retry's copy has its number).
    context: Arc<Context>,
    sinks: BTreeMap<String, Sink>,
    dead_letter: Sink,
    retry: retry::RetryConfig,
    /// Per-sink policies, replacing `retry` for those sinks' writes.
    sink_retry: BTreeMap<String, retry::RetryConfig>,
    concurrency: usize,
    /// Where the function runs: a thread per invocation in flight.
    threads: threads::Threads,
    idempotency: Arc<dyn IdempotencyStore>,
    max_outputs: usize,
    max_output_bytes: u64,
    /// Whether the backends answer: an event whose retries ran out while
    /// one did not is held until it does, not dead-lettered.
    health: Arc<Health>,
    /// How long a claim on an event lasts: one attempt plus the longest
    /// wait before the next, with a margin. Extended at every attempt.
    lease: Duration,
    meters: Meters,
}

/// What [`Pipeline::claim`] found.
enum Claimed {
    /// The event already ended.
    Done(Completion),
    /// Ours to process, with the outputs already delivered (`None` when
    /// the store could not say).
    Ours { delivered: Option<HashSet<String>> },
}

/// Why one attempt failed, classified where it happened.
#[derive(Debug)]
struct Failure {
    /// How long the failing party asked us to wait (`Retry-After`).
    retry_after: Option<Duration>,
    stage: &'static str,
    message: String,
    retryable: bool,
    outcome: Option<&'static str>,
}

impl Pipeline {
    pub fn new(
        config: &PipelineConfig,
        function: Arc<Function>,
        backends: &Backends,
        idempotency: Arc<dyn IdempotencyStore>,
        health: Arc<Health>,
    ) -> std::io::Result<Self> {
        let sinks: BTreeMap<_, _> = config
            .sinks
            .iter()
            .map(|(name, sink)| (name.clone(), sink.build(&config.name, backends)))
            .collect();
        let context = Context {
            pipeline: config.name.clone(),
            config: config.function.config.clone(),
            sinks: config
                .sinks
                .iter()
                .map(|(name, s)| (name.clone(), s.kind().to_owned(), s.target().to_owned()))
                .collect(),
            attempt: 1,
        };
        let meters = Meters::new(
            &config.name,
            function.name(),
            config.sinks.keys().map(String::as_str),
        );
        Ok(Self {
            name: config.name.clone(),
            function,
            context: Arc::new(context),
            sinks,
            dead_letter: config.dead_letter.build(&config.name, backends),
            retry: config.retry.clone(),
            sink_retry: config.sink_retry.clone(),
            concurrency: config.concurrency,
            // Linux keeps 15 bytes of a thread name.
            threads: threads::Threads::start(&format!("fn:{}", config.name), config.concurrency)?,
            idempotency,
            health,
            max_outputs: config.function.max_outputs,
            max_output_bytes: config.function.max_output_bytes,
            lease: config.function.timeout + config.retry.max_delay + Duration::from_secs(30),
            meters,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs until `shutdown` is cancelled, then finishes what is in flight
    /// (abandoning it after `grace`; it is redelivered on the next start).
    pub async fn run(self, mut source: Source, shutdown: CancellationToken, grace: Duration) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.concurrency));
        // Events whose outputs are written and whose completion and ack
        // are under way: as many again, so a slow store holds the source
        // back instead of piling up tasks.
        let finishing = Arc::new(Semaphore::new(this.concurrency));
        let ordering = Arc::new(Ordering::default());
        // The same event twice in flight in this process (two messages a key
        // expression calls one, an upload repeated at once) takes turns too:
        // the second then finds the first complete. The store's claims are
        // between processes, and the first one's completion is recorded
        // after its slot is given up.
        let same_event = Arc::new(Ordering::default());
        let mut tasks = JoinSet::new();
        let acks = source.acks.clone();
        let loader = source.loader.clone();
        tracing::info!(pipeline = %this.name, source = %source.description, concurrency = this.concurrency, "pipeline running");
        let mut failures = 0u32;
        'feed: loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = source.next(BATCH) => batch,
            };
            let deliveries = match batch {
                Ok(deliveries) => {
                    failures = 0;
                    deliveries
                }
                Err(error) => {
                    this.meters.source_errors.increment(1);
                    failures = failures.saturating_add(1);
                    // Short enough to resume within seconds of recovery.
                    let delay = Duration::from_millis(100 << failures.min(5));
                    tracing::warn!(pipeline = %this.name, %error, ?delay, "reading the source failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            for delivery in deliveries {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break 'feed,
                    permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                };
                let mut turn = ordering.queue(delivery.ordering_key.clone());
                let mut event_turn = same_event.queue(Some(delivery.idempotency_key.clone()));
                let (this, loader, acks) = (this.clone(), loader.clone(), acks.clone());
                let finishing = finishing.clone();
                let taken = Instant::now();
                tasks.spawn(async move {
                    turn.wait().await;
                    event_turn.wait().await;
                    this.meters.stage(Stage::Queued, taken);
                    let (position, key) = (delivery.position, delivery.idempotency_key.clone());
                    let ended = this.process(delivery, &key, &loader).await;
                    // The outputs are written: the event's slot goes to the
                    // next one while completion is recorded and the source
                    // acknowledged, as a Kafka client's window counts only
                    // unacknowledged produces (benchmark #3).
                    let finishing = finishing.acquire_owned().await.expect("semaphore is never closed");
                    drop(permit);
                    if let Some(how) = ended {
                        this.meters.timed(Stage::Complete, this.complete(&key, how)).await;
                    }
                    event_turn.done();
                    if let Err(error) = this.meters.timed(Stage::Ack, acks.finished(position)).await {
                        this.meters.source_errors.increment(1);
                        tracing::warn!(pipeline = %this.name, %error, "committing the source failed; the event may be redelivered");
                    }
                    turn.done();
                    drop(finishing);
                });
                while tasks.try_join_next().is_some() {}
            }
        }
        tracing::info!(pipeline = %this.name, in_flight = tasks.len(), "pipeline stopping");
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(pipeline = %this.name, abandoned = tasks.len(), "grace period over; unfinished events will be redelivered");
            tasks.abort_all();
        }
    }

    /// Works on one delivery (whose idempotency key is `key`) until its
    /// outputs (or its dead letter) are written; returns how it ended, or
    /// `None` when it was skipped as done already.
    async fn process(&self, delivery: Delivery, key: &str, loader: &Loader) -> Option<Completion> {
        self.meters.received.increment(1);
        self.meters.inflight.increment(1.0);
        // Shared, not cloned, with the invocation thread that runs it.
        let event: tokio::sync::OnceCell<Arc<Event>> = tokio::sync::OnceCell::new();
        let (event_ref, delivery_ref, key_ref) = (&event, &delivery, key);
        let load = || {
            event_ref.get_or_try_init(|| async {
                self.meters
                    .timed(Stage::Load, loader.load(&delivery_ref.pending))
                    .await
                    // The delivery's key (maybe from the pipeline's
                    // expression) names the event's outputs too.
                    .map(|mut event| {
                        event.idempotency_key = key_ref.to_owned();
                        Arc::new(event)
                    })
                    .map_err(|e| Failure {
                        retry_after: None,
                        stage: "load",
                        message: e.message,
                        retryable: e.retryable,
                        outcome: None,
                    })
            })
        };

        // A function has no side effects (its one import is logging), so
        // the first attempt's invocation runs while the event is claimed
        // and its delivered outputs are read (one store round trip, off the
        // critical path: benchmark #3). An event that turns out to be done
        // already has its outputs dropped unwritten.
        let first_attempt_at = SystemTime::now();
        let (claimed, first) =
            tokio::join!(self.meters.timed(Stage::Claim, self.claim(key)), async {
                let ev = load().await?;
                self.invoke(ev, 1).await
            });
        let delivered = match claimed {
            Claimed::Done(how) => {
                self.meters.duplicates_skipped.increment(1);
                tracing::info!(pipeline = %self.name, key = %key, how = how.as_str(), "skipping a redelivered event");
                self.meters.inflight.decrement(1.0);
                return None;
            }
            Claimed::Ours { delivered } => delivered,
        };
        let first = first.map(|outputs| (outputs, delivered));
        let first = Mutex::new(Some(first));
        let first_ref = &first;
        let run = |attempt| async move {
            let ev = load().await?;
            let first = first_ref.lock().expect("never poisoned").take();
            let (outputs, delivered) = match first {
                Some(first) => first?,
                None => {
                    if attempt > 1 {
                        // Keep the claim alive across retries.
                        let _ = self
                            .idempotency
                            .claim(&self.name, key_ref, self.lease)
                            .await;
                    }
                    let (outputs, delivered) = self.prepare(ev, attempt).await?;
                    (outputs, Some(delivered))
                }
            };
            let delivered = match delivered {
                Some(delivered) => delivered,
                None => self.delivered(key_ref).await,
            };
            self.meters
                .timed(Stage::Write, self.deliver(ev, &outputs, &delivered))
                .await
        };
        let mut attempts = 0;
        let result = loop {
            let (result, tried) = self.retrying(&self.retry, key, run).await;
            attempts += tried;
            match &result {
                // An outage is not the event's fault: hold it (and, with
                // the concurrency limit, the source) until the backends
                // answer again, then retry afresh.
                Err(failure) if failure.retryable && !self.health.is_healthy() => {
                    tracing::warn!(pipeline = %self.name, key, error = %failure.message, attempts, "retries ran out while a backend is unavailable; holding the event until it recovers");
                    self.health.recovered().await;
                    let _ = self.idempotency.claim(&self.name, key, self.lease).await;
                }
                _ => break result,
            }
        };

        let how = match result {
            Ok(()) => Completion::Done,
            Err(failure) => {
                self.dead_letter(
                    key,
                    event.get().map(|e| &**e),
                    failure,
                    attempts,
                    first_attempt_at,
                )
                .await;
                Completion::DeadLettered
            }
        };
        self.meters.inflight.decrement(1.0);
        Some(how)
    }

    /// Records how the event ended, so a redelivery is skipped.
    async fn complete(&self, key: &str, how: Completion) {
        if let Err(error) = self.idempotency.complete(&self.name, key, how).await {
            tracing::warn!(pipeline = %self.name, %error, "recording completion failed; a redelivery would process the event again");
        }
        self.meters.completed(how).increment(1);
    }

    /// Claims the event, reading which of its outputs were delivered once
    /// it is ours. While another process holds it, waits: that process
    /// finishes it, or crashes and its lease runs out.
    async fn claim(&self, key: &str) -> Claimed {
        let started = Instant::now();
        loop {
            match (self.idempotency)
                .claim_with_delivered(&self.name, key, self.lease)
                .await
            {
                Ok((Claim::Completed(how), _)) => return Claimed::Done(how),
                Ok((Claim::Acquired, delivered)) => {
                    return Claimed::Ours {
                        delivered: Some(delivered),
                    };
                }
                Ok((Claim::Busy, _)) if started.elapsed() < self.lease * 2 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                // The holder may be writing outputs still: read them when
                // writing ours, as late as can be.
                Ok((Claim::Busy, _)) => {
                    tracing::warn!(pipeline = %self.name, key, "another process has held this event for twice its lease; processing it");
                    return Claimed::Ours { delivered: None };
                }
                // Without the store we cannot tell; processing again is the
                // at-least-once choice, and outputs are idempotent.
                Err(error) => {
                    tracing::warn!(pipeline = %self.name, %error, "idempotency lookup failed; processing anyway");
                    return Claimed::Ours { delivered: None };
                }
            }
        }
    }

    /// Runs `attempt` (given its number, from 1) under `policy`; returns
    /// the last result and how many attempts were made.
    async fn retrying<F, Fut, T>(
        &self,
        policy: &retry::RetryConfig,
        key: &str,
        mut attempt: F,
    ) -> (Result<T, Failure>, u32)
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = (|| attempt(attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1))
        .retry(policy.delays())
        .sleep(tokio::time::sleep)
        .when(|failure: &Failure| failure.retryable && policy.within_age(started.elapsed()))
        .adjust(|failure: &Failure, delay| policy.adjust(delay, failure.retry_after))
        .notify(|failure: &Failure, delay: Duration| {
            self.meters.retries.increment(1);
            tracing::warn!(pipeline = %self.name, key, stage = failure.stage, error = %failure.message, ?delay, "attempt failed; retrying");
        })
        .await;
        (result, attempts.into_inner())
    }

    /// Sends a dead-lettered event through the function and sinks again
    /// (`runnel dlq replay`), under the retry policy; on success records it
    /// as done. Returns the attempts it took, or why it failed again.
    pub async fn replay(&self, event: &Event) -> Result<u32, String> {
        let event = &Arc::new(event.clone());
        let (result, attempts) = self
            .retrying(&self.retry, &event.idempotency_key, |attempt| {
                self.attempt(event, attempt)
            })
            .await;
        result.map_err(|f| format!("{} (after {attempts} attempts)", f.message))?;
        self.idempotency
            .complete(&self.name, &event.idempotency_key, Completion::Done)
            .await
            .map_err(|e| e.to_string())?;
        Ok(attempts)
    }

    /// One attempt: invoke, then write each output that an earlier attempt
    /// (or process) did not already deliver, recording each as its sink
    /// acknowledges it.
    async fn attempt(&self, event: &Arc<Event>, attempt: u32) -> Result<(), Failure> {
        let (outputs, delivered) = self.prepare(event, attempt).await?;
        self.deliver(event, &outputs, &delivered).await
    }

    /// The function's outputs, and which outputs of this event were
    /// delivered already: looked up while the function runs.
    async fn prepare(
        &self,
        event: &Arc<Event>,
        attempt: u32,
    ) -> Result<(Vec<Output>, HashSet<String>), Failure> {
        let (outputs, delivered) = tokio::join!(
            self.invoke(event, attempt),
            self.delivered(&event.idempotency_key)
        );
        Ok((outputs?, delivered))
    }

    /// Which outputs of the event with `key` were delivered already.
    async fn delivered(&self, key: &str) -> HashSet<String> {
        match self.idempotency.delivered(&self.name, key).await {
            Ok(delivered) => delivered,
            Err(error) => {
                tracing::warn!(pipeline = %self.name, %error, "reading delivered outputs failed; writing them all");
                Default::default()
            }
        }
    }

    /// Writes each of `outputs` not in `delivered`, in order.
    async fn deliver(
        &self,
        event: &Event,
        outputs: &[Output],
        delivered: &HashSet<String>,
    ) -> Result<(), Failure> {
        let key = &event.idempotency_key;
        for (index, output) in outputs.iter().enumerate() {
            let sink = self
                .sinks
                .get(&output.sink)
                .expect("sink names are checked after invoking");
            let meters = self.meters.sink(&output.sink);
            if !sink.enabled() {
                meters.dropped.increment(1);
                continue;
            }
            let id = format!("{key}#{}/{index}", output.sink);
            if delivered.contains(&id) {
                meters.skipped.increment(1);
                continue;
            }
            let write_id = WriteId {
                id: &id,
                event_id: &event.id,
                event_type: &event.event_type,
            };
            let write = |_| async {
                sink.write(output, &write_id).await.map_err(|e| Failure {
                    retry_after: e.retry_after,
                    stage: "write",
                    message: format!("sink {}: {}", output.sink, e.message),
                    retryable: e.retryable,
                    outcome: None,
                })
            };
            match self.sink_retry.get(&output.sink) {
                None => write(1).await?,
                // The sink's own policy: retried here, and when it gives
                // up the event is done trying (not run again).
                Some(policy) => {
                    let (result, tries) = self.retrying(policy, &id, write).await;
                    result.map_err(|mut failure| {
                        if failure.retryable {
                            failure.message = format!(
                                "{} (gave up after {tries} writes under sinks.{}.retry)",
                                failure.message, output.sink
                            );
                            failure.retryable = false;
                        }
                        failure
                    })?;
                }
            }
            meters.written.increment(1);
            // The last output needs no record: `complete`, next, covers it,
            // and a crash between the sink's ack and the next record means
            // one more write either way. (One store round trip less per
            // event: benchmark #3.)
            if index + 1 == outputs.len() {
                continue;
            }
            if let Err(error) = self.idempotency.record_delivery(&self.name, key, &id).await {
                tracing::warn!(pipeline = %self.name, %error, output = %id, "recording a delivered output failed; a redelivery would write it again");
            }
        }
        Ok(())
    }

    async fn invoke(&self, event: &Arc<Event>, attempt: u32) -> Result<Vec<Output>, Failure> {
        let function = self.function.clone();
        let context = if attempt == self.context.attempt {
            Arc::clone(&self.context)
        } else {
            Arc::new(Context {
                attempt,
                ..Context::clone(&self.context)
            })
        };
        let label = LogLabel {
            pipeline: self.name.clone(),
            function: function.name().to_owned(),
            event_id: event.id.clone(),
        };
        let ev = Arc::clone(event);
        let (result, stats) = self
            .meters
            .timed(
                Stage::Invoke,
                self.threads
                    .run(move || function.invoke(&context, &ev, label)),
            )
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        let meters = &self.meters;
        meters.invocations(outcome).increment(1);
        meters
            .invocation_duration
            .record(stats.duration.as_secs_f64());
        meters
            .instantiation_duration
            .record(stats.instantiation.as_secs_f64());
        let gib = self.function.memory_limit() as f64 / (1u64 << 30) as f64;
        meters
            .billed_gb_seconds
            .increment(gib * stats.duration.as_secs_f64());
        tracing::info!(
            target: "runnel::invocation",
            id = %event.id,
            pipeline = %self.name,
            function = %self.function.name(),
            duration_us = stats.duration.as_micros() as u64,
            instantiation_us = stats.instantiation.as_micros() as u64,
            peak_memory = stats.peak_memory,
            attempt,
            outcome,
            error = result.as_ref().err().map(|e| e.to_string()),
            "invocation"
        );
        let outputs = result.map_err(|e: InvokeError| Failure {
            retry_after: None,
            stage: "invoke",
            retryable: e.retryable(),
            message: e.to_string(),
            outcome: Some(e.outcome()),
        })?;
        let bytes: u64 = outputs.iter().map(|o| o.data.len() as u64).sum();
        if outputs.len() > self.max_outputs || bytes > self.max_output_bytes {
            return Err(Failure {
                retry_after: None,
                stage: "invoke",
                message: format!(
                    "function returned {} outputs of {bytes} bytes in all, over its limits (function.max_outputs = {}, function.max_output_bytes = {})",
                    outputs.len(),
                    self.max_outputs,
                    self.max_output_bytes
                ),
                retryable: false,
                outcome: Some("ok"),
            });
        }
        if let Some(bad) = outputs.iter().find(|o| !self.sinks.contains_key(&o.sink)) {
            let declared: Vec<_> = self.sinks.keys().map(String::as_str).collect();
            return Err(Failure {
                retry_after: None,
                stage: "invoke",
                message: format!(
                    "function output names undeclared sink {:?} (declared: {})",
                    bad.sink,
                    declared.join(", ")
                ),
                retryable: false,
                outcome: Some("ok"),
            });
        }
        Ok(outputs)
    }

    /// Writes the dead letter, retrying until it is written or the process
    /// stops: acknowledging an event that is neither done nor dead-lettered
    /// would lose it.
    async fn dead_letter(
        &self,
        key: &str,
        event: Option<&Event>,
        failure: Failure,
        attempts: u32,
        first_attempt_at: SystemTime,
    ) {
        tracing::warn!(pipeline = %self.name, key, stage = failure.stage, error = %failure.message, attempts, "sending event to the dead-letter sink");
        let record = DeadLetter {
            pipeline: &self.name,
            function: self.function.name(),
            key,
            event,
            error: failure.message,
            stage: failure.stage,
            outcome: failure.outcome,
            retryable: failure.retryable,
            attempts,
            first_attempt_at: rfc3339(first_attempt_at),
            failed_at: rfc3339(SystemTime::now()),
        };
        let output = Output {
            sink: "dead_letter".to_owned(),
            key: Some(format!("{}/{}.json", self.name, sanitize(key))),
            content_type: Some("application/json".to_owned()),
            attributes: vec![("runnel-pipeline".to_owned(), self.name.clone())],
            data: serde_json::to_vec_pretty(&record)
                .expect("dead letter serializes")
                .into(),
        };
        let id = format!("{key}#dead-letter");
        let write_id = WriteId {
            id: &id,
            event_id: key,
            event_type: "runnel.dead-letter",
        };
        let mut delay = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            match self.dead_letter.write(&output, &write_id).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(pipeline = %self.name, key, %error, waited = ?started.elapsed(), "writing the dead letter failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.meters.dead_letters.increment(1);
    }
}

/// Dead letters in storage are named after the idempotency key; keep it a
/// valid object key.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
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
