//! Outbound HTTP: the `http` capability.
//!
//! A pipeline may grant its function `[function.capabilities] http = [<URL
//! pattern>...]`. Every event function is linked with `wasi:http`'s
//! outgoing handler, so a component that imports it always loads; what
//! decides is this module's hook, which every request passes through:
//!
//! - a request no pattern matches (or any request, without the grant) is
//!   refused with `HTTP-request-denied` and never leaves the host;
//! - a matched one gets the event's idempotency key (`Idempotency-Key:
//!   <key>:<n>` for the n-th request of the invocation, so a retried event
//!   repeats the same keys and an API that honours them does not act twice)
//!   and the event's trace context (`traceparent`), unless the guest set
//!   them itself;
//! - it runs under the capability's timeout (cut to what is left of the
//!   invocation's own), its response body is read whole within
//!   `http_max_response_size` before the guest gets the response, and it
//!   follows no redirect (a redirect is the guest's to follow, to a URL
//!   that is matched again);
//! - `runnel_function_http_requests_total` counts it by the pattern's host
//!   (never the request's own URL: labels stay as few as the patterns).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 10 << 20;

/// `[function.capabilities] http` and its limits.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpCapability {
    /// The URLs the function may request.
    pub allow: Vec<UrlPattern>,
    /// `http_timeout`: the most one request may take, from connecting to
    /// the end of its response body (default 10s).
    pub timeout: Duration,
    /// `http_max_response_size`: the largest response body (default 10 MiB).
    pub max_response_size: u64,
}

/// One allowed URL: `scheme://host[:port]/path`, where the host may start
/// with `*.` (any subdomain, not the domain itself) and the path may end
/// with `*` (any path under it); without `*`, the path must be equal.
#[derive(Clone, Debug, PartialEq)]
pub struct UrlPattern {
    text: String,
    https: bool,
    /// Lowercase; for `*.example.com`, `.example.com`.
    host: String,
    wildcard_host: bool,
    port: u16,
    path: String,
    path_prefix: bool,
}

impl UrlPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("a URL pattern starts with http:// or https://")?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(format!("scheme {scheme:?} is not http or https")),
        };
        if rest.contains(['?', '#']) {
            return Err("a URL pattern has no query or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => {
                return Err(format!(
                    "a URL pattern names a path: `{text}/*` allows every path on the host"
                ));
            }
        };
        if authority.contains('@') {
            return Err("a URL pattern has no user name or password".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?;
                (host, port)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.to_ascii_lowercase();
        let (wildcard_host, host) = match host.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => (true, rest.to_owned()),
            _ => (false, host),
        };
        let bare = host.trim_start_matches('.');
        let valid_host = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'));
        if !valid_host {
            return Err(format!(
                "host {authority:?} is not a host name or address (`*.` may start it, for any subdomain)"
            ));
        }
        let (path, path_prefix) = match path.strip_suffix('*') {
            Some(prefix) => (prefix.to_owned(), true),
            None => (path.to_owned(), false),
        };
        if path.contains('*') {
            return Err("`*` may only end a path (any path under it)".into());
        }
        if !path_is_plain(&path) {
            return Err("a path has no `.` or `..` segments or encoded dots and slashes".into());
        }
        Ok(Self {
            text: text.to_owned(),
            https,
            host,
            wildcard_host,
            port,
            path,
            path_prefix,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `host` label of the metrics: the pattern's host as written
    /// (`*.example.com` for every subdomain), with its port when not the
    /// scheme's.
    fn host_label(&self) -> String {
        let host = match self.wildcard_host {
            true => format!("*{}", self.host),
            false => self.host.clone(),
        };
        match self.port == if self.https { 443 } else { 80 } {
            true => host,
            false => format!("{host}:{}", self.port),
        }
    }

    fn matches(&self, uri: &http::Uri) -> bool {
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return false,
        };
        let Some(host) = uri.host() else { return false };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_matches = match self.wildcard_host {
            true => host.ends_with(&self.host) && host.len() > self.host.len(),
            false => host == self.host,
        };
        let path = uri.path();
        let path_matches = match self.path_prefix {
            true => path.starts_with(&self.path),
            false => path == self.path,
        };
        https == self.https
            && port == self.port
            && host_matches
            && path_matches
            && path_is_plain(path)
    }
}

/// Whether a path means what it says to every server: no `.` or `..`
/// segment and no encoded dot, slash or backslash that a server could
/// resolve to one (`/v1/%2e%2e/admin` must not pass for `/v1/*`).
fn path_is_plain(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !path.contains('\\')
        && !["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// What a function's requests go through: its capability and the
/// process's client (one connection pool for every function).
#[derive(Debug)]
pub struct HttpGrant {
    pub capability: HttpCapability,
    pub client: reqwest::Client,
}

/// The client every function's requests share: no redirects followed, no
/// proxy from the environment (a function reaches what its pattern names,
/// not what `HTTP_PROXY` says).
pub fn client() -> reqwest::Result<reqwest::Client> {
    crate::install_tls_provider();
    reqwest::Client::builder()
        .user_agent(concat!("runnel/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

/// The outgoing-handler hook of one invocation.
pub(super) struct Outbound {
    grant: Option<Arc<HttpGrant>>,
    /// Who is running: the metrics' labels, and the event's idempotency
    /// key and trace context for the headers. The store's log reads it
    /// here too ([`label`](Self::label)): one copy per invocation.
    label: super::LogLabel,
    /// When the invocation's own timeout runs out.
    deadline: Instant,
    /// Most bytes a request body may hold: the function's memory limit
    /// (nothing larger was ever in the guest's hands at once).
    max_request_size: u64,
    /// Requests sent so far.
    sent: u32,
}

impl Outbound {
    pub(super) fn new(
        grant: Option<Arc<HttpGrant>>,
        label: super::LogLabel,
        deadline: Instant,
        max_request_size: u64,
    ) -> Self {
        Self {
            grant,
            label,
            deadline,
            max_request_size,
            sent: 0,
        }
    }

    pub(super) fn label(&self) -> &super::LogLabel {
        &self.label
    }
}

type Finished = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Finished), Error>> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _finished: Finished,
    ) -> Sent {
        let Some((grant, pattern)) = self.grant.as_ref().and_then(|grant| {
            let pattern = (grant.capability.allow.iter()).find(|p| p.matches(request.uri()))?;
            Some((grant.clone(), pattern.host_label()))
        }) else {
            let listed = match &self.grant {
                Some(_) => "its [function.capabilities] http lists no pattern matching it",
                None => "it grants no outbound HTTP ([function.capabilities] http)",
            };
            let label = &self.label;
            tracing::warn!(pipeline = %label.pipeline, uri = %request.uri(), "a function's request refused: {listed}");
            count(&label.pipeline, &label.function, "none", "denied");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        self.sent += 1;
        let headers = request.headers_mut();
        if !headers.contains_key("idempotency-key")
            && let Ok(value) = format!("{}:{}", self.label.idempotency_key, self.sent).parse()
        {
            headers.insert("idempotency-key", value);
        }
        if let Some(traceparent) = &self.label.traceparent
            && !headers.contains_key(crate::telemetry::TRACEPARENT)
            && let Ok(value) = traceparent.parse()
        {
            headers.insert(crate::telemetry::TRACEPARENT, value);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = grant.capability.timeout.min(left);
        let max_request = self.max_request_size;
        // Owned by the request's future, which outlives this call.
        let (pipeline, function) = (self.label.pipeline.clone(), self.label.function.clone());
        Box::new(async move {
            let started = Instant::now();
            let sent = send(&grant, request, timeout, max_request).await;
            let outcome = match &sent {
                Ok(_) => "ok",
                Err(Error::ConnectionTimeout | Error::HttpResponseTimeout) => "timeout",
                Err(Error::HttpResponseBodySize(_)) => "too_large",
                Err(_) => "error",
            };
            count(&pipeline, &function, &pattern, outcome);
            metrics::histogram!(
                crate::metrics::FUNCTION_HTTP_DURATION,
                "pipeline" => pipeline.clone(),
                "host" => pattern,
            )
            .record(started.elapsed().as_secs_f64());
            let finished: Finished = Box::new(async { Ok(()) });
            sent.map(|response| (response, finished))
        })
    }
}

fn count(pipeline: &str, function: &str, host: &str, outcome: &'static str) {
    metrics::counter!(
        crate::metrics::FUNCTION_HTTP_REQUESTS,
        "pipeline" => pipeline.to_owned(),
        "function" => function.to_owned(),
        "host" => host.to_owned(),
        "outcome" => outcome,
    )
    .increment(1);
}

async fn send(
    grant: &HttpGrant,
    request: http::Request<WasiBody>,
    timeout: Duration,
    max_request: u64,
) -> Result<http::Response<WasiBody>, Error> {
    if timeout.is_zero() {
        return Err(Error::ConnectionTimeout);
    }
    // One deadline for the whole request: the guest's body, then the
    // exchange.
    let deadline = Instant::now() + timeout;
    let (head, body) = request.into_parts();
    let body = tokio::time::timeout(timeout, collect(body, max_request))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(Error::ConnectionTimeout);
    }
    let url = head.uri.to_string();
    let request = (grant.client.request(head.method, &url))
        .headers(head.headers)
        .body(body)
        .timeout(timeout);
    let mut response = request.send().await.map_err(|e| classify(&e))?;
    let max = grant.capability.max_response_size;
    if response.content_length().is_some_and(|length| length > max) {
        return Err(Error::HttpResponseBodySize(Some(max)));
    }
    // Read whole here, within the limit: an error part way through a body
    // reaches the guest without its error code (wasmtime-wasi-http 48 keeps
    // only the host's error there), and the SDKs read it whole anyway.
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(Error::HttpResponseBodySize(Some(max)));
        }
        body.extend_from_slice(&chunk);
    }
    let mut head = http::Response::builder().status(response.status());
    if let Some(headers) = head.headers_mut() {
        *headers = std::mem::take(response.headers_mut());
    }
    let body = http_body_util::Full::new(body.freeze())
        .map_err(|never| match never {})
        .boxed_unsync();
    head.body(body)
        .map_err(|e| Error::InternalError(Some(format!("the response: {e}"))))
}

/// A guest's request body, whole (reqwest sends it with its length).
async fn collect(mut body: WasiBody, max: u64) -> Result<Bytes, Error> {
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if (bytes.len() + data.len()) as u64 > max {
                return Err(Error::HttpRequestBodySize(Some(max)));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// The guest's error code for a request that failed.
fn classify(error: &reqwest::Error) -> Error {
    if error.is_timeout() {
        Error::HttpResponseTimeout
    } else if error.is_connect() {
        Error::ConnectionRefused
    } else {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        Error::InternalError(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, url: &str) -> bool {
        UrlPattern::parse(pattern)
            .unwrap()
            .matches(&url.parse().unwrap())
    }

    /// Scheme, host, port and path must all match; `*` widens only where
    /// it stands.
    #[test]
    fn patterns_match_what_they_name_and_nothing_else() {
        let api = "https://api.example.com/v1/*";
        assert!(matches(api, "https://api.example.com/v1/users?id=1"));
        assert!(matches(api, "https://API.example.com./v1/"));
        assert!(matches(api, "https://api.example.com:443/v1/x"));
        assert!(!matches(api, "https://api.example.com/v1"));
        assert!(!matches(api, "https://api.example.com/v2/x"));
        assert!(!matches(api, "http://api.example.com/v1/x"));
        assert!(!matches(api, "https://api.example.com:8443/v1/x"));
        assert!(!matches(api, "https://api.example.com.evil.net/v1/x"));
        assert!(!matches(api, "https://evilapi.example.com/v1/x"));
        assert!(!matches(api, "https://api.example.com/v1/../admin"));
        assert!(!matches(api, "https://api.example.com/v1/%2E%2e/admin"));
        assert!(!matches(api, "https://api.example.com/v1/a%2fb"));
        let exact = "http://127.0.0.1:8080/hook";
        assert!(matches(exact, "http://127.0.0.1:8080/hook"));
        assert!(matches(exact, "http://127.0.0.1:8080/hook?x=1"));
        assert!(!matches(exact, "http://127.0.0.1:8080/hook/x"));
        assert!(!matches(exact, "http://127.0.0.1/hook"));
        let any = "https://*.example.com/*";
        assert!(matches(any, "https://a.b.example.com/"));
        assert!(!matches(any, "https://example.com/"));
        assert!(!matches(any, "https://badexample.com/"));
    }

    /// A pattern that could not mean what its writer meant is refused,
    /// saying why.
    #[test]
    fn unclear_patterns_are_refused() {
        for (pattern, why) in [
            ("api.example.com/*", "starts with http"),
            ("ftp://example.com/*", "not http or https"),
            ("https://example.com", "`https://example.com/*` allows"),
            ("https://example.com/*?x=1", "no query"),
            ("https://u:p@example.com/*", "no user name"),
            ("https://example.com:0/*", "port"),
            ("https://example.com:x/*", "port"),
            ("https://ex*ample.com/*", "not a host name"),
            ("https:///x", "not a host name"),
            ("https://example.com/*/x", "may only end a path"),
            ("https://example.com/a/../b", "`..` segments"),
        ] {
            let error = UrlPattern::parse(pattern).unwrap_err();
            assert!(error.contains(why), "{pattern}: {error}");
        }
        let pattern = UrlPattern::parse("https://*.example.com:8443/*").unwrap();
        assert_eq!(pattern.host_label(), "*.example.com:8443");
        assert_eq!(
            UrlPattern::parse("http://example.com/x")
                .unwrap()
                .host_label(),
            "example.com"
        );
    }
}
