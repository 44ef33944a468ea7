//! Outages mid-run: the Kafka broker, then the S3 store, is cut off for
//! 30 s (every connection dropped, new ones refused, by a TCP proxy in
//! front of it) and comes back. `/healthz` turns 503 and
//! back, nothing is lost or dead-lettered, repeats keep their
//! `Idempotency-Key`, processing resumes within seconds of recovery, and
//! memory stays bounded.
#![cfg(all(feature = "kafka", feature = "s3"))]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::services::{self, notified_keys};
use harness::{Proxy, Runnel, WebhookReceiver, free_port, photo_jpeg, pipelines, repo};

/// Uploads per phase.
const BATCH: usize = 150;

const OUTAGE: Duration = Duration::from_secs(30);

const WAIT: Duration = Duration::from_secs(120);

async fn health(runnel: &Runnel) -> (u16, serde_json::Value) {
    let response = runnel
        .client
        .get(runnel.url("/healthz"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn wait_for_health(runnel: &Runnel, status: u16, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let (now, body) = health(runnel).await;
        if now == status {
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let log = runnel.log_text();
            let tail: Vec<_> = log.lines().rev().take(30).collect();
            let tail: Vec<_> = tail.into_iter().rev().collect();
            panic!("timed out waiting for {what}: {body}\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Uploads `keys` to S3 and announces each on `s3-events`, as MinIO would.
async fn upload(s3: &aws_sdk_s3::Client, kafka: &services::Service, keys: &[String]) {
    let photo = photo_jpeg(160, 120);
    let mut messages = Vec::new();
    for key in keys {
        let put = s3
            .put_object()
            .bucket("uploads")
            .key(key)
            .body(photo.clone().into())
            .metadata("user", "olga")
            .send()
            .await
            .unwrap();
        let etag = put.e_tag().unwrap().trim_matches('"').to_owned();
        let event = serde_json::json!({"Records": [{
            "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "uploads"}, "object": {
                "key": key, "size": photo.len(), "eTag": etag,
                "userMetadata": {"X-Amz-Meta-User": "olga"}}}}]});
        messages.push((key.clone(), event.to_string()));
    }
    services::produce_to(kafka, "s3-events", &messages).await;
}

/// Waits for `done`; on timeout fails with the tail of runnel's log.
async fn until(runnel: &Runnel, what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > timeout {
            let log = runnel.log_text();
            let tail: Vec<_> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .filter(|l| !l.contains("AllBrokersDown") && !l.contains("librdkafka: FAIL"))
                .rev()
                .take(40)
                .collect();
            let tail: Vec<_> = tail.into_iter().rev().collect();
            let metrics = runnel.metrics().await;
            let state: Vec<_> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("runnel_source_")
                        || l.starts_with("runnel_inflight")
                        || l.starts_with("runnel_events_")
                })
                .collect();
            panic!(
                "timed out waiting for {what}; metrics:\n{}\nwarnings:\n{}",
                state.join("\n"),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn notified(webhook: &WebhookReceiver) -> BTreeSet<String> {
    notified_keys(webhook).into_iter().map(|(k, _)| k).collect()
}

/// The S3 store is cut off for 30 s as uploads arrive: the thumbnail
/// pipeline's retries run out during the outage, and its events are held
/// (not dead-lettered) until the store answers again.
#[tokio::test(flavor = "multi_thread")]
async fn store_outage_loses_nothing() {
    outages(false, true).await;
}

/// The Kafka broker is cut off for 30 s mid-run.
#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_loses_nothing() {
    outages(true, false).await;
}

async fn outages(cut_broker: bool, cut_store: bool) {
    let batches = usize::from(cut_broker) + usize::from(cut_store);
    let dir = tempfile::tempdir().unwrap();
    // The broker advertises the proxy, so every client connection goes
    // through it.
    let kafka_port = free_port();
    let kafka_proxy = Proxy::start(kafka_port).await;
    let kafka = services::tansu_behind(dir.path(), kafka_port, kafka_proxy.port);
    let s3 = services::moto(dir.path());
    let proxy = Proxy::start(s3.port).await;
    let bootstrap = format!("127.0.0.1:{}", kafka_proxy.port);
    services::create_topics(
        &bootstrap,
        &[
            ("s3-events", 2),
            ("image-processed", 2),
            ("notifications", 2),
        ],
    )
    .await;
    let (s3_client, _) = services::aws_clients(&format!("http://127.0.0.1:{}", s3.port)).await;
    services::create_buckets(&s3_client, &["uploads", "thumbnails", "dead-letters"]).await;

    // A slow receiver (2 at a time, 100 ms each) keeps the run going while
    // the broker goes away.
    let webhook = WebhookReceiver::start_with_delay(Duration::from_millis(100)).await;
    let deploy = std::fs::read_to_string(repo().join("deploy/runnel.kafka-s3.toml")).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let env = services::deploy_env(&endpoint, &bootstrap, &webhook.url);
    let runnel = Runnel::start_instance(
        &dir.path().join("runnel"),
        &pipelines(),
        &env,
        Some("outage"),
        &deploy,
    )
    .await;
    let (status, body) = health(&runnel).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["broker"], "ok");

    let mut expected = BTreeSet::new();
    if cut_broker {
        let first: Vec<String> = (0..BATCH).map(|i| format!("a/{i:03}.jpg")).collect();
        expected.extend(first.iter().cloned());
        upload(&s3_client, &kafka, &first).await;
        until(&runnel, "progress before the broker outage", WAIT, || {
            webhook.count() >= BATCH / 5
        })
        .await;
        kafka_proxy.set_up(false);
        let stopped = Instant::now();
        let noticed = wait_for_health(&runnel, 503, "/healthz to report the broker down").await;
        let (_, body) = health(&runnel).await;
        assert_ne!(body["checks"]["broker"], "ok", "{body}");
        // Readiness follows the backends; liveness does not, so an
        // orchestrator does not restart every instance during the outage.
        let status = |path: &'static str| {
            let request = runnel.client.get(runnel.url(path)).send();
            async move { request.await.unwrap().status().as_u16() }
        };
        assert_eq!(status("/readyz").await, 503);
        assert_eq!(status("/livez").await, 200);
        assert_eq!(
            runnel
                .metric("runnel_backend_up", &[("backend", "broker")])
                .await,
            0.0
        );
        eprintln!("broker down; /healthz said so after {noticed:?}");
        tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
        let during = webhook.count();
        kafka_proxy.set_up(true);
        let back = wait_for_health(&runnel, 200, "/healthz to recover with the broker").await;
        eprintln!("broker back; /healthz recovered after {back:?}");
        let resumed = Instant::now();
        while webhook.count() <= during {
            if resumed.elapsed() > Duration::from_secs(30) {
                let log = runnel.log_text();
                let tail: Vec<_> = log
                    .lines()
                    .filter(|l| !l.contains("AllBrokersDown"))
                    .rev()
                    .take(60)
                    .collect();
                let tail: Vec<_> = tail.into_iter().rev().collect();
                panic!("processing did not resume:\n{}", tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "notifications resumed {:?} after the broker came back",
            resumed.elapsed()
        );
        until(&runnel, "every first-batch upload notified", WAIT, || {
            notified(&webhook).len() == BATCH
        })
        .await;
    }

    if cut_store {
        let second: Vec<String> = (0..BATCH).map(|i| format!("b/{i:03}.jpg")).collect();
        expected.extend(second.iter().cloned());
        upload(&s3_client, &kafka, &second).await;
        proxy.set_up(false);
        let cut = Instant::now();
        let noticed = wait_for_health(&runnel, 503, "/healthz to report the store down").await;
        let (_, body) = health(&runnel).await;
        assert_ne!(body["checks"]["storage"], "ok", "{body}");
        eprintln!("store cut off; /healthz said so after {noticed:?}");
        tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
        proxy.set_up(true);
        let back = wait_for_health(&runnel, 200, "/healthz to recover with the store").await;
        eprintln!("store back; /healthz recovered after {back:?}");
    }
    until(&runnel, "every upload notified", WAIT, || {
        notified(&webhook).len() == batches * BATCH
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, id) in notified_keys(&webhook) {
        ids.entry(key).or_default().push(id);
    }
    assert_eq!(ids.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (key, seen) in &ids {
        assert!(seen.iter().all(|id| id == &seen[0]), "{key}: {seen:?}");
    }
    let repeats = webhook.count() - batches * BATCH;
    eprintln!("webhook repeats over both outages: {repeats}");
    assert!(repeats <= 4, "repeats: {repeats}");
    let dead = s3_client
        .list_objects_v2()
        .bucket("dead-letters")
        .send()
        .await
        .unwrap();
    assert_eq!(dead.key_count(), Some(0), "nothing dead-lettered: {dead:?}");
    let thumbnails = s3_client
        .list_objects_v2()
        .bucket("thumbnails")
        .max_keys(1000)
        .send()
        .await
        .unwrap();
    assert_eq!(thumbnails.key_count(), Some((batches * BATCH) as i32));
    let peak = runnel.peak_rss_mib();
    eprintln!("peak RSS {peak:.0} MiB");
    assert!(peak < 300.0, "peak RSS {peak:.0} MiB");
}
