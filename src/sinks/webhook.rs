//! The webhook sink: each output is an HTTP POST of its bytes.
//!
//! Requests carry `Idempotency-Key` (stable across redeliveries) and the
//! CloudEvents HTTP binding headers (`ce-id`, `ce-source`, `ce-type`), so a
//! receiver can drop repeats. 2xx is success; 408, 429 and 5xx are worth
//! retrying (after `Retry-After` seconds when the answer gives them); other
//! statuses are not.

use std::time::Duration;

use super::{SinkError, WriteId};
use crate::config::reader::Table;
use crate::runtime::Output;

#[derive(Clone, Debug)]
pub struct WebhookSinkConfig {
    /// Where to POST. An empty URL (e.g. `"${NOTIFY_WEBHOOK_URL:-}"` with
    /// the variable unset) switches the sink off.
    pub url: String,
    /// Per-request timeout (default 10s).
    pub timeout: Duration,
    /// Extra request headers (e.g. authorization).
    pub headers: Vec<(String, String)>,
}

impl WebhookSinkConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let url = table.required("url").and_then(|f| {
            let url = f.string()?;
            if !url.is_empty()
                && reqwest::Url::parse(&url)
                    .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                f.error(format!("{url:?} is not an http:// or https:// URL"));
                return None;
            }
            Some(url)
        });
        let timeout = table.duration("timeout").unwrap_or(Duration::from_secs(10));
        let mut headers = Vec::new();
        if let Some(t) = table.table("headers") {
            for (name, field) in t.entries() {
                if let Some(value) = field.string() {
                    headers.push((name, value));
                }
            }
        }
        Some(Self {
            url: url?,
            timeout,
            headers,
        })
    }
}

pub struct WebhookSink {
    config: WebhookSinkConfig,
    source: String,
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(config: &WebhookSinkConfig, pipeline: &str, client: reqwest::Client) -> Self {
        Self {
            config: config.clone(),
            source: format!("runnel://pipelines/{pipeline}"),
            client,
        }
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub fn enabled(&self) -> bool {
        !self.config.url.is_empty()
    }

    pub async fn write(&self, output: &Output, id: &WriteId<'_>) -> Result<(), SinkError> {
        let url = &self.config.url;
        let mut request = self
            .client
            .post(url)
            .timeout(self.config.timeout)
            .header("idempotency-key", id.id)
            .header("ce-specversion", "1.0")
            .header("ce-id", id.id)
            .header("ce-source", &self.source)
            .header("ce-type", format!("{}.output", id.event_type))
            .header(
                "content-type",
                output
                    .content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
            );
        if let Some(key) = &output.key {
            request = request.header("ce-subject", key);
        }
        if let Some(traceparent) = id.traceparent {
            request = request.header(crate::telemetry::TRACEPARENT, traceparent);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let response = request
            .body(output.data.clone())
            .send()
            .await
            .map_err(|e| SinkError {
                retry_after: None,
                // Connection refused, reset, timed out: the endpoint may come back.
                retryable: true,
                message: format!("POST {url}: {e}"),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retryable =
            status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        // Only the delay-seconds form; an HTTP date falls back to our backoff.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let excerpt: String = body.chars().take(200).collect();
        Err(SinkError {
            retry_after,
            retryable,
            message: format!("POST {url}: {status} {excerpt}"),
        })
    }
}
