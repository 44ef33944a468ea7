//! Backpressure: uploads arrive far faster than the pipelines can work
//! (sixteen clients uploading at once, ten times the first load), and
//! memory stays where it was — work waits in the durable source, not in
//! memory; at most `concurrency` events are in flight.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::{Runnel, WebhookReceiver, photo_jpeg, pipelines};

const WAIT: Duration = Duration::from_secs(300);

async fn upload_all(runnel: &Arc<Runnel>, prefix: &str, count: usize, photo: &[u8]) {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (runnel, photo, prefix) = (runnel.clone(), photo.to_vec(), prefix.to_owned());
        lanes.spawn(async move {
            for i in (lane..count).step_by(16) {
                let response = runnel
                    .upload("uploads", &format!("{prefix}/{i}.jpg"), photo.clone(), None)
                    .await;
                assert_eq!(response.status(), 201);
            }
        });
    }
    lanes.join_all().await;
}

async fn wait_done(runnel: &Runnel, pipeline: &str, count: usize) {
    runnel
        .wait_for_metric(
            "runnel_events_completed_total",
            &[("pipeline", pipeline), ("result", "done")],
            count as f64,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_times_the_load_raises_latency_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let runnel = Arc::new(
        Runnel::start(
            dir.path(),
            &pipelines(),
            &[("NOTIFY_WEBHOOK_URL", &webhook.url)],
            "",
        )
        .await,
    );
    let photo = photo_jpeg(400, 300);
    const FIRST: usize = 100;
    const SECOND: usize = 10 * FIRST;

    upload_all(&runnel, "first", FIRST, &photo).await;
    tokio::time::timeout(WAIT, wait_done(&runnel, "notify", FIRST))
        .await
        .expect("the first load done");
    let after_first = runnel.peak_rss_mib();

    // While the second load is processed, in-flight events stay within the
    // pipelines' concurrency (the default: cores + 1).
    let watching = Arc::new(AtomicBool::new(true));
    let most_in_flight = {
        let (runnel, watching) = (runnel.clone(), watching.clone());
        tokio::spawn(async move {
            let mut most = 0.0f64;
            while watching.load(Ordering::SeqCst) {
                for pipeline in ["image-upload", "notify"] {
                    let n = runnel
                        .metric("runnel_inflight_events", &[("pipeline", pipeline)])
                        .await;
                    most = most.max(n);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        })
    };
    upload_all(&runnel, "second", SECOND, &photo).await;
    tokio::time::timeout(WAIT, wait_done(&runnel, "notify", FIRST + SECOND))
        .await
        .expect("the second load done");
    watching.store(false, Ordering::SeqCst);
    let most_in_flight = most_in_flight.await.unwrap();
    let after_second = runnel.peak_rss_mib();
    eprintln!(
        "peak RSS after {FIRST} uploads: {after_first:.0} MiB; after {SECOND} more, all at once: \
         {after_second:.0} MiB; most events in flight per pipeline: {most_in_flight}"
    );
    let concurrency = runnel::config::pipeline::default_concurrency() as f64;
    assert!(most_in_flight <= concurrency, "{most_in_flight} in flight");
    assert!(
        after_second < after_first + 64.0,
        "10x the load grew peak RSS from {after_first:.0} to {after_second:.0} MiB"
    );
    assert!(after_second < 300.0, "peak RSS {after_second:.0} MiB");
    assert_eq!(webhook.count(), FIRST + SECOND);
}
