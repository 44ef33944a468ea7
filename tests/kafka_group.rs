//! Scaling out over Kafka consumer groups: two processes split a topic's
//! partitions and together process every event once; events with the same
//! key stay in order while others run in parallel; a process killed
//! mid-batch resumes from committed offsets without losing anything.
#![cfg(feature = "kafka")]

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::services::{self, Service, notified_keys, processed, produce};
use harness::{Runnel, WebhookReceiver, eventually, repo};

const WAIT: Duration = Duration::from_secs(90);

fn broker_toml(kafka: &Service) -> String {
    format!(
        "[broker]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:{}\"\n",
        kafka.port
    )
}

fn notify() -> Vec<std::path::PathBuf> {
    vec![repo().join("pipelines/notify.toml")]
}

async fn setup() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let kafka = services::tansu(dir.path());
    services::create_topics(
        &format!("127.0.0.1:{}", kafka.port),
        &[("image-processed", 4), ("notifications", 4)],
    )
    .await;
    (dir, kafka)
}

async fn partitions(r: &Runnel) -> f64 {
    r.metric(
        "runnel_source_partitions",
        &[("topic", "image-processed"), ("group", "notify")],
    )
    .await
}

async fn received(r: &Runnel) -> f64 {
    r.metric("runnel_events_received_total", &[("pipeline", "notify")])
        .await
}

/// Two processes in one consumer group split the partitions and together
/// notify every upload exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_a_consumer_group_and_process_every_event_once() {
    let (dir, kafka) = setup().await;
    let webhook = WebhookReceiver::start().await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let a = Runnel::start(&dir.path().join("a"), &notify(), &env, &broker_toml(&kafka)).await;
    let b = Runnel::start(&dir.path().join("b"), &notify(), &env, &broker_toml(&kafka)).await;
    eventually("both processes to own partitions", WAIT, || async {
        let (pa, pb) = (partitions(&a).await, partitions(&b).await);
        (pa > 0.0 && pb > 0.0 && pa + pb == 4.0).then_some(())
    })
    .await;

    const EVENTS: usize = 40;
    let messages: Vec<_> = (0..EVENTS)
        .map(|i| {
            (
                format!("photos/{i}.jpg"),
                processed(&format!("photos/{i}.jpg"), "alice"),
            )
        })
        .collect();
    produce(&kafka, &messages).await;
    eventually("every notification", WAIT, || async {
        (webhook.count() >= EVENTS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for (key, _) in notified_keys(&webhook) {
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(per_key.len(), EVENTS);
    assert!(
        per_key.values().all(|&n| n == 1),
        "each upload notified once: {per_key:?}"
    );
    let (ra, rb) = (received(&a).await, received(&b).await);
    assert!(ra > 0.0 && rb > 0.0, "both processes worked: {ra} + {rb}");
    assert_eq!(ra + rb, EVENTS as f64);
    assert_eq!(a.topic("notifications").await.len(), EVENTS);
}

/// Events with the same key are handled one after another in offset order,
/// even with other keys in flight at the same time.
#[tokio::test(flavor = "multi_thread")]
async fn events_with_the_same_key_keep_their_order() {
    let (dir, kafka) = setup().await;
    // A slow endpoint makes concurrent events overlap.
    let webhook = WebhookReceiver::start_with_delay(Duration::from_millis(20)).await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let runnel = Runnel::start(dir.path(), &notify(), &env, &broker_toml(&kafka)).await;
    let mut messages = Vec::new();
    for i in 0..30 {
        // Kafka key "carol" for the ordered ones, distinct keys for the rest.
        messages.push((
            "carol".to_owned(),
            processed(&format!("ordered/{i:02}.jpg"), "carol"),
        ));
        messages.push((
            format!("other-{i}"),
            processed(&format!("other/{i}.jpg"), "dan"),
        ));
    }
    produce(&kafka, &messages).await;
    eventually("every notification", WAIT, || async {
        (webhook.count() >= 60).then_some(())
    })
    .await;
    let ordered: Vec<String> = notified_keys(&webhook)
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("ordered/"))
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("ordered/{i:02}.jpg")).collect();
    assert_eq!(ordered, expected);
    drop(runnel);
}

/// Killed with work in flight and restarted, runnel resumes from the
/// committed offsets: every event is notified, repeats carry the first
/// call's `Idempotency-Key`, and the group's lag drains to zero.
#[tokio::test(flavor = "multi_thread")]
async fn kill_mid_batch_resumes_from_committed_offsets() {
    let (dir, kafka) = setup().await;
    let webhook = WebhookReceiver::start_with_delay(Duration::from_millis(50)).await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let mut runnel = Runnel::start(dir.path(), &notify(), &env, &broker_toml(&kafka)).await;
    const EVENTS: usize = 40;
    let messages: Vec<_> = (0..EVENTS)
        .map(|i| {
            (
                format!("k{i}"),
                processed(&format!("crash/{i}.jpg"), "erin"),
            )
        })
        .collect();
    produce(&kafka, &messages).await;
    eventually("some progress", WAIT, || async {
        (webhook.count() >= 8).then_some(())
    })
    .await;
    runnel.kill_and_restart(None).await;
    eventually("every event notified", WAIT, || async {
        let keys: std::collections::BTreeSet<_> = notified_keys(&webhook)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        (keys.len() == EVENTS).then_some(())
    })
    .await;
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, id) in notified_keys(&webhook) {
        ids.entry(key).or_default().push(id);
    }
    for (key, seen) in &ids {
        assert!(seen.iter().all(|id| id == &seen[0]), "{key}: {seen:?}");
    }
    let repeats = webhook.count() - EVENTS;
    eprintln!("repeats after the kill: {repeats}");
    assert!(
        repeats <= 4,
        "only events in flight at the kill may repeat: {repeats}"
    );
    eventually("the lag to drain", WAIT, || async {
        let text = runnel.metrics().await;
        let lags: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with("runnel_source_lag{") && l.contains("topic=\"image-processed\"")
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        (lags.len() == 4 && lags.iter().all(|&l| l == 0.0)).then_some(())
    })
    .await;
}

/// `source.idempotency_key` names events by a field of their payload: two
/// messages about the same upload are notified once, and a message without
/// the field is dead-lettered saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_expression_dedupes_by_payload() {
    let (dir, kafka) = setup().await;
    let webhook = WebhookReceiver::start().await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let keyed = [repo().join("tests/fixtures/pipelines/notify-keyed.toml")];
    // Dead letters go to the default topic, "<pipeline>.dead-letter".
    services::create_topics(
        &format!("127.0.0.1:{}", kafka.port),
        &[("notify-keyed.dead-letter", 1)],
    )
    .await;
    let runnel = Runnel::start(dir.path(), &keyed, &env, &broker_toml(&kafka)).await;
    let messages = vec![
        ("a".to_owned(), processed("dup.jpg", "zoe")),
        ("b".to_owned(), processed("dup.jpg", "zoe")),
        ("c".to_owned(), processed("other.jpg", "zoe")),
        ("d".to_owned(), r#"{"thumbnails": []}"#.to_owned()),
    ];
    produce(&kafka, &messages).await;
    runnel
        .wait_for_metric(
            "runnel_events_completed_total",
            &[("pipeline", "notify-keyed"), ("result", "dead-lettered")],
            1.0,
        )
        .await;
    runnel
        .wait_for_metric(
            "runnel_duplicates_skipped_total",
            &[("pipeline", "notify-keyed")],
            1.0,
        )
        .await;
    let keys: Vec<String> = notified_keys(&webhook)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"dup.jpg".to_owned()) && keys.contains(&"other.jpg".to_owned()));
    let id = &notified_keys(&webhook)
        .into_iter()
        .find(|(k, _)| k == "dup.jpg")
        .unwrap()
        .1;
    assert!(
        id.starts_with("uploads/dup.jpg@e#"),
        "outputs are named by the expression's key: {id}"
    );
    let dead = runnel.topic("notify-keyed.dead-letter").await;
    let record: serde_json::Value =
        serde_json::from_str(dead[0]["payload"].as_str().unwrap()).unwrap();
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("the payload has no field source.bucket"),
        "{record}"
    );
}

/// A group whose committed offset falls inside a record batch (the usual
/// case after a restart: producers batch, runnel commits per event) resumes
/// at that offset: the rest of the batch is processed, nothing before it.
#[tokio::test(flavor = "multi_thread")]
async fn resumes_from_a_commit_inside_a_record_batch() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let (dir, kafka) = setup().await;
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    // One key (one partition), sent without waiting and lingering long
    // enough that librdkafka packs all ten into one batch.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..10)
        .map(|i| processed(&format!("batch/{i}.jpg"), "fay"))
        .collect();
    let sends: Vec<_> = payloads
        .iter()
        .map(|payload| {
            producer
                .send_result(
                    FutureRecord::to("image-processed")
                        .key("fay")
                        .payload(payload),
                )
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    let mut positions = Vec::new();
    for send in sends {
        let delivery = send.await.unwrap().map_err(|(e, _)| e).unwrap();
        positions.push((delivery.partition, delivery.offset));
    }
    let (partition, base) = positions[0];
    assert!(
        positions
            .iter()
            .enumerate()
            .all(|(i, &(p, o))| p == partition && o == base + i as i64),
        "one partition, consecutive offsets: {positions:?}"
    );

    // The notify group is done with the first four.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "notify")
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("image-processed", partition, Offset::Offset(base + 4))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    drop(consumer);

    let webhook = WebhookReceiver::start().await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let runnel = Runnel::start(dir.path(), &notify(), &env, &broker_toml(&kafka)).await;
    eventually("the rest of the batch notified", WAIT, || async {
        (webhook.count() >= 6).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut keys: Vec<String> = notified_keys(&webhook)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    let expected: Vec<String> = (4..10).map(|i| format!("batch/{i}.jpg")).collect();
    assert_eq!(keys, expected);
    drop(runnel);
}
