//! Outbound HTTP, through `wasi:http`'s outgoing handler, to the URLs the
//! pipeline's `[function.capabilities] http` allows; anything else is
//! refused by the host and never leaves it ([`HttpError::Denied`]).
//!
//! runnel adds the event's idempotency key (`Idempotency-Key: <key>:<n>`
//! for the n-th request of an invocation) and trace context to each
//! request, so that a retried event, repeating its requests, does not
//! repeat their effect on an API that honours the key. Redirects are not
//! followed: a 3xx is a response like any other.
//!
//! ```ignore
//! let response = runnel_sdk::http::post("https://api.example.com/v1/mail", "application/json", body)?;
//! if response.status >= 500 {
//!     return Err(Error::retry(format!("mail API answered {}", response.status)));
//! }
//! ```

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// A request to send.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response, its body read whole (up to the capability's
/// `http_max_response_size`).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of the header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HttpError::Invalid(format!("the response body is not the JSON expected: {e}"))
        })
    }
}

/// Why a request got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The pipeline does not allow the URL (or grants no outbound HTTP).
    Denied(String),
    /// Connecting, or waiting for the response, failed or took too long:
    /// worth retrying.
    Unavailable(String),
    /// The response was larger than `http_max_response_size`.
    TooLarge(String),
    /// The request could not be made as given (a bad URL or header).
    Invalid(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, message) = match self {
            HttpError::Denied(m) => ("denied", m),
            HttpError::Unavailable(m) => ("unavailable", m),
            HttpError::TooLarge(m) => ("too large", m),
            HttpError::Invalid(m) => ("invalid", m),
        };
        write!(f, "outbound HTTP: {what}: {message}")
    }
}

impl std::error::Error for HttpError {}

/// `?` in `handle`: an unavailable destination is retried, anything else
/// is not.
impl From<HttpError> for crate::Error {
    fn from(error: HttpError) -> Self {
        crate::Error {
            retryable: matches!(error, HttpError::Unavailable(_)),
            message: error.to_string(),
        }
    }
}

pub fn get(url: &str) -> Result<Response, HttpError> {
    send(&Request {
        method: "GET".into(),
        url: url.into(),
        ..Request::default()
    })
}

pub fn post(
    url: &str,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Result<Response, HttpError> {
    send(&Request {
        method: "POST".into(),
        url: url.into(),
        headers: vec![("content-type".into(), content_type.into())],
        body: body.into(),
    })
}

/// Sends `request` and waits for its whole response.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    let url = Url::parse(&request.url)?;
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| HttpError::Invalid(format!("header {name:?}: {e:?}")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let invalid = |what: &str| HttpError::Invalid(format!("{}: invalid {what}", request.url));
    outgoing
        .set_method(&method(&request.method))
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&url.scheme))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(url.authority))
        .map_err(|()| invalid("host"))?;
    outgoing
        .set_path_with_query(Some(&url.path_and_query))
        .map_err(|()| invalid("path"))?;
    let body = outgoing.body().map_err(|()| invalid("body"))?;
    let pending =
        outgoing_handler::handle(outgoing, None).map_err(|code| error(&request.url, code))?;
    // A body the host stopped taking (a refused request, a failed
    // connection) says less than the response's error: that one wins.
    let mut sent = Ok(());
    {
        let stream = body.write().map_err(|()| invalid("body"))?;
        // wasi:io allows 4096 bytes a blocking write.
        for chunk in request.body.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                sent = Err(HttpError::Unavailable(format!(
                    "{}: sending the body: {e:?}",
                    request.url
                )));
                break;
            }
        }
    }
    let finished = OutgoingBody::finish(body, None).map_err(|code| error(&request.url, code));
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(error(&request.url, code)),
        Some(Err(())) | None => {
            return Err(HttpError::Invalid(format!(
                "{}: the response was taken already",
                request.url
            )));
        }
    };
    sent?;
    finished?;
    read(&request.url, response)
}

fn read(url: &str, response: IncomingResponse) -> Result<Response, HttpError> {
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Invalid(format!("{url}: the response body was taken already")))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| {
            HttpError::Invalid(format!("{url}: the response body was taken already"))
        })?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    let code = crate::bindings::wasi::http::types::http_error_code(&e);
                    return Err(match code {
                        Some(code) => error(url, code),
                        None => HttpError::Unavailable(format!(
                            "{url}: reading the response: {}",
                            e.to_debug_string()
                        )),
                    });
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn method(name: &str) -> Method {
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        _ => Method::Other(name.to_owned()),
    }
}

/// An error code as the function sees it.
fn error(url: &str, code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(format!(
            "{url} is not allowed: the pipeline's [function.capabilities] http lists no pattern matching it"
        )),
        ErrorCode::HttpResponseBodySize(limit) => HttpError::TooLarge(format!(
            "{url}: the response body is larger than {} bytes (http_max_response_size)",
            limit.map_or("the limit".to_owned(), |l| l.to_string())
        )),
        ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestMethodInvalid => HttpError::Invalid(format!("{url}: {code:?}")),
        ErrorCode::HttpResponseTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout => HttpError::Unavailable(format!(
            "{url}: timed out (http_timeout, or the function's own timeout)"
        )),
        other => HttpError::Unavailable(format!("{url}: {other:?}")),
    }
}

/// The parts of a URL `wasi:http` takes.
#[derive(Debug)]
struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    path_and_query: String,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Self, HttpError> {
        let invalid = || HttpError::Invalid(format!("{url:?} is not an http:// or https:// URL"));
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            _ => return Err(invalid()),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid());
        }
        let path_and_query = match path_and_query.starts_with('/') {
            true => path_and_query.to_owned(),
            false => format!("/{path_and_query}"),
        };
        Ok(Url {
            scheme,
            authority,
            path_and_query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL is split as `wasi:http` wants it; a query without a path gets `/`.
    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let url = Url::parse("https://api.example.com:8443/v1/x?y=1#frag").unwrap();
        assert!(matches!(url.scheme, Scheme::Https));
        assert_eq!(url.authority, "api.example.com:8443");
        assert_eq!(url.path_and_query, "/v1/x?y=1");
        assert_eq!(Url::parse("http://h").unwrap().path_and_query, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().path_and_query, "/?q");
        for bad in ["h/x", "ftp://h/x", "http:///x"] {
            assert!(
                matches!(Url::parse(bad), Err(HttpError::Invalid(_))),
                "{bad}"
            );
        }
    }

    /// Only an unavailable destination is worth retrying.
    #[test]
    fn errors_say_whether_a_retry_helps() {
        let denied: crate::Error = error("https://x/", ErrorCode::HttpRequestDenied).into();
        assert!(!denied.retryable);
        assert!(
            denied.message.contains("https://x/ is not allowed"),
            "{}",
            denied.message
        );
        let refused: crate::Error = error("https://x/", ErrorCode::ConnectionRefused).into();
        assert!(refused.retryable);
        let big: crate::Error =
            error("https://x/", ErrorCode::HttpResponseBodySize(Some(10))).into();
        assert!(!big.retryable);
        assert!(
            big.message.contains("larger than 10 bytes"),
            "{}",
            big.message
        );
    }
}
