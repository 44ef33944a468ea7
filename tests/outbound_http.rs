//! The `http` capability: a function's outbound requests reach only the
//! URLs its pipeline allows, carry the event's idempotency key and trace
//! context, and stop at the capability's timeout and response size; in
//! Rust (the probe, through runnel-sdk) and in Python (`runnel.http`).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Runnel, eventually};

/// A local API: `/api/echo` answers JSON of what it was sent (method,
/// headers runnel adds, body); `/api/slow` answers after 3 s; `/api/big`
/// sends 2 KiB with its length, `/api/stream` 2 KiB without; `/api/moved`
/// redirects to `/elsewhere`. Every path it was asked for is recorded.
struct Api {
    base: String,
    host: String,
    seen: Arc<Mutex<Vec<String>>>,
}

type Seen = Arc<Mutex<Vec<String>>>;

async fn api(
    axum::extract::State(seen): axum::extract::State<Seen>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let path = request.uri().path().to_owned();
    seen.lock().unwrap().push(path.clone());
    // Read before any await: a borrowed request (its body is not Sync)
    // would make the handler's future not Send.
    let (method, key, trace) = {
        let header = |name: &str| {
            (request.headers().get(name))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (
            request.method().to_string(),
            header("idempotency-key"),
            header("traceparent"),
        )
    };
    match path.as_str() {
        "/api/echo" => {
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap();
            axum::Json(serde_json::json!({
                "method": method,
                "idempotency_key": key,
                "traceparent": trace,
                "body": String::from_utf8_lossy(&body),
            }))
            .into_response()
        }
        "/api/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late".into_response()
        }
        "/api/big" => vec![b'x'; 2048].into_response(),
        "/api/stream" => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                (0..8).map(|_| Ok(vec![b'y'; 256])).collect();
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        "/api/moved" => (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Api {
    async fn start() -> Self {
        let seen: Seen = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(api).with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: format!("http://{host}"),
            host,
            seen,
        }
    }

    fn seen(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// A probe pipeline in mode `http` requesting `url`, from topic
/// `in-<name>` to topic `out-<name>`; `capabilities` is the body of its
/// `[function.capabilities]` (none when empty).
fn pipeline(dir: &Path, name: &str, url: &str, config: &str, capabilities: &str) -> PathBuf {
    let capabilities = match capabilities {
        "" => String::new(),
        c => format!("[function.capabilities]\n{c}\n"),
    };
    let tables =
        format!("[function.config]\nmode = \"http\"\nurl = \"{url}\"\n{config}\n{capabilities}");
    harness::probe_topic_pipeline(dir, name, &tables)
}

async fn publish(runnel: &Runnel, name: &str, body: &str) {
    runnel.publish(&format!("in-{name}"), None, body).await;
}

/// The dead letter of pipeline `name`: its error and attempts.
async fn dead_letter(runnel: &Runnel, name: &str) -> (String, u64) {
    runnel
        .wait_for_metric("runnel_dead_letters_total", &[("pipeline", name)], 1.0)
        .await;
    let dead = runnel.topic(&format!("dead-{name}")).await;
    let record: serde_json::Value =
        serde_json::from_str(dead[0]["payload"].as_str().unwrap()).unwrap();
    (
        record["error"].as_str().unwrap().to_owned(),
        record["attempts"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_only_what_is_allowed_with_the_events_key_and_limits() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let allow = |extra: &str| format!("http = [\"{}/api/*\"]\n{extra}", api.base);
    let d = dir.path();
    let pipelines = [
        pipeline(
            d,
            "allowed",
            &format!("{}/api/echo", api.base),
            "method = \"POST\"\ncount = 2",
            &allow(""),
        ),
        pipeline(
            d,
            "elsewhere",
            &format!("{}/other", api.base),
            "",
            &allow(""),
        ),
        pipeline(
            d,
            "sneaky",
            &format!("{}/api/%2e%2e/other", api.base),
            "",
            &allow(""),
        ),
        pipeline(d, "ungranted", &format!("{}/api/echo", api.base), "", ""),
        pipeline(
            d,
            "slow",
            &format!("{}/api/slow", api.base),
            "",
            &allow("http_timeout = \"500ms\""),
        ),
        pipeline(
            d,
            "big",
            &format!("{}/api/big", api.base),
            "",
            &allow("http_max_response_size = \"1KiB\""),
        ),
        pipeline(
            d,
            "stream",
            &format!("{}/api/stream", api.base),
            "",
            &allow("http_max_response_size = \"1KiB\""),
        ),
        pipeline(
            d,
            "moved",
            &format!("{}/api/moved", api.base),
            "",
            &allow(""),
        ),
    ];
    let runnel = Runnel::start(&d.join("runnel"), &pipelines, &[], "").await;
    for name in [
        "allowed",
        "elsewhere",
        "sneaky",
        "ungranted",
        "slow",
        "big",
        "stream",
        "moved",
    ] {
        publish(&runnel, name, "hello").await;
    }

    // Allowed: two requests, each with the event's key and its ordinal,
    // and the event's trace.
    let out = eventually(
        "two responses from allowed",
        Duration::from_secs(60),
        || async {
            let out = runnel.topic("out-allowed").await;
            (out.len() >= 2).then_some(out)
        },
    )
    .await;
    let answers: Vec<serde_json::Value> = out
        .iter()
        .map(|m| serde_json::from_str(m["payload"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(out[0]["headers"]["status"], "200", "{out:?}");
    // The two outputs may sit in different partitions: order by key.
    let mut keys: Vec<&str> = answers
        .iter()
        .map(|a| a["idempotency_key"].as_str().unwrap())
        .collect();
    keys.sort();
    let event_key = keys[0]
        .strip_suffix(":1")
        .expect("the first request's key ends with :1");
    assert!(!event_key.is_empty(), "{keys:?}");
    assert_eq!(
        keys[1],
        format!("{event_key}:2"),
        "the same event key, the next ordinal"
    );
    for answer in &answers {
        assert_eq!(answer["method"], "POST");
        assert_eq!(answer["body"], "hello", "the event's data as the body");
        let trace = answer["traceparent"].as_str().unwrap();
        assert!(
            trace.len() == 55 && trace.starts_with("00-"),
            "a W3C traceparent: {trace:?}"
        );
    }
    assert_eq!(
        runnel
            .metric(
                "runnel_function_http_requests_total",
                &[
                    ("pipeline", "allowed"),
                    ("function", "probe"),
                    ("host", &api.host),
                    ("outcome", "ok")
                ]
            )
            .await,
        2.0
    );

    // Refused, never sent, and not retried: a URL the patterns do not
    // match, a dot segment hidden in an encoding, and no grant at all.
    for (name, expected) in [
        ("elsewhere", "lists no pattern matching it"),
        ("sneaky", "lists no pattern matching it"),
        ("ungranted", "lists no pattern matching it"),
    ] {
        let (error, attempts) = dead_letter(&runnel, name).await;
        assert!(error.contains("outbound HTTP: denied"), "{name}: {error}");
        assert!(error.contains("is not allowed"), "{name}: {error}");
        assert!(error.contains(expected), "{name}: {error}");
        assert_eq!(attempts, 1, "{name}: a refusal is not retried");
    }
    assert_eq!(
        api.seen("/other"),
        0,
        "a refused request never leaves the host"
    );
    assert_eq!(
        api.seen("/api/echo"),
        2,
        "only the allowed pipeline's requests arrived"
    );
    for name in ["elsewhere", "sneaky", "ungranted"] {
        assert_eq!(
            runnel
                .metric(
                    "runnel_function_http_requests_total",
                    &[
                        ("pipeline", name),
                        ("function", "probe"),
                        ("host", "none"),
                        ("outcome", "denied")
                    ]
                )
                .await,
            1.0,
            "{name}"
        );
    }

    // A timeout is worth retrying: both attempts ran into it.
    let (error, attempts) = dead_letter(&runnel, "slow").await;
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(attempts, 2, "retried: {error}");
    assert_eq!(
        runnel
            .metric(
                "runnel_function_http_requests_total",
                &[
                    ("pipeline", "slow"),
                    ("function", "probe"),
                    ("host", &api.host),
                    ("outcome", "timeout")
                ]
            )
            .await,
        2.0
    );

    // Too large, whether the length is declared or the body just goes on.
    for name in ["big", "stream"] {
        let (error, attempts) = dead_letter(&runnel, name).await;
        assert!(
            error.contains("larger than 1024 bytes (http_max_response_size)"),
            "{name}: {error}"
        );
        assert_eq!(attempts, 1, "{name}: not retried");
    }

    // A redirect is a response, not followed.
    let moved = eventually("the redirect", Duration::from_secs(30), || async {
        runnel.topic("out-moved").await.into_iter().next()
    })
    .await;
    assert_eq!(moved["headers"]["status"], "302", "{moved}");
    assert_eq!(api.seen("/elsewhere"), 0);
}

/// A Python function granted outbound HTTP uses `runnel.http` (built
/// against the `function-with-http` world), under `runnel invoke` too; a
/// URL it is not granted raises `runnel.HttpError` of kind `denied`.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_function_calls_an_api_it_is_granted() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("caller");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("app.py"),
        r#"import runnel

def handle(ctx, event):
    answer = runnel.http.post(ctx.config["api"] + "/api/echo", event.data, {"content-type": "text/plain"}).json()
    try:
        runnel.http.get(ctx.config["api"] + "/other")
        denied = "sent"
    except runnel.HttpError as error:
        denied = f"{error.kind} retryable={error.retryable}"
    try:
        runnel.http.get(ctx.config["api"] + "/api/big")
        big = "read"
    except runnel.HttpError as error:
        big = error.kind
    key = answer["idempotency_key"].rsplit(":", 1)[1]
    return [runnel.Output("out", data=f"{answer['method']} {answer['body']} key#{key} [{denied}] [{big}]")]
"#,
    )
    .unwrap();
    let pipeline = dir.path().join("caller.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"caller\"\n[source]\ntype = \"topic\"\ntopic = \"in\"\n[function]\npath = \"caller\"\n[function.config]\napi = \"{}\"\n[function.capabilities]\nhttp = [\"{}/api/*\"]\nhttp_max_response_size = \"1KiB\"\n[sinks.out]\ntype = \"topic\"\ntopic = \"out\"\n",
            api.base, api.base
        ),
    )
    .unwrap();
    let event = dir.path().join("event.txt");
    std::fs::write(&event, "hello").unwrap();
    // The compiled components are shared with the other tests' runs.
    let config = dir.path().join("runnel.toml");
    std::fs::write(
        &config,
        format!("[functions]\ncache_dir = {:?}\n", harness::cache_dir()),
    )
    .unwrap();
    let data = dir.path().join("data");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("invoke")
            .arg(&pipeline)
            .arg("--event")
            .arg(&event)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("POST hello key#1 [denied retryable=False] [too-large]"),
        "{stdout}"
    );
    assert_eq!(api.seen("/other"), 0);
}
