//! The HTTP trigger: requests to a pipeline's routes, answered by its
//! function (a `wasi:http` component) while the client waits.
//!
//! A pushed trigger: there is no feed to commit, so it calls the handler
//! directly for each request and turns the outcome into the response (it
//! acknowledges with a reply). Every HTTP pipeline's routes are served by
//! one [`Gateway`] under the API's listener; a route is matched as Spin
//! orders them (an exact route beats one with `:param`s, which beats a
//! trailing wildcard `/...`; among wildcards the longer prefix wins).
//! Before anything runs, a request must fit the route's limits: its method
//! (405), its headers (431) and its body (413); when every slot of the
//! pipeline is busy it is refused at once with 503 and `Retry-After`
//! rather than queued without bound. The function's timeout answers 504,
//! a trap or error 500 with the request id that the log line carries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{counter, histogram};
use serde_json::json;

use crate::config::reader::Table;
use async_trait::async_trait;

use crate::broker::Broker;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::engine::{Delivery, Handler, OnFailure, Outcome, Pending, Track, Work};
use crate::event::Event;
use crate::event::{Consumed, Message};
use crate::feed::{Acks, Feed, FeedError};
use crate::http::auth::AuthConfig;
use crate::http::cors::CorsConfig;
use crate::http::jwt::JwtVerifier;
use crate::http::rate_limit::{RateLimitConfig, TokenBucket, retry_after};
use crate::idempotency::Completion;
use crate::runtime::http as wasi_http;

/// Paths the API itself serves: no route may shadow them.
const RESERVED: [&str; 5] = ["/v1/", "/metrics", "/healthz", "/livez", "/readyz"];

pub const DEFAULT_MAX_BODY_SIZE: u64 = 1 << 20;
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 16 << 10;
/// Lambda's limit for a synchronous response.
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 6 << 20;

#[derive(Clone, Debug)]
pub struct HttpTriggerConfig {
    /// The paths served: `/api/users/:id`, `/hooks/...` (at least one).
    pub routes: Vec<Route>,
    /// Methods accepted (default GET and HEAD); others are answered 405.
    pub methods: Vec<Method>,
    /// Largest request body (default 1 MiB): 413 beyond.
    pub max_body_size: u64,
    /// Largest total of request header names and values (default 16 KiB):
    /// 431 beyond.
    pub max_header_size: u64,
    /// Largest response body the function may write (default 6 MiB); a
    /// larger one is a 500.
    pub max_response_size: u64,
    /// Who may call (default: a key with `invoke:<pipeline>` when
    /// `[http.auth]` has keys).
    pub auth: RouteAuth,
    /// Requests a second each route takes (default: no limit); 429 beyond.
    pub rate_limit: Option<RateLimitConfig>,
    /// Browser origins that may call (default: none).
    pub cors: Option<CorsConfig>,
    pub mode: Mode,
    /// Where `async` requests are queued (default `<pipeline>.requests`).
    pub topic: Option<String>,
}

/// How a request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// By the function (a `wasi:http` component) while the client waits.
    Sync,
    /// With `202 {"id"}` once the request is queued on the broker; an
    /// event function then handles it like any event (retries, dead
    /// letters), and `GET /v1/invocations/{id}` says how it went.
    Async,
}

impl HttpTriggerConfig {
    /// The topic `async` requests are queued on.
    pub fn queue_topic(&self, pipeline: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{pipeline}.requests"))
    }
}

/// A route's `auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAuth {
    /// Anyone: a public route (a webhook that checks its own signature).
    None,
    /// An API key with the scope `invoke:<pipeline>`.
    Token,
    /// A JWT that `[http.auth.jwt]` verifies; its claims reach the
    /// function.
    Jwt,
}

impl HttpTriggerConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let routes = table.required("routes").and_then(|field| {
            let patterns = field.strings()?;
            if patterns.is_empty() {
                field.error("list at least one route");
                return None;
            }
            let mut routes = Vec::new();
            for pattern in patterns {
                match Route::parse(&pattern) {
                    Ok(route) => routes.push(route),
                    Err(reason) => field.error(format!("route {pattern:?}: {reason}")),
                }
            }
            (routes.len() == field.strings()?.len()).then_some(routes)
        });
        let methods = match table.get("methods") {
            None => Some(vec![Method::GET, Method::HEAD]),
            Some(field) => field.strings().and_then(|names| {
                let mut methods = Vec::new();
                for name in names {
                    match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                        Ok(method) => methods.push(method),
                        Err(_) => {
                            field.error(format!("{name:?} is not an HTTP method"));
                            return None;
                        }
                    }
                }
                Some(methods)
            }),
        };
        let mode = match table.get("mode") {
            None => Some(Mode::Sync),
            Some(field) => match field.string().as_deref() {
                Some("sync") => Some(Mode::Sync),
                Some("async") => Some(Mode::Async),
                Some(other) => {
                    field.error(format!(
                        "unknown mode {other:?}; expected \"sync\" or \"async\""
                    ));
                    None
                }
                None => None,
            },
        };
        let topic = table.get("topic").and_then(|field| {
            let topic = field.string()?;
            match crate::broker::validate_topic(&topic) {
                Ok(()) => Some(topic),
                Err(e) => {
                    field.error(e.to_string());
                    None
                }
            }
        });
        if topic.is_some()
            && mode == Some(Mode::Sync)
            && let Some(field) = table.get("topic")
        {
            field.error("topic is where mode = \"async\" queues requests; this source is sync");
        }
        let auth = match table.get("auth") {
            None => Some(RouteAuth::Token),
            Some(field) => match field.string().as_deref() {
                Some("none") => Some(RouteAuth::None),
                Some("token") => Some(RouteAuth::Token),
                Some("jwt") => Some(RouteAuth::Jwt),
                Some(other) => {
                    field.error(format!(
                        "unknown auth {other:?}; expected \"token\", \"jwt\" or \"none\""
                    ));
                    None
                }
                None => None,
            },
        };
        let rate_limit = match table.get("rate_limit") {
            None => Some(None),
            Some(field) => RateLimitConfig::read(field).map(Some),
        };
        let cors = match table.get("cors") {
            None => Some(None),
            Some(field) => CorsConfig::read(field).map(Some),
        };
        let max_body_size = table.size("max_body_size").unwrap_or(DEFAULT_MAX_BODY_SIZE);
        let max_header_size = table
            .size("max_header_size")
            .unwrap_or(DEFAULT_MAX_HEADER_SIZE);
        let max_response_size = table
            .size("max_response_size")
            .unwrap_or(DEFAULT_MAX_RESPONSE_SIZE);
        Some(Self {
            routes: routes?,
            methods: methods?,
            max_body_size,
            max_header_size,
            max_response_size,
            auth: auth?,
            rate_limit: rate_limit?,
            cors: cors?,
            mode: mode?,
            topic,
        })
    }
}

/// A route pattern: literal segments, `:name` parameters, and optionally a
/// trailing `...` that matches the rest of the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub pattern: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// What a matched route says about a path.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched<'p> {
    pub params: Vec<(&'p str, &'p str)>,
    /// What the wildcard matched, with its leading `/` (empty without one).
    pub rest: &'p str,
}

impl Route {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(path) = pattern.strip_prefix('/') else {
            return Err("a route starts with '/'".to_owned());
        };
        if let Some(reserved) = RESERVED
            .iter()
            .find(|r| pattern.starts_with(*r) || r.trim_end_matches('/') == pattern)
        {
            return Err(format!("{reserved} is runnel's own API"));
        }
        let mut segments = Vec::new();
        let mut wildcard = false;
        let parts: Vec<&str> = match path {
            "" => Vec::new(),
            path => path.split('/').collect(),
        };
        for (i, part) in parts.iter().enumerate() {
            if *part == "..." {
                if i + 1 != parts.len() {
                    return Err("`...` may only end a route".to_owned());
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !valid {
                    return Err(format!(
                        "parameter {part:?}: use letters, digits, '-' or '_'"
                    ));
                }
                segments.push(Segment::Param(name.to_ascii_lowercase()));
            } else if part.is_empty() {
                return Err("empty segment ('//' or a trailing '/')".to_owned());
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            segments,
            wildcard,
        })
    }

    /// Spin's order: exact routes, then routes with parameters, then
    /// wildcards, longer prefixes first; lower sorts first.
    fn precedence(&self) -> (u8, std::cmp::Reverse<usize>) {
        let class = match (
            self.wildcard,
            self.segments.iter().any(|s| matches!(s, Segment::Param(_))),
        ) {
            (false, false) => 0,
            (false, true) => 1,
            (true, _) => 2,
        };
        (class, std::cmp::Reverse(self.segments.len()))
    }

    /// The path's parameters and rest when this route serves `path`.
    pub fn matches<'p>(&'p self, path: &'p str) -> Option<Matched<'p>> {
        if !path.starts_with('/') {
            return None;
        }
        // What is left to match, with its leading '/'.
        let mut tail = if path == "/" { "" } else { path };
        let mut params = Vec::new();
        for segment in &self.segments {
            let rest = tail.strip_prefix('/')?;
            let (part, next) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Param(name) if !part.is_empty() => params.push((name.as_str(), part)),
                _ => return None,
            }
            tail = next;
        }
        match (self.wildcard, tail.is_empty()) {
            (true, _) => Some(Matched { params, rest: tail }),
            (false, true) => Some(Matched { params, rest: "" }),
            (false, false) => None,
        }
    }
}

/// Where an `async` pipeline's requests are queued.
#[derive(Clone)]
pub struct Queue {
    pub broker: Arc<dyn Broker>,
    pub topic: String,
}

/// The queue of an `async` pipeline read back, as a pulled trigger: each
/// message is a request event as JSON.
pub(super) struct QueueTrigger {
    feed: Box<dyn Feed<Consumed>>,
    acks: Arc<Acks>,
    description: String,
}

pub(super) async fn open_queue(
    topic: &str,
    pipeline: &str,
    broker: Arc<dyn Broker>,
) -> Result<QueueTrigger, FeedError> {
    let feed = broker
        .subscribe(topic, pipeline)
        .await
        .map_err(|e| FeedError(e.to_string()))?;
    Ok(QueueTrigger {
        acks: Acks::new(feed.committer()),
        description: format!("HTTP requests queued on topic {topic}"),
        feed,
    })
}

#[async_trait]
impl Pull for QueueTrigger {
    async fn next(&mut self, max: usize) -> Result<Pulled, FeedError> {
        let items = self.feed.poll(max).await?;
        let deliveries = (items.into_iter())
            .map(|item| {
                let decoded = item.item.and_then(|consumed| {
                    serde_json::from_slice::<Event>(&consumed.message.payload)
                        .map_err(|e| format!("a queued request that is not a request event: {e}"))
                });
                let (key, pending) = match decoded {
                    Ok(event) => (
                        event.idempotency_key.clone(),
                        Pending::Event(Box::new(event)),
                    ),
                    Err(reason) => (
                        format!("{}/{}", item.position.partition, item.position.offset),
                        Pending::Undecodable(reason),
                    ),
                };
                Delivery {
                    position: item.position,
                    idempotency_key: key,
                    ordering_key: None,
                    pending,
                }
            })
            .collect();
        Ok(Pulled {
            deliveries,
            skipped: Vec::new(),
        })
    }

    fn acks(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    fn description(&self) -> String {
        self.description.clone()
    }
}

/// What `GET /v1/invocations/{id}` says of a queued request.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Queued and not finished (waiting, or being handled).
    Queued,
    Done,
    DeadLettered,
}

/// The store's record that a request was queued: a "delivered output"
/// of the request's event, which its completion replaces.
const QUEUED: &str = "#queued";

/// Every HTTP pipeline's routes, in the order they are tried.
pub struct Gateway {
    routes: Vec<(Route, Arc<Served>)>,
    auth: Arc<AuthConfig>,
    /// For routes with `auth = "jwt"`.
    jwt: Option<Arc<JwtVerifier>>,
}

/// An HTTP pipeline as the gateway serves it.
struct Served {
    config: HttpTriggerConfig,
    handler: Arc<Handler>,
    /// Idempotency keys of requests being answered here: a repeat while
    /// the first runs is a 409 (the store's claim says so across
    /// processes; an embedded store has no claims to hold).
    in_flight: Mutex<HashSet<String>>,
    /// Each route's bucket, when the pipeline has a rate limit.
    buckets: HashMap<String, TokenBucket>,
    /// Where requests are queued (`mode = "async"`).
    queue: Option<Queue>,
}

/// A key's place in [`Served::in_flight`], given up when dropped.
struct InFlight<'s> {
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
const MAX_IDEMPOTENCY_KEY: usize = 255;

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
        let served = Arc::new(Served {
            config: config.clone(),
            handler,
            in_flight: Mutex::default(),
            queue,
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

    /// How the queued request `id` (`<pipeline>.<hex>`) went, for a caller
    /// whose headers may see it; `None` when no async pipeline knows it.
    pub async fn invocation(
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
        Ok(served
            .handler
            .status(id, QUEUED)
            .await
            .map(|status| match status {
                Some(Completion::Done) => Invocation::Done,
                Some(Completion::DeadLettered) => Invocation::DeadLettered,
                None => Invocation::Queued,
            }))
    }

    /// Answers one request: a route's function, or 404.
    pub async fn serve(&self, request: Request) -> Response {
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
        let pipeline = served.handler.name().to_owned();
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
        let status = response.status().as_u16().to_string();
        let labels = [("pipeline", pipeline), ("route", route.pattern.clone())];
        counter!(crate::metrics::HTTP_REQUESTS, "pipeline" => labels[0].1.clone(), "route" => labels[1].1.clone(), "status" => status).increment(1);
        histogram!(crate::metrics::HTTP_REQUEST_DURATION, &labels)
            .record(started.elapsed().as_secs_f64());
        response
    }
}

impl Served {
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
            RouteAuth::Token => {
                let scope = format!("invoke:{}", self.handler.name());
                match gateway.auth.authorize(request.headers(), &scope) {
                    Ok(Some(_)) => caller = Caller::Key,
                    Ok(None) => {}
                    Err(denied) => return denied,
                }
            }
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
        let body = match crate::http::read_body(
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
        let idempotency_key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => match value.to_str() {
                Ok(key) if (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) => Some(key.to_owned()),
                _ => {
                    let message = format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    );
                    return error(StatusCode::BAD_REQUEST, message, Some(&id));
                }
            },
        };
        let fingerprint = fingerprint(&parts, &body);
        let (key, track) = match &idempotency_key {
            None => (id.clone(), Track::Untracked),
            Some(given) => (
                format!("request:{given}"),
                Track::Request {
                    fingerprint: fingerprint.clone(),
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
        let work = Work {
            key: key.clone(),
            pending: Pending::Event(Box::new(event)),
            on_failure: OnFailure::Return,
            track,
            retry: false,
        };
        let handled = self.handler.handle(slot, work).await;
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
        let body = match crate::http::read_body(
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
        let hex = match parts.headers.get("idempotency-key").map(|v| v.to_str()) {
            None => request_id(),
            Some(Ok(key)) if (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) => {
                use sha2::{Digest, Sha256};
                hex::encode(&Sha256::digest(key.as_bytes())[..16])
            }
            Some(_) => {
                let message = format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                );
                return error(StatusCode::BAD_REQUEST, message, None);
            }
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
enum Caller {
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

fn in_progress(id: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        "a request with this Idempotency-Key is still being answered",
        Some(id),
    )
}

/// What makes a repeat the same request: method, path with query, body.
fn fingerprint(parts: &axum::http::request::Parts, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(parts.method.as_str());
    digest.update([0]);
    digest.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    digest.update([0]);
    digest.update(body);
    hex::encode(digest.finalize())
}

/// The event of a request: what the function's `wasi:http` request is
/// made from. Headers from the client that look like runnel's own are
/// dropped, so a client cannot forge a path parameter.
fn request_event(
    id: &str,
    pipeline: &str,
    route: &Route,
    matched: &Matched<'_>,
    parts: &axum::http::request::Parts,
    body: bytes::Bytes,
) -> Event {
    use std::collections::BTreeMap;
    let mut attributes = BTreeMap::new();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    attributes.insert(
        wasi_http::METHOD.to_owned(),
        parts.method.as_str().to_owned(),
    );
    attributes.insert(wasi_http::PATH.to_owned(), path);
    attributes.insert(wasi_http::ROUTE.to_owned(), route.pattern.clone());
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if name.starts_with("runnel-") || name.starts_with("spin-") {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        let key = format!("{}{name}", wasi_http::HEADER_PREFIX);
        attributes
            .entry(key)
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let mut ours = vec![
        ("runnel-request-id".to_owned(), id.to_owned()),
        ("runnel-matched-route".to_owned(), route.pattern.clone()),
        ("runnel-path-info".to_owned(), matched.rest.to_owned()),
        // What Spin's SDKs read, so Spin components find their route.
        ("spin-matched-route".to_owned(), route.pattern.clone()),
        ("spin-path-info".to_owned(), matched.rest.to_owned()),
    ];
    for (name, value) in &matched.params {
        attributes.insert(
            format!("{}{name}", wasi_http::PARAM_PREFIX),
            (*value).to_owned(),
        );
        ours.push((format!("runnel-path-param-{name}"), (*value).to_owned()));
        ours.push((format!("spin-path-match-{name}"), (*value).to_owned()));
    }
    for (name, value) in ours {
        attributes.insert(format!("{}{name}", wasi_http::HEADER_PREFIX), value);
    }
    Event {
        id: id.to_owned(),
        source: format!("http://{pipeline}"),
        event_type: wasi_http::REQUEST.to_owned(),
        subject: Some(parts.uri.path().to_owned()),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        attributes,
        data: body,
        idempotency_key: id.to_owned(),
    }
}

fn reply_response(reply: wasi_http::Reply, id: &str) -> Response {
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers: &mut HeaderMap = response.headers_mut();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert("x-request-id", value);
    }
    response
}

fn error(status: StatusCode, message: impl Into<String>, id: Option<&str>) -> Response {
    let body = match id {
        Some(id) => json!({ "error": message.into(), "request_id": id }),
        None => json!({ "error": message.into() }),
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// 128 random bits, hex: unique enough to find one request in the logs.
fn request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pattern: &str) -> Route {
        Route::parse(pattern).unwrap()
    }

    #[test]
    fn routes_match_literals_params_and_wildcards() {
        let users = route("/api/users/:id");
        assert_eq!(
            users.matches("/api/users/42"),
            Some(Matched {
                params: vec![("id", "42")],
                rest: ""
            })
        );
        assert_eq!(users.matches("/api/users/"), None);
        assert_eq!(users.matches("/api/users/42/x"), None);
        assert_eq!(users.matches("/api/users"), None);
        let hooks = route("/hooks/...");
        assert_eq!(hooks.matches("/hooks/a/b").map(|m| m.rest), Some("/a/b"));
        assert_eq!(hooks.matches("/hooks").map(|m| m.rest), Some(""));
        assert_eq!(hooks.matches("/hooksx"), None);
        assert_eq!(
            route("/").matches("/"),
            Some(Matched {
                params: vec![],
                rest: ""
            })
        );
        assert_eq!(
            route("/...").matches("/any/thing").map(|m| m.rest),
            Some("/any/thing")
        );
    }

    #[test]
    fn bad_routes_are_refused_with_a_reason() {
        for (pattern, reason) in [
            ("api", "starts with '/'"),
            ("/a/.../b", "may only end"),
            ("/a//b", "empty segment"),
            ("/a/:", "parameter"),
            ("/v1/objects", "runnel's own API"),
            ("/metrics", "runnel's own API"),
        ] {
            let error = Route::parse(pattern).unwrap_err();
            assert!(error.contains(reason), "{pattern}: {error}");
        }
    }

    #[test]
    fn exact_beats_param_beats_wildcard() {
        let mut routes = [
            route("/..."),
            route("/api/..."),
            route("/api/users/:id"),
            route("/api/users/me"),
        ];
        routes.sort_by_key(Route::precedence);
        let first = |path: &str| {
            routes
                .iter()
                .find(|r| r.matches(path).is_some())
                .map(|r| r.pattern.as_str())
        };
        assert_eq!(first("/api/users/me"), Some("/api/users/me"));
        assert_eq!(first("/api/users/7"), Some("/api/users/:id"));
        assert_eq!(first("/api/other"), Some("/api/..."));
        assert_eq!(first("/else"), Some("/..."));
    }
}
