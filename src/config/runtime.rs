//! The runtime config (`runnel.toml`): what "storage" and "broker" are, and
//! the limits of this process. Every field is optional; the defaults run
//! everything embedded under `data_dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{self, Diagnostic, Document, Table};
use crate::sqlite::Durability;

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where embedded backends keep their files (default `data`).
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub broker: BrokerConfig,
    pub idempotency: IdempotencyConfig,
    pub functions: FunctionsConfig,
    /// How long a stopping process waits for events in flight (default 30s).
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Listen address (default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// Largest accepted upload (default 64 MiB); larger ones get 413.
    pub max_upload_size: u64,
}

#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// A directory of buckets (default `<data_dir>/storage`).
    Local {
        root: PathBuf,
        durability: Durability,
    },
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
}

#[derive(Clone, Debug)]
pub enum IdempotencyConfig {
    /// Completed keys in SQLite (default `<data_dir>/idempotency.db`).
    Embedded { path: PathBuf, ttl: Duration },
}

#[derive(Clone, Debug)]
pub struct FunctionsConfig {
    /// Use wasmtime's pooling allocator (default true).
    pub pooling: bool,
    /// Cache compiled components under `<data_dir>/cache` (default true).
    pub cache: bool,
    /// Build functions given as crates before starting (default true).
    pub build: bool,
    /// Where compiled components are cached (default `<data_dir>/cache`).
    pub cache_dir: PathBuf,
}

impl RuntimeConfig {
    /// The defaults for a data directory.
    pub fn defaults(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            http: HttpConfig {
                listen: "127.0.0.1:8080".parse().expect("valid address"),
                max_upload_size: 64 << 20,
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
            functions: FunctionsConfig {
                pooling: true,
                cache: true,
                build: true,
                cache_dir: data_dir.join("cache"),
            },
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// Reads a runtime config file; `data_dir` overrides the file's.
    pub fn load(
        file: &Path,
        data_dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let text = reader::read_text(file)?;
        let doc = Document::new(file, &text, env);
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
        t.finish();
    }
    if let Some(t) = root.table("storage") {
        only_type(&t, "storage", "local");
        let durability = durability(&t);
        let StorageConfig::Local {
            root: dir,
            durability: d,
        } = &mut config.storage;
        if let Some(p) = path(&t, "root") {
            *dir = p;
        }
        if let Some(v) = durability {
            *d = v;
        }
        t.finish();
    }
    if let Some(t) = root.table("broker") {
        only_type(&t, "broker", "embedded");
        let BrokerConfig::Embedded {
            path: p,
            partitions,
            durability: d,
            retention,
        } = &mut config.broker;
        if let Some(v) = path(&t, "path") {
            *p = v;
        }
        if let Some(n) = t.get("partitions").and_then(|f| f.integer_in(1..=1024)) {
            *partitions = n as u32;
        }
        if let Some(v) = durability(&t) {
            *d = v;
        }
        if let Some(v) = t.duration("retention") {
            *retention = v;
        }
        t.finish();
    }
    if let Some(t) = root.table("idempotency") {
        only_type(&t, "idempotency", "embedded");
        let IdempotencyConfig::Embedded { path: p, ttl } = &mut config.idempotency;
        if let Some(v) = path(&t, "path") {
            *p = v;
        }
        if let Some(v) = t.duration("ttl") {
            *ttl = v;
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
        t.finish();
    }
    root.finish();
    config
}

/// Checks `type`: this build has one backend per section.
fn only_type(t: &Table<'_, '_>, section: &str, supported: &str) {
    if let Some(field) = t.get("type")
        && let Some(kind) = field.string()
        && kind != supported
    {
        field.error(format!(
            "unknown {section} type {kind:?}; this build supports \"{supported}\""
        ));
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
