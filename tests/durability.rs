//! Acknowledged uploads survive `kill -9`, and redelivery after a crash
//! does not duplicate outputs.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{Runnel, WebhookReceiver, eventually, photo_jpeg, pipelines, repo};

const WAIT: Duration = Duration::from_secs(90);

/// An upload acknowledged (201) while no pipeline consumes the bucket is
/// processed exactly once after the process is killed and restarted with
/// the pipelines: thumbnails present, one event, one notification.
#[tokio::test(flavor = "multi_thread")]
async fn upload_acknowledged_before_a_kill_is_processed_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    // Only `notify` runs: the bucket's change feed records the upload, but
    // nothing processes it yet.
    let notify_only = [repo().join("pipelines/notify.toml")];
    let mut runnel = Runnel::start(dir.path(), &notify_only, &env, "").await;
    let response = runnel
        .upload(
            "uploads",
            "photos/kept.jpg",
            photo_jpeg(700, 500),
            Some("bob"),
        )
        .await;
    assert_eq!(response.status(), 201);
    runnel.kill_and_restart(Some(&pipelines())).await;

    eventually("the notification", WAIT, || async {
        (webhook.count() >= 1).then_some(())
    })
    .await;
    for key in ["photos/kept-128.jpg", "photos/kept-512.jpg"] {
        assert!(runnel.object("thumbnails", key).await.is_some(), "{key}");
    }
    // Give a duplicate every chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(webhook.count(), 1);
    assert_eq!(runnel.topic("image-processed").await.len(), 1);
    let notifications = runnel.topic("notifications").await;
    assert_eq!(notifications.len(), 1);
    assert!(
        notifications[0]["payload"]
            .as_str()
            .unwrap()
            .contains("photos/kept.jpg for bob: 2 thumbnails ready")
    );
}

/// Killed in the middle of a burst of uploads and restarted, runnel still
/// finishes every upload; topics hold exactly one event and notification
/// per upload (republished outputs are dropped by producer id), and any
/// repeated webhook call carries the same `Idempotency-Key` as the first.
#[tokio::test(flavor = "multi_thread")]
async fn kill_mid_processing_loses_nothing_and_duplicates_no_topic_output() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let env = [("NOTIFY_WEBHOOK_URL", webhook.url.as_str())];
    let mut runnel = Runnel::start(dir.path(), &pipelines(), &env, "").await;
    const UPLOADS: usize = 12;
    let photo = photo_jpeg(800, 600);
    for i in 0..UPLOADS {
        let mut bytes = photo.clone();
        bytes.extend_from_slice(format!("{i}").as_bytes()); // a distinct etag each
        assert_eq!(
            runnel
                .upload("uploads", &format!("burst/{i}.jpg"), bytes, Some("carol"))
                .await
                .status(),
            201
        );
    }
    eventually("some progress before the kill", WAIT, || async {
        (webhook.count() >= 2).then_some(())
    })
    .await;
    runnel.kill_and_restart(None).await;

    eventually("every upload's notification", WAIT, || async {
        (runnel.topic("notifications").await.len() >= UPLOADS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runnel.topic("image-processed").await.len(), UPLOADS);
    assert_eq!(runnel.topic("notifications").await.len(), UPLOADS);
    for i in 0..UPLOADS {
        assert!(
            runnel
                .object("thumbnails", &format!("burst/{i}-512.jpg"))
                .await
                .is_some(),
            "upload {i}"
        );
    }
    let received = webhook.received.lock().unwrap().clone();
    let mut by_upload: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &received {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let key = body["source"]["key"].as_str().unwrap().to_owned();
        by_upload
            .entry(key)
            .or_default()
            .push(r.idempotency_key.clone());
    }
    assert_eq!(by_upload.len(), UPLOADS, "every upload was notified");
    for (key, ids) in &by_upload {
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "{key}: repeats must reuse the key: {ids:?}"
        );
    }
    let repeats = received.len() - UPLOADS;
    eprintln!("webhook repeats after the kill: {repeats}");
    // notify.toml works on 2 events at a time, and 2 more may be recording
    // their completion after their outputs were written.
    assert!(
        repeats <= 4,
        "at most the in-flight notifications repeat, got {repeats}"
    );
}
