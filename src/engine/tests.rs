//! The engine in-process: the handler and the feed driver with a stand-in
//! function, on the embedded backends in a temporary directory (real
//! storage, broker and idempotency store; no wasm).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::EmbeddedBroker;
use crate::config::pipeline::PipelineConfig;
use crate::event::{Event, Message};
use crate::health::Health;
use crate::idempotency::{Completion, EmbeddedIdempotency, IdempotencyStore};
use crate::runtime::{Context, Invocation, InvocationStats, Invoke, InvokeError, LogLabel, Output};
use crate::sinks::Backends;
use crate::sqlite::Durability;
use crate::storage::LocalStorage;

type Behaviour = Box<dyn Fn(&Event) -> Result<Vec<Output>, InvokeError> + Send + Sync>;

/// A function that answers from a script: each call takes the next
/// behaviour, the last one repeating.
struct Fake {
    script: Mutex<VecDeque<Behaviour>>,
    calls: AtomicU32,
    /// The context's attempt number of each call.
    attempts: Mutex<Vec<u32>>,
}

impl Fake {
    fn new(script: Vec<Behaviour>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            calls: AtomicU32::new(0),
            attempts: Mutex::new(Vec::new()),
        })
    }
}

impl Invoke for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    fn memory_limit(&self) -> u64 {
        1 << 20
    }

    fn invoke(
        &self,
        context: &Context,
        event: &Event,
        _label: LogLabel,
    ) -> (Result<Invocation, InvokeError>, InvocationStats) {
        self.calls.fetch_add(1, AtomicOrdering::SeqCst);
        self.attempts.lock().unwrap().push(context.attempt);
        let mut script = self.script.lock().unwrap();
        let result = match script.len() {
            0 => panic!("the fake has no script"),
            1 => script[0](event),
            _ => script.pop_front().unwrap()(event),
        };
        let invocation = result.map(|outputs| Invocation {
            outputs,
            reply: None,
        });
        (invocation, InvocationStats::default())
    }
}

/// Upper-cases the payload into the `out` sink, under the event's subject.
fn shout() -> Behaviour {
    Box::new(|event: &Event| {
        Ok(vec![Output {
            sink: "out".to_owned(),
            key: Some(event.subject.clone().unwrap_or_else(|| event.id.clone())),
            content_type: None,
            attributes: Vec::new(),
            data: Bytes::from(event.data.to_ascii_uppercase()),
        }])
    })
}

fn fail(retryable: bool) -> Behaviour {
    Box::new(move |_: &Event| {
        Err(InvokeError::Function {
            message: "it broke".to_owned(),
            retryable,
        })
    })
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PipelineConfig,
    backends: Backends,
    idempotency: Arc<dyn IdempotencyStore>,
}

async fn setup(concurrency: usize) -> Setup {
    setup_with(concurrency, "").await
}

/// `source` goes into the pipeline's `[source]` table.
async fn setup_with(concurrency: usize, source: &str) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fake.wasm"), b"").unwrap();
    let text = format!(
        r#"
        name = "p"
        concurrency = {concurrency}
        [source]
        type = "topic"
        topic = "in"
        {source}
        [function]
        path = "fake.wasm"
        [sinks.out]
        type = "storage"
        bucket = "out"
        [dead_letter]
        type = "storage"
        bucket = "dead-letters"
        [retry]
        max_attempts = 3
        initial_delay = "1ms"
        max_delay = "2ms"
        "#
    );
    let config = crate::config::parse_pipeline(&dir.path().join("p.toml"), &text, &|_| None)
        .unwrap_or_else(|d| panic!("{d:?}"));
    let store = LocalStorage::open(&dir.path().join("objects"), Durability::Normal)
        .await
        .unwrap();
    let broker =
        EmbeddedBroker::open(&dir.path().join("broker.db"), Durability::Normal, 2).unwrap();
    let idempotency = EmbeddedIdempotency::open(
        &dir.path().join("idempotency.db"),
        Durability::Normal,
        Duration::from_secs(3600),
    )
    .unwrap();
    Setup {
        config,
        backends: Backends {
            store: Arc::new(store),
            broker: Arc::new(broker),
            http: reqwest::Client::new(),
        },
        idempotency: Arc::new(idempotency),
        _dir: dir,
    }
}

impl Setup {
    fn handler(&self, function: Arc<dyn Invoke>) -> Arc<Handler> {
        let handler = Handler::new(
            &self.config,
            function,
            &self.backends,
            self.idempotency.clone(),
            Health::unchecked(),
            Arc::new(super::Threads::new("test-fn", self.config.concurrency)),
        );
        Arc::new(handler)
    }

    /// The backends as triggers open on them.
    fn checked(&self) -> crate::health::Backends {
        crate::health::Backends {
            store: self.backends.store.clone(),
            broker: self.backends.broker.clone(),
            idempotency: self.idempotency.clone(),
            databases: Default::default(),
            sources: Default::default(),
        }
    }

    /// Publishes `payload` on the pipeline's topic under `key`.
    async fn publish(&self, key: &str, payload: &str) {
        let message = Message {
            key: Some(key.to_owned()),
            headers: Vec::new(),
            payload: Bytes::from(payload.to_owned()),
        };
        (self.backends.broker)
            .publish("in", None, message)
            .await
            .unwrap();
    }

    /// The feed driver on the pipeline's source, through `handler`, until
    /// the token is cancelled.
    async fn drive(
        &self,
        handler: Arc<Handler>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let crate::triggers::Trigger::Pulled(trigger) =
            self.config.source.open("p", &self.checked()).await.unwrap()
        else {
            panic!("a topic is pulled")
        };
        let shutdown = CancellationToken::new();
        let driver = tokio::spawn(feed_driver::run(
            handler,
            trigger,
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        (shutdown, driver)
    }

    /// Stops the driver, and checks that a new subscription of the group
    /// finds nothing left: every offset was committed.
    async fn stop(&self, (shutdown, driver): (CancellationToken, tokio::task::JoinHandle<()>)) {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("the driver stops")
            .unwrap();
        let mut feed = self.backends.broker.subscribe("in", "p").await.unwrap();
        let left = tokio::time::timeout(Duration::from_millis(300), feed.poll(100)).await;
        assert!(
            left.is_err() || left.unwrap().unwrap().is_empty(),
            "every offset was committed"
        );
    }

    /// The keys in `bucket` (the first hundred).
    async fn keys(&self, bucket: &str) -> Vec<String> {
        self.backends.store.list(bucket, "", 100).await.unwrap()
    }

    async fn object(&self, bucket: &str, key: &str) -> Option<Bytes> {
        match self.backends.store.get(bucket, key, 1 << 20, None).await {
            Ok((_, body)) => Some(body),
            Err(crate::storage::StorageError::NotFound { .. }) => None,
            Err(error) => panic!("{error}"),
        }
    }
}

fn event(key: &str, data: &str) -> Pending {
    Pending::Event(Box::new(Event {
        id: key.to_owned(),
        source: "test".to_owned(),
        event_type: "test".to_owned(),
        subject: Some(format!("{key}.txt")),
        content_type: None,
        attributes: BTreeMap::new(),
        data: Bytes::from(data.to_owned()),
        idempotency_key: key.to_owned(),
    }))
}

async fn handle(handler: &Handler, work: Work) -> Outcome {
    handler.handle(handler.admit().await, work).await.outcome
}

/// An event's outputs reach its sink and it is recorded as done, so the
/// same key again is skipped with nothing written.
#[tokio::test]
async fn outputs_are_written_and_a_redelivery_is_skipped() {
    let setup = setup(2).await;
    let handler = setup.handler(Fake::new(vec![shout()]));
    let outcome = handle(&handler, Work::new("a".into(), event("a", "hello"))).await;
    assert!(
        matches!(outcome, Outcome::Done { attempts: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(setup.object("out", "a.txt").await.unwrap(), "HELLO");
    assert_eq!(
        setup.idempotency.completion("p", "a").await.unwrap(),
        Some(Completion::Done)
    );

    setup.backends.store.delete("out", "a.txt").await.unwrap();
    let outcome = handle(&handler, Work::new("a".into(), event("a", "hello"))).await;
    assert!(
        matches!(outcome, Outcome::Skipped(Completion::Done)),
        "{outcome:?}"
    );
    assert_eq!(
        setup.object("out", "a.txt").await,
        None,
        "a skipped event writes nothing"
    );
}

/// A retryable failure is tried again (the function told its attempt
/// number) and the event ends done.
#[tokio::test]
async fn a_retryable_failure_is_retried() {
    let setup = setup(2).await;
    let fake = Fake::new(vec![fail(true), shout()]);
    let handler = setup.handler(fake.clone());
    let outcome = handle(&handler, Work::new("b".into(), event("b", "x"))).await;
    assert!(
        matches!(outcome, Outcome::Done { attempts: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(*fake.attempts.lock().unwrap(), vec![1, 2]);
    assert_eq!(setup.object("out", "b.txt").await.unwrap(), "X");
}

/// A permanent failure is dead-lettered after one attempt, with the event
/// and the error in the record; replaying it once the function is fixed
/// goes through the same handler and ends it done.
#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_and_replay_ends_it() {
    let setup = setup(2).await;
    let handler = setup.handler(Fake::new(vec![fail(false)]));
    let outcome = handle(&handler, Work::new("c".into(), event("c", "x"))).await;
    assert!(
        matches!(outcome, Outcome::DeadLettered { attempts: 1, .. }),
        "{outcome:?}"
    );
    let record = setup.object("dead-letters", "p/c.json").await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["error"], "function error: it broke");
    assert_eq!(record["stage"], "invoke");
    assert_eq!(record["event"]["subject"], "c.txt");
    assert_eq!(
        setup.idempotency.completion("p", "c").await.unwrap(),
        Some(Completion::DeadLettered)
    );

    // Redelivered, it stays dead-lettered; replayed, it runs again.
    let outcome = handle(&handler, Work::new("c".into(), event("c", "x"))).await;
    assert!(matches!(
        outcome,
        Outcome::Skipped(Completion::DeadLettered)
    ));
    let fixed = setup.handler(Fake::new(vec![shout()]));
    let replay = Work {
        on_failure: OnFailure::Return,
        track: Track::Again,
        ..Work::new("c".into(), event("c", "x"))
    };
    let outcome = handle(&fixed, replay).await;
    assert!(
        matches!(outcome, Outcome::Done { attempts: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(setup.object("out", "c.txt").await.unwrap(), "X");
    assert_eq!(
        setup.idempotency.completion("p", "c").await.unwrap(),
        Some(Completion::Done)
    );
}

/// Under `OnFailure::Return` a failure comes back to the caller after the
/// retries, and nothing is written or recorded.
#[tokio::test]
async fn a_returned_failure_writes_and_records_nothing() {
    let setup = setup(2).await;
    let fake = Fake::new(vec![fail(true)]);
    let handler = setup.handler(fake.clone());
    let work = Work {
        on_failure: OnFailure::Return,
        ..Work::new("d".into(), event("d", "x"))
    };
    match handle(&handler, work).await {
        Outcome::Failed { attempts, failure } => {
            assert_eq!(attempts, 3, "max_attempts");
            assert!(failure.retryable);
            assert_eq!(failure.stage, "invoke");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.calls.load(AtomicOrdering::SeqCst), 3);
    assert_eq!(setup.object("dead-letters", "p/d.json").await, None);
    assert_eq!(setup.idempotency.completion("p", "d").await.unwrap(), None);
}

/// With every slot taken, `try_admit` refuses at once (a pushed trigger's
/// 503) and admits again when a slot is given back.
#[tokio::test]
async fn try_admit_refuses_when_every_slot_is_busy() {
    let setup = setup(2).await;
    let handler = setup.handler(Fake::new(vec![shout()]));
    let first = handler.try_admit().expect("a free slot");
    let _second = handler.try_admit().expect("a free slot");
    assert!(handler.try_admit().is_none());
    drop(first);
    assert!(handler.try_admit().is_some());
}

/// The feed driver runs a topic's messages through the handler and
/// commits their offsets: a new subscription of the group finds nothing
/// left, and shutdown returns.
#[tokio::test]
async fn the_feed_driver_handles_a_topic_and_commits_it() {
    let setup = setup(2).await;
    let fake = Fake::new(vec![shout()]);
    let handler = setup.handler(fake.clone());
    for i in 0..10 {
        setup
            .publish(&format!("m{i}"), &format!("message {i}"))
            .await;
    }
    let driver = setup.drive(handler).await;
    let done = async {
        while setup
            .backends
            .store
            .list("out", "", 100)
            .await
            .unwrap()
            .len()
            < 10
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("ten outputs");
    let body = setup.object("out", "m3").await.unwrap();
    assert_eq!(body, "MESSAGE 3");
    setup.stop(driver).await;
    assert_eq!(fake.calls.load(AtomicOrdering::SeqCst), 10);
}

/// A batch function's stand-in: shouts every event but `bad` (refused for
/// good) and `flaky` (retryable, the first time), and records the size of
/// each call.
#[derive(Default)]
struct Batcher {
    sizes: Mutex<Vec<usize>>,
    flaked: std::sync::atomic::AtomicBool,
}

impl Batcher {
    fn one(&self, event: &Event) -> Result<Invocation, InvokeError> {
        let refuse = |retryable| InvokeError::Function {
            message: "refused".to_owned(),
            retryable,
        };
        match &event.data[..] {
            b"bad" => Err(refuse(false)),
            b"flaky" if !self.flaked.swap(true, AtomicOrdering::SeqCst) => Err(refuse(true)),
            data if data.starts_with(b"quiet") => Ok(Invocation {
                outputs: Vec::new(),
                reply: None,
            }),
            _ => shout()(event).map(|outputs| Invocation {
                outputs,
                reply: None,
            }),
        }
    }
}

impl Invoke for Batcher {
    fn name(&self) -> &str {
        "batcher"
    }

    fn memory_limit(&self) -> u64 {
        1 << 20
    }

    fn batched(&self) -> bool {
        true
    }

    fn invoke(
        &self,
        _context: &Context,
        event: &Event,
        _label: LogLabel,
    ) -> (Result<Invocation, InvokeError>, InvocationStats) {
        self.sizes.lock().unwrap().push(1);
        (self.one(event), InvocationStats::default())
    }

    fn invoke_batch(
        &self,
        _context: &Context,
        events: &[Arc<Event>],
        _label: LogLabel,
    ) -> (crate::runtime::BatchResult, InvocationStats) {
        self.sizes.lock().unwrap().push(events.len());
        let results = events.iter().map(|event| self.one(event)).collect();
        (Ok(results), InvocationStats::default())
    }
}

/// With `[source] batch`, the driver hands the function up to
/// `max_events` events at once; a failure is retried or dead-lettered
/// alone while its batch's other events complete, and every offset is
/// committed.
#[tokio::test]
async fn a_batch_function_gets_batches_and_its_failures_go_alone() {
    let setup = setup_with(2, r#"batch = { max_events = 10, max_wait = "200ms" }"#).await;
    for i in 0..30 {
        let payload = match i {
            7 => "bad".to_owned(),
            15 => "flaky".to_owned(),
            _ => format!("message {i}"),
        };
        setup.publish(&format!("m{i}"), &payload).await;
    }
    let batcher = Arc::new(Batcher::default());
    let driver = setup.drive(setup.handler(batcher.clone())).await;
    let done = async {
        loop {
            if setup.keys("out").await.len() >= 29 && !setup.keys("dead-letters").await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("29 outputs and a dead letter");
    assert_eq!(setup.object("out", "m15").await.unwrap(), "FLAKY");
    assert_eq!(setup.object("out", "m16").await.unwrap(), "MESSAGE 16");
    assert_eq!(setup.object("out", "m7").await, None);
    setup.stop(driver).await;

    let sizes = batcher.sizes.lock().unwrap().clone();
    // 30 events in batches of at most 10, and the flaky one's retry alone.
    assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
    assert!(sizes.iter().any(|&n| n > 1), "{sizes:?}");
    assert_eq!(
        sizes.iter().sum::<usize>(),
        31,
        "each event once, the retry alone: {sizes:?}"
    );
    let dead = setup.keys("dead-letters").await;
    assert_eq!(dead.len(), 1, "only the bad event is dead-lettered");
    let record = setup.object("dead-letters", &dead[0]).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["event"]["subject"], "m7");
    assert_eq!(record["attempts"], 1, "not retried: {record}");
}

/// A batch's events with nothing to write end without a future each: the
/// quiet ones are recorded complete, one done before is skipped unrun, the
/// others' outputs are written, and every offset is committed.
#[tokio::test]
async fn a_batch_s_events_with_nothing_to_write_complete_at_once() {
    let setup = setup_with(1, r#"batch = { max_events = 20, max_wait = "200ms" }"#).await;
    let mut keys = Vec::new();
    for i in 0..12 {
        let payload = match i {
            4 | 9 => format!("message {i}"),
            _ => format!("quiet {i}"),
        };
        let message = Message {
            key: Some(format!("m{i}")),
            headers: Vec::new(),
            payload: Bytes::from(payload),
        };
        let at = (setup.backends.broker.publish("in", None, message).await).unwrap();
        keys.push(format!("in/{}/{}", at.partition, at.offset));
    }
    // Event 0 ended before: a redelivery.
    (setup.idempotency)
        .complete("p", &keys[0], Completion::Done)
        .await
        .unwrap();
    let batcher = Arc::new(Batcher::default());
    let driver = setup.drive(setup.handler(batcher.clone())).await;
    let done = async {
        loop {
            let mut complete = 0;
            for key in &keys {
                let how = setup.idempotency.completion("p", key).await.unwrap();
                complete += usize::from(how == Some(Completion::Done));
            }
            if complete == keys.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("every event recorded complete");
    setup.stop(driver).await;
    let mut written = setup.keys("out").await;
    written.sort();
    assert_eq!(written, ["m4", "m9"], "only the events with outputs wrote");
    assert_eq!(setup.object("out", "m9").await.unwrap(), "MESSAGE 9");
    let sizes = batcher.sizes.lock().unwrap().clone();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        11,
        "every event but the one done before ran once: {sizes:?}"
    );
}
