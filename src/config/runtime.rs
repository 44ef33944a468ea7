//! The runtime config (`runnel.toml`): what "storage" and "broker" are, and
//! the limits of this process. Every field is optional; the defaults run
//! everything embedded under `data_dir`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{self, Diagnostic, Document, Table};
use crate::sqlite::Durability;

/// Bytes of each pooled instance slot's memory kept resident between events:
/// the pages the last instance touched, up to this size, are zeroed with
/// memset (found with PAGEMAP_SCAN on Linux 6.7+) instead of going back to
/// the kernel, so a function that fills tens of MiB per event does not take
/// a page fault per 4 KiB page each time. Resident memory grows by up to this
/// much per slot in use. docs/BENCHMARKS.md (#1, #5) has the figures.
pub const DEFAULT_KEEP_RESIDENT: u64 = 64 << 20;
/// Invocation threads a process may start (`functions.max_threads`).
pub const DEFAULT_MAX_THREADS: usize = 64;

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where embedded backends keep their files (default `data`).
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub broker: BrokerConfig,
    pub idempotency: IdempotencyConfig,
    /// `[databases.<name>]`: the databases that `database` sources name.
    pub databases: BTreeMap<String, DatabaseConfig>,
    pub functions: FunctionsConfig,
    /// How long a stopping process waits for events in flight (default 30s).
    pub shutdown_grace: Duration,
    /// This process's name among its peers, stable across its restarts
    /// (`instance_id`; default none): Kafka static group membership, and
    /// the owner of its claims in a shared idempotency store, so a
    /// restarted process takes its partitions and in-flight events back at
    /// once instead of waiting out its dead predecessor's session and leases.
    pub instance_id: Option<String>,
    /// `[telemetry]`: where traces go (default nowhere).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// `[kv]`: the key-value stores functions are granted.
    pub kv: KvConfig,
}

/// `[kv]`: every store a pipeline names (`[function.capabilities] kv`)
/// lives in one embedded SQLite database (`type = "embedded"`, the
/// default) or one Redis (`type = "redis"`, shared by several processes),
/// each pipeline's keys apart.
#[derive(Clone, Debug)]
pub struct KvConfig {
    /// Default `<data_dir>/kv.db`.
    pub path: PathBuf,
    pub durability: Durability,
    /// `type = "redis"`: the server's URL, and the prefix of runnel's keys
    /// (default `runnel:kv:`).
    pub redis: Option<(String, String)>,
    pub limits: crate::kv::KvLimits,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Listen address (default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// Largest accepted upload (default 64 MiB); larger ones get 413.
    pub max_upload_size: u64,
    /// Largest body of every other request (default 1 MiB): S3
    /// notifications by webhook. Larger ones get 413 before they are read.
    pub max_body_size: u64,
    /// Serve the live dashboard at `/` (default true).
    pub dashboard: bool,
    /// `[http.auth]`: API keys and their scopes (default none: anyone who
    /// reaches the port, allowed on loopback only).
    pub auth: crate::server::auth::AuthConfig,
}

#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// A directory of buckets (default `<data_dir>/storage`).
    Local {
        root: PathBuf,
        durability: Durability,
    },
    /// An S3-compatible store.
    #[cfg(feature = "s3")]
    S3(Box<crate::storage::s3::S3Config>),
}

#[derive(Clone, Debug)]
pub enum BrokerConfig {
    /// Topics in an embedded SQLite journal (default `<data_dir>/broker.db`).
    Embedded {
        path: PathBuf,
        partitions: u32,
        durability: Durability,
        /// Messages older than this are deleted (default 7d).
        retention: Duration,
    },
    /// A Kafka-API broker; `properties` are librdkafka settings, starting
    /// with `bootstrap.servers`.
    Kafka { properties: Vec<(String, String)> },
}

#[derive(Clone, Debug)]
pub enum IdempotencyConfig {
    /// Completed keys in SQLite (default `<data_dir>/idempotency.db`).
    Embedded { path: PathBuf, ttl: Duration },
    /// Completed keys in Redis, shared by every process (`url`: `redis://...`).
    Redis {
        url: String,
        prefix: String,
        ttl: Duration,
    },
}

/// A PostgreSQL database, from `url = "postgres://user:password@host:port/dbname"`
/// (libpq's URL form; `?host=/run/postgresql` for a Unix socket directory).
#[derive(Clone)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    /// `tls`, or the URL's `sslmode` (default `prefer`).
    pub tls: DatabaseTls,
    /// `ca_file`, or the URL's `sslrootcert`: the CA that signs the
    /// server's certificate (default: the bundled web roots).
    pub ca_file: Option<PathBuf>,
}

/// libpq's `sslmode`s, which every PostgreSQL user knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl DatabaseTls {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

impl std::fmt::Debug for DatabaseConfig {
    /// Everything but the password, which comes from a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl DatabaseConfig {
    /// `user@host:port/dbname`, for logs and errors.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// Parses a `postgres://` URL; the error says what is wrong with it.
    pub fn from_url(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "scheme {:?}; expected \"postgres://user:password@host:port/dbname\"",
                url.scheme()
            ));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let mut config = Self {
            host: url.host_str().unwrap_or("localhost").to_owned(),
            port: url.port().unwrap_or(5432),
            user: match url.username() {
                "" => "postgres".to_owned(),
                user => decode(user),
            },
            password: url.password().map(decode).unwrap_or_default(),
            dbname: match url.path().trim_start_matches('/') {
                "" => "postgres".to_owned(),
                name => decode(name),
            },
            tls: DatabaseTls::Prefer,
            ca_file: None,
        };
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => {
                    config.tls = DatabaseTls::parse(&value).ok_or_else(|| {
                        format!("sslmode {value:?}; expected disable, prefer, require, verify-ca or verify-full")
                    })?
                }
                "sslrootcert" => config.ca_file = Some(PathBuf::from(&*value)),
                "host" => config.host = value.into_owned(),
                "user" => config.user = value.into_owned(),
                "password" => config.password = value.into_owned(),
                "dbname" => config.dbname = value.into_owned(),
                "port" => {
                    config.port = value
                        .parse()
                        .map_err(|_| format!("port {value:?} is not a number"))?
                }
                other => return Err(format!("unknown URL parameter {other:?}; runnel takes sslmode, sslrootcert, host, port, user, password and dbname")),
            }
        }
        Ok(config)
    }
}

#[derive(Clone, Debug)]
pub struct FunctionsConfig {
    /// Use wasmtime's pooling allocator (default true).
    pub pooling: bool,
    /// Cache compiled components under `<data_dir>/cache` (default true).
    pub cache: bool,
    /// Build functions given as projects before starting (default true).
    pub build: bool,
    /// Where compiled components are cached (default `<data_dir>/cache`).
    pub cache_dir: PathBuf,
    /// Bytes of each pooled instance slot's memory kept resident between
    /// events (default [`DEFAULT_KEEP_RESIDENT`]).
    pub keep_resident: u64,
    /// Most invocation threads, shared by every pipeline and started as
    /// events need them (default [`DEFAULT_MAX_THREADS`]).
    pub max_threads: usize,
    /// Where prebuilt components of project functions are, as `<project
    /// directory name>.wasm` (`-` as `_`); when set, projects are not built
    /// (a container image without the build tools).
    pub components_dir: Option<PathBuf>,
}

impl RuntimeConfig {
    /// The defaults for a data directory.
    pub fn defaults(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            http: HttpConfig {
                listen: "127.0.0.1:8080".parse().expect("valid address"),
                max_upload_size: 64 << 20,
                max_body_size: 1 << 20,
                dashboard: true,
                auth: Default::default(),
            },
            storage: StorageConfig::Local {
                root: data_dir.join("storage"),
                durability: Durability::Full,
            },
            broker: BrokerConfig::Embedded {
                path: data_dir.join("broker.db"),
                partitions: 4,
                durability: Durability::Full,
                retention: Duration::from_secs(7 * 86400),
            },
            idempotency: IdempotencyConfig::Embedded {
                path: data_dir.join("idempotency.db"),
                ttl: Duration::from_secs(7 * 86400),
            },
            databases: BTreeMap::new(),
            functions: FunctionsConfig {
                pooling: true,
                cache: true,
                build: true,
                cache_dir: data_dir.join("cache"),
                keep_resident: DEFAULT_KEEP_RESIDENT,
                max_threads: DEFAULT_MAX_THREADS,
                components_dir: None,
            },
            shutdown_grace: Duration::from_secs(30),
            instance_id: None,
            telemetry: Default::default(),
            kv: KvConfig {
                path: data_dir.join("kv.db"),
                durability: Durability::Full,
                redis: None,
                limits: Default::default(),
            },
        }
    }

    /// Reads a runtime config file; `data_dir` overrides the file's.
    pub fn load(
        file: &Path,
        data_dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let text = reader::read_text(file)?;
        Self::parse(file, &text, data_dir, env)
    }

    /// Reads a runtime config from its text (`file` names it in
    /// diagnostics and anchors relative paths).
    pub fn parse(
        file: &Path,
        text: &str,
        data_dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let doc = Document::new(file, text, env);
        let root = doc.parse();
        let config = read(doc.root(&root), file, data_dir);
        let diagnostics = doc.into_diagnostics();
        if diagnostics.is_empty() {
            Ok(config)
        } else {
            Err(diagnostics)
        }
    }
}

fn read(root: Table<'_, '_>, file: &Path, data_dir: Option<&Path>) -> RuntimeConfig {
    let base = file.parent().unwrap_or(Path::new("."));
    let path = |t: &Table<'_, '_>, key: &str| t.string(key).map(|p| base.join(p));
    let data_dir = data_dir
        .map(Path::to_owned)
        .or_else(|| path(&root, "data_dir"))
        .unwrap_or_else(|| base.join("data"));
    let mut config = RuntimeConfig::defaults(&data_dir);
    let _ = root.get("data_dir");
    if let Some(grace) = root.duration("shutdown_grace") {
        config.shutdown_grace = grace;
    }
    if let Some(field) = root.get("instance_id")
        && let Some(id) = field.string()
    {
        if crate::config::pipeline::is_valid_name(&id) {
            config.instance_id = Some(id);
        } else {
            field.error("use 1-64 letters, digits, '-' or '_'");
        }
    }
    if let Some(t) = root.table("http") {
        if let Some(field) = t.get("listen")
            && let Some(text) = field.string()
        {
            match text.parse() {
                Ok(addr) => config.http.listen = addr,
                Err(_) => field.error(format!(
                    "{text:?} is not an address such as \"127.0.0.1:8080\""
                )),
            }
        }
        if let Some(size) = t.size("max_upload_size") {
            config.http.max_upload_size = size;
        }
        if let Some(size) = t.size("max_body_size") {
            config.http.max_body_size = size;
        }
        if let Some(on) = t.boolean("dashboard") {
            config.http.dashboard = on;
        }
        if let Some(auth) = t.table("auth")
            && let Some(auth) = crate::server::auth::AuthConfig::read(auth)
        {
            config.http.auth = auth;
        }
        t.finish();
    }
    if let Some(t) = root.table("storage") {
        read_storage(&t, &mut config.storage, &path, &config.data_dir);
        t.finish();
    }
    if let Some(t) = root.table("broker") {
        read_broker(&t, &mut config.broker, &path);
        t.finish();
    }
    if let Some(t) = root.table("idempotency") {
        read_idempotency(&t, &mut config.idempotency, &path);
        t.finish();
    }
    if let Some(t) = root.table("kv") {
        match t
            .get("type")
            .and_then(|f| f.string())
            .as_deref()
            .unwrap_or("embedded")
        {
            "embedded" => {
                if let Some(p) = path(&t, "path") {
                    config.kv.path = p;
                }
                if let Some(d) = durability(&t) {
                    config.kv.durability = d;
                }
            }
            "redis" => {
                if let Some(url) = t.required_string("url") {
                    let prefix = t
                        .string("prefix")
                        .unwrap_or_else(|| "runnel:kv:".to_owned());
                    config.kv.redis = Some((url, prefix));
                }
            }
            other => {
                if let Some(field) = t.get("type") {
                    field.error(format!(
                        "unknown kv type {other:?}; expected \"embedded\" or \"redis\""
                    ));
                }
            }
        }
        let limits = &mut config.kv.limits;
        for (key, slot) in [
            ("max_key_size", &mut limits.max_key_size),
            ("max_value_size", &mut limits.max_value_size),
        ] {
            if let Some(v) = t.size(key) {
                *slot = v as usize;
            }
        }
        if let Some(v) = t.size("max_store_size") {
            limits.max_store_size = v;
        }
        t.finish();
    }
    if let Some(t) = root.table("databases") {
        for (name, field) in t.entries() {
            let Some(db) = field.table() else { continue };
            if !crate::config::pipeline::is_valid_name(&name) {
                db.error("name a database with 1-64 letters, digits, '-' or '_'");
            }
            if let Some(database) = read_database(&db, &path) {
                config.databases.insert(name, database);
            }
            db.finish();
        }
        t.finish();
    }
    if let Some(t) = root.table("functions") {
        if let Some(v) = t.boolean("pooling") {
            config.functions.pooling = v;
        }
        if let Some(v) = t.boolean("cache") {
            config.functions.cache = v;
        }
        if let Some(v) = t.boolean("build") {
            config.functions.build = v;
        }
        if let Some(v) = path(&t, "cache_dir") {
            config.functions.cache_dir = v;
        }
        if let Some(v) = t.size("keep_resident") {
            config.functions.keep_resident = v;
        }
        if let Some(v) = t.get("max_threads").and_then(|f| f.integer_in(1..=4096)) {
            config.functions.max_threads = v as usize;
        }
        if let Some(v) = path(&t, "components_dir") {
            config.functions.components_dir = Some(v);
        }
        t.finish();
    }
    if let Some(t) = root.table("telemetry") {
        config.telemetry = crate::telemetry::TelemetryConfig::read(&t);
        t.finish();
    }
    root.finish();
    config
}

fn read_storage(
    t: &Table<'_, '_>,
    storage: &mut StorageConfig,
    path: &dyn Fn(&Table<'_, '_>, &str) -> Option<PathBuf>,
    data_dir: &Path,
) {
    let kind = t.get("type").and_then(|f| f.string());
    match kind.as_deref().unwrap_or("local") {
        "local" => {
            // Irrefutable without the `s3` feature.
            #[allow(irrefutable_let_patterns)]
            let StorageConfig::Local {
                root,
                durability: d,
            } = storage
            else {
                unreachable!("the default storage is local")
            };
            if let Some(p) = path(t, "root") {
                *root = p;
            }
            if let Some(v) = durability(t) {
                *d = v;
            }
        }
        #[cfg(feature = "s3")]
        "s3" => {
            if let Some(config) = read_s3(t, data_dir) {
                *storage = StorageConfig::S3(Box::new(config));
            }
        }
        other => {
            let _ = data_dir;
            if let Some(field) = t.get("type") {
                field.error(format!(
                    "unknown storage type {other:?}; expected \"local\" or \"s3\""
                ));
            }
        }
    }
}

#[cfg(feature = "s3")]
fn read_s3(t: &Table<'_, '_>, data_dir: &Path) -> Option<crate::storage::s3::S3Config> {
    use crate::storage::s3::{S3Config, S3Events};
    let events = match t.get("events").and_then(|f| f.table()) {
        None => {
            t.missing("events");
            None
        }
        Some(e) => {
            let kind = e.required_string("type");
            let events = match kind.as_deref() {
                Some("sqs") => {
                    let mut queues = BTreeMap::new();
                    if let Some(q) = e.required("queues").and_then(|f| f.table()) {
                        for (bucket, field) in q.entries() {
                            if let Some(url) = field.string() {
                                queues.insert(bucket, url);
                            }
                        }
                    }
                    Some(S3Events::Sqs {
                        queues,
                        wait: e.duration("wait").unwrap_or(Duration::from_secs(20)),
                        visibility_timeout: e
                            .duration("visibility_timeout")
                            .unwrap_or(Duration::from_secs(300)),
                    })
                }
                Some("topic") => e
                    .required_name("topic", crate::broker::validate_topic)
                    .map(|topic| S3Events::Topic { topic }),
                Some("webhook") => {
                    e.required_name("topic", crate::broker::validate_topic)
                        .map(|topic| S3Events::Webhook {
                            topic,
                            auth_token: e.string("auth_token").filter(|t| !t.is_empty()),
                        })
                }
                Some("poll") => Some(S3Events::Poll {
                    interval: e.duration("interval").unwrap_or(Duration::from_secs(10)),
                    checkpoint: data_dir.join("s3-poll.db"),
                }),
                Some(other) => {
                    if let Some(f) = e.get("type") {
                        f.error(format!("unknown event source {other:?}; expected \"sqs\", \"topic\", \"webhook\" or \"poll\""));
                    }
                    None
                }
                None => None,
            };
            e.finish();
            events
        }
    };
    let config = S3Config {
        endpoint: t.string("endpoint").filter(|s| !s.is_empty()),
        region: t.string("region"),
        force_path_style: t.boolean("force_path_style").unwrap_or(false),
        access_key_id: t.string("access_key_id").filter(|s| !s.is_empty()),
        secret_access_key: t.string("secret_access_key").filter(|s| !s.is_empty()),
        multipart_threshold: t.size("multipart_threshold").unwrap_or(16 << 20),
        events: events?,
    };
    Some(config)
}

fn read_database(
    t: &Table<'_, '_>,
    path: &dyn Fn(&Table<'_, '_>, &str) -> Option<PathBuf>,
) -> Option<DatabaseConfig> {
    // Every field is read (and so known) whatever the url's fate.
    let url = t.required("url").and_then(|field| {
        let text = field.string()?;
        DatabaseConfig::from_url(&text)
            .map_err(|problem| field.error(format!("database url: {problem}")))
            .ok()
    });
    let tls = t.get("tls").and_then(|field| {
        let text = field.string()?;
        let tls = DatabaseTls::parse(&text);
        if tls.is_none() {
            field.error(format!(
                "unknown tls {text:?}; expected \"disable\", \"prefer\", \"require\", \"verify-ca\" or \"verify-full\""
            ));
        }
        tls
    });
    let ca_file = path(t, "ca_file");
    let mut config = url?;
    if let Some(tls) = tls {
        config.tls = tls;
    }
    if let Some(ca) = ca_file {
        config.ca_file = Some(ca);
    }
    Some(config)
}

fn read_idempotency(
    t: &Table<'_, '_>,
    idempotency: &mut IdempotencyConfig,
    path: &dyn Fn(&Table<'_, '_>, &str) -> Option<PathBuf>,
) {
    let IdempotencyConfig::Embedded {
        path: default_path,
        ttl: default_ttl,
    } = idempotency.clone()
    else {
        unreachable!("the default idempotency store is embedded")
    };
    let ttl = t.duration("ttl").unwrap_or(default_ttl);
    let kind = t.get("type").and_then(|f| f.string());
    match kind.as_deref().unwrap_or("embedded") {
        "embedded" => {
            *idempotency = IdempotencyConfig::Embedded {
                path: path(t, "path").unwrap_or(default_path),
                ttl,
            }
        }
        "redis" => {
            if let Some(url) = t.required_string("url") {
                *idempotency = IdempotencyConfig::Redis {
                    url,
                    prefix: t.string("prefix").unwrap_or_else(|| "runnel:".to_owned()),
                    ttl,
                };
            }
        }
        other => {
            if let Some(field) = t.get("type") {
                field.error(format!(
                    "unknown idempotency type {other:?}; expected \"embedded\" or \"redis\""
                ));
            }
        }
    }
}

fn read_broker(
    t: &Table<'_, '_>,
    broker: &mut BrokerConfig,
    path: &dyn Fn(&Table<'_, '_>, &str) -> Option<PathBuf>,
) {
    let kind = t.get("type").and_then(|f| f.string());
    match kind.as_deref().unwrap_or("embedded") {
        "embedded" => {
            let BrokerConfig::Embedded {
                path: p,
                partitions,
                durability: d,
                retention,
            } = broker
            else {
                unreachable!("the default broker is embedded")
            };
            if let Some(v) = path(t, "path") {
                *p = v;
            }
            if let Some(n) = t.get("partitions").and_then(|f| f.integer_in(1..=1024)) {
                *partitions = n as u32;
            }
            if let Some(v) = durability(t) {
                *d = v;
            }
            if let Some(v) = t.duration("retention") {
                *retention = v;
            }
        }
        "kafka" => {
            let mut properties = Vec::new();
            if let Some(servers) = t.required_string("bootstrap_servers") {
                properties.push(("bootstrap.servers".to_owned(), servers));
            }
            // Everything librdkafka knows (security.protocol, sasl.*,
            // ssl.*), passed through; values may use ${ENV} for secrets.
            if let Some(options) = t.table("options") {
                for (key, field) in options.entries() {
                    if let Some(value) = field.to_config_string() {
                        properties.push((key, value));
                    }
                }
            }
            *broker = BrokerConfig::Kafka { properties };
        }
        other => {
            if let Some(field) = t.get("type") {
                field.error(format!(
                    "unknown broker type {other:?}; expected \"embedded\" or \"kafka\""
                ));
            }
        }
    }
}

fn durability(t: &Table<'_, '_>) -> Option<Durability> {
    let field = t.get("durability")?;
    let text = field.string()?;
    let parsed = Durability::parse(&text);
    if parsed.is_none() {
        field.error(format!(
            "unknown durability {text:?}; expected \"full\" or \"normal\""
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuntimeConfig, Vec<Diagnostic>> {
        let file = Path::new("/etc/runnel/runnel.toml");
        let doc = Document::new(file, text, &|_| None);
        let root = doc.parse();
        let config = read(doc.root(&root), file, None);
        let diagnostics = doc.into_diagnostics();
        if diagnostics.is_empty() {
            Ok(config)
        } else {
            Err(diagnostics)
        }
    }

    /// Memory kept resident per instance slot: a size, with a default.
    #[test]
    fn keep_resident_is_a_size_with_a_default() {
        let config = parse("").unwrap();
        assert_eq!(config.functions.keep_resident, DEFAULT_KEEP_RESIDENT);
        let config = parse("[functions]\nkeep_resident = \"16MiB\"\n").unwrap();
        assert_eq!(config.functions.keep_resident, 16 << 20);
        let config = parse("[functions]\nkeep_resident = \"0B\"\n").unwrap();
        assert_eq!(config.functions.keep_resident, 0);
        let problems = parse("[functions]\nkeep_resident = \"lots\"\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "functions.keep_resident");
        assert_eq!(problems[0].line, 2);
    }
}
