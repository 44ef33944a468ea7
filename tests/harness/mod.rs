//! A running `runnel up` process for black-box tests, and what tests need
//! around it: an HTTP client, a webhook receiver, metric lookups.
#![allow(dead_code)]

#[cfg(all(feature = "kafka", feature = "s3"))]
pub mod services;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/images").join(name)).expect("fixture exists")
}

/// Compiled components are cached across tests (compiling the thumbnail
/// component takes seconds; loading it from the cache, milliseconds).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runnel-component-cache")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Runnel {
    child: Option<Child>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pipelines: Vec<PathBuf>,
    env: Vec<(String, String)>,
    extra_toml: String,
    instance_id: Option<String>,
    log: PathBuf,
}

impl Runnel {
    /// Starts `runnel up` on `pipelines` in a fresh data directory under `dir`.
    /// `extra_toml` is inserted into its runtime config right after the
    /// `[http]` table's `listen`: leading lines are more `[http]` settings,
    /// and it may go on with other tables (`[storage]`, `[broker]`).
    pub async fn start(
        dir: &Path,
        pipelines: &[PathBuf],
        env: &[(&str, &str)],
        extra_toml: &str,
    ) -> Self {
        Self::start_instance(dir, pipelines, env, None, extra_toml).await
    }

    /// Like [`start`](Self::start), with the runtime config's `instance_id`.
    pub async fn start_instance(
        dir: &Path,
        pipelines: &[PathBuf],
        env: &[(&str, &str)],
        instance_id: Option<&str>,
        extra_toml: &str,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut runnel = Self {
            child: None,
            dir: dir.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            client: client(),
            pipelines: pipelines.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_toml: extra_toml.to_owned(),
            instance_id: instance_id.map(str::to_owned),
            log: dir.join("runnel.log"),
        };
        runnel.spawn().await;
        runnel
    }

    fn config_file(&self) -> PathBuf {
        let file = self.dir.join("runnel.toml");
        let text = format!(
            "data_dir = {:?}\n{}\n[http]\nlisten = \"{}\"\n{}\n[functions]\ncache_dir = {:?}\n",
            self.dir.join("data"),
            self.instance_id
                .as_ref()
                .map(|id| format!("instance_id = {id:?}"))
                .unwrap_or_default(),
            self.addr,
            self.extra_toml,
            cache_dir(),
        );
        std::fs::write(&file, text).unwrap();
        file
    }

    async fn spawn(&mut self) {
        let config = self.config_file();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // `RUNNEL_BIN` runs another build (benchmarks compare two).
        let binary =
            std::env::var_os("RUNNEL_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_runnel").into());
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&config)
            .arg("up")
            .args(&self.pipelines)
            .env_remove("NOTIFY_WEBHOOK_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("runnel starts"));
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "runnel exited with {status} while starting; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(r) = self.client.get(self.url("/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "runnel did not come up; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `kill -9`, then start again on the same data directory.
    pub async fn kill_and_restart(&mut self, pipelines: Option<&[PathBuf]>) {
        self.kill();
        if let Some(p) = pipelines {
            self.pipelines = p.to_vec();
        }
        self.spawn().await;
    }

    /// The process's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// The process's resident memory now (VmRSS), in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The process's threads now.
    pub fn threads(&self) -> usize {
        self.status_field("Threads:") as usize
    }

    /// A memory figure from /proc/<pid>/status (`VmRSS:`, `RssAnon:`...),
    /// in MiB.
    pub fn status_mib(&self, field: &str) -> f64 {
        self.status_field(field) / 1024.0
    }

    /// A number from /proc/<pid>/status (a kB unit dropped).
    fn status_field(&self, field: &str) -> f64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    /// CPU time the process used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    pub async fn upload(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        user: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .put(self.url(&format!("/v1/objects/{bucket}/{key}")))
            .body(body);
        if let Some(user) = user {
            request = request.header("x-runnel-meta-user", user);
        }
        request.send().await.unwrap()
    }

    pub async fn object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Option<(reqwest::header::HeaderMap, Vec<u8>)> {
        let response = self
            .client
            .get(self.url(&format!("/v1/objects/{bucket}/{key}")))
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return None;
        }
        assert_eq!(response.status(), 200, "GET {bucket}/{key}");
        let headers = response.headers().clone();
        Some((headers, response.bytes().await.unwrap().to_vec()))
    }

    /// Every message of a topic (all partitions).
    pub async fn topic(&self, topic: &str) -> Vec<serde_json::Value> {
        let body = self
            .get_json(&format!("/v1/topics/{topic}?limit=1000"))
            .await;
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    /// The JSON body of `GET path`.
    /// Publishes `body` on `topic` (with the message key `key`), as a
    /// client of the HTTP API does.
    pub async fn publish(&self, topic: &str, key: Option<&str>, body: &str) {
        let mut request = self.client.post(self.url(&format!("/v1/topics/{topic}")));
        if let Some(key) = key {
            request = request.header("x-runnel-key", key);
        }
        let response = request.body(body.to_owned()).send().await.unwrap();
        assert_eq!(response.status(), 201, "publishing on {topic}");
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// Waits (up to a minute) until a metric sample equals `value`.
    pub async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let what = format!("{name}{labels:?} to reach {value}");
        eventually(&what, Duration::from_secs(60), || async {
            (self.metric(name, labels).await == value).then_some(())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a metric sample whose name and labels match exactly
    /// (labels given in any order); 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }
}

impl Drop for Runnel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The tokens the deploy config's API keys get in tests.
pub const API_TOKEN: &str = "test-admin-token-0123456789";
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

/// A client that presents the test admin key: ignored by a runnel without
/// keys, and every scope for one with the deploy config's.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {API_TOKEN}");
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let mut found: Vec<(String, String)> = label_text
            .split("\",")
            .filter(|s| !s.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        found.sort();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        if found == wanted {
            return value.parse().unwrap();
        }
    }
    0.0
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request a webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub idempotency_key: String,
    pub content_type: String,
    /// W3C trace context the sender passed on (empty without).
    pub traceparent: String,
    pub body: String,
}

/// A local HTTP server that records POSTs, standing in for a user's webhook.
pub struct WebhookReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::start_with_delay(std::time::Duration::ZERO).await
    }

    /// A receiver that takes `delay` to answer each request (a slow endpoint).
    pub async fn start_with_delay(delay: std::time::Duration) -> Self {
        use axum::{Router, extract::State, http::HeaderMap, routing::post};
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new()
            .route(
                "/hook",
                post(
                    move |State(r): State<Arc<Mutex<Vec<Received>>>>,
                          headers: HeaderMap,
                          body: String| async move {
                        tokio::time::sleep(delay).await;
                        let header = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        r.lock().unwrap().push(Received {
                            idempotency_key: header("idempotency-key"),
                            content_type: header("content-type"),
                            traceparent: header("traceparent"),
                            body,
                        });
                        "ok"
                    },
                ),
            )
            .with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, received }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// A pipeline of the probe component from topic `in-<name>` to topic
/// `out-<name>`, dead letters on `dead-<name>`, two attempts 10 ms apart;
/// `function_tables` follows its `[function]` table (`[function.config]`,
/// `[function.capabilities]`).
pub fn probe_topic_pipeline(dir: &Path, name: &str, function_tables: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\n[source]\ntype = \"topic\"\ntopic = \"in-{name}\"\n[function]\npath = \"{}\"\n{function_tables}\n[sinks.out]\ntype = \"topic\"\ntopic = \"out-{name}\"\n[dead_letter]\ntype = \"topic\"\ntopic = \"dead-{name}\"\n[retry]\nmax_attempts = 2\ninitial_delay = \"10ms\"\n",
            repo().join("functions/testing/probe").display()
        ),
    )
    .unwrap();
    file
}

/// A photo-like JPEG of the given size (smooth gradients plus texture, so
/// it compresses like a photo rather than a flat test card).
pub fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let noise = ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) >> 7) % 24;
        image::Rgb([
            ((x * 255 / width) as u8).saturating_add(noise as u8),
            ((y * 255 / height) as u8).saturating_add(noise as u8),
            (((x + y) * 127 / (width + height)) as u8).saturating_add(noise as u8),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&image)
        .unwrap();
    out.into_inner()
}

/// A shipped pipeline file (`pipelines/<name>`) written into `dir` with
/// each `(from, to)` of `edits` replaced, its `../` paths made absolute.
pub fn edited_pipeline(name: &str, dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = std::fs::read_to_string(repo().join("pipelines").join(name)).unwrap();
    text = text.replace("path = \"../", &format!("path = \"{}/", repo().display()));
    for (from, to) in edits {
        assert!(text.contains(from), "{name} has no {from:?}");
        text = text.replace(from, to);
    }
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

pub fn pipelines() -> Vec<PathBuf> {
    vec![
        repo().join("pipelines/image-upload.toml"),
        repo().join("pipelines/notify.toml"),
    ]
}

/// A TCP proxy on loopback that can cut its backend off: while down it
/// drops new connections at once and has dropped the open ones, which is
/// what a client sees of a store that went away.
pub struct Proxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(backend: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (flag, open) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                open.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            up,
            connections,
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for connection in self.connections.lock().unwrap().drain(..) {
                connection.abort();
            }
        }
    }
}

/// Runs `promtool` (installed by scripts/setup.sh) with `input` on stdin;
/// what it printed, or a panic with it when it found problems.
pub fn promtool(args: &[&str], input: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e}; run scripts/test, which installs it"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {printed}");
    printed
}

/// CPU time (user and system) that process `pid` used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from 3 on:
    // utime and stime are the 14th and 15th, in clock ticks (USER_HZ, 100
    // on Linux).
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    (fields[0] + fields[1]) / 100.0
}

/// Publishes `events` messages (key `k<i>`, payload `payload(i)`) on
/// `topic` of the embedded queue in the data directory `data`, before a
/// runnel starts there: how the embedded benchmarks fill their input.
pub async fn prefill_embedded(
    data: &Path,
    topic: &str,
    events: usize,
    payload: impl Fn(usize) -> Vec<u8>,
) {
    use runnel::broker::Broker as _;
    std::fs::create_dir_all(data).unwrap();
    let broker = runnel::broker::embedded::EmbeddedBroker::open(
        &data.join("broker.db"),
        runnel::sqlite::Durability::Normal,
        4,
    )
    .unwrap();
    let started = Instant::now();
    for i in 0..events {
        let message = runnel::event::Message {
            key: Some(format!("k{i}")),
            headers: Vec::new(),
            payload: payload(i).into(),
        };
        broker.publish(topic, None, message).await.unwrap();
    }
    eprintln!(
        "prefilled {events} embedded events in {:?}",
        started.elapsed()
    );
}

impl Runnel {
    /// Waits (up to 10 minutes) until `pipeline` has completed `events`
    /// events, calling `each` with the count at every look; returns its
    /// events/s and the cores its process kept busy, from the first
    /// completed event to the last.
    pub async fn throughput(
        &self,
        pipeline: &str,
        events: usize,
        mut each: impl FnMut(&Self, usize),
    ) -> (f64, f64) {
        let started = Instant::now();
        let mut first = None;
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{pipeline} did not complete {events} events"
            );
            let done = self
                .metric(
                    "runnel_events_completed_total",
                    &[("pipeline", pipeline), ("result", "done")],
                )
                .await as usize;
            let now = (Instant::now(), self.cpu_seconds(), done);
            if done > 0 && first.is_none() {
                first = Some(now);
            }
            each(self, done);
            if done >= events {
                let (at, cpu, from) = first.unwrap();
                let wall = (now.0 - at).as_secs_f64();
                return ((done - from) as f64 / wall, (now.1 - cpu) / wall);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
