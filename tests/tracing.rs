//! Traces from the outside: `runnel up` exporting over OTLP/HTTP to a
//! receiver built on OpenTelemetry's own protobuf definitions
//! (`opentelemetry-proto`), and an upload with a client's `traceparent`
//! through `image-upload` and `notify` to the webhook: one trace, each
//! hop the child of the one before, with a span per stage and per write.

mod harness;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Runnel, WebhookReceiver, eventually, photo_jpeg, pipelines};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

/// A span as the receiver got it, ids in hex.
#[derive(Clone, Debug)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: SpanKind,
    attributes: BTreeMap<String, String>,
    error: bool,
    service: String,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with protobuf.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    async fn start() -> Self {
        use axum::{Router, body::Bytes, extract::State, routing::post};
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route(
                "/v1/traces",
                post(
                    |State(spans): State<Arc<Mutex<Vec<Got>>>>, body: Bytes| async move {
                        let request = ExportTraceServiceRequest::decode(body).unwrap();
                        let mut spans = spans.lock().unwrap();
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                                .unwrap_or_default();
                            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                                spans.push(Got {
                                    kind: span.kind(),
                                    name: span.name,
                                    trace_id: hex(&span.trace_id),
                                    span_id: hex(&span.span_id),
                                    parent: hex(&span.parent_span_id),
                                    attributes: span
                                        .attributes
                                        .iter()
                                        .map(|a| {
                                            (
                                                a.key.clone(),
                                                text(
                                                    a.value.as_ref().and_then(|v| v.value.as_ref()),
                                                ),
                                            )
                                        })
                                        .collect(),
                                    error: span.status.is_some_and(|s| s.code == 2),
                                    service: service.clone(),
                                });
                            }
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    },
                ),
            )
            .with_state(spans.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, spans }
    }

    fn trace(&self, trace_id: &str) -> Vec<Got> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Any>) -> String {
    match value {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// The `traceparent` of the webhook's first call, once it came.
async fn notification_traceparent(webhook: &WebhookReceiver) -> String {
    eventually("the notification", Duration::from_secs(60), || async {
        let received = webhook.received.lock().unwrap();
        received.first().map(|r| r.traceparent.clone())
    })
    .await
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_one_trace_through_both_pipelines_to_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let webhook = WebhookReceiver::start().await;
    let runnel = Runnel::start(
        dir.path(),
        &pipelines(),
        &[
            ("NOTIFY_WEBHOOK_URL", &webhook.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"runnel-test\"\n",
            receiver.url
        ),
    )
    .await;
    let response = runnel
        .client
        .put(runnel.url("/v1/objects/uploads/photos/traced.jpg"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .header("x-runnel-meta-user", "alice")
        .body(photo_jpeg(1200, 800))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // The webhook's call carries the trace on.
    let traceparent = notification_traceparent(&webhook).await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts.len(), parts[1]), (4, TRACE), "{traceparent}");

    // Every hop exported: the PUT, both pipelines' events, their stages
    // and writes (the batch is sent every 100 ms here).
    let spans = eventually("the trace's spans", Duration::from_secs(30), || async {
        let spans = receiver.trace(TRACE);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        (names.contains(&"write webhook")
            && names.contains(&"image-upload")
            && names.iter().filter(|n| **n == "ack").count() >= 2)
            .then_some(spans)
    })
    .await;
    let one = |name: &str| {
        let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one span {name:?}: {spans:#?}");
        found[0]
    };
    let put = one("PUT /v1/objects/{bucket}/{key}");
    assert_eq!(
        (put.parent.as_str(), put.kind),
        (CLIENT_SPAN, SpanKind::Server)
    );
    assert_eq!(put.attributes["http.response.status_code"], "201");
    assert_eq!(put.service, "runnel-test");

    let upload = one("image-upload");
    assert_eq!(
        (upload.parent.as_str(), upload.kind),
        (put.span_id.as_str(), SpanKind::Consumer)
    );
    assert_eq!(upload.attributes["faas.trigger"], "datasource");
    assert_eq!(upload.attributes["faas.document.collection"], "uploads");
    assert_eq!(upload.attributes["faas.document.name"], "photos/traced.jpg");
    assert_eq!(upload.attributes["runnel.outcome"], "done");

    let notify = one("notify");
    assert_eq!(
        (notify.parent.as_str(), notify.kind),
        (upload.span_id.as_str(), SpanKind::Consumer)
    );
    assert_eq!(notify.attributes["faas.trigger"], "pubsub");
    assert_eq!(
        notify.attributes["messaging.destination.name"],
        "image-processed"
    );
    assert!(!notify.error && !upload.error);
    // The webhook was called from the notify event's span.
    assert_eq!(parts[2], notify.span_id);

    let children = |parent: &Got| {
        let mut names: Vec<&str> = spans
            .iter()
            .filter(|s| s.parent == parent.span_id)
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        names
    };
    let upload_children = children(upload);
    for stage in [
        "load",
        "claim",
        "invoke",
        "write",
        "complete",
        "ack",
        "write processed",
    ] {
        assert!(
            upload_children.contains(&stage),
            "image-upload has a {stage:?} span: {upload_children:?}"
        );
    }
    assert_eq!(
        upload_children
            .iter()
            .filter(|n| **n == "write thumbnails")
            .count(),
        3,
        "one span per thumbnail written: {upload_children:?}"
    );
    let produced = spans.iter().find(|s| s.name == "write processed").unwrap();
    assert_eq!(produced.kind, SpanKind::Producer);
    assert_eq!(
        produced.attributes["messaging.destination.name"],
        "image-processed"
    );
    let posted = spans.iter().find(|s| s.name == "write webhook").unwrap();
    assert_eq!(
        (posted.parent.as_str(), posted.kind),
        (notify.span_id.as_str(), SpanKind::Client)
    );
    assert_eq!(posted.attributes["http.request.method"], "POST");

    // The function's log line and the invocation's carry the trace id.
    let log = runnel.log_text();
    assert!(log.contains(&format!("trace_id={TRACE}")), "{log}");
}

/// Without a collector configured nothing is exported, but context still
/// flows: an upload without `traceparent` starts a trace at its PUT, and
/// the webhook gets it.
#[tokio::test(flavor = "multi_thread")]
async fn context_flows_without_an_exporter_and_a_trace_starts_at_the_upload() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let runnel = Runnel::start(
        dir.path(),
        &pipelines(),
        &[("NOTIFY_WEBHOOK_URL", &webhook.url)],
        "",
    )
    .await;
    let response = runnel
        .upload(
            "uploads",
            "photos/untraced.jpg",
            photo_jpeg(640, 480),
            Some("bob"),
        )
        .await;
    assert_eq!(response.status(), 201);
    let traceparent = notification_traceparent(&webhook).await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent:?}");
    assert!(
        parts[1].len() == 32 && parts[1] != "0".repeat(32),
        "{traceparent}"
    );
    // The object keeps the upload's context, for whoever reads it.
    let (headers, _) = runnel
        .object("uploads", "photos/untraced.jpg")
        .await
        .unwrap();
    let kept = headers["x-runnel-meta-traceparent"].to_str().unwrap();
    assert_eq!(kept.split('-').nth(1), Some(parts[1]));
    assert!(!runnel.log_text().contains("exporting traces"));
}
