//! The Redis idempotency store: completions are shared between processes
//! and expire with the TTL; runnel records its completions there.
#![cfg(all(feature = "kafka", feature = "s3", feature = "redis"))]

mod harness;

use std::time::Duration;

use harness::services;
use harness::{Runnel, eventually, photo_jpeg, pipelines};
use runnel::idempotency::redis::RedisIdempotency;
use runnel::idempotency::{Completion, IdempotencyStore};

/// Two stores on one Redis (two processes) see each other's completions,
/// and completions expire after the TTL.
#[tokio::test(flavor = "multi_thread")]
async fn completions_are_shared_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let redis = services::redis(dir.path());
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let a = RedisIdempotency::connect(&url, "t:", Duration::from_secs(1))
        .await
        .unwrap();
    let b = RedisIdempotency::connect(&url, "t:", Duration::from_secs(1))
        .await
        .unwrap();
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
    let store = RedisIdempotency::connect(&url, "runnel:", Duration::from_secs(3600))
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
    let a = RedisIdempotency::connect(&url, "t:", ttl).await.unwrap();
    let b = RedisIdempotency::connect(&url, "t:", ttl).await.unwrap();
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

    // `a` "crashes" holding e2: after the lease, `b` takes over.
    assert_eq!(a.claim("p", "e2", lease).await.unwrap(), Claim::Acquired);
    assert_eq!(b.claim("p", "e2", lease).await.unwrap(), Claim::Busy);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.claim("p", "e2", lease).await.unwrap(), Claim::Acquired);
}
