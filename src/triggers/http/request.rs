//! A request as an event, a reply as a response, and error answers.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::routes::{Matched, Route};
use crate::event::Event;
use crate::runtime::http as wasi_http;

/// The event of a request: what the function's `wasi:http` request is
/// made from. Headers from the client that look like runnel's own are
/// dropped, so a client cannot forge a path parameter.
pub(super) fn request_event(
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

pub(super) fn reply_response(reply: wasi_http::Reply, id: &str) -> Response {
    response(reply.status, reply.headers, Body::from(reply.body), id)
}

/// The response to a request whose function still writes the body.
pub(super) fn streaming_response(streaming: wasi_http::Streaming, id: &str) -> Response {
    let body = Body::new(streaming.body);
    response(streaming.status, streaming.headers, body, id)
}

fn response(status: u16, from: Vec<(String, Bytes)>, body: Body, id: &str) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers: &mut HeaderMap = response.headers_mut();
    for (name, value) in from {
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

pub(super) fn error(status: StatusCode, message: impl Into<String>, id: Option<&str>) -> Response {
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
pub(super) fn request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
