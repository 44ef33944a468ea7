//! HTTP requests as events (`mode = "async"`): queued durably before the
//! 202, handled like any event, their status readable by id.

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{Runnel, eventually, repo};

/// The probe as an event function behind an async route; the request
/// body picks its mode (`mode:noop`, `mode:reject`…).
fn async_pipeline(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"name = "inbox"
concurrency = 1
[source]
type = "http"
mode = "async"
routes = ["/inbox/..."]
methods = ["POST"]
[function]
path = {:?}
timeout = "3s"
[sinks.out]
type = "topic"
topic = "inbox-out"
[dead_letter]
type = "storage"
bucket = "dead-letters"
[retry]
max_attempts = 2
initial_delay = "10ms"
"#,
        repo().join("functions/testing/probe")
    );
    let file = dir.join("inbox.toml");
    std::fs::write(&file, text).unwrap();
    file
}

async fn post(runnel: &Runnel, body: &'static str, key: Option<&str>) -> serde_json::Value {
    let mut request = runnel.client.post(runnel.url("/inbox/orders")).body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(
        location,
        format!("/v1/invocations/{}", body["id"].as_str().unwrap())
    );
    body
}

async fn status(runnel: &Runnel, id: &str) -> (u16, serde_json::Value) {
    let response = runnel
        .client
        .get(runnel.url(&format!("/v1/invocations/{id}")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn wait_for(runnel: &Runnel, id: &str, wanted: &str) {
    eventually(
        &format!("{id} to be {wanted}"),
        Duration::from_secs(30),
        || async {
            let (_, body) = status(runnel, id).await;
            (body["status"] == wanted).then_some(())
        },
    )
    .await;
}

/// 202 with an id, then done (or dead-lettered, for a function that
/// refuses); the same Idempotency-Key is the same id and runs once; an
/// unknown id is 404, and a path no route serves is 404 before anything is
/// queued.
#[tokio::test]
async fn queued_requests_are_handled_and_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = async_pipeline(&dir.path().join("pipelines"));
    let runnel = Runnel::start(dir.path(), &[pipeline], &[], "").await;

    let done = post(&runnel, "mode:echo", None).await;
    let id = done["id"].as_str().unwrap();
    assert!(id.starts_with("inbox."), "{id}");
    wait_for(&runnel, id, "done").await;
    // With the summary of what it wrote: the echo, to the one sink.
    let (_, body) = status(&runnel, id).await;
    assert_eq!(body["attempts"], 1, "{body}");
    assert_eq!(body["outputs"][0]["sink"], "out", "{body}");
    assert_eq!(body["outputs"][0]["key"], "/inbox/orders", "{body}");
    assert_eq!(body["outputs"][0]["bytes"], 9, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(runnel.topic("inbox-out").await.len(), 1);

    let rejected = post(&runnel, "mode:reject", None).await;
    let rejected = rejected["id"].as_str().unwrap();
    wait_for(&runnel, rejected, "dead-lettered").await;
    let (_, body) = status(&runnel, rejected).await;
    assert_eq!(body["attempts"], 1, "not retryable: {body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("probe: asked to reject"), "{body}");

    let first = post(&runnel, "mode:noop", Some("order-7")).await;
    let again = post(&runnel, "mode:noop", Some("order-7")).await;
    assert_eq!(first["id"], again["id"]);
    wait_for(&runnel, first["id"].as_str().unwrap(), "done").await;
    let queued = runnel.topic("inbox.requests").await;
    assert_eq!(queued.len(), 3, "the repeat was queued once: {queued:?}");
    let ok = [
        ("pipeline", "inbox"),
        ("function", "probe"),
        ("outcome", "ok"),
    ];
    assert_eq!(runnel.metric("runnel_invocations_total", &ok).await, 2.0);

    assert_eq!(status(&runnel, "inbox.0123").await.0, 404);
    assert_eq!(status(&runnel, "nope.0123").await.0, 404);
    let missing = runnel
        .client
        .post(runnel.url("/elsewhere"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(runnel.topic("inbox.requests").await.len(), 3);
}

/// Requests answered 202 survive a `kill -9` before any of them ran: the
/// one slot is held by a request that spins until its timeout while they
/// queue behind it, and the restarted process handles each.
#[tokio::test]
async fn accepted_requests_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = async_pipeline(&dir.path().join("pipelines"));
    let mut runnel = Runnel::start(dir.path(), &[pipeline], &[], "").await;
    let spinning = post(&runnel, "mode:spin", None).await;
    wait_for(&runnel, spinning["id"].as_str().unwrap(), "running").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let body = post(&runnel, "mode:noop", None).await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let (code, body) = status(&runnel, id).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("queued")),
            "{id}"
        );
    }
    runnel.kill_and_restart(None).await;
    for id in &ids {
        wait_for(&runnel, id, "done").await;
    }
    wait_for(&runnel, spinning["id"].as_str().unwrap(), "dead-lettered").await;
}
