//! The gateway: every HTTP pipeline's routes, and what happens to a
//! request before, while and after its function answers it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram, counter, histogram};
use serde_json::json;
use tokio::sync::oneshot;

use crate::engine::{Handler, OnFailure, Outcome, Pending, Track, Work};
use crate::event::{Event, Message};
use crate::idempotency::Completion;
use crate::runtime::http as wasi_http;
use crate::server::auth::AuthConfig;
use crate::server::cors::CorsConfig;
use crate::server::jwt::JwtVerifier;
use crate::server::rate_limit::{TokenBucket, retry_after};
use crate::server::{Functions, Invocation};

use super::queue::{QUEUED, Queue};
use super::request::{error, reply_response, request_event, request_id, streaming_response};
use super::routes::{Matched, Route};
use super::{HttpTriggerConfig, RouteAuth};

/// Every HTTP pipeline's routes, in the order they are tried.
pub struct Gateway {
    routes: Vec<(Route, Arc<Served>)>,
    auth: Arc<AuthConfig>,
    /// For routes with `auth = "jwt"`.
    jwt: Option<Arc<JwtVerifier>>,
}

/// An HTTP pipeline as the gateway serves it.
pub(super) struct Served {
    config: HttpTriggerConfig,
    handler: Arc<Handler>,
    /// Idempotency keys of requests being answered here: a repeat while
    /// the first runs is a 409 (the store's claim says so across
    /// processes; an embedded store has no claims to hold).
    in_flight: Mutex<HashSet<String>>,
    /// Each route's bucket, when the pipeline has a rate limit.
    buckets: HashMap<String, TokenBucket>,
    /// Each route's request duration, and its request counter by status:
    /// handles kept, not looked up in the registry per request.
    durations: HashMap<String, Histogram>,
    requests: HashMap<String, Mutex<Vec<(u16, Counter)>>>,
    /// The scope a key needs for these routes: `invoke:<pipeline>`.
    scope: String,
    /// Where requests are queued (`mode = "async"`).
    queue: Option<Queue>,
}

/// A key's place in [`Served::in_flight`], given up when dropped.
pub(super) struct InFlight<'s> {
    served: &'s Served,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .served
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        in_flight.remove(&self.key);
    }
}

/// Longest `Idempotency-Key` accepted (Stripe's limit).
pub(super) const MAX_IDEMPOTENCY_KEY: usize = 255;

impl Gateway {
    pub fn new(auth: Arc<AuthConfig>, jwt: Option<Arc<JwtVerifier>>) -> Self {
        Self {
            routes: Vec::new(),
            auth,
            jwt,
        }
    }

    /// Adds a pipeline's routes; a route another pipeline serves already is
    /// an error naming both.
    pub fn add(
        &mut self,
        config: &HttpTriggerConfig,
        handler: Arc<Handler>,
        queue: Option<Queue>,
    ) -> Result<(), String> {
        if config.auth == RouteAuth::Jwt && self.jwt.is_none() {
            return Err(
                "its source has auth = \"jwt\", and the runtime config has no [http.auth.jwt]"
                    .to_owned(),
            );
        }
        let pipeline = handler.name().to_owned();
        let served = Arc::new(Served {
            config: config.clone(),
            handler,
            in_flight: Mutex::default(),
            queue,
            durations: (config.routes.iter())
                .map(|route| {
                    let labels = [
                        ("pipeline", pipeline.clone()),
                        ("route", route.pattern.clone()),
                    ];
                    (
                        route.pattern.clone(),
                        histogram!(crate::metrics::HTTP_REQUEST_DURATION, &labels),
                    )
                })
                .collect(),
            requests: (config.routes.iter())
                .map(|route| (route.pattern.clone(), Mutex::default()))
                .collect(),
            scope: format!("invoke:{pipeline}"),
            buckets: (config.routes.iter())
                .filter_map(|route| {
                    Some((route.pattern.clone(), TokenBucket::new(config.rate_limit?)))
                })
                .collect(),
        });
        for route in &config.routes {
            if let Some((_, other)) = self.routes.iter().find(|(r, _)| r.pattern == route.pattern) {
                return Err(format!(
                    "route {} is served by pipelines {} and {}",
                    route.pattern,
                    other.handler.name(),
                    served.handler.name()
                ));
            }
            self.routes.push((route.clone(), served.clone()));
        }
        self.routes.sort_by_key(|(route, _)| route.precedence());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[async_trait::async_trait]
impl Functions for Gateway {
    /// How the queued request `id` (`<pipeline>.<hex>`) went, for a caller
    /// whose headers may see it; `None` when no async pipeline knows it.
    async fn invocation(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Invocation>, Response> {
        let Some((pipeline, _)) = id.split_once('.') else {
            return Ok(None);
        };
        let served = self
            .routes
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.queue.is_some() && s.handler.name() == pipeline);
        let Some(served) = served else {
            return Ok(None);
        };
        if served.config.auth == RouteAuth::Token {
            self.auth
                .authorize(headers, &format!("invoke:{pipeline}"))?;
        }
        let handler = &served.handler;
        let summary = async || {
            let kept = handler.kept_reply(id).await?;
            serde_json::from_slice::<serde_json::Value>(&kept).ok()
        };
        Ok(match handler.status(id, QUEUED).await {
            None => None,
            Some(Some(Completion::Done)) => Some(Invocation::Done(summary().await)),
            Some(Some(Completion::DeadLettered)) => Some(Invocation::DeadLettered(summary().await)),
            Some(None) if handler.is_running(id) => Some(Invocation::Running),
            Some(None) => Some(Invocation::Queued),
        })
    }

    /// Answers one request: a route's function, or 404.
    async fn serve(&self, request: Request) -> Response {
        let path = request.uri().path().to_owned();
        let found = self
            .routes
            .iter()
            .find_map(|(route, served)| Some((route, served, route.matches(&path)?)));
        let Some((route, served, matched)) = found else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no route serves {path}"),
                None,
            );
        };
        let started = Instant::now();
        let cors = served.config.cors.as_ref();
        let response = match cors {
            Some(cors) if CorsConfig::is_preflight(request.method(), request.headers()) => {
                cors.preflight(request.headers(), &served.config.methods)
            }
            _ => {
                let origin_headers = cors.map(|_| request.headers().clone());
                let mut response = served.admit(route, &matched, request, self).await;
                if let (Some(cors), Some(headers)) = (cors, origin_headers) {
                    cors.mark(&headers, &mut response);
                }
                response
            }
        };
        served.meter(route, response.status().as_u16(), started);
        response
    }
}

impl Served {
    /// Counts a request to `route` answered with `status`, and its time.
    fn meter(&self, route: &Route, status: u16, started: Instant) {
        if let Some(duration) = self.durations.get(&route.pattern) {
            duration.record(started.elapsed().as_secs_f64());
        }
        let Some(requests) = self.requests.get(&route.pattern) else {
            return;
        };
        let mut requests = requests.lock().unwrap_or_else(|e| e.into_inner());
        // A route answers with a handful of statuses: a scan, no key to build.
        match requests.iter().find(|(seen, _)| *seen == status) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = counter!(crate::metrics::HTTP_REQUESTS, "pipeline" => self.handler.name().to_owned(), "route" => route.pattern.clone(), "status" => status.to_string());
                counter.increment(1);
                requests.push((status, counter));
            }
        }
    }

    /// Checks who calls and how often, then answers.
    async fn admit(
        &self,
        route: &Route,
        matched: &Matched<'_>,
        request: Request,
        gateway: &Gateway,
    ) -> Response {
        let mut caller = Caller::Anonymous;
        match self.config.auth {
            RouteAuth::None => {}
            RouteAuth::Token => match gateway.auth.authorize(request.headers(), &self.scope) {
                Ok(Some(_)) => caller = Caller::Key,
                Ok(None) => {}
                Err(denied) => return denied,
            },
            RouteAuth::Jwt => {
                let verifier = gateway
                    .jwt
                    .as_ref()
                    .expect("checked when the route was added");
                match verifier.verify(request.headers()).await {
                    Ok(claims) => caller = Caller::Jwt(claims),
                    Err(denied) => return denied,
                }
            }
        }
        if let Some(Err(wait)) = self.buckets.get(&route.pattern).map(TokenBucket::take) {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "route {} is over its rate limit (rate_limit)",
                    route.pattern
                ),
                None,
            );
            if let Ok(value) = HeaderValue::from_str(&retry_after(wait)) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        self.answer(route, matched, request, &caller).await
    }

    async fn answer(
        &self,
        route: &Route,
        matched: &Matched<'_>,
        request: Request,
        caller: &Caller,
    ) -> Response {
        let config = &self.config;
        if !config.methods.contains(request.method()) {
            let allow = config
                .methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{} is not allowed on {} (methods: {allow})",
                    request.method(),
                    route.pattern
                ),
                None,
            );
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return response;
        }
        let header_bytes: u64 = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
            .sum();
        if header_bytes > config.max_header_size {
            return error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers take {header_bytes} bytes, over the route's limit of {} (max_header_size)",
                    config.max_header_size
                ),
                None,
            );
        }
        if let Some(queue) = &self.queue {
            return self.enqueue(queue, route, matched, request, caller).await;
        }
        // Refused before the body is read: a busy pipeline costs nothing more.
        let Some(slot) = self.handler.try_admit() else {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "pipeline {} is at its concurrency limit",
                    self.handler.name()
                ),
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        };
        let (parts, body) = request.into_parts();
        let body: Body = body;
        let body = match crate::server::read_body(
            &parts.headers,
            body,
            config.max_body_size,
            "max_body_size",
        )
        .await
        {
            Ok(body) => body,
            Err(response) => return response,
        };
        let id = request_id();
        let idempotency_key = match idempotency_key(&parts.headers) {
            Ok(key) => key.map(str::to_owned),
            Err(message) => return error(StatusCode::BAD_REQUEST, message, Some(&id)),
        };
        let (key, track) = match &idempotency_key {
            None => (id.clone(), Track::Untracked),
            Some(given) => (
                format!("request:{given}"),
                Track::Request {
                    fingerprint: fingerprint(&parts, &body),
                },
            ),
        };
        let _in_flight = match idempotency_key {
            None => None,
            Some(_) => match self.enter(&key) {
                Some(guard) => Some(guard),
                None => return in_progress(&id),
            },
        };
        let mut event = request_event(&id, self.handler.name(), route, matched, &parts, body);
        caller.describe(&mut event);
        event.idempotency_key = key.clone();
        // What a kept reply must have answered (only a keyed request has one).
        let fingerprint = match &track {
            Track::Request { fingerprint } => fingerprint.clone(),
            _ => String::new(),
        };
        // A reply that is not kept is streamed as the function writes it.
        let (stream, head) = match track {
            Track::Untracked => {
                let (stream, head) = oneshot::channel();
                (Some(stream), Some(head))
            }
            _ => (None, None),
        };
        let work = Work {
            key: key.clone(),
            pending: Pending::Event(Box::new(event)),
            on_failure: OnFailure::Return,
            track,
            retry: false,
            stream,
        };
        let handled = match head {
            None => self.handler.handle(slot, work).await,
            Some(head) => {
                let handler = Arc::clone(&self.handler);
                match streamed_or(head, async move { handler.handle(slot, work).await }).await {
                    Ok(streaming) => return streaming_response(streaming, &id),
                    Err(handled) => handled,
                }
            }
        };
        match handled.outcome {
            Outcome::Skipped(_) => match self
                .handler
                .kept_reply(&key)
                .await
                .as_deref()
                .and_then(wasi_http::Reply::decode)
            {
                Some((kept, reply)) if kept == fingerprint => {
                    let mut response = reply_response(reply, &id);
                    response
                        .headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    response
                }
                Some(_) => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this Idempotency-Key was used for a request with another method, path or body",
                    Some(&id),
                ),
                None => error(
                    StatusCode::CONFLICT,
                    "this Idempotency-Key's request was answered, but its response is not kept",
                    Some(&id),
                ),
            },
            Outcome::Busy => in_progress(&id),
            Outcome::Done {
                reply: Some(reply), ..
            } => reply_response(reply, &id),
            Outcome::Failed { failure, .. } => {
                let (status, what) = match failure.outcome {
                    Some("timeout") => (StatusCode::GATEWAY_TIMEOUT, "the function timed out"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "the function failed"),
                };
                tracing::warn!(pipeline = %self.handler.name(), request_id = %id, route = %route.pattern, stage = failure.stage, error = %failure.message, "request failed");
                error(status, what, Some(&id))
            }
            other => {
                tracing::error!(pipeline = %self.handler.name(), request_id = %id, ?other, "an HTTP function gave no reply");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the function gave no reply",
                    Some(&id),
                )
            }
        }
    }
}

impl Served {
    /// Queues a request as an event and answers 202 with its id once the
    /// broker has it: a crash after the answer loses nothing. The same
    /// `Idempotency-Key` names the same id, so a repeat is queued once (the
    /// broker's producer-id dedupe) and handled once (its completion).
    async fn enqueue(
        &self,
        queue: &Queue,
        route: &Route,
        matched: &Matched<'_>,
        request: Request,
        caller: &Caller,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let body = match crate::server::read_body(
            &parts.headers,
            body,
            self.config.max_body_size,
            "max_body_size",
        )
        .await
        {
            Ok(body) => body,
            Err(response) => return response,
        };
        let pipeline = self.handler.name();
        let hex = match idempotency_key(&parts.headers) {
            Ok(None) => request_id(),
            Ok(Some(key)) => {
                use sha2::{Digest, Sha256};
                hex::encode(&Sha256::digest(key.as_bytes())[..16])
            }
            Err(message) => return error(StatusCode::BAD_REQUEST, message, None),
        };
        let id = format!("{pipeline}.{hex}");
        let mut event = request_event(&id, pipeline, route, matched, &parts, body);
        caller.describe(&mut event);
        event.idempotency_key = id.clone();
        let message = Message {
            key: None,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            payload: serde_json::to_vec(&event)
                .expect("an event serializes")
                .into(),
        };
        if let Err(e) = queue
            .broker
            .publish(&queue.topic, Some(id.clone()), message)
            .await
        {
            tracing::warn!(pipeline, error = %e, topic = %queue.topic, "queueing a request failed");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the request could not be queued: {e}"),
                Some(&id),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        self.handler.mark(&id, QUEUED).await;
        let body = json!({
            "id": id,
            "status": "queued",
            "status_url": format!("/v1/invocations/{id}"),
        });
        let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("/v1/invocations/{id}")) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }

    /// Marks `key` as being answered here, unless it already is.
    fn enter(&self, key: &str) -> Option<InFlight<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.insert(key.to_owned()).then(|| InFlight {
            served: self,
            key: key.to_owned(),
        })
    }
}

/// Who a request came from, as the route's `auth` found out.
pub(super) enum Caller {
    Anonymous,
    /// With an API key.
    Key,
    /// With a verified JWT, whose claims these are.
    Jwt(serde_json::Value),
}

impl Caller {
    /// What the function is told of the caller. The credential itself is
    /// runnel's business: neither the function nor, for async routes, the
    /// queue sees an API key or a token; a JWT's claims arrive as
    /// `runnel-jwt-claims` (JSON) and `runnel-jwt-sub`.
    fn describe(&self, event: &mut Event) {
        let header = |name: &str| format!("{}{name}", wasi_http::HEADER_PREFIX);
        match self {
            Caller::Anonymous => {}
            Caller::Key => {
                event.attributes.remove(&header("authorization"));
            }
            Caller::Jwt(claims) => {
                event.attributes.remove(&header("authorization"));
                event
                    .attributes
                    .insert(header("runnel-jwt-claims"), claims.to_string());
                if let Some(sub) = claims["sub"].as_str() {
                    event
                        .attributes
                        .insert(header("runnel-jwt-sub"), sub.to_owned());
                }
            }
        }
    }
}

/// The response the function streams, as soon as it hands over the head,
/// or what `handling` ended with when it streamed none. The function runs
/// on, in its slot, while the client reads; the handler meters and logs
/// its end. A function that streams and finishes within one poll has its
/// whole body waiting in the stream, and is answered from there (its
/// outcome's reply has only the head).
async fn streamed_or<T: Send + 'static>(
    mut head: oneshot::Receiver<wasi_http::Streaming>,
    handling: impl Future<Output = T> + Send + 'static,
) -> Result<wasi_http::Streaming, T> {
    let mut handling = Box::pin(handling);
    tokio::select! {
        biased;
        streaming = &mut head => match streaming {
            Ok(streaming) => {
                tokio::spawn(handling);
                Ok(streaming)
            }
            Err(_) => Err(handling.await),
        },
        handled = &mut handling => head.try_recv().or(Err(handled)),
    }
}

/// A request's `Idempotency-Key`, if it has one, or why it is refused.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, String> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(key)) if (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) => Ok(Some(key)),
        Some(_) => Err(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )),
    }
}

pub(super) fn in_progress(id: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        "a request with this Idempotency-Key is still being answered",
        Some(id),
    )
}

/// What makes a repeat the same request: method, path with query, body.
pub(super) fn fingerprint(parts: &axum::http::request::Parts, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(parts.method.as_str());
    digest.update([0]);
    digest.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    digest.update([0]);
    digest.update(body);
    hex::encode(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function that streams its whole response within one poll of its
    /// handling is answered from the stream, not from the outcome's reply,
    /// which has only the head (CI once saw a 200 with no body).
    #[tokio::test]
    async fn a_response_streamed_and_finished_at_once_keeps_its_body() {
        let (to, head) = oneshot::channel();
        let handling = async move {
            let _ = to.send(wasi_http::Streaming::finished(200, "whole".into()));
            "handled"
        };
        let streaming = streamed_or(head, handling).await.expect("the stream");
        assert_eq!(streaming.status, 200);
        let body = axum::body::to_bytes(Body::new(streaming.body), 1 << 10).await;
        assert_eq!(body.unwrap(), "whole");

        let (_to, head) = oneshot::channel();
        let unstreamed = streamed_or(head, async { "handled" }).await;
        assert_eq!(unstreamed.err(), Some("handled"));
    }
}
