//! Whether the backends answer: the object store, the broker and the
//! idempotency store are checked every few seconds, for `/healthz`, for
//! `runnel_backend_up{backend}`, and for pipelines, which hold an event
//! whose retries ran out during an outage instead of dead-lettering it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::idempotency::IdempotencyStore;
use crate::metrics as m;
use crate::storage::ObjectStore;

/// How often the backends are checked.
const INTERVAL: Duration = Duration::from_secs(2);

/// The longest a check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The last check of each backend: `None` when it answered, else why not.
pub type Report = BTreeMap<&'static str, Option<String>>;

pub struct Health {
    report: RwLock<Report>,
    sources: Arc<SourceProblems>,
    /// True while every backend answers.
    healthy: watch::Sender<bool>,
}

/// The backends a process runs on: what the checks run against, and what
/// triggers open their feeds and marks on.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn ObjectStore>,
    pub broker: Arc<dyn Broker>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// The runtime config's `[databases]`, which database sources read.
    pub databases: Arc<BTreeMap<String, crate::config::runtime::DatabaseConfig>>,
    /// What sources report about themselves.
    pub sources: Arc<SourceProblems>,
}

/// Problems pulled sources report about themselves (a database they cannot
/// read, a lost replication slot): they fail `/readyz` until cleared,
/// without holding other pipelines' events as a backend outage does.
#[derive(Default)]
pub struct SourceProblems(RwLock<BTreeMap<String, String>>);

impl SourceProblems {
    /// Sets (or with `None` clears) `pipeline`'s problem.
    pub fn set(&self, pipeline: &str, problem: Option<String>) {
        let mut problems = self.0.write().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(problem) => problems.insert(pipeline.to_owned(), problem),
            None => problems.remove(pipeline),
        };
    }

    pub fn all(&self) -> BTreeMap<String, String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Health {
    /// Always healthy, never checked (one-shot commands).
    pub fn unchecked() -> Arc<Self> {
        Arc::new(Self {
            report: RwLock::default(),
            sources: Arc::default(),
            healthy: watch::Sender::new(true),
        })
    }

    /// Checks the backends once, then keeps checking until `stop`.
    pub async fn start(backends: Backends, stop: CancellationToken) -> Arc<Self> {
        let health = Arc::new(Self {
            report: RwLock::default(),
            sources: backends.sources.clone(),
            healthy: watch::Sender::new(true),
        });
        health.check(&backends).await;
        let this = health.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(INTERVAL) => this.check(&backends).await,
                }
            }
        });
        health
    }

    async fn check(&self, backends: &Backends) {
        let (storage, broker, idempotency) = tokio::join!(
            within(backends.store.check()),
            within(backends.broker.check()),
            within(async {
                backends
                    .idempotency
                    .check()
                    .await
                    .map_err(|e| e.to_string())
            }),
        );
        let report: Report = [
            ("storage", storage.err()),
            ("broker", broker.err()),
            ("idempotency", idempotency.err()),
        ]
        .into_iter()
        .collect();
        let previous = self
            .report
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (backend, problem) in &report {
            gauge!(m::BACKEND_UP, "backend" => *backend).set(if problem.is_none() {
                1.0
            } else {
                0.0
            });
            let was_down = previous.get(backend).is_some_and(Option::is_some);
            match problem {
                Some(error) if !was_down => {
                    tracing::warn!(backend, %error, "backend unavailable")
                }
                None if was_down => tracing::info!(backend, "backend available again"),
                _ => {}
            }
        }
        let healthy = report.values().all(Option::is_none);
        *self.report.write().unwrap_or_else(|e| e.into_inner()) = report;
        self.healthy.send_replace(healthy);
    }

    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// What sources report about themselves, by pipeline.
    pub fn source_problems(&self) -> BTreeMap<String, String> {
        self.sources.all()
    }

    pub fn report(&self) -> Report {
        self.report
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Returns once every backend answers again.
    pub async fn recovered(&self) {
        let mut healthy = self.healthy.subscribe();
        let _ = healthy.wait_for(|ok| *ok).await;
    }
}

async fn within(check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}
