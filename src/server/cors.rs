//! CORS for HTTP functions' routes: which browser origins may call them.
//!
//! A route with `cors` answers browsers' preflight requests itself
//! (`OPTIONS` with `Access-Control-Request-Method`) before any key is
//! asked for, since browsers send none on a preflight, and marks the
//! responses to an allowed origin's requests so the browser hands them to
//! the page. An origin not listed gets 403 on preflight and no CORS
//! headers otherwise, so the browser keeps the response from the page.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::reader::Field;

/// `cors = { origins = ["https://app.example.com"], headers = [..], max_age = "10m" }`.
#[derive(Clone, Debug, PartialEq)]
pub struct CorsConfig {
    /// Origins allowed to call (`scheme://host[:port]`), or `["*"]` for any.
    pub origins: Vec<String>,
    /// Request headers a page may send (default `content-type`,
    /// `authorization`, `idempotency-key`).
    pub headers: Vec<String>,
    /// How long a browser may cache a preflight's answer (default 10m).
    pub max_age: Duration,
}

impl CorsConfig {
    pub fn read(field: Field<'_, '_>) -> Option<Self> {
        let table = field.table()?;
        let origins = table.required("origins").and_then(|f| {
            let origins = f.strings()?;
            let bad: Vec<_> = (origins.iter())
                .filter(|o| {
                    // An origin is scheme://host[:port]: nothing after it.
                    let rest = o.strip_prefix("http://").or_else(|| o.strip_prefix("https://"));
                    *o != "*" && rest.is_none_or(|rest| rest.is_empty() || rest.contains('/'))
                })
                .collect();
            if origins.is_empty() || !bad.is_empty() {
                f.error(format!(
                    "expected origins such as \"https://app.example.com\" (no path), or [\"*\"]; found {bad:?}"
                ));
                return None;
            }
            Some(origins)
        });
        let headers = match table.get("headers") {
            Some(f) => f
                .strings()
                .map(|h| h.into_iter().map(|h| h.to_ascii_lowercase()).collect()),
            None => Some(
                ["content-type", "authorization", "idempotency-key"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        };
        let max_age = table
            .duration("max_age")
            .unwrap_or(Duration::from_secs(600));
        table.finish();
        Some(Self {
            origins: origins?,
            headers: headers?,
            max_age,
        })
    }

    /// The request's `Origin`, when this config allows it.
    fn allowed<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(text))
            .then_some(origin)
    }

    /// Whether a request is a browser's preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight for a route accepting `methods`.
    pub fn preflight(&self, headers: &HeaderMap, methods: &[Method]) -> Response {
        let Some(origin) = self.allowed(headers) else {
            let message = "this origin may not call this route (cors.origins)";
            return (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({ "error": message })),
            )
                .into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(header::VARY, HeaderValue::from_static("origin"));
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        if let Some(value) = join(methods.iter().map(Method::as_str).collect()) {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        if let Some(value) = join(self.headers.iter().map(String::as_str).collect()) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            self.max_age.as_secs().into(),
        );
        response
    }

    /// Marks a response to an allowed origin's request.
    pub fn mark(&self, request: &HeaderMap, response: &mut Response) {
        if let Some(origin) = self.allowed(request) {
            let out = response.headers_mut();
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("x-request-id"),
            );
            out.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}
