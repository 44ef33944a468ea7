//! Hostile events on real infrastructure (tansu, moto): malformed and
//! non-UTF-8 S3 notifications, notifications of the wrong shape, event
//! kinds that are not object creations, notifications of objects that do
//! not exist, and non-JSON / non-UTF-8 messages where a function expects
//! JSON text. Each bad event ends as a dead letter whose error names what
//! was wrong, is counted, and the process keeps serving.
#![cfg(all(feature = "kafka", feature = "s3"))]

mod harness;

use std::time::Duration;

use harness::services;
use harness::{Runnel, WebhookReceiver, eventually, photo_jpeg, pipelines, repo};

const WAIT: Duration = Duration::from_secs(90);

async fn produce_raw(bootstrap: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for payload in payloads {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(topic).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// Every dead-letter record in the bucket, parsed.
async fn dead_letters(s3: &aws_sdk_s3::Client) -> Vec<serde_json::Value> {
    let listing = s3
        .list_objects_v2()
        .bucket("dead-letters")
        .send()
        .await
        .unwrap();
    let mut records = Vec::new();
    for object in listing.contents() {
        let body = s3
            .get_object()
            .bucket("dead-letters")
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        records.push(serde_json::from_slice(&body).unwrap());
    }
    records
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_are_dead_lettered_with_their_reason_and_runnel_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = services::tansu(dir.path());
    let s3 = services::moto(dir.path());
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    services::create_topics(
        &bootstrap,
        &[
            ("s3-events", 1),
            ("image-processed", 1),
            ("notifications", 1),
        ],
    )
    .await;
    let (s3_client, _) = services::aws_clients(&endpoint).await;
    services::create_buckets(&s3_client, &["uploads", "thumbnails", "dead-letters"]).await;
    let webhook = WebhookReceiver::start().await;
    let deploy = std::fs::read_to_string(repo().join("deploy/runnel.kafka-s3.toml")).unwrap();
    let env = services::deploy_env(&endpoint, &bootstrap, &webhook.url);
    let runnel = Runnel::start(dir.path(), &pipelines(), &env, &deploy).await;

    let record = |name: &str, key: &str| {
        serde_json::json!({"Records": [{"eventName": name,
            "s3": {"bucket": {"name": "uploads"}, "object": {"key": key, "size": 10, "eTag": "abc"}}}]})
        .to_string()
        .into_bytes()
    };
    produce_raw(
        &bootstrap,
        "s3-events",
        &[
            b"this is not JSON".to_vec(),
            vec![0xff, 0xfe, 0x7b, 0x00, 0xc3],
            br#"{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}"#.to_vec(),
            // Not a creation: nothing to do, and nothing dead-lettered.
            record("s3:ObjectRemoved:Delete", "gone.jpg"),
            br#"{"Event": "s3:TestEvent", "Bucket": "uploads"}"#.to_vec(),
            // A creation of an object that is not there.
            record("s3:ObjectCreated:Put", "missing.jpg"),
            // JSON, but no notification runnel knows: dead-lettered, never
            // deleted as if it had no work (it used to yield no events).
            br#"{"hello": "world"}"#.to_vec(),
        ],
    )
    .await;
    produce_raw(
        &bootstrap,
        "image-processed",
        &[b"{\"source\": \"\xff\xfe\"}".to_vec(), b"[1, 2,".to_vec()],
    )
    .await;

    let records = eventually("seven dead letters", WAIT, || async {
        let records = dead_letters(&s3_client).await;
        (records.len() >= 7).then_some(records)
    })
    .await;
    let errors: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["pipeline"].as_str().unwrap().to_owned(),
                r["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let count = |pipeline: &str, needle: &str| {
        errors
            .iter()
            .filter(|(p, e)| p == pipeline && e.contains(needle))
            .count()
    };
    assert_eq!(
        count("image-upload", "malformed S3 event notification"),
        3,
        "not JSON, not UTF-8, no s3 entity: {errors:#?}"
    );
    assert_eq!(count("image-upload", "missing.jpg"), 1, "{errors:#?}");
    assert_eq!(
        count("image-upload", "not an S3 event notification"),
        1,
        "{errors:#?}"
    );
    assert_eq!(count("notify", ""), 2, "{errors:#?}");
    assert_eq!(
        errors.len(),
        7,
        "removals and test events are not errors: {errors:#?}"
    );
    for record in &records {
        assert_eq!(
            record["attempts"], 1,
            "permanent failures are not retried: {record}"
        );
    }
    runnel
        .wait_for_metric(
            "runnel_dead_letters_total",
            &[("pipeline", "image-upload")],
            5.0,
        )
        .await;
    runnel
        .wait_for_metric("runnel_dead_letters_total", &[("pipeline", "notify")], 2.0)
        .await;

    // Still serving: a real upload goes all the way through.
    let photo = photo_jpeg(300, 200);
    let put = s3_client
        .put_object()
        .bucket("uploads")
        .key("after.jpg")
        .body(photo.clone().into())
        .send()
        .await
        .unwrap();
    let etag = put.e_tag().unwrap().trim_matches('"').to_owned();
    let good = serde_json::json!({"Records": [{"eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"},
               "object": {"key": "after.jpg", "size": photo.len(), "eTag": etag}}}]});
    produce_raw(&bootstrap, "s3-events", &[good.to_string().into_bytes()]).await;
    eventually("the notification of a good upload", WAIT, || async {
        (webhook.count() == 1).then_some(())
    })
    .await;
    let (_, thumbnail) = runnel
        .object("thumbnails", "after-128.jpg")
        .await
        .expect("thumbnail");
    let image = image::load_from_memory(&thumbnail).unwrap();
    assert_eq!((image.width(), image.height()), (128, 85));

    // The envelopes AWS delivers: S3 → SNS → SQS without raw delivery (the
    // record as text in an SNS notification), and EventBridge.
    let upload = |key: &'static str, width: u32| {
        let (client, photo) = (s3_client.clone(), photo_jpeg(width, 100));
        async move {
            let put = client
                .put_object()
                .bucket("uploads")
                .key(key)
                .body(photo.clone().into())
                .send()
                .await
                .unwrap();
            (
                put.e_tag().unwrap().trim_matches('"').to_owned(),
                photo.len(),
            )
        }
    };
    let (etag, size) = upload("sns.jpg", 300).await;
    let inner = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": "sns.jpg", "size": size, "eTag": etag}}}]});
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads", "Message": inner.to_string()});
    let (etag, size) = upload("eventbridge.jpg", 400).await;
    let eventbridge = serde_json::json!({"version": "0", "detail-type": "Object Created",
        "source": "aws.s3", "detail": {"bucket": {"name": "uploads"},
        "object": {"key": "eventbridge.jpg", "size": size, "etag": etag}}});
    // Another bucket's notification on the same topic is not this source's.
    let other = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "elsewhere"}, "object": {"key": "x.jpg", "size": 1, "eTag": "e"}}}]});
    // An object overwritten after its notification: the old version is not
    // read under the old event's name; it is dead-lettered saying so.
    let (first, size) = upload("over.jpg", 500).await;
    upload("over.jpg", 600).await;
    let stale = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": "over.jpg", "size": size, "eTag": first}}}]});
    produce_raw(
        &bootstrap,
        "s3-events",
        &[sns, eventbridge, other, stale].map(|v| v.to_string().into_bytes()),
    )
    .await;
    eventually("both wrapped uploads notified", WAIT, || async {
        (webhook.count() == 3).then_some(())
    })
    .await;
    for (key, width) in [("sns-128.jpg", 128), ("eventbridge-128.jpg", 128)] {
        let (_, thumbnail) = runnel.object("thumbnails", key).await.expect(key);
        assert_eq!(image::load_from_memory(&thumbnail).unwrap().width(), width);
    }
    let records = eventually("the stale event's dead letter", WAIT, || async {
        let records = dead_letters(&s3_client).await;
        (records.len() >= 8).then_some(records)
    })
    .await;
    let stale: Vec<_> = records
        .iter()
        .filter(|r| r["key"].as_str().unwrap_or_default().contains("over.jpg"))
        .collect();
    assert_eq!(stale.len(), 1, "{records:#?}");
    let error = stale[0]["error"].as_str().unwrap();
    assert!(error.contains("no longer the version"), "{error}");
    assert!(
        runnel.object("thumbnails", "over-512.jpg").await.is_none(),
        "the newer bytes were not processed under the older event"
    );
    assert_eq!(
        records.len(),
        8,
        "the other bucket's event was skipped: {records:#?}"
    );
}
