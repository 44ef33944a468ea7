//! `runnel up --watch`: a changed pipeline file is read and built while
//! the old pipelines run, then the event in flight finishes (once) before
//! the new ones start; a change that does not validate keeps the old ones.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{Runnel, WebhookReceiver, eventually, repo};

fn write_pipeline(file: &Path, config: &str) {
    let text = format!(
        r#"
name = "watched"
concurrency = 1

[source]
type = "storage"
bucket = "watch-in"

[function]
path = "{}"
timeout = "5s"

[function.config]
sink = "hook"
{config}

[sinks.hook]
type = "webhook"
url = "${{HOOK_URL}}"
timeout = "10s"
"#,
        repo().join("functions/testing/probe").display()
    );
    std::fs::write(file, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_pipeline_reloads_once_the_event_in_flight_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let file = pipelines.join("watched.toml");
    write_pipeline(&file, "mode = \"echo\"");
    // Each call takes two seconds: the first event is still writing when
    // the file changes.
    let webhook = WebhookReceiver::start_with_delay(Duration::from_secs(2)).await;
    let runnel = Runnel::start(
        &dir.path().join("runnel"),
        std::slice::from_ref(&pipelines),
        &[("HOOK_URL", webhook.url.as_str()), ("RUNNEL_WATCH", "true")],
        "",
    )
    .await;
    let log_has = |text: &'static str| {
        let runnel = &runnel;
        async move { runnel.log_text().contains(text).then_some(()) }
    };
    eventually("watching", Duration::from_secs(30), || {
        log_has("watching for changes")
    })
    .await;

    let response = runnel
        .upload("watch-in", "first", b"first".to_vec(), None)
        .await;
    assert_eq!(response.status(), 201);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        webhook.count(),
        0,
        "the first event's call is still under way"
    );
    write_pipeline(&file, "mode = \"many\"\ncount = 3");

    eventually("the reload", Duration::from_secs(60), || {
        log_has("reloaded")
    })
    .await;
    assert_eq!(
        webhook.count(),
        1,
        "the event in flight finished before the new pipeline started"
    );
    let log = runnel.log_text();
    let finishing = log
        .find("reloading: finishing the events in flight first")
        .unwrap();
    assert!(finishing < log.find("reloaded").unwrap());

    // The new config is in effect; the first event is not run again.
    let response = runnel
        .upload("watch-in", "second", b"second".to_vec(), None)
        .await;
    assert_eq!(response.status(), 201);
    eventually(
        "three calls for the second event",
        Duration::from_secs(30),
        || async { (webhook.count() >= 4).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let received = webhook.received.lock().unwrap();
        let first: Vec<_> = received.iter().filter(|r| r.body == "first").collect();
        assert_eq!(first.len(), 1, "the first event was delivered once");
        assert_eq!(
            received.len(),
            4,
            "one call, then three: {:?}",
            received.iter().map(|r| &r.body).collect::<Vec<_>>()
        );
    }

    // A broken edit is reported and the running pipeline stays.
    std::fs::write(&file, "name = \"watched\"\n[source]\ntype = \"storage\"\n").unwrap();
    eventually("the refusal", Duration::from_secs(30), || {
        log_has("keeping the running pipelines")
    })
    .await;
    let response = runnel
        .upload("watch-in", "third", b"third".to_vec(), None)
        .await;
    assert_eq!(response.status(), 201);
    eventually(
        "the third event under the running config",
        Duration::from_secs(30),
        || async { (webhook.count() >= 7).then_some(()) },
    )
    .await;
}
