//! Traces: W3C trace context carried through runnel, and spans exported
//! over OTLP.
//!
//! Context travels whether or not anything is exported: an upload's
//! `traceparent` header is kept in the object's metadata, a message's in
//! its headers, a request's in its headers; the event's span is its child,
//! and every output carries the event span's context on (a topic header,
//! a webhook header, object metadata), so the next pipeline's event is a
//! child in the same trace. With `[telemetry] otlp_endpoint` (or the
//! OpenTelemetry SDK's `OTEL_EXPORTER_OTLP_*ENDPOINT` variables) set, the
//! spans go to that collector: one per event, with a child per stage the
//! engine already times (load, claim, invoke, write, complete, ack) and
//! one per sink write.
//!
//! A span's children are recorded as they end, with their times, and the
//! whole span is handed to the SDK when the event is done (its last
//! reference dropped), so no SDK span is held open across an event.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

use crate::config::reader::Table;
use crate::event::Event;

/// The header (and attribute, and metadata key) of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Where an event's incoming context may be, by how it arrived: a
/// message header, an HTTP request header, object metadata.
const INCOMING: [&str; 3] = [TRACEPARENT, "header-traceparent", "meta-traceparent"];

/// `[telemetry]` in the runtime config.
#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    /// `otlp_endpoint`: an OTLP/HTTP collector's base URL (e.g.
    /// `http://collector:4318`; spans go to `<it>/v1/traces`). Default:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// when set, else no export.
    pub otlp_endpoint: Option<String>,
    /// `service_name` (default `OTEL_SERVICE_NAME`, else `runnel`).
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    pub fn read(table: &Table<'_, '_>) -> Self {
        let otlp_endpoint = table.get("otlp_endpoint").and_then(|field| {
            let text = field.string()?;
            if text.is_empty() {
                return None; // `${OTLP_ENDPOINT:-}`: off
            }
            match url::Url::parse(&text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Some(text),
                _ => {
                    field.error(format!(
                        "{text:?} is not an http(s) URL such as \"http://127.0.0.1:4318\""
                    ));
                    None
                }
            }
        });
        Self {
            otlp_endpoint,
            service_name: table.string("service_name"),
        }
    }

    fn enabled(&self) -> bool {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v == "true");
        !disabled
            && (self.otlp_endpoint.is_some()
                || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

thread_local! {
    /// The ids the next span built on this thread takes (0: random): an
    /// event's span has its ids before it is exported, since its outputs
    /// name it as their parent.
    static CHOSEN: std::cell::Cell<(u128, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Ids as [`CHOSEN`] says, else random.
#[derive(Debug, Default)]
struct Ids(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        match CHOSEN.get() {
            (0, _) => self.0.new_trace_id(),
            (trace, span) => {
                CHOSEN.set((0, span));
                TraceId::from(trace)
            }
        }
    }

    fn new_span_id(&self) -> SpanId {
        match CHOSEN.get() {
            (_, 0) => self.0.new_span_id(),
            (trace, span) => {
                CHOSEN.set((trace, 0));
                SpanId::from(span)
            }
        }
    }
}

/// Whether spans are exported (else only context is carried).
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// Exporting spans; dropping it sends what is still batched.
pub struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        // Blocking (it waits for the last batch): off the async runtime.
        let provider = self.0.clone();
        let shut = std::thread::spawn(move || provider.shutdown()).join();
        if let Ok(Err(error)) = shut {
            tracing::warn!(%error, "sending the last spans failed");
        }
    }
}

/// Starts exporting spans when the config (or the environment) names a
/// collector. The OpenTelemetry SDK's other variables apply as they do
/// elsewhere: `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*` (batching), `OTEL_TRACES_SAMPLER*`.
pub fn start(config: &TelemetryConfig) -> anyhow::Result<Option<Exporting>> {
    if !config.enabled() {
        return Ok(None);
    }
    // The blocking HTTP client must not be made (or dropped) on the async
    // runtime: the exporter is built, and lives, on threads of its own.
    let config = config.clone();
    std::thread::spawn(move || build(&config))
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))?
}

fn build(config: &TelemetryConfig) -> anyhow::Result<Option<Exporting>> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = &config.otlp_endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    // The exporter's own thread needs a client that does not need tokio;
    // TLS with ring, as runnel's other clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("runnel/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let exporter = exporter.with_http_client(client).build()?;
    let service = config
        .service_name
        .clone()
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
        .unwrap_or_else(|| "runnel".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(Ids::default())
        .with_resource(resource)
        .build();
    let _ = TRACER.set(provider.tracer("runnel"));
    tracing::info!(
        endpoint = config
            .otlp_endpoint
            .as_deref()
            .unwrap_or("from OTEL_EXPORTER_OTLP_*"),
        "exporting traces over OTLP"
    );
    Ok(Some(Exporting(provider)))
}

/// A W3C `traceparent`: the trace, the span that is the parent, sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else (an
    /// invalid header starts a new trace, as the W3C spec says).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        // Version 00 has exactly four fields; later ones may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|id| *id != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: loop {
                let id = fastrand::u128(..);
                if id != 0 {
                    break id;
                }
            },
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    fn span_context(&self, remote: bool) -> SpanContext {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            flags,
            remote,
            TraceState::default(),
        )
    }
}

fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// One span (an event's, an upload's) and the children recorded under it.
pub struct Span {
    name: String,
    started: SystemTime,
    state: Mutex<State>,
}

struct State {
    kind: SpanKind,
    parent: Option<TraceParent>,
    this: TraceParent,
    adopted: bool,
    attributes: Vec<KeyValue>,
    children: Vec<Child>,
    error: Option<String>,
}

struct Child {
    name: String,
    kind: SpanKind,
    started: SystemTime,
    ended: SystemTime,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

impl Span {
    /// A span starting now, in a new trace until [`adopt`](Self::adopt)
    /// gives it the context it arrived with.
    pub fn start(name: impl Into<String>, kind: SpanKind, attributes: Vec<KeyValue>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            started: SystemTime::now(),
            state: Mutex::new(State {
                kind,
                parent: None,
                this: TraceParent::root(),
                adopted: false,
                attributes,
                children: Vec::new(),
                error: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this span the child of `incoming` (a `traceparent`), once;
    /// without a valid one it stays the root of a new trace.
    pub fn adopt(&self, incoming: Option<&str>) -> TraceParent {
        let mut state = self.state();
        if !state.adopted {
            state.adopted = true;
            if let Some(parent) = incoming.and_then(TraceParent::parse) {
                state.parent = Some(parent);
                state.this = parent.child();
            }
        }
        state.this
    }

    /// Adopts the context `event` arrived with, and gives the event this
    /// span's: `traceparent` (for what the function sends on) and
    /// `trace_id` (for its log lines) become attributes. The span takes
    /// the event's attributes in OpenTelemetry's conventions.
    pub fn adopt_event(&self, event: &mut Event) {
        let incoming = INCOMING.iter().find_map(|name| event.attributes.get(*name));
        let this = self.adopt(incoming.map(String::as_str));
        {
            let mut state = self.state();
            if event.event_type == crate::runtime::http::REQUEST {
                state.kind = SpanKind::Server;
            }
            if exporting() {
                state.attributes.extend(conventions(event));
            }
        }
        event
            .attributes
            .insert(TRACEPARENT.to_owned(), this.header());
        event
            .attributes
            .insert("trace_id".to_owned(), this.trace_id_hex());
    }

    /// This span's context, for what it sends on.
    pub fn context(&self) -> TraceParent {
        self.state().this
    }

    pub fn attribute(&self, attribute: KeyValue) {
        if exporting() {
            self.state().attributes.push(attribute);
        }
    }

    /// Marks the span failed (it ends with an error status).
    pub fn fail(&self, message: impl Into<String>) {
        self.state().error = Some(message.into());
    }

    /// Records a child that ran from `started` until now.
    pub fn child(
        &self,
        name: impl Into<String>,
        kind: SpanKind,
        started: SystemTime,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        if !exporting() {
            return; // only the context matters then
        }
        let child = Child {
            name: name.into(),
            kind,
            started,
            ended: SystemTime::now(),
            attributes,
            error,
        };
        self.state().children.push(child);
    }

    fn export(&self, tracer: &Tracer) {
        let state = self.state();
        let parent = match &state.parent {
            Some(parent) => Context::new().with_remote_span_context(parent.span_context(true)),
            None => Context::new(),
        };
        let builder = tracer
            .span_builder(self.name.clone())
            .with_kind(state.kind.clone())
            .with_start_time(self.started)
            .with_attributes(state.attributes.clone());
        // The ids outputs already carry on.
        CHOSEN.set((state.this.trace_id, state.this.span_id));
        let mut span = tracer.build_with_context(builder, &parent);
        CHOSEN.set((0, 0));
        // Children name this span as their parent by its ids alone.
        let this = Context::new().with_remote_span_context(state.this.span_context(false));
        for child in &state.children {
            let builder = tracer
                .span_builder(child.name.clone())
                .with_kind(child.kind.clone())
                .with_start_time(child.started)
                .with_attributes(child.attributes.clone());
            let mut span = tracer.build_with_context(builder, &this);
            if let Some(error) = &child.error {
                span.set_status(Status::error(error.clone()));
            }
            opentelemetry::trace::Span::end_with_timestamp(&mut span, child.ended);
        }
        use opentelemetry::trace::Span as _;
        if let Some(error) = &state.error {
            span.set_status(Status::error(error.clone()));
        }
        span.end_with_timestamp(SystemTime::now());
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(tracer) = TRACER.get() {
            self.export(tracer);
        }
    }
}

/// An event's attributes in OpenTelemetry's semantic conventions (FaaS,
/// messaging, HTTP, database, CloudEvents).
fn conventions(event: &Event) -> Vec<KeyValue> {
    let attribute = |name: &str| event.attributes.get(name).cloned();
    let mut out = vec![
        KeyValue::new("faas.invocation_id", event.id.clone()),
        KeyValue::new("cloudevents.event_id", event.id.clone()),
        KeyValue::new("cloudevents.event_source", event.source.clone()),
        KeyValue::new("cloudevents.event_type", event.event_type.clone()),
    ];
    if let Some(subject) = &event.subject {
        out.push(KeyValue::new("cloudevents.event_subject", subject.clone()));
    }
    let mut push = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            out.push(KeyValue::new(name, value));
        }
    };
    use crate::event::{DATABASE_CHANGE, MESSAGE, OBJECT_CREATED, SCHEDULE_TICK};
    match event.event_type.as_str() {
        crate::runtime::http::REQUEST => {
            push("faas.trigger", Some("http".into()));
            push("http.request.method", attribute("method"));
            push("url.path", attribute("path"));
            push("http.route", attribute("route"));
        }
        MESSAGE => {
            push("faas.trigger", Some("pubsub".into()));
            push("messaging.operation.type", Some("process".into()));
            push("messaging.destination.name", attribute("topic"));
            push("messaging.destination.partition.id", attribute("partition"));
            push("messaging.kafka.offset", attribute("offset"));
        }
        OBJECT_CREATED => {
            push("faas.trigger", Some("datasource".into()));
            push("faas.document.operation", Some("insert".into()));
            push("faas.document.collection", attribute("bucket"));
            push("faas.document.name", attribute("key"));
        }
        SCHEDULE_TICK => {
            push("faas.trigger", Some("timer".into()));
            push("faas.time", attribute("scheduled"));
            push("faas.cron", attribute("schedule"));
        }
        DATABASE_CHANGE => {
            push("faas.trigger", Some("datasource".into()));
            push("db.system.name", Some("postgresql".into()));
            push("db.namespace", attribute("database"));
            push("db.collection.name", attribute("table"));
        }
        _ => push("faas.trigger", Some("other".into())),
    }
    out
}

tokio::task_local! {
    static CURRENT: Arc<Span>;
}

/// Runs `work` with `span` as the one [`record`] adds children to.
pub async fn scoped<T>(span: Arc<Span>, work: impl Future<Output = T>) -> T {
    CURRENT.scope(span, work).await
}

/// Records a child of the current span (if any), from `started` until now.
pub fn record(
    name: &str,
    kind: SpanKind,
    started: Instant,
    attributes: Vec<KeyValue>,
    error: Option<String>,
) {
    if !exporting() {
        return;
    }
    let _ = CURRENT.try_with(|span| {
        let started = SystemTime::now() - started.elapsed();
        span.child(name, kind, started, attributes, error);
    });
}

/// Gives `event` (just loaded) the current span's context: see
/// [`Span::adopt_event`].
pub fn adopt(event: &mut Event) {
    let _ = CURRENT.try_with(|span| span.adopt_event(event));
}

/// The current span's context, for an output's `traceparent`.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|span| span.context()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_the_spec_refuses() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.span_id, 0x00f067aa0ba902b7);
        assert!(parsed.sampled);
        assert_eq!(parsed.header(), text);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn an_event_becomes_the_child_of_the_context_it_arrived_with() {
        let span = Span::start("notify", SpanKind::Consumer, Vec::new());
        let mut event = Event {
            id: "e".into(),
            source: "topic://t".into(),
            event_type: crate::event::MESSAGE.into(),
            subject: None,
            content_type: None,
            attributes: [(
                "meta-traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            )]
            .into(),
            data: Default::default(),
            idempotency_key: "e".into(),
        };
        span.adopt_event(&mut event);
        let ours = TraceParent::parse(&event.attributes[TRACEPARENT]).unwrap();
        assert_eq!(ours.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(ours.span_id, 0x00f067aa0ba902b7);
        assert_eq!(
            event.attributes["trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.context(), ours);
        // Adopted once: a second look changes nothing.
        assert_eq!(
            span.adopt(Some(
                "00-11111111111111111111111111111111-2222222222222222-01"
            )),
            ours
        );
    }
}
