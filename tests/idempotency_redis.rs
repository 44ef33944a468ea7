//! The Redis idempotency store: completions are shared between processes
//! and expire with the TTL; runnel records its completions there.
#![cfg(all(feature = "kafka", feature = "s3", feature = "redis"))]

mod harness;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use harness::services::{self, notified_keys, processed, produce};
use harness::{Runnel, WebhookReceiver, eventually, photo_jpeg, pipelines, repo};

const WAIT_LONG: Duration = Duration::from_secs(90);
use runnel::idempotency::redis::RedisIdempotency;
use runnel::idempotency::{Completion, IdempotencyStore};

/// A Redis started under `dir`, and two stores on it (two processes' view)
/// with a TTL of one second.
async fn two_stores(
    dir: &std::path::Path,
) -> (services::Service, RedisIdempotency, RedisIdempotency) {
    let redis = services::redis(dir);
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let store = || RedisIdempotency::connect(&url, "t:", Duration::from_secs(1), None);
    let (a, b) = (store().await.unwrap(), store().await.unwrap());
    (redis, a, b)
}

/// A batch's claims and completions on Redis: each event leased and
/// completed as one alone would be, seen so by another process.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_claimed_and_completed_event_by_event() {
    use runnel::idempotency::Claim;
    let dir = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_stores(dir.path()).await;
    let lease = Duration::from_secs(30);
    a.record_delivery("p", "y", "y#out/0").await.unwrap();
    let claims = a.claim_many("p", &["x", "y"], lease).await.unwrap();
    assert_eq!(
        claims,
        vec![
            (Claim::Acquired, HashSet::new()),
            (Claim::Acquired, HashSet::from(["y#out/0".to_owned()])),
        ]
    );
    let held = b.claim_many("p", &["x", "y", "z"], lease).await.unwrap();
    let held: Vec<Claim> = held.into_iter().map(|(claim, _)| claim).collect();
    assert_eq!(held, [Claim::Busy, Claim::Busy, Claim::Acquired]);
    a.complete_many(
        "p",
        &[("x", Completion::Done), ("y", Completion::DeadLettered)],
    )
    .await
    .unwrap();
    let ended = b.claim_many("p", &["x", "y"], lease).await.unwrap();
    let ended: Vec<Claim> = ended.into_iter().map(|(claim, _)| claim).collect();
    assert_eq!(
        ended,
        [
            Claim::Completed(Completion::Done),
            Claim::Completed(Completion::DeadLettered)
        ]
    );
    assert!(b.delivered("p", "y").await.unwrap().is_empty());
}

/// Two stores on one Redis (two processes) see each other's completions,
/// and completions expire after the TTL.
#[tokio::test(flavor = "multi_thread")]
async fn completions_are_shared_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_stores(dir.path()).await;
    assert_eq!(b.completion("p", "k").await.unwrap(), None);
    a.complete("p", "k", Completion::DeadLettered)
        .await
        .unwrap();
    assert_eq!(
        b.completion("p", "k").await.unwrap(),
        Some(Completion::DeadLettered)
    );
    assert_eq!(b.completion("other", "k").await.unwrap(), None);

    // Delivered outputs of an unfinished event are shared too, and the
    // completion forgets them.
    a.record_delivery("p", "u", "u#hook/0").await.unwrap();
    a.record_delivery("p", "u", "u#hook/1").await.unwrap();
    let delivered = b.delivered("p", "u").await.unwrap();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered.contains("u#hook/1"));
    b.complete("p", "u", Completion::Done).await.unwrap();
    assert!(a.delivered("p", "u").await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        b.completion("p", "k").await.unwrap(),
        None,
        "expired with the TTL"
    );
}

/// Marks (a schedule's position) are shared, kept without the TTL, and
/// never move back when two processes advance them out of order.
#[tokio::test(flavor = "multi_thread")]
async fn marks_are_shared_and_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_stores(dir.path()).await;
    assert_eq!(a.mark("p", "m").await.unwrap(), None);
    a.advance_mark("p", "m", 1_764_000_000_000).await.unwrap();
    b.advance_mark("p", "m", 1_763_000_000_000).await.unwrap();
    assert_eq!(b.mark("p", "m").await.unwrap(), Some(1_764_000_000_000));
    assert_eq!(b.mark("q", "m").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        a.mark("p", "m").await.unwrap(),
        Some(1_764_000_000_000),
        "a mark outlives the TTL"
    );
}

/// A pipeline configured with the Redis store records its completions
/// there and skips a repeat by what Redis says.
#[tokio::test(flavor = "multi_thread")]
async fn runnel_records_completions_in_redis() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let redis = services::redis(dir.path());
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let config = format!("[idempotency]\ntype = \"redis\"\nurl = \"{url}\"\nttl = \"1h\"\n");
    let runnel = Runnel::start(work.path(), &pipelines()[..1], &[], &config).await;
    let photo = photo_jpeg(300, 200);
    let created: serde_json::Value = runnel
        .upload("uploads", "r.jpg", photo.clone(), None)
        .await
        .json()
        .await
        .unwrap();
    let store = RedisIdempotency::connect(&url, "runnel:", Duration::from_secs(3600), None)
        .await
        .unwrap();
    let key = format!("uploads/r.jpg@{}", created["etag"].as_str().unwrap());
    eventually(
        "the completion in Redis",
        Duration::from_secs(60),
        || async {
            (store.completion("image-upload", &key).await.unwrap() == Some(Completion::Done))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        runnel
            .upload("uploads", "r.jpg", photo, None)
            .await
            .status(),
        201
    );
    runnel
        .wait_for_metric(
            "runnel_duplicates_skipped_total",
            &[("pipeline", "image-upload")],
            1.0,
        )
        .await;
    assert!(
        !work.path().join("data/idempotency.db").exists(),
        "the embedded store is not used"
    );
}

/// Claims keep two processes off one event: the second waits (Busy) while
/// the first works, then sees it done; a claim whose holder crashed runs
/// out with its lease and can be taken over.
#[tokio::test(flavor = "multi_thread")]
async fn claims_exclude_other_processes_until_done_or_expired() {
    use runnel::idempotency::Claim;
    let dir = tempfile::tempdir().unwrap();
    let redis = services::redis(dir.path());
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let ttl = Duration::from_secs(60);
    let a = RedisIdempotency::connect(&url, "t:", ttl, None)
        .await
        .unwrap();
    let b = RedisIdempotency::connect(&url, "t:", ttl, None)
        .await
        .unwrap();
    let lease = Duration::from_millis(400);

    assert_eq!(a.claim("p", "e1", lease).await.unwrap(), Claim::Acquired);
    assert_eq!(b.claim("p", "e1", lease).await.unwrap(), Claim::Busy);
    assert_eq!(
        a.claim("p", "e1", lease).await.unwrap(),
        Claim::Acquired,
        "re-claiming extends"
    );
    assert_eq!(
        b.completion("p", "e1").await.unwrap(),
        None,
        "in progress is not complete"
    );
    a.complete("p", "e1", Completion::Done).await.unwrap();
    assert_eq!(
        b.claim("p", "e1", lease).await.unwrap(),
        Claim::Completed(Completion::Done)
    );

    // `a` "crashes" holding e2 with one output written: after the lease,
    // `b` takes over, and the claim tells it what `a` delivered; while `a`
    // held it, `b` heard only that it was busy.
    let a_wrote = HashSet::from(["e2#hook/0".to_owned()]);
    assert_eq!(
        a.claim_with_delivered("p", "e2", lease).await.unwrap(),
        (Claim::Acquired, HashSet::new())
    );
    a.record_delivery("p", "e2", "e2#hook/0").await.unwrap();
    assert_eq!(
        a.claim_with_delivered("p", "e2", lease).await.unwrap(),
        (Claim::Acquired, a_wrote.clone()),
        "re-claiming its own"
    );
    assert_eq!(
        b.claim_with_delivered("p", "e2", lease).await.unwrap(),
        (Claim::Busy, HashSet::new())
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b.claim_with_delivered("p", "e2", lease).await.unwrap(),
        (Claim::Acquired, a_wrote)
    );
    assert_eq!(b.claim("p", "e2", lease).await.unwrap(), Claim::Acquired);
    b.complete("p", "e2", Completion::Done).await.unwrap();
    assert_eq!(
        a.claim_with_delivered("p", "e2", lease).await.unwrap(),
        (Claim::Completed(Completion::Done), HashSet::new())
    );
}

/// Two processes in one consumer group share the Redis store; one is
/// SIGKILLed mid-run and restarted (as a supervisor would): every event is
/// notified, every repeat carries the first call's `Idempotency-Key`, and
/// repeats are at most what the killed process had in flight.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_the_store_and_survive_a_kill() {
    const EVENTS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let kafka = services::tansu(dir.path());
    let redis = services::redis(dir.path());
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    services::create_topics(&bootstrap, &[("image-processed", 4), ("notifications", 4)]).await;
    let webhook = WebhookReceiver::start_with_delay(Duration::from_millis(20)).await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let config = format!(
        "[broker]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n\
         [idempotency]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\n",
        redis.port
    );
    let notify = [repo().join("pipelines/notify.toml")];
    let mut a =
        Runnel::start_instance(&dir.path().join("a"), &notify, &env, Some("a"), &config).await;
    let b = Runnel::start_instance(&dir.path().join("b"), &notify, &env, Some("b"), &config).await;
    for runnel in [&a, &b] {
        eventually("partitions split between both", WAIT_LONG, || async {
            let n = runnel
                .metric(
                    "runnel_source_partitions",
                    &[("topic", "image-processed"), ("group", "notify")],
                )
                .await;
            (n > 0.0).then_some(())
        })
        .await;
    }
    let messages: Vec<_> = (0..EVENTS)
        .map(|i| (format!("k{i}"), processed(&format!("pair/{i}.jpg"), "fay")))
        .collect();
    produce(&kafka, &messages).await;
    eventually("some progress", WAIT_LONG, || async {
        (webhook.count() >= EVENTS / 4).then_some(())
    })
    .await;
    a.kill_and_restart(None).await;
    let killed_at = webhook.count();
    eventually("every event notified", WAIT_LONG, || async {
        let keys: BTreeSet<_> = notified_keys(&webhook)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        (keys.len() == EVENTS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, id) in notified_keys(&webhook) {
        ids.entry(key).or_default().push(id);
    }
    assert_eq!(ids.len(), EVENTS);
    for (key, seen) in &ids {
        assert!(seen.iter().all(|id| id == &seen[0]), "{key}: {seen:?}");
    }
    let repeats = webhook.count() - EVENTS;
    eprintln!("killed after {killed_at} notifications; repeats: {repeats}");
    // notify.toml works on 2 events at a time per process, and 2 more may
    // have their outputs written while their completion is being recorded
    // (an event's slot goes to the next one once its outputs are written):
    // those are the events that can repeat.
    assert!(
        repeats <= 4,
        "only the killed process's in-flight events may repeat: {repeats}"
    );
    let received = b
        .metric("runnel_events_received_total", &[("pipeline", "notify")])
        .await;
    assert!(
        received > 0.0 && received < EVENTS as f64,
        "b did its share: {received}"
    );
}
