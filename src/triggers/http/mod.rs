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
//! With `mode = "async"` the route instead queues the request as an event
//! and answers 202, and the queue is read back like a topic.
//!
//! `routes.rs` matches paths; `gateway.rs` is what a request goes through
//! (auth, limits, idempotency, the handler); `request.rs` turns requests
//! into events and replies into responses; `queue.rs` is the async queue.

mod gateway;
mod queue;
mod request;
mod routes;

use axum::http::Method;

use crate::config::reader::Table;
use crate::server::cors::CorsConfig;
use crate::server::rate_limit::RateLimitConfig;

pub use gateway::Gateway;
pub use queue::Queue;
pub(crate) use queue::open_queue;
pub use routes::{Matched, Route};

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
    /// A listener of the pipeline's own for its routes (default: the
    /// API's, `http.listen`); sync routes only.
    pub listen: Option<std::net::SocketAddr>,
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
    /// The event the gateway would make of a request to these routes, for
    /// `runnel invoke`; the error says why the gateway would refuse it (no
    /// route serves the path, or the routes take another method).
    pub fn request_event(
        &self,
        pipeline: &str,
        parts: &axum::http::request::Parts,
        body: bytes::Bytes,
    ) -> Result<crate::event::Event, String> {
        let path = parts.uri.path();
        let mut routes: Vec<&Route> = self.routes.iter().collect();
        routes.sort_by_key(|route| route.precedence());
        let Some((route, matched)) =
            (routes.into_iter()).find_map(|route| Some((route, route.matches(path)?)))
        else {
            let patterns: Vec<_> = self.routes.iter().map(|r| r.pattern.as_str()).collect();
            return Err(format!(
                "no route of pipeline {pipeline} serves {path} (routes: {})",
                patterns.join(", ")
            ));
        };
        if !self.methods.contains(&parts.method) {
            let methods: Vec<_> = self.methods.iter().map(Method::as_str).collect();
            return Err(format!(
                "{} is not allowed on {} (methods: {})",
                parts.method,
                route.pattern,
                methods.join(", ")
            ));
        }
        let id = request::request_id();
        Ok(request::request_event(
            &id, pipeline, route, &matched, parts, body,
        ))
    }

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
        let listen = table.get("listen").and_then(|field| {
            let text = field.string()?;
            match text.parse() {
                Ok(addr) if mode == Some(Mode::Async) => {
                    let _: std::net::SocketAddr = addr;
                    field.error("listen is for sync routes: an async request's status is read on the API's listener");
                    None
                }
                Ok(addr) => Some(addr),
                Err(_) => {
                    field.error(format!("{text:?} is not an address such as \"127.0.0.1:9000\""));
                    None
                }
            }
        });
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
            listen,
        })
    }
}
