//! The HTTP trigger from the outside: `runnel up` serving wasi:http
//! functions, driven with a real HTTP client.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{Runnel, repo};

/// The probe behind three overlapping routes, with small limits.
fn probe_pipeline(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"name = "probe"
concurrency = 2
[source]
type = "http"
routes = ["/probe/...", "/probe/exact/echo", "/probe/:p/echo"]
methods = ["GET", "POST"]
max_body_size = "1KiB"
max_header_size = "1KiB"
max_response_size = "64KiB"
[function]
path = {:?}
timeout = "1s"
"#,
        repo().join("functions/testing/http-probe")
    );
    let file = dir.join("probe.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `runnel up` with the probe pipeline, in a fresh directory.
async fn start_probe() -> (tempfile::TempDir, Runnel) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = probe_pipeline(&dir.path().join("pipelines"));
    let runnel = Runnel::start(dir.path(), &[pipeline], &[], "").await;
    (dir, runnel)
}

/// The echo's `name: value` lines.
fn echoed(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .map(str::to_owned)
}

/// The example pipeline answers GET with a path parameter and POST with
/// JSON; other methods, unknown paths and bad bodies get their status.
#[tokio::test]
async fn the_example_greets_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(
        dir.path(),
        &[repo().join("pipelines/hello-http.toml")],
        &[],
        "",
    )
    .await;
    let client = &runnel.client;
    let response = client.get(runnel.url("/hello/Ada")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "Hello, Ada!\n");

    let response = client
        .post(runnel.url("/hello"))
        .body(r#"{"name": "Grace"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.text().await.unwrap(),
        "{\"greeting\":\"Hello, Grace!\"}\n"
    );

    let response = client
        .post(runnel.url("/hello"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let response = client
        .delete(runnel.url("/hello/Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    let response = client.get(runnel.url("/goodbye")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    let labels = [("pipeline", "hello-http"), ("route", "/hello/:name")];
    for status in ["200", "405"] {
        let series = [labels[0], labels[1], ("status", status)];
        let count = runnel.metric("runnel_http_requests_total", &series).await;
        assert_eq!(count, 1.0, "status {status}");
    }
    assert_eq!(
        runnel
            .metric(
                "runnel_invocations_total",
                &[
                    ("pipeline", "hello-http"),
                    ("function", "hello-http"),
                    ("outcome", "ok")
                ]
            )
            .await,
        3.0,
        "the 405 and the 404 ran nothing"
    );
}

/// Exact beats `:param` beats the wildcard; parameters, the matched route
/// and the rest of the path reach the function as headers, and a client
/// cannot forge them.
#[tokio::test]
async fn routes_take_precedence_and_pass_their_params() {
    let (_dir, runnel) = start_probe().await;
    let get = |path: &'static str| {
        let request = runnel
            .client
            .get(runnel.url(path))
            .header("runnel-path-param-p", "forged")
            .header("x-custom", "kept");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.text().await.unwrap()
        }
    };
    let exact = get("/probe/exact/echo").await;
    assert_eq!(
        echoed(&exact, "runnel-matched-route").unwrap(),
        "/probe/exact/echo"
    );
    assert_eq!(
        echoed(&exact, "runnel-path-param-p"),
        None,
        "forged header dropped"
    );
    assert_eq!(echoed(&exact, "x-custom").unwrap(), "kept");

    let param = get("/probe/forty-two/echo?x=1").await;
    assert_eq!(
        echoed(&param, "runnel-matched-route").unwrap(),
        "/probe/:p/echo"
    );
    assert_eq!(echoed(&param, "runnel-path-param-p").unwrap(), "forty-two");
    assert_eq!(echoed(&param, "spin-path-match-p").unwrap(), "forty-two");
    assert_eq!(echoed(&param, "path").unwrap(), "/probe/forty-two/echo?x=1");
    assert_eq!(echoed(&param, "method").unwrap(), "GET");

    let rest = get("/probe/a/b/echo").await;
    assert_eq!(echoed(&rest, "runnel-matched-route").unwrap(), "/probe/...");
    assert_eq!(echoed(&rest, "runnel-path-info").unwrap(), "/a/b/echo");

    let response = runnel
        .client
        .get(runnel.url("/probe/status?code=201"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-probe"], "yes");
}

/// Each limit answers its status before the function runs (413, 431), or
/// when it runs out (504, a too-large response 500); a trap is a 500 whose
/// request id the log carries, and the process goes on serving.
#[tokio::test]
async fn limits_and_failures_have_their_status() {
    let (_dir, runnel) = start_probe().await;
    let client = &runnel.client;

    let big_body = vec![b'x'; 2048];
    let response = client
        .post(runnel.url("/probe/echo"))
        .body(big_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client
        .get(runnel.url("/probe/echo"))
        .header("x-big", "y".repeat(2048))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let small = client
        .post(runnel.url("/probe/echo"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        echoed(&small.text().await.unwrap(), "body").unwrap(),
        "1000 bytes"
    );

    let response = client.get(runnel.url("/probe/trap")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    harness::eventually(
        "the log names the request",
        Duration::from_secs(5),
        || async {
            runnel
                .log_text()
                .lines()
                .any(|l| l.contains(&id) && l.contains("trap"))
                .then_some(())
        },
    )
    .await;

    let started = Instant::now();
    let response = client.get(runnel.url("/probe/spin")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Over max_response_size: kept whole (an Idempotency-Key), a 500;
    // streamed, a 500 or, once the head is sent, a body cut short.
    let response = client
        .get(runnel.url("/probe/big?bytes=100000"))
        .header("idempotency-key", "big")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500, "over max_response_size");
    let response = client
        .get(runnel.url("/probe/big?bytes=100000"))
        .send()
        .await
        .unwrap();
    if response.status() != 500 {
        assert_eq!(response.status(), 200);
        assert!(
            response.bytes().await.is_err(),
            "a cut body ends in an error"
        );
    }
    let response = client
        .get(runnel.url("/probe/big?bytes=10000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 10000);

    let response = client
        .get(runnel.url("/probe/outbound"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.contains("HttpRequestDenied"), "{text}");

    for outcome in ["trap", "timeout"] {
        let labels = [
            ("pipeline", "probe"),
            ("function", "http-probe"),
            ("outcome", outcome),
        ];
        assert_eq!(
            runnel.metric("runnel_invocations_total", &labels).await,
            1.0,
            "{outcome}"
        );
    }
}

/// A response is streamed as the function writes it: the head and the
/// first chunk arrive while the function waits, and a trap after them
/// cuts the body (an error for the client, not a short body that looks
/// whole). A request with an `Idempotency-Key` is answered whole, to keep.
#[tokio::test]
async fn responses_stream_as_they_are_written() {
    let (_dir, runnel) = start_probe().await;
    let client = &runnel.client;
    let wait = Duration::from_millis(700);

    let started = Instant::now();
    let mut response = client
        .get(runnel.url("/probe/drip?ms=700"))
        .send()
        .await
        .unwrap();
    let head_at = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        head_at < wait,
        "the head came after the whole body: {head_at:?}"
    );
    assert_eq!(response.chunk().await.unwrap().unwrap(), "first\n");
    assert!(started.elapsed() < wait, "{:?}", started.elapsed());
    assert_eq!(response.chunk().await.unwrap().unwrap(), "second\n");
    assert!(started.elapsed() >= wait);
    assert_eq!(response.chunk().await.unwrap(), None);

    let mut response = client
        .get(runnel.url("/probe/drip?ms=300&trap=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.chunk().await.unwrap().unwrap(), "first\n");
    assert!(
        response.chunk().await.is_err(),
        "a cut body ends in an error"
    );
    let trap = [
        ("pipeline", "probe"),
        ("function", "http-probe"),
        ("outcome", "trap"),
    ];
    assert_eq!(runnel.metric("runnel_invocations_total", &trap).await, 1.0);

    let started = Instant::now();
    let kept = client
        .get(runnel.url("/probe/drip?ms=300"))
        .header("idempotency-key", "drip")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(kept.text().await.unwrap(), "first\nsecond\n");
}

/// With both slots busy a third request is refused at once with 503 and
/// `Retry-After`, and the busy ones still finish. (Refused, not queued: a
/// request waiting for a slot would get its 200 once one freed.)
#[tokio::test]
async fn a_busy_pipeline_refuses_at_once() {
    let (_dir, runnel) = start_probe().await;
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let request = runnel.client.get(runnel.url("/probe/busy?ms=800")).send();
            tokio::spawn(request)
        })
        .collect();
    runnel
        .wait_for_metric("runnel_inflight_events", &[("pipeline", "probe")], 2.0)
        .await;
    let response = runnel
        .client
        .get(runnel.url("/probe/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    for request in busy {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let response = runnel
        .client
        .get(runnel.url("/probe/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// On SIGTERM a request in flight is answered before the process exits
/// cleanly, and the port is closed afterwards.
#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    let (_dir, mut runnel) = start_probe().await;
    let request = tokio::spawn(runnel.client.get(runnel.url("/probe/busy?ms=700")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = runnel.terminate();
        (status, runnel)
    });
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done\n");
    let (status, runnel) = status.await.unwrap();
    assert!(status.success(), "{status}");
    assert!(
        runnel
            .client
            .get(runnel.url("/probe/echo"))
            .send()
            .await
            .is_err()
    );
}

/// A request with an `Idempotency-Key` is answered once: the same key and
/// body again gets the kept response (the function does not run again),
/// another body 422, and a repeat while the first still runs 409.
#[tokio::test]
async fn idempotent_requests_are_answered_once() {
    let (_dir, runnel) = start_probe().await;
    let post = |key: &'static str, body: &'static str| {
        let request = runnel
            .client
            .post(runnel.url("/probe/echo"))
            .header("idempotency-key", key)
            .body(body);
        async move { request.send().await.unwrap() }
    };
    let first = post("order-1", "pay 10").await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first = first.text().await.unwrap();
    let again = post("order-1", "pay 10").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    // The echo names the first request's id: this is its kept response.
    assert_eq!(again.text().await.unwrap(), first);
    let other = post("order-1", "pay 99").await;
    assert_eq!(other.status(), 422);
    let ok = [
        ("pipeline", "probe"),
        ("function", "http-probe"),
        ("outcome", "ok"),
    ];
    assert_eq!(runnel.metric("runnel_invocations_total", &ok).await, 1.0);

    let slow = |key: &'static str| {
        let request = runnel
            .client
            .get(runnel.url("/probe/busy?ms=800"))
            .header("idempotency-key", key)
            .send();
        tokio::spawn(request)
    };
    let running = slow("slow-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let repeat = slow("slow-1").await.unwrap().unwrap();
    assert_eq!(repeat.status(), 409);
    assert_eq!(running.await.unwrap().unwrap().status(), 200);
    let after = slow("slow-1").await.unwrap().unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["idempotent-replayed"], "true");

    let response = runnel
        .client
        .get(runnel.url("/probe/echo"))
        .header("idempotency-key", "x".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// A route's token bucket lets its burst through, then answers 429 with
/// `Retry-After`; a preflight from a listed origin is answered by runnel,
/// one from another origin refused, and only the listed origin's
/// responses carry CORS headers.
#[tokio::test]
async fn rate_limits_and_cors_are_per_route() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "[source]\nrate_limit = { per_second = 0.5, burst = 2 }\n\
                  cors = { origins = [\"https://app.example\"], max_age = \"1m\" }\n";
    let pipeline = harness::edited_pipeline(
        "hello-http.toml",
        &dir.path().join("pipelines"),
        &[("[source]\n", limits)],
    );
    let runnel = Runnel::start(dir.path(), &[pipeline], &[], "").await;
    let client = &runnel.client;
    let get = |origin: &'static str| {
        client
            .get(runnel.url("/hello/Ada"))
            .header("origin", origin)
            .send()
    };
    let first = get("https://app.example").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let second = get("https://evil.example").await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(!second.headers().contains_key("access-control-allow-origin"));
    let third = get("https://app.example").await.unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "2");
    let other_route = client.get(runnel.url("/hello")).send().await.unwrap();
    assert_eq!(other_route.status(), 200, "its own bucket");
    assert_eq!(other_route.text().await.unwrap(), "Hello, world!\n");

    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, runnel.url("/hello/Ada"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.status(), 204);
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(headers["access-control-max-age"], "60");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("idempotency-key")
    );
    assert_eq!(
        preflight("https://evil.example").await.unwrap().status(),
        403
    );
}

/// A source with `listen` serves its routes there and only there; the
/// API's routes stay on the API's listener.
#[tokio::test]
async fn a_pipeline_can_have_a_listener_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let listen = format!("[source]\nlisten = \"127.0.0.1:{port}\"\n");
    let pipeline = harness::edited_pipeline(
        "hello-http.toml",
        &dir.path().join("pipelines"),
        &[("[source]\n", listen.as_str())],
    );
    let runnel = Runnel::start(dir.path(), &[pipeline], &[], "").await;
    let own = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let response = runnel.client.get(own("/hello/Ada")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Hello, Ada!\n");
    let on_api = runnel
        .client
        .get(runnel.url("/hello/Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status(), 404);
    let api_on_own = runnel.client.get(own("/healthz")).send().await.unwrap();
    assert_eq!(api_on_own.status(), 404);
}

/// A component written with Spin's Rust SDK (its `#[http_component]` and
/// its router, which reads `spin-path-info`) runs as Spin users wrote it.
#[tokio::test]
async fn a_spin_component_runs_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let text = format!(
        "name = \"spin\"\n[source]\ntype = \"http\"\nroutes = [\"/spin/...\"]\nmethods = [\"GET\", \"POST\"]\n[function]\npath = {:?}\n",
        repo().join("functions/testing/spin-hello")
    );
    let pipeline = pipelines.join("spin.toml");
    std::fs::write(&pipeline, text).unwrap();
    let runnel = Runnel::start(dir.path(), &[pipeline], &[], "").await;
    let client = &runnel.client;

    let response = client
        .get(runnel.url("/spin/hello/Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(
        response.text().await.unwrap(),
        "Hello, Ada! (route /spin/...)\n"
    );

    let body: Vec<u8> = (0..=255).collect();
    let response = client
        .post(runnel.url("/spin/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), body);

    // Spin's router answers what it does not route; runnel what the
    // pipeline does not allow.
    let response = client.get(runnel.url("/spin/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.unwrap(), "Not Found");
    let response = client
        .delete(runnel.url("/spin/hello/Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}
