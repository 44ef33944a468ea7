//! The live dashboard: a page at `GET /`, embedded in the binary, that
//! shows an operator each pipeline (source, function, sinks), its events/s,
//! p50/p99 duration, outcomes, events in flight and lag, the last
//! invocations with their log lines, the dead letters with a replay
//! button, and the backends' health.
//!
//! The page is one HTML file with no framework and no build step; it reads
//! a Server-Sent Events feed (`GET /v1/dashboard/live`, one snapshot a
//! second) and the dead letters on demand. The numbers come from the
//! metrics registry ([`figures`]) and the invocations from the log
//! ([`activity`]), so the dashboard adds no work per event. Replaying goes
//! through the pipeline's own [`Handler`], like every trigger and
//! `runnel dlq replay`.
//!
//! Every route needs the `dashboard` scope, replaying a pipeline's dead
//! letters `replay:<pipeline>` as well. A browser sends the key as Basic
//! credentials (it asks for them on the first 401), which it would also
//! attach to a forged cross-site request; so the replay route takes only a
//! JSON body, which a cross-site form cannot send, and refuses an `Origin`
//! other than its own.

#![allow(
    clippy::result_large_err,
    reason = "an Err is the response each route answers with"
)]

pub mod activity;
pub mod figures;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::pipeline::PipelineConfig;
use crate::engine::Handler;
use crate::health::Health;
use crate::server::auth::AuthConfig;
use crate::sinks::Backends;

/// The page, served as it is.
const PAGE: &str = include_str!("page.html");

/// How often the feed sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);
/// Events/s is the rate over this window; p50/p99 cover this one.
const RATE_WINDOW: Duration = Duration::from_secs(10);
const QUANTILE_WINDOW: Duration = Duration::from_secs(60);
/// Invocations a snapshot carries at most.
const INVOCATIONS: usize = 50;
/// Dead letters listed per pipeline, newest first.
const DEAD_LETTERS: usize = 100;
/// Bytes of an event's payload shown with its dead letter.
const PREVIEW: usize = 4096;

/// What the dashboard reads: the running process's pipelines and their
/// handlers, its backends and health.
pub struct Dashboard {
    pub pipelines: Vec<(PipelineConfig, Arc<Handler>)>,
    pub backends: Backends,
    pub health: Arc<Health>,
    pub auth: Arc<AuthConfig>,
    pub metrics: PrometheusHandle,
    /// Ends the live feeds, so a stopping process does not wait on them.
    pub stop: CancellationToken,
}

/// The dashboard's routes.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/v1/dashboard/live", get(live))
        .route(
            "/v1/dashboard/pipelines/{pipeline}/dead-letters",
            get(dead_letters),
        )
        .route(
            "/v1/dashboard/pipelines/{pipeline}/dead-letters/replay",
            post(replay),
        )
        .with_state(dashboard)
}

fn allowed(dashboard: &Dashboard, headers: &HeaderMap, scope: &str) -> Result<(), Response> {
    dashboard
        .auth
        .authorize(headers, scope)
        .map(drop)
        .map_err(|mut denied| {
            // Let a browser ask for the key (any user name, the token as the
            // password); a bearer client ignores the extra challenge.
            if denied.status() == StatusCode::UNAUTHORIZED {
                denied.headers_mut().append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"runnel\", charset=\"UTF-8\""),
                );
            }
            denied
        })
}

async fn page(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(denied) = allowed(&dashboard, &headers, "dashboard") {
        return denied;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page loads nothing from elsewhere and nothing may frame it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

/// The feed: a snapshot now and every second, until the client leaves or
/// the process stops.
async fn live(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(denied) = allowed(&dashboard, &headers, "dashboard") {
        return denied;
    }
    let can_replay: Vec<bool> = dashboard
        .pipelines
        .iter()
        .map(|(p, _)| {
            dashboard
                .auth
                .grants(&headers, &format!("replay:{}", p.name))
        })
        .collect();
    let feed = Feed {
        dashboard: dashboard.clone(),
        can_replay,
        history: figures::History::new(RATE_WINDOW, QUANTILE_WINDOW),
        last_seq: 0,
        ticks: None,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let stop = feed.dashboard.stop.clone();
        match &mut feed.ticks {
            None => {
                let mut every = tokio::time::interval(EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                every.tick().await;
                feed.ticks = Some(every);
            }
            Some(every) => {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
        let snapshot = feed.snapshot();
        let event = SseEvent::default()
            .event("snapshot")
            .data(snapshot.to_string());
        Some((Ok::<_, std::convert::Infallible>(event), feed))
    });
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

/// One client's feed: its own window of samples, and the invocations it
/// has been sent.
struct Feed {
    dashboard: Arc<Dashboard>,
    can_replay: Vec<bool>,
    history: figures::History,
    last_seq: u64,
    ticks: Option<tokio::time::Interval>,
}

impl Feed {
    fn snapshot(&mut self) -> Value {
        let d = &self.dashboard;
        self.history
            .push(Instant::now(), figures::Sample::parse(&d.metrics.render()));
        let invocations = activity::recent().since(self.last_seq, INVOCATIONS);
        if let Some(last) = invocations.last() {
            self.last_seq = last.seq;
        }
        let pipelines: Vec<Value> = d
            .pipelines
            .iter()
            .zip(&self.can_replay)
            .map(|((p, handler), can_replay)| {
                let (kind, what) = p.source.describe();
                let sink = |(name, sink): (&str, &crate::sinks::SinkConfig)| {
                    let (kind, what) = sink.describe();
                    json!({ "name": name, "kind": kind, "what": what })
                };
                json!({
                    "name": p.name,
                    "source": { "kind": kind, "what": what },
                    "function": {
                        "name": handler.function_name(),
                        "memory_limit": p.function.memory_limit,
                        "timeout_ms": p.function.timeout.as_millis() as u64,
                    },
                    "concurrency": p.concurrency,
                    "sinks": p.sinks.iter().map(|(n, s)| sink((n, s))).collect::<Vec<_>>(),
                    "dead_letter": sink(("dead-letter", &p.dead_letter)),
                    "figures": self.history.figures(&p.name, kafka_group(p)),
                    "can_replay": can_replay,
                })
            })
            .collect();
        let report = d.health.report();
        let mut checks: serde_json::Map<String, Value> = report
            .iter()
            .map(|(backend, problem)| (backend.to_string(), json!(problem)))
            .collect();
        for (pipeline, problem) in d.health.source_problems() {
            checks.insert(format!("source:{pipeline}"), json!(problem));
        }
        json!({
            "at_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis() as u64),
            "version": env!("CARGO_PKG_VERSION"),
            "healthy": checks.values().all(Value::is_null),
            "health": checks,
            "pipelines": pipelines,
            "invocations": invocations,
        })
    }
}

/// The consumer group a topic source reads with: its lag series' label.
fn kafka_group(p: &PipelineConfig) -> Option<&str> {
    match &p.source {
        crate::triggers::TriggerConfig::Topic(t) => Some(t.group.as_deref().unwrap_or(&p.name)),
        _ => None,
    }
}

fn find<'d>(
    dashboard: &'d Dashboard,
    name: &str,
) -> Result<&'d (PipelineConfig, Arc<Handler>), Response> {
    dashboard
        .pipelines
        .iter()
        .find(|(p, _)| p.name == name)
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no pipeline {name:?} runs here"),
            )
        })
}

/// A pipeline's dead letters, newest first, each with its event's payload
/// shortened to a preview.
async fn dead_letters(
    State(dashboard): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = allowed(&dashboard, &headers, "dashboard") {
        return denied;
    }
    let (pipeline, _) = match find(&dashboard, &name) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let mut entries = match crate::dlq::list(pipeline, &dashboard.backends).await {
        Ok(entries) => entries,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the dead letters of {name}: {e:#}"),
            );
        }
    };
    let total = entries.len();
    entries.sort_by(|a, b| {
        let at = |e: &crate::dlq::Entry| e.record["failed_at"].as_str().map(str::to_owned);
        at(b).cmp(&at(a))
    });
    let listed: Vec<Value> = entries
        .into_iter()
        .take(DEAD_LETTERS)
        .map(|mut entry| {
            if let Some(event) = entry.record.get_mut("event") {
                preview(event);
            }
            json!({ "location": entry.location, "record": entry.record })
        })
        .collect();
    axum::Json(json!({ "pipeline": name, "total": total, "dead_letters": listed })).into_response()
}

/// Replaces an event's base64 `data` with its size and the start of it, as
/// text when it is UTF-8.
fn preview(event: &mut Value) {
    let Some(data) = event.get("data").and_then(Value::as_str) else {
        return;
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap_or_default();
    let shown = &bytes[..bytes.len().min(PREVIEW)];
    let text = match std::str::from_utf8(shown) {
        Ok(text) => json!(text),
        Err(_) => Value::Null,
    };
    event["data_size"] = json!(bytes.len());
    event["data_preview"] = text;
    if let Some(object) = event.as_object_mut() {
        object.remove("data");
    }
}

#[derive(Deserialize)]
struct ReplayRequest {
    /// The dead letter's idempotency key.
    key: String,
}

/// Replays one dead letter through the pipeline's handler and says how it
/// went: 200 when it completed (its dead letter in a bucket is deleted),
/// 422 when it failed again (its dead letter stays).
async fn replay(
    State(dashboard): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(denied) = allowed(&dashboard, &headers, "dashboard")
        .and_then(|()| allowed(&dashboard, &headers, &format!("replay:{name}")))
    {
        return denied;
    }
    if let Err(refused) = same_origin(&headers) {
        return refused;
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send {\"key\": \"<idempotency key>\"} as application/json",
        );
    }
    let request: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not {{\"key\": \"<idempotency key>\"}}: {e}"),
            );
        }
    };
    let (pipeline, handler) = match find(&dashboard, &name) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let ids = [request.key.clone()];
    let results =
        match crate::dlq::replay_through(handler, pipeline, &dashboard.backends, &ids).await {
            Ok(results) => results,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("replaying {}: {e:#}", request.key),
                );
            }
        };
    // A dead letter on a topic stays there after a replay, so the same key
    // can be listed (and replayed) more than once: the last one counts.
    let Some((_, outcome)) = results.last() else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "pipeline {name} has no dead letter with key {:?}",
                request.key
            ),
        );
    };
    tracing::info!(pipeline = %name, key = %request.key, "dead letter replayed from the dashboard");
    let (status, body) = match outcome {
        crate::dlq::Replayed::Done { attempts } => (
            StatusCode::OK,
            json!({ "key": request.key, "status": "done", "attempts": attempts }),
        ),
        crate::dlq::Replayed::FailedAgain(reason) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "key": request.key, "status": "failed", "error": reason }),
        ),
        crate::dlq::Replayed::NoEvent => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "key": request.key, "status": "failed", "error": "the dead letter holds no event" }),
        ),
    };
    (status, axum::Json(body)).into_response()
}

/// Refuses a request whose `Origin` is another site's.
fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .map(|u| match u.port() {
            Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        });
    if origin_host.is_some() && origin_host.as_deref() == host {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "a replay must come from the dashboard's own origin",
        ))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}
