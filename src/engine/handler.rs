//! The one event handler: claim → invoke → deliver → complete or
//! dead-letter → outcome. Every trigger and `runnel dlq replay` call it.
//!
//! A handler works on up to `concurrency` events at once ([`Slot`]s). For
//! each: skip it if its idempotency key is already complete; otherwise write
//! every output of the function (run in a fresh instance on the loaded
//! payload) to its sink, in the order the function returned them. A
//! function has no side effects, so the first run overlaps the lookup of
//! the key, and a skipped event's outputs are dropped. A retryable failure
//! anywhere in that attempt is retried under the pipeline's
//! [`retry`](crate::retry) policy; a permanent one, or the last attempt's,
//! sends the event to the dead-letter sink (or, where the trigger answers
//! the failure itself, is returned to it). Only when the outputs (or the
//! dead letter) are written is completion recorded, and only then may the
//! trigger acknowledge, so a crash at any point means redelivery, never loss.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backon::Retryable as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::dead_letter::{DeadLetter, rfc3339};
use super::feed_driver::BatchConfig;
use super::meters::{Meters, Stage};
use super::{Pending, Threads, threads};
use crate::config::pipeline::PipelineConfig;
use crate::event::Event;
use crate::health::Health;
use crate::idempotency::{Claim, Completion, IdempotencyStore};
use crate::retry::RetryConfig;
use crate::runtime::http::{Reply, Stream};
use crate::runtime::{Context, Invocation, InvocationStats, Invoke, InvokeError, LogLabel, Output};
use crate::sinks::{Backends, Sink, WriteId};
use crate::telemetry;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// A pipeline's handler, shared by its trigger's tasks.
pub struct Handler {
    name: String,
    function: Arc<dyn Invoke>,
    /// What the function is told besides the event, for a first attempt:
    /// shared by every invocation (a retry's copy has its number).
    context: Arc<Context>,
    sinks: BTreeMap<String, Sink>,
    dead_letter: Sink,
    retry: RetryConfig,
    /// Per-sink policies, replacing `retry` for those sinks' writes.
    sink_retry: BTreeMap<String, RetryConfig>,
    /// Events being worked on: `concurrency` of them.
    slots: Arc<Semaphore>,
    /// Events whose outputs are written and whose completion and
    /// acknowledgement are under way: as many again, so a slow store holds
    /// the trigger back instead of piling up tasks.
    finishing: Arc<Semaphore>,
    /// Where the function runs: a thread per invocation in flight.
    /// The process's invocation threads, shared by every pipeline.
    threads: Arc<threads::Threads>,
    idempotency: Arc<dyn IdempotencyStore>,
    max_outputs: usize,
    max_output_bytes: u64,
    /// Whether the backends answer: an event whose retries ran out while
    /// one did not is held until it does, not dead-lettered.
    health: Arc<Health>,
    /// How long a claim on an event lasts: one attempt plus the longest
    /// wait before the next, with a margin. Extended at every attempt.
    lease: Duration,
    pub(super) meters: Meters,
    /// Keys being handled in this process, for a trigger that reports it
    /// (an async HTTP pipeline's status); off unless asked for, since it
    /// is a lock per event.
    running: Option<Mutex<HashSet<String>>>,
    /// Whether a summary is kept with each completion ([`Handler::reporting`]).
    summaries: bool,
    /// `[source] batch`: the function takes its events in batches.
    batch: Option<BatchConfig>,
}

/// Takes one off a gauge when dropped.
struct Decrement<'g>(&'g metrics::Gauge);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Leave to work on one event (or one batch); from [`Handler::admit`] or
/// [`Handler::try_admit`].
pub struct Slot(#[allow(dead_code, reason = "held, not read")] Option<OwnedSemaphorePermit>);

impl Slot {
    /// An event of a batch, which holds the batch's slot.
    pub(super) fn in_batch() -> Self {
        Self(None)
    }
}

/// How an event ended, for the store: recorded by
/// [`Handler::complete_batch`] with the rest of its batch.
pub struct Finish {
    key: String,
    how: Completion,
    /// Kept with the completion (a request's reply, a summary).
    kept: Option<Vec<u8>>,
}

/// An event of a batch, claimed, loaded and run with the others
/// ([`Handler::prepare_batch`]): where its handling starts from.
pub struct Prepared {
    claimed: Claimed,
    event: Option<Arc<Event>>,
    /// The batch's result for it; `None` when it runs alone instead (the
    /// batch failed as a whole, or the event was not in it).
    first: Option<Result<Invocation, Failure>>,
}

/// One event for the handler.
pub struct Work {
    /// The event's idempotency key (maybe from the pipeline's expression);
    /// it names the event's outputs too.
    pub key: String,
    pub pending: Pending,
    pub on_failure: OnFailure,
    pub track: Track,
    /// Whether a retryable failure is tried again under the pipeline's
    /// policy (not while a client waits for the reply).
    pub retry: bool,
    /// Where an HTTP function's first attempt streams its response, for a
    /// trigger that answers while the body is written and keeps no reply.
    pub stream: Option<Stream>,
}

impl Work {
    /// An event from a trigger that dead-letters what keeps failing.
    pub fn new(key: String, pending: Pending) -> Self {
        Self {
            key,
            pending,
            on_failure: OnFailure::DeadLetter,
            track: Track::Claim,
            retry: true,
            stream: None,
        }
    }
}

/// What the idempotency store knows of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Track {
    /// Claimed before it runs and its completion recorded, so a
    /// redelivery is skipped (feeds).
    Claim,
    /// Run although it ended before, its completion recorded: a dead
    /// letter replayed.
    Again,
    /// Neither claimed nor recorded: a request without an idempotency
    /// key, which nothing redelivers.
    Untracked,
    /// A request with an idempotency key: claimed without waiting (one
    /// in flight elsewhere is [`Outcome::Busy`]), and its reply kept with
    /// its completion, under the request's fingerprint.
    Request { fingerprint: String },
}

/// What becomes of an event that fails for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// It goes to the dead-letter sink and ends there (feeds).
    DeadLetter,
    /// It is returned to the caller, who answers for it (replay, a
    /// request waiting for its reply); nothing is recorded.
    Return,
}

/// How an event ended.
#[derive(Debug)]
pub enum Outcome {
    /// It had ended before (a redelivery): nothing ran.
    Skipped(Completion),
    /// Its outputs are written; an HTTP function's reply with them.
    Done {
        attempts: u32,
        reply: Option<Reply>,
        outputs: Vec<Written>,
    },
    /// Its dead letter is written.
    DeadLettered { attempts: u32, error: String },
    /// It failed for good under [`OnFailure::Return`].
    Failed { attempts: u32, failure: Failure },
    /// Another process holds it ([`Track::Request`] only).
    Busy,
}

/// An output as an event's summary names it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Written {
    pub sink: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub bytes: u64,
}

/// How the event ended, on its span.
fn trace_outcome(span: &telemetry::Span, outcome: &Outcome) {
    let (name, error) = match outcome {
        Outcome::Skipped(_) => ("skipped", None),
        Outcome::Done {
            reply, attempts, ..
        } => {
            if let Some(reply) = reply {
                span.attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(reply.status),
                ));
            }
            span.attribute(KeyValue::new("runnel.attempts", i64::from(*attempts)));
            ("done", None)
        }
        Outcome::DeadLettered { error, .. } => ("dead-lettered", Some(error.clone())),
        Outcome::Failed { failure, .. } => ("failed", Some(failure.message.clone())),
        Outcome::Busy => ("busy", None),
    };
    span.attribute(KeyValue::new("runnel.outcome", name));
    if let Some(error) = error {
        span.fail(error);
    }
}

/// What is kept with an event's completion for a trigger that reports on
/// its events ([`Handler::reporting`]).
fn summary(outcome: &Outcome) -> Option<Vec<u8>> {
    let summary = match outcome {
        Outcome::Done {
            attempts, outputs, ..
        } => serde_json::json!({ "attempts": attempts, "outputs": outputs }),
        Outcome::DeadLettered { attempts, error } => {
            serde_json::json!({ "attempts": attempts, "error": error })
        }
        _ => return None,
    };
    Some(summary.to_string().into_bytes())
}

/// An outcome, and the event's place in the finishing window: drop it once
/// the trigger has acknowledged the event.
pub struct Handled {
    pub outcome: Outcome,
    /// The event's span: exported once the last reference is dropped, so
    /// a trigger that acknowledges afterwards records that under it too.
    pub span: Arc<telemetry::Span>,
    _finishing: OwnedSemaphorePermit,
}

/// What [`Handler::claim`] found.
enum Claimed {
    /// The event already ended.
    Done(Completion),
    /// Ours to process, with the outputs already delivered (`None` when
    /// the store could not say).
    Ours { delivered: Option<HashSet<String>> },
    /// Held elsewhere, and not to be waited for.
    Busy,
}

/// Why one attempt failed, classified where it happened.
#[derive(Debug)]
pub struct Failure {
    /// How long the failing party asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// `load`, `invoke` or `write`.
    pub stage: &'static str,
    pub message: String,
    pub retryable: bool,
    /// The invocation's outcome label, when it got that far.
    pub outcome: Option<&'static str>,
}

impl Handler {
    pub fn new(
        config: &PipelineConfig,
        function: Arc<dyn Invoke>,
        backends: &Backends,
        idempotency: Arc<dyn IdempotencyStore>,
        health: Arc<Health>,
        threads: Arc<Threads>,
    ) -> Self {
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
        Self {
            name: config.name.clone(),
            function,
            context: Arc::new(context),
            sinks,
            dead_letter: config.dead_letter.build(&config.name, backends),
            retry: config.retry.clone(),
            sink_retry: config.sink_retry.clone(),
            slots: Arc::new(Semaphore::new(config.concurrency)),
            // A batch's events finish together.
            finishing: Arc::new(Semaphore::new(
                config.concurrency * config.batch.map_or(1, |b| b.max_events),
            )),
            threads,
            idempotency,
            health,
            max_outputs: config.function.max_outputs,
            max_output_bytes: config.function.max_output_bytes,
            lease: config.function.timeout + config.retry.max_delay + Duration::from_secs(30),
            meters,
            running: None,
            summaries: false,
            batch: config.batch,
        }
    }

    /// `[source] batch`, when the pipeline's function takes batches.
    pub fn batch(&self) -> Option<BatchConfig> {
        self.batch
    }

    /// Whether the function acts on nothing but its outputs.
    pub fn pure(&self) -> bool {
        self.function.pure()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The function's name, as metrics and logs give it.
    pub fn function_name(&self) -> &str {
        self.function.name()
    }

    /// For a trigger that reports on its events: keeps track of the keys
    /// being handled ([`is_running`](Self::is_running)), and keeps a
    /// summary with each completion ([`kept_reply`](Self::kept_reply)):
    /// the outputs written, or the error that dead-lettered the event.
    pub fn reporting(mut self) -> Self {
        self.running = Some(Mutex::default());
        self.summaries = true;
        self
    }

    /// Whether this process is handling the event `key` now.
    pub fn is_running(&self, key: &str) -> bool {
        let Some(running) = &self.running else {
            return false;
        };
        running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// Waits for a free slot: a pulled trigger reads no further meanwhile.
    pub async fn admit(&self) -> Slot {
        let permit = self.slots.clone().acquire_owned().await;
        Slot(Some(permit.expect("the semaphore is never closed")))
    }

    /// A free slot now, or `None` when all are busy: a pushed trigger then
    /// refuses the request at once instead of queueing it without bound.
    pub fn try_admit(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Slot(Some(p)))
    }

    /// Handles one event in `slot` until it ends. The slot is given up as
    /// soon as the outputs (or the dead letter) are written, while
    /// completion is recorded, as a Kafka client's window counts only
    /// unacknowledged produces (benchmark #3).
    pub async fn handle(&self, slot: Slot, work: Work) -> Handled {
        self.handle_prepared(slot, work, None).await
    }

    /// Handles one event, from where [`prepare_batch`](Self::prepare_batch)
    /// left it when `prepared` is given.
    pub async fn handle_prepared(
        &self,
        slot: Slot,
        work: Work,
        prepared: Option<Prepared>,
    ) -> Handled {
        let (handled, finish) = self.handle_unrecorded(slot, work, prepared).await;
        if let Some(Finish { key, how, kept }) = finish {
            let complete = self
                .meters
                .timed(Stage::Complete, self.complete(&key, how, kept));
            telemetry::scoped(handled.span.clone(), complete).await;
        }
        handled
    }

    /// [`handle_prepared`](Self::handle_prepared), leaving the record of
    /// how the event ended to the caller, who records a batch's together
    /// ([`complete_batch`](Self::complete_batch)) before acknowledging.
    pub async fn handle_unrecorded(
        &self,
        slot: Slot,
        mut work: Work,
        prepared: Option<Prepared>,
    ) -> (Handled, Option<Finish>) {
        fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
            set.lock().unwrap_or_else(|e| e.into_inner())
        }
        if let Some(running) = &self.running {
            lock(running).insert(work.key.clone());
        }
        let stream = work.stream.take();
        let attributes = match telemetry::exporting() {
            true => vec![
                KeyValue::new("runnel.pipeline", self.name.clone()),
                KeyValue::new("faas.name", self.function.name().to_owned()),
                KeyValue::new("runnel.idempotency_key", work.key.clone()),
            ],
            false => Vec::new(),
        };
        let span = telemetry::Span::start(self.name.clone(), SpanKind::Consumer, attributes);
        // Boxed: the work on an event is a large future, and a task's
        // future is copied whole when it is spawned and when it ends
        // (tokio's `Core::set_stage`: 5 % of benchmark #3's CPU unboxed).
        let process = Box::pin(self.process(&work, stream, prepared));
        let outcome = telemetry::scoped(span.clone(), process).await;
        trace_outcome(&span, &outcome);
        if let Some(running) = &self.running {
            lock(running).remove(&work.key);
        }
        let finishing = self.finishing.clone().acquire_owned().await;
        drop(slot);
        let how = match &outcome {
            _ if work.track == Track::Untracked => None,
            Outcome::Done { .. } => Some(Completion::Done),
            Outcome::DeadLettered { .. } => Some(Completion::DeadLettered),
            Outcome::Skipped(_) | Outcome::Failed { .. } | Outcome::Busy => None,
        };
        let kept = match (&work.track, &outcome) {
            (
                Track::Request { fingerprint },
                Outcome::Done {
                    reply: Some(reply), ..
                },
            ) => Some(reply.encode(fingerprint)),
            (Track::Request { .. }, _) => None,
            _ if self.summaries => summary(&outcome),
            _ => None,
        };
        let handled = Handled {
            outcome,
            span,
            _finishing: finishing.expect("the semaphore is never closed"),
        };
        let finish = how.map(|how| Finish {
            key: work.key,
            how,
            kept,
        });
        (handled, finish)
    }

    /// Whether a batch's event has nothing left to do, and may end by
    /// [`end_in_batch`](Self::end_in_batch), with no future, span or retry
    /// policy of its own (benchmark #11): one done before (skipped), or one
    /// the function ran on that is ours and returned no output. Never while
    /// spans are exported or events reported on, which need each event's
    /// span and record: those take [`handle_unrecorded`](Self::handle_unrecorded).
    pub fn ends_in_batch(&self, prepared: &Prepared) -> bool {
        if telemetry::exporting() || self.running.is_some() {
            return false;
        }
        match (&prepared.claimed, &prepared.first) {
            (Claimed::Done(_), _) => true,
            (Claimed::Ours { .. }, Some(Ok(invocation))) => {
                invocation.outputs.is_empty() && invocation.reply.is_none()
            }
            _ => false,
        }
    }

    /// Ends an event [`ends_in_batch`](Self::ends_in_batch) accepted: how
    /// it ended, for [`complete_batch`](Self::complete_batch), unless it
    /// had ended before.
    pub fn end_in_batch(&self, key: String, prepared: Prepared) -> Option<Finish> {
        self.meters.received.increment(1);
        if let Claimed::Done(how) = prepared.claimed {
            self.meters.duplicates_skipped.increment(1);
            tracing::info!(pipeline = %self.name, key = %key, how = how.as_str(), "skipping a redelivered event");
            return None;
        }
        // Nothing is kept: summaries come with `running`.
        Some(Finish {
            key,
            how: Completion::Done,
            kept: None,
        })
    }

    /// Records how a batch's events ended, in one store transaction where
    /// the store can.
    pub async fn complete_batch(&self, finishes: Vec<Finish>) {
        let (plain, kept): (Vec<_>, Vec<_>) = finishes.into_iter().partition(|f| f.kept.is_none());
        for Finish { key, how, kept } in kept {
            self.complete(&key, how, kept).await;
        }
        if plain.is_empty() {
            return;
        }
        let items: Vec<(&str, Completion)> =
            (plain.iter()).map(|f| (f.key.as_str(), f.how)).collect();
        let recorded = self.meters.timed(
            Stage::Complete,
            self.idempotency.complete_many(&self.name, &items),
        );
        if let Err(error) = recorded.await {
            tracing::warn!(pipeline = %self.name, %error, events = items.len(), "recording a batch's completions failed; a redelivery would process its events again");
        }
        for finish in &plain {
            self.meters.completed(finish.how).increment(1);
        }
    }

    /// Works on one event until its outputs (or its dead letter) are
    /// written, or it is skipped as done already.
    async fn process(
        &self,
        work: &Work,
        stream: Option<Stream>,
        prepared: Option<Prepared>,
    ) -> Outcome {
        self.meters.received.increment(1);
        self.meters.inflight.increment(1.0);
        // Decremented however this ends: a caller that stops waiting (an
        // HTTP client gone) drops this future part way.
        let _inflight = Decrement(&self.meters.inflight);
        let key = work.key.as_str();
        // Shared, not cloned, with the invocation thread that runs it.
        let event =
            tokio::sync::OnceCell::new_with(prepared.as_ref().and_then(|p| p.event.clone()));
        let event_ref = &event;
        let load = || event_ref.get_or_try_init(|| self.load(key, &work.pending));

        // A function without capabilities has no side effects (it imports
        // logging and variables), so the first attempt runs while the event is claimed
        // and its delivered outputs are read (one store round trip, off the
        // critical path: benchmark #3). An event that turns out to be done
        // already has its outputs dropped unwritten. A replayed event ended
        // before: it is not claimed, and its delivered outputs are read
        // when writing.
        let first_attempt_at = SystemTime::now();
        let claim = async {
            match &work.track {
                Track::Claim => self.meters.timed(Stage::Claim, self.claim(key)).await,
                Track::Again => Claimed::Ours { delivered: None },
                Track::Untracked => Claimed::Ours {
                    delivered: Some(HashSet::new()),
                },
                Track::Request { .. } => self.claim_once(key).await,
            }
        };
        let first_attempt = async {
            let ev = load().await?;
            self.invoke(ev, 1, stream).await
        };
        // A request's function answers a client, and a function granted a
        // capability (key-value state) acts on the world: it is claimed
        // first and runs only when the claim is its own.
        let claim_first = match &work.track {
            Track::Request { .. } => true,
            Track::Claim => !self.function.pure(),
            Track::Again | Track::Untracked => false,
        };
        let (claimed, first) = if let Some(prepared) = prepared {
            (prepared.claimed, prepared.first)
        } else if claim_first {
            match claim.await {
                claimed @ Claimed::Ours { .. } => (claimed, Some(first_attempt.await)),
                claimed => (claimed, None),
            }
        } else {
            let (claimed, first) = tokio::join!(claim, first_attempt);
            (claimed, Some(first))
        };
        let delivered = match claimed {
            Claimed::Done(how) => {
                self.meters.duplicates_skipped.increment(1);
                tracing::info!(pipeline = %self.name, key = %key, how = how.as_str(), "skipping a redelivered event");
                return Outcome::Skipped(how);
            }
            Claimed::Busy => return Outcome::Busy,
            Claimed::Ours { delivered } => delivered,
        };
        let first = first.map(|first| first.map(|invocation| (invocation, delivered)));
        let first = Mutex::new(first);
        let first_ref = &first;
        let run = |attempt| async move {
            let ev = load().await?;
            let first = first_ref.lock().expect("never poisoned").take();
            let (invocation, delivered) = match first {
                Some(first) => first?,
                None => {
                    if attempt > 1 && work.track == Track::Claim {
                        // Keep the claim alive across retries.
                        let _ = self.idempotency.claim(&self.name, key, self.lease).await;
                    }
                    let (invocation, delivered) = tokio::join!(
                        self.invoke(ev, attempt, None),
                        self.delivered(&ev.idempotency_key, &work.track)
                    );
                    (invocation?, Some(delivered))
                }
            };
            let delivered = match delivered {
                Some(delivered) => delivered,
                None => self.delivered(key, &work.track).await,
            };
            let outputs = &invocation.outputs;
            self.meters
                .timed(Stage::Write, self.deliver(ev, outputs, &delivered))
                .await?;
            let written = (outputs.iter())
                .map(|output| Written {
                    sink: output.sink.clone(),
                    key: output.key.clone(),
                    bytes: output.data.len() as u64,
                })
                .collect();
            Ok((invocation.reply, written))
        };
        let mut attempts = 0;
        let result = loop {
            let policy = match work.retry {
                true => &self.retry,
                false => &RetryConfig::ONCE,
            };
            let (result, tried) = self.retrying(policy, key, run).await;
            attempts += tried;
            match &result {
                // An outage is not the event's fault: hold it (and, with
                // the concurrency limit, the trigger) until the backends
                // answer again, then retry afresh.
                Err(failure) if failure.retryable && !self.health.is_healthy() => {
                    tracing::warn!(pipeline = %self.name, key, error = %failure.message, attempts, "retries ran out while a backend is unavailable; holding the event until it recovers");
                    self.health.recovered().await;
                    let _ = self.idempotency.claim(&self.name, key, self.lease).await;
                }
                _ => break result,
            }
        };

        match (result, work.on_failure) {
            (Ok((reply, outputs)), _) => Outcome::Done {
                attempts,
                reply,
                outputs,
            },
            (Err(failure), OnFailure::Return) => Outcome::Failed { attempts, failure },
            (Err(failure), OnFailure::DeadLetter) => {
                let error = format!("{} failed: {}", failure.stage, failure.message);
                self.dead_letter(
                    key,
                    event.get().map(|e| &**e),
                    failure,
                    attempts,
                    first_attempt_at,
                )
                .await;
                Outcome::DeadLettered { attempts, error }
            }
        }
    }

    /// The event `pending` makes, with its idempotency key and trace.
    async fn load(&self, key: &str, pending: &Pending) -> Result<Arc<Event>, Failure> {
        self.meters
            .timed(Stage::Load, pending.load())
            .await
            .map(|mut event| {
                event.idempotency_key = key.to_owned();
                telemetry::adopt(&mut event);
                Arc::new(event)
            })
            .map_err(|e| Failure {
                retry_after: None,
                stage: "load",
                message: e.message,
                retryable: e.retryable,
                outcome: None,
            })
    }

    /// Claims and loads a batch's events (`(idempotency key, pending)`,
    /// in feed order) and runs the function once on those that are ours:
    /// where each event's [`handle_prepared`](Self::handle_prepared)
    /// starts. An event done already is skipped there, one whose payload
    /// did not load fails there, and when the batch fails as a whole
    /// (a trap, a timeout) each of its events runs again alone.
    pub async fn prepare_batch(&self, items: &[(&str, &Pending)]) -> Vec<Prepared> {
        let claims = async {
            let keys: Vec<&str> = items.iter().map(|(key, _)| *key).collect();
            let started = Instant::now();
            match (self.idempotency)
                .claim_many(&self.name, &keys, self.lease)
                .await
            {
                Ok(claims) => {
                    self.meters.stage(Stage::Claim, started);
                    let claimed = (claims.into_iter().zip(keys)).map(|(claim, key)| async move {
                        match claim {
                            (Claim::Completed(how), _) => Claimed::Done(how),
                            (Claim::Acquired, delivered) => Claimed::Ours {
                                delivered: Some(delivered),
                            },
                            // Held elsewhere: wait for it as one event would.
                            (Claim::Busy, _) => self.claim(key).await,
                        }
                    });
                    futures_util::future::join_all(claimed).await
                }
                Err(error) => {
                    tracing::warn!(pipeline = %self.name, %error, "claiming a batch failed; claiming its events one by one");
                    futures_util::future::join_all(keys.into_iter().map(|key| self.claim(key)))
                        .await
                }
            }
        };
        let loads = futures_util::future::join_all(
            items.iter().map(|(key, pending)| self.load(key, pending)),
        );
        let (claims, loads) = tokio::join!(claims, loads);
        let events: Vec<Arc<Event>> = (claims.iter().zip(&loads))
            .filter_map(|(claimed, loaded)| match (claimed, loaded) {
                (Claimed::Ours { .. }, Ok(event)) => Some(event.clone()),
                _ => None,
            })
            .collect();
        let mut results = match events.is_empty() {
            true => None,
            false => self.invoke_batch(&events).await,
        }
        .map(Vec::into_iter);
        (claims.into_iter().zip(loads))
            .map(|(claimed, loaded)| {
                let (event, first) = match (&claimed, loaded) {
                    (Claimed::Ours { .. }, Ok(event)) => {
                        let first = results
                            .as_mut()
                            .map(|r| r.next().expect("a result per event"));
                        (Some(event), first)
                    }
                    (_, Ok(event)) => (Some(event), None),
                    (_, Err(failure)) => (None, Some(Err(failure))),
                };
                Prepared {
                    claimed,
                    event,
                    first,
                }
            })
            .collect()
    }

    /// Runs the function on `events` in one instance: each event's result,
    /// or `None` when the batch failed as a whole.
    async fn invoke_batch(
        &self,
        events: &[Arc<Event>],
    ) -> Option<Vec<Result<Invocation, Failure>>> {
        let first = &events[0];
        // A batch's log lines and requests carry its first event's id.
        let label = LogLabel {
            pipeline: self.name.clone(),
            function: self.function.name().to_owned(),
            event_id: first.id.clone(),
            trace_id: first
                .attributes
                .get("trace_id")
                .cloned()
                .unwrap_or_default(),
            idempotency_key: first.idempotency_key.clone(),
            traceparent: None,
        };
        let (function, context) = (self.function.clone(), self.context.clone());
        let batch = events.to_vec();
        let running = self
            .threads
            .run(move || function.invoke_batch(&context, &batch, label));
        let (result, stats) = self.meters.timed(Stage::Invoke, running).await;
        let outcomes: Vec<&'static str> = match &result {
            Ok(results) => (results.iter())
                .map(|r| r.as_ref().map_or_else(InvokeError::outcome, |_| "ok"))
                .collect(),
            Err(error) => vec![error.outcome(); events.len()],
        };
        for outcome in &outcomes {
            self.meters.invocations(outcome).increment(1);
        }
        self.measure(&stats);
        let failed = outcomes.iter().filter(|o| **o != "ok").count();
        // The batch's outcome in the access log (and the dashboard): the
        // first failing event's, or ok.
        let outcome = outcomes.iter().find(|o| **o != "ok").unwrap_or(&"ok");
        tracing::info!(
            target: "runnel::invocation",
            id = %first.id,
            trace_id = first.attributes.get("trace_id").map_or("", String::as_str),
            pipeline = %self.name,
            function = %self.function.name(),
            events = events.len(),
            failed,
            attempt = 1,
            outcome,
            duration_us = stats.duration.as_micros() as u64,
            instantiation_us = stats.instantiation.as_micros() as u64,
            peak_memory = stats.peak_memory,
            error = result.as_ref().err().map(|e| e.to_string()),
            "batch invocation"
        );
        match result {
            Ok(results) => Some(results.into_iter().map(|r| self.checked(r)).collect()),
            Err(error) => {
                tracing::warn!(pipeline = %self.name, %error, events = events.len(), "the batch failed as a whole; each of its events runs again alone");
                None
            }
        }
    }

    /// An invocation's duration, start-up and cost, in the metrics.
    fn measure(&self, stats: &InvocationStats) {
        let meters = &self.meters;
        meters
            .invocation_duration
            .record(stats.duration.as_secs_f64());
        meters
            .instantiation_duration
            .record(stats.instantiation.as_secs_f64());
        let limit = self.function.memory_limit() as f64;
        meters
            .billed_byte_seconds
            .increment((limit * stats.duration.as_secs_f64()).round() as u64);
    }

    /// How the event `key` ended, if it did; `None` when the store knows
    /// nothing of it, not even `marker` ([`mark`](Self::mark)).
    pub async fn status(&self, key: &str, marker: &str) -> Option<Option<Completion>> {
        match self.idempotency.completion(&self.name, key).await {
            Ok(Some(how)) => return Some(Some(how)),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(pipeline = %self.name, %error, "reading a completion failed");
                return None;
            }
        }
        let delivered = self.idempotency.delivered(&self.name, key).await;
        delivered.ok()?.contains(marker).then_some(None)
    }

    /// Records `marker` for the event `key` until it completes: what a
    /// trigger knows of an event it accepted and has not handed over yet.
    pub async fn mark(&self, key: &str, marker: &str) {
        if let Err(error) = self
            .idempotency
            .record_delivery(&self.name, key, marker)
            .await
        {
            tracing::warn!(pipeline = %self.name, %error, key, "recording a queued event failed; its status reads unknown until it completes");
        }
    }

    /// The reply kept with a request's completion ([`Track::Request`]).
    pub async fn kept_reply(&self, key: &str) -> Option<Vec<u8>> {
        match self.idempotency.reply(&self.name, key).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(pipeline = %self.name, %error, "reading a kept reply failed");
                None
            }
        }
    }

    /// Records how the event ended, so a redelivery is skipped.
    async fn complete(&self, key: &str, how: Completion, reply: Option<Vec<u8>>) {
        let recorded = self
            .idempotency
            .complete_with_reply(&self.name, key, how, reply)
            .await;
        if let Err(error) = recorded {
            tracing::warn!(pipeline = %self.name, %error, "recording completion failed; a redelivery would process the event again");
        }
        self.meters.completed(how).increment(1);
    }

    /// Claims a request once: a caller is waiting, so one held elsewhere
    /// is answered as such rather than waited for.
    async fn claim_once(&self, key: &str) -> Claimed {
        match self.idempotency.claim(&self.name, key, self.lease).await {
            Ok(Claim::Completed(how)) => Claimed::Done(how),
            Ok(Claim::Busy) => Claimed::Busy,
            Ok(Claim::Acquired) => Claimed::Ours {
                delivered: Some(HashSet::new()),
            },
            Err(error) => {
                tracing::warn!(pipeline = %self.name, %error, "idempotency lookup failed; answering the request anyway");
                Claimed::Ours {
                    delivered: Some(HashSet::new()),
                }
            }
        }
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
        policy: &RetryConfig,
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

    /// Which outputs of the event with `key` were delivered already.
    async fn delivered(&self, key: &str, track: &Track) -> HashSet<String> {
        if matches!(track, Track::Untracked | Track::Request { .. }) {
            return HashSet::new();
        }
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
            let traceparent = telemetry::current().map(|c| c.header());
            let write_id = WriteId {
                id: &id,
                event_id: &event.id,
                event_type: &event.event_type,
                traceparent: traceparent.as_deref(),
            };
            let write = |_| async {
                let started = Instant::now();
                let written = sink.write(output, &write_id).await;
                if telemetry::exporting() {
                    let (kind, attributes) = sink.span(&output.sink, output);
                    let error = written.as_ref().err().map(|e| e.message.clone());
                    let name = format!("write {}", output.sink);
                    telemetry::record(&name, kind, started, attributes, error);
                }
                written.map_err(|e| Failure {
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

    async fn invoke(
        &self,
        event: &Arc<Event>,
        attempt: u32,
        stream: Option<Stream>,
    ) -> Result<Invocation, Failure> {
        let running = async {
            match self.function.invoke_async(event, stream) {
                Some(call) => call.await,
                None => {
                    // What an outbound request carries on: only a function
                    // with a capability can send one.
                    let traceparent = match self.function.pure() {
                        true => None,
                        false => telemetry::current().map(|c| c.child().header()),
                    };
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
                        trace_id: event
                            .attributes
                            .get("trace_id")
                            .cloned()
                            .unwrap_or_default(),
                        idempotency_key: event.idempotency_key.clone(),
                        traceparent,
                    };
                    let ev = Arc::clone(event);
                    self.threads
                        .run(move || function.invoke(&context, &ev, label))
                        .await
                }
            }
        };
        let (result, stats) = self.meters.timed(Stage::Invoke, running).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.meters.invocations(outcome).increment(1);
        self.measure(&stats);
        tracing::info!(
            target: "runnel::invocation",
            id = %event.id,
            trace_id = event.attributes.get("trace_id").map_or("", String::as_str),
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
        self.checked(result)
    }

    /// An invocation's result as the engine takes it: a failure
    /// classified, outputs within the function's limits and to declared
    /// sinks.
    fn checked(&self, result: Result<Invocation, InvokeError>) -> Result<Invocation, Failure> {
        let invocation = result.map_err(|e: InvokeError| Failure {
            retry_after: None,
            stage: "invoke",
            retryable: e.retryable(),
            message: e.to_string(),
            outcome: Some(e.outcome()),
        })?;
        let outputs = &invocation.outputs;
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
        Ok(invocation)
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
        // Its own target, which the dashboard's activity reads.
        tracing::warn!(target: "runnel::dead_letter", pipeline = %self.name, function = %self.function.name(), key, stage = failure.stage, error = %failure.message, attempts, "sending event to the dead-letter sink");
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
        let traceparent = telemetry::current().map(|c| c.header());
        let write_id = WriteId {
            id: &id,
            event_id: key,
            event_type: "runnel.dead-letter",
            traceparent: traceparent.as_deref(),
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
