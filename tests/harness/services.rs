//! Real services for the Kafka and S3 tests, started on loopback and
//! ephemeral ports and stopped when dropped: `tansu` (a Kafka-API broker)
//! and `moto_server` (S3 and SQS). `scripts/test` installs both; a test
//! that cannot find them fails with a message saying so, it never skips.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

fn find(binary: &str) -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")));
    for dir in candidates {
        let path = dir.join(binary);
        if path.is_file() {
            return path;
        }
    }
    panic!("{binary} is not installed; run scripts/test, which installs it");
}

fn wait_for_port(port: u16, what: &str, child: &mut Child, log: &std::path::Path) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service process that is stopped on drop: SIGINT first (tansu ignores
/// SIGTERM), SIGKILL after a grace period.
pub struct Service {
    child: Option<Child>,
    pub port: u16,
}

impl Service {
    /// Runs `binary` in the directory of its `log`, where it keeps any
    /// files it makes.
    fn spawn(binary: &str, args: Vec<String>, port: u16, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(find(binary))
            .args(&args)
            .current_dir(log.parent().expect("the log is in a directory"))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        wait_for_port(port, binary, &mut child, &log);
        Self {
            child: Some(child),
            port,
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tansu broker on loopback, storing records in SQLite under `dir`.
///
/// Not in memory: tansu 0.6.0's object-store engine (`memory://`, `s3://`)
/// answers a fetch from an offset inside a record batch with the *next*
/// batch, skipping the rest of the one asked for. A consumer resuming from a
/// committed offset that falls mid-batch (any restart or rebalance) then
/// never sees those records; a real Kafka broker returns the whole batch.
/// The SQLite engine fetches by record offset.
pub fn tansu(dir: &std::path::Path) -> Service {
    let port = free_port();
    // Relative to the working directory, `dir`.
    spawn_tansu(dir, port, port, format!("sqlite://tansu-{port}.db"))
}

/// A tansu broker on loopback that keeps records in memory, for what
/// never resumes a consumer from a commit (benchmarks on fresh topics, the
/// outage test): see [`tansu`] for what its engine gets wrong otherwise.
pub fn tansu_in_memory(dir: &std::path::Path) -> Service {
    let port = free_port();
    tansu_behind(dir, port, port)
}

/// An in-memory tansu broker listening on `port` and advertising
/// `advertised` (a proxy in front of it), for the outage test. Not SQLite:
/// when an idempotent producer comes back after an outage, tansu 0.6.0's
/// SQLite engine panics ("more or less than one row", lite.rs:503, then
/// "unreachable" in service.rs:337) and drops every connection from then on.
/// A 30 s cut is shorter than the consumers' session, so they keep their
/// partitions and fetch positions: no fetch starts inside a batch.
pub fn tansu_behind(dir: &std::path::Path, port: u16, advertised: u16) -> Service {
    spawn_tansu(dir, port, advertised, "memory://tansu/".to_owned())
}

fn spawn_tansu(dir: &std::path::Path, port: u16, advertised: u16, storage: String) -> Service {
    Service::spawn(
        "tansu",
        vec![
            "broker".into(),
            "--listener-url".into(),
            format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url".into(),
            format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine".into(),
            storage,
        ],
        port,
        dir.join("tansu.log"),
    )
}

/// moto's server: S3 and SQS in memory.
pub fn moto(dir: &std::path::Path) -> Service {
    let port = free_port();
    Service::spawn(
        "moto_server",
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        port,
        dir.join("moto.log"),
    )
}

/// A Redis server that keeps nothing on disk.
pub fn redis(dir: &std::path::Path) -> Service {
    let port = free_port();
    Service::spawn(
        "redis-server",
        vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
        port,
        dir.join("redis.log"),
    )
}

/// Creates topics (tansu does not create them on first use).
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<_> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap_or_else(|(topic, e)| panic!("creating topic {topic}: {e}"));
    }
}

/// S3 and SQS clients for moto (any credentials work).
pub async fn aws_clients(endpoint: &str) -> (aws_sdk_s3::Client, aws_sdk_sqs::Client) {
    let credentials =
        aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests");
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    (
        aws_sdk_s3::Client::from_conf(s3),
        aws_sdk_sqs::Client::new(&shared),
    )
}

/// Creates buckets, and for `notify_bucket` an SQS queue that receives its
/// object-created notifications; returns the queue URL.
pub async fn s3_with_notifications(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    buckets: &[&str],
    notify_bucket: &str,
) -> String {
    use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
    for bucket in buckets {
        s3.create_bucket().bucket(*bucket).send().await.unwrap();
    }
    let queue = sqs
        .create_queue()
        .queue_name(format!("{notify_bucket}-events"))
        .send()
        .await
        .unwrap();
    let url = queue.queue_url().unwrap().to_owned();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let arn =
        attributes.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    let notifications = NotificationConfiguration::builder()
        .queue_configurations(
            QueueConfiguration::builder()
                .queue_arn(arn)
                .events(Event::S3ObjectCreated)
                .build()
                .unwrap(),
        )
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(notify_bucket)
        .notification_configuration(notifications)
        .send()
        .await
        .unwrap();
    url
}

/// Creates each bucket in S3.
pub async fn create_buckets(s3: &aws_sdk_s3::Client, buckets: &[&str]) {
    for bucket in buckets {
        s3.create_bucket().bucket(*bucket).send().await.unwrap();
    }
}

/// The environment `deploy/runnel.kafka-s3.toml` and the shipped
/// pipelines read, pointing at these services and `webhook`.
pub fn deploy_env<'a>(
    endpoint: &'a str,
    bootstrap: &'a str,
    webhook: &'a str,
) -> [(&'static str, &'a str); 7] {
    [
        ("RUNNEL_API_TOKEN", super::API_TOKEN),
        ("RUNNEL_METRICS_TOKEN", super::METRICS_TOKEN),
        ("S3_ENDPOINT", endpoint),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("NOTIFY_WEBHOOK_URL", webhook),
    ]
}

/// What the thumbnail pipeline would have published for an upload.
pub fn processed(key: &str, user: &str) -> String {
    serde_json::json!({
        "source": {"bucket": "uploads", "key": key, "etag": "e", "size": 1},
        "metadata": {"user": user},
        "thumbnails": [{"bucket": "thumbnails", "key": "t", "width": 1, "height": 1, "bytes": 1}],
    })
    .to_string()
}

/// Publishes `(key, payload)` messages to `image-processed`.
pub async fn produce(kafka: &Service, messages: &[(String, String)]) {
    produce_to(kafka, "image-processed", messages).await;
}

pub async fn produce_to(kafka: &Service, topic: &str, messages: &[(String, String)]) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", kafka.port))
        .create()
        .unwrap();
    for (key, payload) in messages {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// Which upload each webhook call was about, in the order received.
pub fn notified_keys(webhook: &super::WebhookReceiver) -> Vec<(String, String)> {
    webhook
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            (
                body["source"]["key"].as_str().unwrap().to_owned(),
                r.idempotency_key.clone(),
            )
        })
        .collect()
}

/// A PostgreSQL server from Debian's packages, with `wal_level = logical`,
/// trusting loopback, its data under `dir`; restartable on the same port.
/// As root (CI), it runs as the `postgres` user the package creates.
pub struct Postgres {
    service: Option<Service>,
    data: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start(dir: &std::path::Path) -> Self {
        let data = dir.join("pgdata");
        std::fs::create_dir_all(dir).unwrap();
        let owner = postgres_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
        }
        let init = Command::new(pg_bin("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .current_dir(dir)
            .as_owner(owner)
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut postgres = Self {
            service: None,
            data,
            port: free_port(),
        };
        postgres.spawn();
        postgres
    }

    fn spawn(&mut self) {
        let dir = self.data.parent().unwrap();
        let log = dir.join("postgres.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(pg_bin("postgres"))
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
            ])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("unix_socket_directories={}", dir.display())])
            .args([
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=16",
                "-c",
                "max_wal_senders=16",
            ])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .current_dir(dir)
            .as_owner(postgres_owner())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("postgres starts");
        wait_for_port(self.port, "postgres", &mut child, &log);
        // Listening comes before accepting connections.
        let started = Instant::now();
        while !self.try_sql("SELECT 1").is_ok_and(|out| out == "1") {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "postgres does not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.service = Some(Service {
            child: Some(child),
            port: self.port,
        });
    }

    /// Stops the server (a fast shutdown) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.stop();
        }
    }

    /// The runtime config's `[databases.<name>]` for this server.
    pub fn database_toml(&self, name: &str) -> String {
        format!(
            "[databases.{name}]\nurl = \"postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable\"\n",
            self.port
        )
    }

    /// Runs `sql` with psql; returns its unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(find("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Where the slot's confirmed position is, as a number.
    pub fn confirmed(&self, slot: &str) -> u64 {
        let text = self.sql(&format!(
            "SELECT COALESCE(confirmed_flush_lsn - '0/0', 0) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
        text.parse().unwrap_or(0)
    }

    /// The server's current WAL position, as a number.
    pub fn wal_position(&self) -> u64 {
        self.sql("SELECT pg_current_wal_lsn() - '0/0'")
            .parse()
            .unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL program: on PATH, else the newest Debian package's.
fn pg_bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path().join("bin").join(program))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| find(program))
}

/// The `postgres` user's ids, when running as root (which PostgreSQL refuses).
fn postgres_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((
        id("-u").expect("the postgres user exists (Debian's postgresql package makes it)"),
        id("-g").expect("the postgres group exists"),
    ))
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

trait AsOwner {
    fn as_owner(&mut self, owner: Option<(u32, u32)>) -> &mut Self;
}

impl AsOwner for Command {
    fn as_owner(&mut self, owner: Option<(u32, u32)>) -> &mut Self {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = owner {
            self.uid(uid).gid(gid);
        }
        self
    }
}
