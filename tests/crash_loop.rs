//! Nothing lost, nothing repeated but what was in flight: the reference
//! workload on Kafka (tansu) and S3 (moto) — 2,000 uploads, thumbnails
//! stored in S3, a webhook per upload — while runnel is SIGKILLed at random
//! moments ten times and restarted each time.
#![cfg(all(feature = "kafka", feature = "s3"))]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::services::{self, notified_keys};
use harness::{Runnel, WebhookReceiver, photo_jpeg, pipelines, repo};

const EVENTS: usize = 2000;

const KILLS: usize = 10;

/// Every upload gets its thumbnail and its notification, every repeated
/// notification carries the first call's `Idempotency-Key`, and repeats
/// stay a handful (what was in flight at a kill), not one per redelivered
/// event.
#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = services::tansu(dir.path());
    let s3 = services::moto(dir.path());
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    services::create_topics(
        &bootstrap,
        &[
            ("s3-events", 4),
            ("image-processed", 4),
            ("notifications", 4),
        ],
    )
    .await;
    let (s3_client, _) = services::aws_clients(&endpoint).await;
    services::create_buckets(&s3_client, &["uploads", "thumbnails", "dead-letters"]).await;

    // 2,000 small photos straight into S3, each announced on `s3-events` as
    // MinIO would (the runtime config shipped in deploy/).
    let photo = photo_jpeg(160, 120);
    let keys: Vec<String> = (0..EVENTS).map(|i| format!("loop/{i:04}.jpg")).collect();
    let mut puts = tokio::task::JoinSet::new();
    for (lane, chunk) in keys.chunks(EVENTS / 16).enumerate() {
        let (s3, photo, chunk) = (s3_client.clone(), photo.clone(), chunk.to_vec());
        puts.spawn(async move {
            let mut etags = Vec::new();
            for key in chunk {
                let put = s3
                    .put_object()
                    .bucket("uploads")
                    .key(&key)
                    .body(photo.clone().into())
                    .metadata("user", "zoe")
                    .send()
                    .await
                    .unwrap();
                etags.push(put.e_tag().unwrap().trim_matches('"').to_owned());
            }
            (lane, etags)
        });
    }
    let mut lanes = puts.join_all().await;
    lanes.sort();
    let etags: Vec<String> = lanes.into_iter().flat_map(|(_, e)| e).collect();
    let messages: Vec<(String, String)> = keys
        .iter()
        .zip(&etags)
        .map(|(key, etag)| {
            let event = serde_json::json!({"Records": [{
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": "uploads"}, "object": {
                    "key": key, "size": photo.len(), "eTag": etag,
                    "userMetadata": {"X-Amz-Meta-User": "zoe"}}}}]});
            (key.clone(), event.to_string())
        })
        .collect();
    services::produce_to(&kafka, "s3-events", &messages).await;

    // A slowish endpoint keeps events in flight while the kills land.
    let webhook = WebhookReceiver::start_with_delay(Duration::from_millis(5)).await;
    let deploy = std::fs::read_to_string(repo().join("deploy/runnel.kafka-s3.toml")).unwrap();
    let env = services::deploy_env(&endpoint, &bootstrap, &webhook.url);
    // A stable instance id (static group membership): each restart takes
    // the dead process's partitions back at once instead of waiting out
    // its session.
    let mut runnel = Runnel::start_instance(
        &dir.path().join("runnel"),
        &pipelines(),
        &env,
        Some("crash-loop"),
        &deploy,
    )
    .await;

    let seed = fastrand::u64(..);
    eprintln!("kill schedule seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    // Each kill lands after the restarted process made some progress (so
    // it is mid-work, not mid-start), at a random point of that progress.
    for kill in 0..KILLS {
        let before = webhook.count();
        let progress = rng.usize(20..120);
        let waited = Instant::now();
        while webhook.count() < before + progress {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "no progress after kill {kill}: {} notified; log:\n{}",
                webhook.count(),
                runnel.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        runnel.kill_and_restart(None).await;
    }
    let at_last_kill = webhook.count();
    eprintln!(
        "{KILLS} kills in {:?}, {at_last_kill} of {EVENTS} notified by the last",
        started.elapsed(),
    );
    assert!(
        at_last_kill < EVENTS,
        "the kills must land while events are processed"
    );

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let notified: BTreeSet<_> = notified_keys(&webhook)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if notified.len() == EVENTS {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = keys.iter().filter(|k| !notified.contains(*k)).collect();
            let dead = s3_client
                .list_objects_v2()
                .bucket("dead-letters")
                .send()
                .await
                .unwrap();
            let dead: Vec<_> = dead.contents().iter().filter_map(|o| o.key()).collect();
            let thumbnails_missing: Vec<_> = {
                let mut absent = Vec::new();
                for key in &missing {
                    let thumbnail = key.replace(".jpg", "-128.jpg");
                    let head = s3_client
                        .head_object()
                        .bucket("thumbnails")
                        .key(&thumbnail)
                        .send()
                        .await;
                    if head.is_err() {
                        absent.push(thumbnail);
                    }
                }
                absent
            };
            let log = runnel.log_text();
            let mentions: Vec<_> = log
                .lines()
                .filter(|l| missing.iter().any(|k| l.contains(k.as_str())))
                .filter(|l| !l.contains("runnel::invocation"))
                .take(40)
                .collect();
            panic!(
                "{} of {EVENTS} uploads notified; missing {missing:?}; dead letters {dead:?}; \
                 thumbnails absent {thumbnails_missing:?}; log lines about them:\n{}",
                notified.len(),
                mentions.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything still in flight would show up as a late repeat.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, id) in notified_keys(&webhook) {
        ids.entry(key).or_default().push(id);
    }
    assert_eq!(ids.keys().cloned().collect::<Vec<_>>(), keys);
    for (key, seen) in &ids {
        assert!(seen.iter().all(|id| id == &seen[0]), "{key}: {seen:?}");
    }
    let repeats = webhook.count() - EVENTS;
    eprintln!("webhook repeats over {KILLS} kills: {repeats}");
    // notify.toml runs 2 events at a time, and 2 more may be recording their
    // completion after the POST: at most those repeat when a kill lands.
    assert!(repeats <= 4 * KILLS, "repeats: {repeats}");

    // Every upload's thumbnail is in S3, and is a real 128 px JPEG.
    let mut thumbnails = BTreeSet::new();
    let mut pages = s3_client
        .list_objects_v2()
        .bucket("thumbnails")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for object in page.unwrap().contents() {
            thumbnails.insert(object.key().unwrap().to_owned());
        }
    }
    let expected: BTreeSet<String> = keys.iter().map(|k| k.replace(".jpg", "-128.jpg")).collect();
    assert_eq!(thumbnails, expected);
    let sample = s3_client
        .get_object()
        .bucket("thumbnails")
        .key(keys[EVENTS - 1].replace(".jpg", "-128.jpg"))
        .send()
        .await
        .unwrap();
    let bytes = sample.body.collect().await.unwrap().into_bytes();
    let image = image::load_from_memory(&bytes).unwrap();
    assert_eq!((image.width(), image.height()), (128, 96));
    let dead = s3_client
        .list_objects_v2()
        .bucket("dead-letters")
        .send()
        .await
        .unwrap();
    assert_eq!(dead.key_count(), Some(0), "no upload was dead-lettered");
}
