//! The live dashboard at `/`: in Debian's Chromium, driven headless through
//! chromedriver, the reference workload's counters move and its
//! invocations appear after an upload, a dead letter opens and its replay
//! delivers; and, from a plain HTTP client, who may see and replay what.
//!
//! Screenshots are kept in `target/test-artifacts/dashboard/` (under the
//! clone) for a person to look at.

mod harness;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use harness::{Proxy, Runnel, WebhookReceiver, edited_pipeline, photo_jpeg, repo};
use serde_json::{Value, json};

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let port = harness::free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    harness::eventually("chromedriver answers", Duration::from_secs(30), || async {
        let ready = harness::client()
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()?;
        ready["value"]["ready"].as_bool().filter(|r| *r)
    })
    .await;
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1440,1000"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Evaluates `expression` in the page until it is truthy; its value.
async fn until(page: &Client, what: &str, expression: &str) -> Value {
    let started = Instant::now();
    let script = format!("return ({expression}) || null;");
    loop {
        let value = page.execute(&script, vec![]).await.unwrap();
        if !value.is_null() && value != json!(false) {
            return value;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let body = page
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap();
            panic!(
                "the page never showed {what}; it shows:\n{}",
                body.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn click(page: &Client, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn text(page: &Client, css: &str) -> String {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn artifacts() -> PathBuf {
    let dir = repo().join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(page: &Client, name: &str) {
    let png = page.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let file = artifacts().join(name);
    std::fs::write(&file, png).unwrap();
    eprintln!("screenshot: {}", file.display());
}

/// An upload shows up live (counters, invocations with their log lines);
/// a notification whose webhook was down is a dead letter the page opens,
/// and its Replay button, once the webhook is back, delivers it and
/// removes it.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_watches_an_upload_and_replays_its_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let backend = webhook
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    let proxy = Proxy::start(backend).await;
    proxy.set_up(false);
    let notify = edited_pipeline(
        "notify.toml",
        dir.path(),
        &[
            ("max_attempts = 8", "max_attempts = 2"),
            ("initial_delay = \"500ms\"", "initial_delay = \"50ms\""),
        ],
    );
    let hook = format!("http://127.0.0.1:{}/hook", proxy.port);
    let runnel = Runnel::start(
        dir.path(),
        &[repo().join("pipelines/image-upload.toml"), notify],
        &[("NOTIFY_WEBHOOK_URL", &hook)],
        "",
    )
    .await;
    let driver = start_driver().await;
    let page = browser(&driver).await;
    page.goto(&runnel.url("/")).await.unwrap();
    until(
        &page,
        "the live feed",
        "document.getElementById('connection').className === 'live'",
    )
    .await;
    let names = until(
        &page,
        "both pipelines",
        "[...document.querySelectorAll('#pipelines tbody tr')].map(r => r.dataset.pipeline).join(',')",
    )
    .await;
    assert_eq!(names, "image-upload,notify");
    let flow = text(&page, "#pipelines tr[data-pipeline='image-upload'] .flow").await;
    assert!(flow.contains("storage uploads"), "{flow}");
    assert!(flow.contains("thumbnail"), "{flow}");
    until(
        &page,
        "the backends' health",
        "document.querySelectorAll('#health .pill.ok').length >= 3",
    )
    .await;
    screenshot(&page, "1-idle.png").await;

    let upload = runnel
        .upload(
            "uploads",
            "photos/cat.jpg",
            photo_jpeg(1200, 800),
            Some("alice"),
        )
        .await;
    assert_eq!(upload.status(), 201);

    // The counters move and the invocations appear without a reload.
    until(
        &page,
        "image-upload done 1",
        "document.querySelector(\"#pipelines tr[data-pipeline='image-upload'] [data-field=done]\").textContent === 'done 1'",
    )
    .await;
    until(
        &page,
        "notify's dead letter counted",
        "document.querySelector(\"#pipelines tr[data-pipeline='notify'] button.dead-letters\").textContent === 'dead letters (1)'",
    )
    .await;
    assert_eq!(
        runnel
            .metric(
                "runnel_events_completed_total",
                &[("pipeline", "image-upload"), ("result", "done")]
            )
            .await,
        1.0
    );
    let outcomes = until(
        &page,
        "invocations of both pipelines",
        "(() => { const rows = [...document.querySelectorAll('#invocations tbody tr.row')]; \
         const seen = rows.map(r => r.dataset.pipeline + ':' + r.querySelector('.outcome').textContent); \
         return seen.includes('image-upload:ok') && seen.includes('notify:ok') && seen.join(','); })()",
    )
    .await;
    eprintln!("invocations shown: {outcomes}");
    // The notification that ran out of attempts is listed as such.
    until(
        &page,
        "notify's dead-lettered entry",
        "[...document.querySelectorAll(\"#invocations tbody tr.row[data-pipeline='notify'] .outcome\")].some(o => o.textContent === 'dead-lettered')",
    )
    .await;
    let p50 = text(
        &page,
        "#pipelines tr[data-pipeline='image-upload'] [data-field=p50]",
    )
    .await;
    assert!(p50.ends_with("ms") || p50.ends_with("µs"), "p50 {p50}");

    // An invocation opens onto the log lines its function wrote.
    click(
        &page,
        "#invocations tbody tr.row[data-pipeline='image-upload']",
    )
    .await;
    let logs = until(
        &page,
        "the thumbnail function's log line",
        "(document.querySelector('#invocations tr.detail pre.logs') || {}).textContent",
    )
    .await;
    assert!(logs.as_str().unwrap().starts_with("[info] "), "{logs}");
    screenshot(&page, "2-after-upload.png").await;

    // The dead letter: its error, and a replay once the webhook is back.
    click(
        &page,
        "#pipelines tr[data-pipeline='notify'] button.dead-letters",
    )
    .await;
    let error = until(
        &page,
        "the dead letter",
        "(document.querySelector('#dead-letters .dl .error') || {}).textContent",
    )
    .await;
    assert!(error.as_str().unwrap().contains("webhook"), "{error}");
    click(&page, "#dead-letters .dl summary").await;
    screenshot(&page, "3-dead-letter.png").await;
    assert_eq!(webhook.count(), 0);
    proxy.set_up(true);
    click(&page, "#dead-letters button.replay").await;
    let result = until(
        &page,
        "the replay's result",
        "(() => { const t = document.querySelector('#dead-letters .result').textContent; return t !== 'replaying…' && t; })()",
    )
    .await;
    assert_eq!(result, "replayed · 1 attempt(s)");
    screenshot(&page, "4-replayed.png").await;
    assert_eq!(webhook.count(), 1);
    let body: Value = serde_json::from_str(&webhook.received.lock().unwrap()[0].body).unwrap();
    assert_eq!(body["user"], "alice", "{body}");
    let left: Value = runnel
        .client
        .get(runnel.url("/v1/dashboard/pipelines/notify/dead-letters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(left["total"], 0, "the replayed dead letter is gone: {left}");
    page.close().await.unwrap();
}

/// With keys, the page and its feed need `dashboard` (a browser is asked
/// for Basic credentials), a replay also `replay:<pipeline>`, a JSON body
/// and the page's own origin; `replay` without `dashboard` sees nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_closed_without_its_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = "[http.auth.keys.operator]\ntoken = \"operator-token-0123456789\"\nscopes = [\"dashboard\", \"replay:notify\"]\n\
                [http.auth.keys.viewer]\ntoken = \"viewer-token-0123456789\"\nscopes = [\"dashboard\"]\n\
                [http.auth.keys.scraper]\ntoken = \"scraper-token-0123456789\"\nscopes = [\"metrics\", \"replay:*\"]\n";
    let runnel = Runnel::start(dir.path(), &harness::pipelines(), &[], keys).await;
    let client = harness::client();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(runnel.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let anonymous = get("/", None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenges: Vec<_> = anonymous
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Basic realm=\"runnel\"")),
        "{challenges:?}"
    );
    assert_eq!(
        get("/", Some("scraper-token-0123456789"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(get("/v1/dashboard/live", None).await.unwrap().status(), 401);
    assert_eq!(
        get(
            "/v1/dashboard/pipelines/notify/dead-letters",
            Some("scraper-token-0123456789")
        )
        .await
        .unwrap()
        .status(),
        403
    );

    // What a browser sends once asked: any user name, the token as password.
    let page = client
        .get(runnel.url("/"))
        .basic_auth("ops", Some("viewer-token-0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(page.text().await.unwrap().contains("<title>runnel</title>"));

    // The feed says which pipelines the caller may replay.
    let can_replay = |token: &'static str| {
        let request = client
            .get(runnel.url("/v1/dashboard/live"))
            .bearer_auth(token);
        async move {
            let mut response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut text = String::new();
            while !text.contains("\n\n") {
                let chunk = response.chunk().await.unwrap().expect("a snapshot");
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            let data = text
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("event data");
            let snapshot: Value = serde_json::from_str(data).unwrap();
            snapshot["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_owned(),
                        p["can_replay"].as_bool().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        can_replay("operator-token-0123456789").await,
        [
            ("image-upload".to_owned(), false),
            ("notify".to_owned(), true)
        ]
    );
    assert_eq!(
        can_replay("viewer-token-0123456789").await,
        [
            ("image-upload".to_owned(), false),
            ("notify".to_owned(), false)
        ]
    );

    let replay = |token: &str, content_type: &str, origin: Option<String>| {
        let mut request = client
            .post(runnel.url("/v1/dashboard/pipelines/notify/dead-letters/replay"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(r#"{"key": "no-such-key"}"#);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let own = Some(format!("http://{}", runnel.addr));
    assert_eq!(
        replay("viewer-token-0123456789", "application/json", own.clone()).await,
        403
    );
    assert_eq!(
        replay("scraper-token-0123456789", "application/json", own.clone()).await,
        403
    );
    assert_eq!(
        replay(
            "operator-token-0123456789",
            "application/json",
            Some("http://evil.example".into())
        )
        .await,
        403
    );
    assert_eq!(
        replay("operator-token-0123456789", "text/plain", own.clone()).await,
        415
    );
    // Allowed, and nothing to replay under that key.
    assert_eq!(
        replay("operator-token-0123456789", "application/json", own).await,
        404
    );
}

/// `http.dashboard = false` frees `/` (404 there) and the feed's routes.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(
        dir.path(),
        &harness::pipelines(),
        &[],
        "dashboard = false\n",
    )
    .await;
    for path in ["/", "/v1/dashboard/live"] {
        let response = runnel.client.get(runnel.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}
