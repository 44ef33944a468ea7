//! Nothing lost, nothing repeated but what was in flight: runnel processes
//! 2,000 events from Kafka while it is SIGKILLed at random moments ten
//! times and restarted each time.
//!
//! The kills are spaced by more than the consumers' session timeout (10 s):
//! tansu, the test broker, can leave a group with its live member assigned
//! nothing when several dead members pile up at once.
#![cfg(all(feature = "kafka", feature = "s3"))]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::services::{self, notified_keys, processed, produce};
use harness::{Runnel, WebhookReceiver, repo};

const EVENTS: usize = 2000;

const KILLS: usize = 10;

/// Every event gets its notification, every repeat carries the first
/// call's `Idempotency-Key`, and repeats stay a handful per crash (what was
/// in flight), not one per redelivered event.
#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = services::tansu(dir.path());
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    services::create_topics(&bootstrap, &[("image-processed", 4), ("notifications", 4)]).await;
    // A slowish endpoint keeps events flowing while the kills land.
    let webhook = WebhookReceiver::start_with_delay(Duration::from_millis(110)).await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let broker = format!("[broker]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n");
    let notify = [repo().join("pipelines/notify.toml")];
    let mut runnel = Runnel::start(&dir.path().join("runnel"), &notify, &env, &broker).await;

    let messages: Vec<_> = (0..EVENTS)
        .map(|i| (format!("k{i}"), processed(&format!("loop/{i}.jpg"), "zoe")))
        .collect();
    produce(&kafka, &messages).await;

    let seed = fastrand::u64(..);
    eprintln!("kill schedule seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut kills_with_work_left = 0;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(10_500..12_500))).await;
        if webhook.count() < EVENTS {
            kills_with_work_left += 1;
        }
        runnel.kill_and_restart(None).await;
    }
    eprintln!(
        "{KILLS} kills in {:?}, {kills_with_work_left} with work left",
        started.elapsed()
    );
    assert!(
        kills_with_work_left >= KILLS / 2,
        "the kills must land while events are processed"
    );

    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let keys: BTreeSet<_> = notified_keys(&webhook)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if keys.len() == EVENTS {
            break;
        }
        if Instant::now() > deadline {
            let log = runnel.log_text();
            let tail: Vec<_> = log.lines().rev().take(40).collect();
            let tail: Vec<_> = tail.into_iter().rev().collect();
            panic!(
                "{} of {EVENTS} events notified; log tail:\n{}",
                keys.len(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, id) in notified_keys(&webhook) {
        ids.entry(key).or_default().push(id);
    }
    assert_eq!(ids.len(), EVENTS);
    for (key, seen) in &ids {
        assert!(seen.iter().all(|id| id == &seen[0]), "{key}: {seen:?}");
    }
    let repeats = webhook.count() - EVENTS;
    eprintln!("webhook repeats over {KILLS} kills: {repeats}");
    // notify.toml runs 2 events at a time: at most those were between the
    // POST and recording completion when a kill landed.
    assert!(repeats <= 2 * KILLS, "repeats: {repeats}");
    let topic: BTreeSet<String> = runnel
        .topic("notifications")
        .await
        .iter()
        .filter_map(|m| m["key"].as_str().map(str::to_owned))
        .collect();
    assert!(topic.len() <= EVENTS);
}
