//! Retries and dead letters through a running pipeline, with the probe
//! component: retryable errors are retried up to `max_attempts`, permanent
//! ones and traps, timeouts and out-of-memory are not, and each ends as a
//! dead letter with its classification.

mod harness;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Runnel, eventually, repo};

const WAIT: Duration = Duration::from_secs(60);

fn dead_letter_key(name: &str, body: &[u8]) -> String {
    let etag = hex::encode(<md5::Md5 as md5::Digest>::digest(body));
    format!("probe/probe-in_{name}@{etag}.json")
}

/// Each failure mode ends in the dead-letter sink after the right number of
/// attempts, with the right outcome counted; an echo still works after.
#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_or_not_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = [repo().join("tests/fixtures/pipelines/probe.toml")];
    let runnel = Runnel::start(dir.path(), &pipeline, &[], "").await;
    // (object name, body, attempts, outcome label of the last invocation)
    let cases = [
        ("fail", "mode:fail", 3, "error"),
        ("reject", "mode:reject", 1, "error"),
        ("spin", "mode:spin", 1, "timeout"),
        ("hog", "mode:hog", 1, "oom"),
        ("trap", "mode:trap", 1, "trap"),
        // Over the pipeline's output limits: refused, not written.
        ("many", "mode:many", 1, "ok"),
        ("big", "mode:big", 1, "ok"),
        // A million outputs, or one of 1 GiB: the memory limit stops the
        // function before the host sees them.
        ("flood", "mode:flood", 1, "oom"),
        ("giant", "mode:giant", 1, "oom"),
        // An output for a sink the pipeline does not have.
        ("stray", "mode:stray", 1, "ok"),
    ];
    for (name, body, _, _) in cases {
        assert_eq!(
            runnel
                .upload("probe-in", name, body.into(), None)
                .await
                .status(),
            201
        );
    }
    for (name, body, attempts, outcome) in cases {
        let key = dead_letter_key(name, body.as_bytes());
        let (_, bytes) = eventually(&key, WAIT, || async {
            runnel.object("dead-letters", &key).await
        })
        .await;
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(record["attempts"], attempts, "{name}: {record}");
        assert_eq!(record["outcome"], outcome, "{name}: {record}");
        assert_eq!(record["stage"], "invoke");
        assert_eq!(record["event"]["subject"], name);
    }
    let m = |outcome: &'static str| {
        let runnel = &runnel;
        async move {
            runnel
                .metric(
                    "runnel_invocations_total",
                    &[
                        ("pipeline", "probe"),
                        ("function", "probe"),
                        ("outcome", outcome),
                    ],
                )
                .await
        }
    };
    assert_eq!(m("error").await, 4.0, "3 attempts of fail + 1 of reject");
    assert_eq!(m("timeout").await, 1.0);
    assert_eq!(m("oom").await, 3.0, "hog, flood, giant");
    assert_eq!(m("trap").await, 1.0);
    assert_eq!(
        runnel
            .metric("runnel_retries_total", &[("pipeline", "probe")])
            .await,
        2.0
    );
    assert_eq!(
        runnel
            .metric("runnel_dead_letters_total", &[("pipeline", "probe")])
            .await,
        10.0
    );
    let many: serde_json::Value = serde_json::from_slice(
        &runnel
            .object("dead-letters", &dead_letter_key("many", b"mode:many"))
            .await
            .unwrap()
            .1,
    )
    .unwrap();
    assert!(
        many["error"]
            .as_str()
            .unwrap()
            .contains("function.max_outputs = 5"),
        "{many}"
    );
    assert!(
        runnel.object("probe-out", "many-0").await.is_none(),
        "nothing of a refused result is written"
    );
    let stray: serde_json::Value = serde_json::from_slice(
        &runnel
            .object("dead-letters", &dead_letter_key("stray", b"mode:stray"))
            .await
            .unwrap()
            .1,
    )
    .unwrap();
    assert!(
        stray["error"]
            .as_str()
            .unwrap()
            .contains("undeclared sink \"undeclared\" (declared: out)"),
        "{stray}"
    );

    let trap: serde_json::Value = serde_json::from_slice(
        &runnel
            .object("dead-letters", &dead_letter_key("trap", b"mode:trap"))
            .await
            .unwrap()
            .1,
    )
    .unwrap();
    assert!(trap["error"].as_str().unwrap().contains("trap"), "{trap}");

    assert_eq!(
        runnel
            .upload("probe-in", "hello", "hello".into(), None)
            .await
            .status(),
        201
    );
    let (_, echoed) = eventually("the echo", WAIT, || async {
        runnel.object("probe-out", "hello").await
    })
    .await;
    assert_eq!(echoed, b"hello");
}

/// A webhook answering 503 with `Retry-After: 1` is retried after that
/// second, not the pipeline's shorter backoff, and then succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    use std::time::Instant;

    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let app =
        axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(calls): axum::extract::State<
                        Arc<Mutex<Vec<Instant>>>,
                    >| async move {
                        let mut calls = calls.lock().unwrap();
                        calls.push(Instant::now());
                        if calls.len() == 1 {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                [("retry-after", "1")],
                            )
                                .into_response()
                        } else {
                            "ok".into_response()
                        }
                    },
                ),
            )
            .with_state(calls.clone());
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(
        dir.path(),
        &harness::pipelines(),
        &[("NOTIFY_WEBHOOK_URL", &url)],
        "",
    )
    .await;
    assert_eq!(
        runnel
            .upload("uploads", "r.jpg", harness::photo_jpeg(200, 100), None)
            .await
            .status(),
        201
    );
    eventually("the retried notification", WAIT, || async {
        (calls.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    let waited = calls[1] - calls[0];
    // notify.toml's first backoff cap is 500ms; Retry-After asked for 1s.
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    assert_eq!(
        runnel
            .metric("runnel_retries_total", &[("pipeline", "notify")])
            .await,
        1.0
    );
}

/// A webhook endpoint that answers 503 to the first `fail` POSTs of each
/// output whose id ends in `/1` and records every call as (path, id, status).
async fn flaky_endpoint(fail: &'static [(&'static str, usize)]) -> (String, Calls) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    let calls: Calls = Arc::default();
    let app =
        axum::Router::new()
            .route(
                "/{path}",
                axum::routing::post(
                    move |State(calls): State<Calls>,
                          Path(path): Path<String>,
                          headers: HeaderMap| async move {
                        let id = headers["idempotency-key"].to_str().unwrap().to_owned();
                        let mut calls = calls.lock().unwrap();
                        let before = calls
                            .iter()
                            .filter(|(p, i, _)| *p == path && *i == id)
                            .count();
                        let failures = fail.iter().find(|(p, _)| *p == path).map_or(0, |(_, n)| *n);
                        let status = if id.ends_with("/1") && before < failures {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        calls.push((path, id, status.as_u16()));
                        status
                    },
                ),
            )
            .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

type Calls = Arc<Mutex<Vec<(String, String, u16)>>>;

/// How many POSTs each output got, by the suffix of its id (`hook/0`...).
fn posts(calls: &Calls, path: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (p, id, _) in calls.lock().unwrap().iter() {
        if p == path {
            let output = id.rsplit('#').next().unwrap().to_owned();
            *counts.entry(output).or_default() += 1;
        }
    }
    counts
}

/// An attempt that failed at its second output is retried by running the
/// function again, and only the outputs not yet delivered are sent: the
/// first once, the failing one until it succeeds, the third once.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_event_skips_the_outputs_already_delivered() {
    let (url, calls) = flaky_endpoint(&[("hook", 1), ("patient", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = [
        repo().join("tests/fixtures/pipelines/probe-webhook.toml"),
        repo().join("tests/fixtures/pipelines/probe-patient.toml"),
    ];
    let runnel = Runnel::start(dir.path(), &pipelines, &[("PROBE_WEBHOOK_URL", &url)], "").await;
    for bucket in ["probe-webhook-in", "probe-patient-in"] {
        let response = runnel.upload(bucket, "e", "mode:many".into(), None).await;
        assert_eq!(response.status(), 201);
    }
    let done = |pipeline: &'static str| {
        let runnel = &runnel;
        async move {
            runnel
                .metric(
                    "runnel_events_completed_total",
                    &[("pipeline", pipeline), ("result", "done")],
                )
                .await
        }
    };
    eventually("both events done", WAIT, || async {
        (done("probe-webhook").await == 1.0 && done("probe-patient").await == 1.0).then_some(())
    })
    .await;

    let expected = |failing: usize| {
        BTreeMap::from([
            ("hook/0".to_owned(), 1),
            ("hook/1".to_owned(), failing + 1),
            ("hook/2".to_owned(), 1),
        ])
    };
    assert_eq!(posts(&calls, "hook"), expected(1));
    assert_eq!(posts(&calls, "patient"), expected(3));
    let invocations = |pipeline: &'static str| {
        let runnel = &runnel;
        async move {
            runnel
                .metric(
                    "runnel_invocations_total",
                    &[
                        ("pipeline", pipeline),
                        ("function", "probe"),
                        ("outcome", "ok"),
                    ],
                )
                .await
        }
    };
    // The pipeline's policy ran the function twice; the sink's policy
    // retried the write in place and ran it once.
    assert_eq!(invocations("probe-webhook").await, 2.0);
    assert_eq!(invocations("probe-patient").await, 1.0);
    let skipped = runnel
        .metric(
            "runnel_outputs_skipped_total",
            &[("pipeline", "probe-webhook"), ("sink", "hook")],
        )
        .await;
    assert_eq!(skipped, 1.0, "output 0 was not sent again");
    assert_eq!(
        runnel
            .metric("runnel_retries_total", &[("pipeline", "probe-patient")])
            .await,
        3.0
    );
}
