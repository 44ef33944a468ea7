//! runnel's HTTP surface: uploads and downloads of objects, topics read and
//! published to, queued requests' status, `/metrics` and the health
//! routes; who may call each ([`auth`], [`jwt`], [`rate_limit`], [`cors`]);
//! and, for every path it does not serve, the routes triggers contribute
//! through [`Functions`] (the HTTP trigger's gateway). The server knows
//! nothing else of triggers: they build on it, not it on them.
//!
//! Every body is bounded before it is read: uploads by `max_upload_size`,
//! every other request by `max_body_size`, refused with 413 by their
//! declared length at once and by their streamed length as soon as it
//! passes the limit, before the store sees anything. A route that needs a
//! credential checks it before reading the body, in constant time. Keys are
//! validated by the storage layer; anything that could escape a bucket is
//! a 400.

pub mod auth;
pub mod cors;
pub mod jwt;
pub mod rate_limit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::broker::{Broker, BrokerError};
use crate::config::units;
use crate::metrics as m;
use crate::storage::{NewObject, ObjectStore, StorageError};
use crate::telemetry;

/// Prefix of request headers that become user metadata.
pub const META_HEADER_PREFIX: &str = "x-runnel-meta-";

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn ObjectStore>,
    pub broker: Arc<dyn Broker>,
    pub metrics: PrometheusHandle,
    pub max_upload_size: u64,
    /// Largest body of any other request.
    pub max_body_size: u64,
    /// The buckets the pipelines name: `runnel_uploads_total` is labelled
    /// with these, and every other bucket counts as `other`, so a client
    /// cannot grow the metric's label set without bound.
    pub known_buckets: Arc<BTreeSet<String>>,
    /// Where `POST /v1/events/s3` queues S3 notifications, when configured.
    pub s3_webhook: Option<S3Webhook>,
    pub health: Arc<crate::health::Health>,
    /// HTTP functions' routes: every path the API does not serve.
    pub functions: Arc<dyn Functions>,
    /// Who may use which route.
    pub auth: Arc<auth::AuthConfig>,
}

/// The routes triggers add to the API: every path it does not serve, and
/// the status of the requests they queued.
#[async_trait::async_trait]
pub trait Functions: Send + Sync {
    /// Answers a request for a path the API does not serve (404 when no
    /// route does either).
    async fn serve(&self, request: axum::extract::Request) -> Response;

    /// How the queued request `id` went, for a caller whose headers may
    /// see it (else the 401 or 403); `None` when no route queued it.
    async fn invocation(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Invocation>, Response>;
}

/// What `GET /v1/invocations/{id}` says of a queued request.
#[derive(Debug, PartialEq)]
pub enum Invocation {
    /// Queued: not taken yet (or taken by another process).
    Queued,
    /// Being handled by this process.
    Running,
    /// Ended, with the summary kept with its completion: the attempts and
    /// the outputs written, or the error that dead-lettered it.
    Done(Option<serde_json::Value>),
    DeadLettered(Option<serde_json::Value>),
}

/// `[storage.events] type = "webhook"`: the topic and the expected token.
#[derive(Clone)]
pub struct S3Webhook {
    pub topic: String,
    pub auth_token: Option<String>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/objects/{bucket}/{*key}",
            get(get_object).put(put_object),
        )
        .route("/v1/topics/{topic}", get(read_topic).post(publish))
        .route("/v1/events/s3", axum::routing::post(s3_notification))
        .route("/v1/invocations/{id}", get(invocation))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        // For orchestrators: liveness must not follow the backends, or a
        // broker outage restarts every instance; readiness does.
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(functions)
        // Uploads and webhooks read their bodies themselves, with their own
        // limits; this bounds any extractor added later.
        .layer(DefaultBodyLimit::max(state.max_body_size as usize))
        .with_state(state)
}

/// How a request queued by an `async` HTTP pipeline went.
async fn invocation(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match state.functions.invocation(&id, &headers).await {
        Err(denied) => denied,
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no queued request {id} is known (within idempotency.ttl)"),
        ),
        Ok(Some(status)) => {
            let (status, summary) = match status {
                Invocation::Queued => ("queued", None),
                Invocation::Running => ("running", None),
                Invocation::Done(summary) => ("done", summary),
                Invocation::DeadLettered(summary) => ("dead-lettered", summary),
            };
            let mut body = json!({ "id": id, "status": status });
            if let Some(serde_json::Value::Object(summary)) = summary {
                body.as_object_mut().expect("an object").extend(summary);
            }
            axum::Json(body).into_response()
        }
    }
}

/// Whatever the API does not serve goes to the HTTP functions' routes.
async fn functions(State(state): State<ApiState>, request: axum::extract::Request) -> Response {
    state.functions.serve(request).await
}

/// 200 while the process serves at all.
async fn livez() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// 200 while every backend answers, 503 with what does not otherwise.
async fn healthz(State(state): State<ApiState>) -> Response {
    checks(&state, false)
}

/// Like `/healthz`, and also 503 while a source reports a problem (a
/// database it cannot read, a lost replication slot), as `source:<pipeline>`.
async fn readyz(State(state): State<ApiState>) -> Response {
    checks(&state, true)
}

fn checks(state: &ApiState, with_sources: bool) -> Response {
    let report = state.health.report();
    let mut checks: serde_json::Map<_, _> = report
        .iter()
        .map(|(backend, problem)| {
            let value = problem.as_deref().unwrap_or("ok");
            (backend.to_string(), json!(value))
        })
        .collect();
    let sources = if with_sources {
        state.health.source_problems()
    } else {
        Default::default()
    };
    for (pipeline, problem) in &sources {
        checks.insert(format!("source:{pipeline}"), json!(problem));
    }
    let healthy = state.health.is_healthy() && sources.is_empty();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "checks": checks,
    });
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn storage_error(e: StorageError) -> Response {
    let status = StatusCode::from_u16(storage_error_status(&e)).expect("a valid status");
    error(status, e.to_string())
}

fn storage_error_status(e: &StorageError) -> u16 {
    match e {
        StorageError::InvalidBucket(_) | StorageError::InvalidKey { .. } => 400,
        StorageError::NotFound { .. } | StorageError::Changed { .. } => 404,
        StorageError::TooLarge { .. } => 413,
        StorageError::Unavailable(_) => 503,
        StorageError::Rejected(_) => 502,
    }
}

/// Reads a body of at most `limit` bytes: refused by its declared length
/// before any of it is read, and as soon as the stream passes the limit.
/// `setting` names the limit in the 413.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    setting: &str,
) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body exceeds the limit of {} ({setting})",
                units::format_size(limit)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(body) => Ok(body),
        Err(e) if is_length_limit(&e) => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

/// Whether `given` is `expected`, in time that does not depend on where
/// they differ (nor on their lengths: both are hashed first).
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(expected))
        .into()
}

async fn put_object(
    State(state): State<ApiState>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(denied) = state
        .auth
        .authorize(&headers, &format!("objects:write:{bucket}"))
    {
        return denied;
    }
    // The upload's span: the first of its trace (or a child of the
    // client's), and the parent its object's events take.
    let span = telemetry::Span::start(
        "PUT /v1/objects/{bucket}/{key}",
        opentelemetry::trace::SpanKind::Server,
        vec![
            opentelemetry::KeyValue::new("http.request.method", "PUT"),
            opentelemetry::KeyValue::new("http.route", "/v1/objects/{bucket}/{key}"),
            opentelemetry::KeyValue::new("url.path", format!("/v1/objects/{bucket}/{key}")),
            opentelemetry::KeyValue::new("runnel.bucket", bucket.clone()),
        ],
    );
    let incoming = headers
        .get(telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    let context = span.adopt(incoming);
    let body = match read_body(
        &headers,
        body,
        state.max_upload_size,
        "http.max_upload_size",
    )
    .await
    {
        Ok(body) => body,
        Err(response) => return response,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut metadata = BTreeMap::new();
    for (name, value) in &headers {
        if let Some(meta) = name.as_str().strip_prefix(META_HEADER_PREFIX) {
            match value.to_str() {
                Ok(v) => {
                    metadata.insert(meta.to_owned(), v.to_owned());
                }
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("header {name} is not valid text"),
                    );
                }
            }
        }
    }
    metadata
        .entry(telemetry::TRACEPARENT.to_owned())
        .or_insert_with(|| context.header());
    let object = NewObject {
        body,
        content_type,
        metadata,
    };
    let stored = state.store.put(&bucket, &key, object).await;
    let status = match &stored {
        Ok(_) => 201,
        Err(e) => {
            span.fail(e.to_string());
            storage_error_status(e)
        }
    };
    span.attribute(opentelemetry::KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    match stored {
        Ok(created) => {
            let label = if state.known_buckets.contains(&bucket) {
                bucket
            } else {
                "other".to_owned()
            };
            counter!(m::UPLOADS, "bucket" => label).increment(1);
            let body = json!({
                "bucket": created.bucket,
                "key": created.key,
                "etag": created.etag,
                "size": created.size,
            });
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(e) => storage_error(e),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        source = err.source();
    }
    false
}

async fn get_object(
    State(state): State<ApiState>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = state
        .auth
        .authorize(&headers, &format!("objects:read:{bucket}"))
    {
        return denied;
    }
    match state.store.get(&bucket, &key, u64::MAX, None).await {
        Ok((info, body)) => {
            let mut response = Response::new(Body::from(body));
            let headers = response.headers_mut();
            if let Some(ct) = info
                .content_type
                .and_then(|c| HeaderValue::from_str(&c).ok())
            {
                headers.insert(header::CONTENT_TYPE, ct);
            }
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", info.etag)) {
                headers.insert(header::ETAG, etag);
            }
            for (name, value) in info.metadata {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::try_from(format!("{META_HEADER_PREFIX}{name}")),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(n, v);
                }
            }
            response
        }
        Err(e) => storage_error(e),
    }
}

#[derive(Deserialize)]
struct TopicQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Messages of a topic from an offset, for people and tests to look at.
async fn read_topic(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TopicQuery>,
) -> Response {
    if let Err(denied) = state
        .auth
        .authorize(&headers, &format!("topics:read:{topic}"))
    {
        return denied;
    }
    let limit = query.limit.clamp(1, 1000);
    match state.broker.peek(&topic, query.offset, limit).await {
        Ok(messages) => {
            let items: Vec<_> = messages
                .into_iter()
                .map(|c| {
                    let headers: BTreeMap<_, _> = c.message.headers.into_iter().collect();
                    let mut item = json!({
                        "partition": c.position.partition,
                        "offset": c.position.offset,
                        "key": c.message.key,
                        "headers": headers,
                    });
                    match std::str::from_utf8(&c.message.payload) {
                        Ok(text) => item["payload"] = json!(text),
                        Err(_) => {
                            item["payload_base64"] = json!(
                                base64::engine::general_purpose::STANDARD
                                    .encode(&c.message.payload)
                            )
                        }
                    }
                    item
                })
                .collect();
            axum::Json(json!({ "topic": topic, "messages": items })).into_response()
        }
        Err(e @ BrokerError::InvalidTopic(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Publishes the body as one message on a topic, of whichever broker is
/// bound: `x-runnel-key` is its key (ordering), each `x-runnel-header-<name>`
/// a header, and an `Idempotency-Key` makes a repeat a no-op (the broker's
/// producer-id dedupe). Answers where it landed.
async fn publish(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(denied) = state
        .auth
        .authorize(&headers, &format!("topics:write:{topic}"))
    {
        return denied;
    }
    let body = match read_body(&headers, body, state.max_body_size, "http.max_body_size").await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let text = |value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let message_headers = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-runnel-header-")?;
            Some((name.to_owned(), text(value)))
        })
        .collect();
    let message = crate::event::Message {
        key: headers.get("x-runnel-key").map(text),
        headers: message_headers,
        payload: body,
    };
    let producer_id = headers
        .get("idempotency-key")
        .map(|key| format!("api:{}", text(key)));
    match state.broker.publish(&topic, producer_id, message).await {
        Ok(position) => (
            StatusCode::CREATED,
            axum::Json(json!({
                "topic": topic,
                "partition": position.partition,
                "offset": position.offset,
            })),
        )
            .into_response(),
        Err(e @ BrokerError::InvalidTopic(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Receives S3 event notifications (MinIO's webhook target, or any body
/// [`s3_events::decode`](crate::storage::s3_events::decode) reads) and
/// queues the body on the configured topic before answering, so an
/// acknowledged notification is never lost; the sender retries what is not
/// acknowledged. The token is checked before the body is read. A body that
/// is JSON but no notification runnel understands is queued too: the
/// storage source dead-letters it with the reason, where `runnel dlq list`
/// shows it.
async fn s3_notification(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(webhook) = &state.s3_webhook else {
        return error(
            StatusCode::NOT_FOUND,
            "S3 notifications are not received here: set [storage.events] type = \"webhook\"",
        );
    };
    // Its own token when one is set (MinIO sends one fixed header); else,
    // with API keys, a key with `events:s3`.
    if webhook.auth_token.is_none()
        && let Err(denied) = state.auth.authorize(&headers, "events:s3")
    {
        return denied;
    }
    if let Some(token) = &webhook.auth_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !same_secret(given, format!("Bearer {token}").as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    let body = match read_body(&headers, body, state.max_body_size, "http.max_body_size").await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("malformed S3 event notification: {e}"),
        );
    }
    // Ordered by the first object's key; the same body delivered twice is
    // queued once.
    let key = crate::storage::s3_events::decode(&body)
        .ok()
        .and_then(|events| events.into_iter().next())
        .map(|created| created.key);
    let producer_id = {
        use sha2::{Digest, Sha256};
        format!("s3-webhook:{}", hex::encode(Sha256::digest(&body)))
    };
    let message = crate::event::Message {
        key,
        headers: Vec::new(),
        payload: body,
    };
    if let Err(e) = state
        .broker
        .publish(&webhook.topic, Some(producer_id), message)
        .await
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("queueing the notification: {e}"),
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(denied) = state.auth.authorize(&headers, "metrics") {
        return denied;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
