//! HTTP functions: standard `wasi:http/incoming-handler` components (the
//! `wasi:http/proxy` world), as `wasmtime serve`, jco and Spin run them.
//!
//! The engine hands an HTTP function an event made from the request (by
//! the [HTTP trigger](crate::triggers::http)), like any other; the component sees it as a
//! `wasi:http` request and answers with a response, which comes back as the
//! invocation's [`Reply`]. Each request gets a fresh instance with the
//! function's memory limit and timeout. Unlike an event function, an HTTP
//! function answers live requests and is never replayed, so its WASI
//! context has the real clocks and randomness (a token it makes must not be
//! predictable); it still has no files, environment or sockets, and its
//! outbound `wasi:http/outgoing-handler` is denied ([`DenyOutbound`]).
//!
//! The call runs on one of the pipeline's invocation threads, driving the
//! async `wasi:http` host on the process's tokio runtime; the guest's
//! streamed body is read as it is written, up to `max_response_size`.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::limits::MemoryLimiter;
use super::{Context, EPOCH_TICK, Invocation, InvocationStats, InvokeError, LogLabel};
use crate::event::Event;

/// Event type of an HTTP request.
pub const REQUEST: &str = "runnel.http.request";
/// Attribute names of a request event; headers are `header-<name>`, path
/// parameters `param-<name>`.
pub const METHOD: &str = "method";
pub const PATH: &str = "path";
pub const ROUTE: &str = "route";
pub const HEADER_PREFIX: &str = "header-";
pub const PARAM_PREFIX: &str = "param-";

/// What an HTTP function answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
}

/// A reply as the idempotency store keeps it, under the fingerprint of the
/// request it answered.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    fingerprint: String,
    status: u16,
    /// Names and values, the values base64.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// The reply as kept with a request's completion.
    pub fn encode(&self, fingerprint: &str) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let kept = Kept {
            fingerprint: fingerprint.to_owned(),
            status: self.status,
            headers: (self.headers.iter())
                .map(|(name, value)| (name.clone(), b64.encode(value)))
                .collect(),
            body: b64.encode(&self.body),
        };
        serde_json::to_vec(&kept).expect("a reply serializes")
    }

    /// A kept reply and the fingerprint of the request it answered.
    pub fn decode(bytes: &[u8]) -> Option<(String, Reply)> {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let kept: Kept = serde_json::from_slice(bytes).ok()?;
        let headers = (kept.headers.into_iter())
            .map(|(name, value)| Some((name, Bytes::from(b64.decode(value).ok()?))))
            .collect::<Option<_>>()?;
        let reply = Reply {
            status: kept.status,
            headers,
            body: b64.decode(kept.body).ok()?.into(),
        };
        Some((kept.fingerprint, reply))
    }
}

/// How much of an HTTP function's stderr is kept for error reports.
const STDERR_CAPACITY: usize = 16 << 10;

/// The data of one HTTP invocation's `Store`.
pub(super) struct HttpHost {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: DenyOutbound,
    pub(super) limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
}

impl HttpHost {
    fn new(memory_limit: u64) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: DenyOutbound,
            limiter: MemoryLimiter::new(memory_limit),
            stderr,
        }
    }

    fn stderr_tail(&self) -> Option<String> {
        super::host::tail(&self.stderr.contents())
    }
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Refuses every outbound request: the guest's `outgoing-handler` call
/// returns `HttpRequestDenied` (no capability grants outbound HTTP yet).
struct DenyOutbound;

type Finished = Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _finished: Finished,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, Finished)>>
            + Send,
    > {
        tracing::debug!(uri = %request.uri(), "outbound HTTP from a function denied");
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Adds what an HTTP function may import: WASI (empty, as above) and
/// `wasi:http`. Rust's std imports `wasi:cli` beyond the proxy world, so
/// all of p2 is linked, not just the proxy world's part.
pub(super) fn linker(engine: &Engine) -> anyhow::Result<Linker<HttpHost>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(super::to_anyhow)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(super::to_anyhow)?;
    Ok(linker)
}

/// A compiled, pre-linked HTTP function.
pub struct HttpFunction {
    pub(super) name: String,
    pub(super) memory_limit: u64,
    pub(super) timeout: Duration,
    pub(super) max_response_size: u64,
    pub(super) pre: ProxyPre<HttpHost>,
    pub(super) engine: Engine,
    /// The runtime the `wasi:http` host's I/O runs on.
    pub(super) tokio: tokio::runtime::Handle,
}

/// Why a response could not be had: the guest's doing, or ours.
enum Failed {
    Wasm(wasmtime::Error),
    /// The wall-clock limit ran out while the guest waited.
    Timeout,
    Invalid(String),
}

impl HttpFunction {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Answers the request `event` in a fresh instance, blocking: for a
    /// caller off the runtime. The engine awaits [`call`](Self::call)
    /// instead.
    pub fn invoke(
        &self,
        _context: &Context,
        event: &Event,
        _label: LogLabel,
    ) -> (Result<Invocation, InvokeError>, InvocationStats) {
        self.tokio.block_on(self.call(event))
    }

    /// Answers the request `event` in a fresh instance, on the caller's
    /// runtime: the guest yields at every epoch tick, so it shares a
    /// worker thread fairly and needs none of its own (a thread of its
    /// own cost two context switches a request: benchmark #8).
    pub async fn call(&self, event: &Event) -> (Result<Invocation, InvokeError>, InvocationStats) {
        let started = Instant::now();
        let request = match to_request(event) {
            Ok(request) => request,
            Err(message) => {
                let error = InvokeError::Function {
                    message,
                    retryable: false,
                };
                return (Err(error), InvocationStats::default());
            }
        };
        let mut store = Store::new(&self.engine, HttpHost::new(self.memory_limit));
        store.limiter(|host| &mut host.limiter);
        // Yield at every tick so the runtime's timers run, and interrupt
        // at the deadline: a loop in the guest traps as a timeout.
        let deadline = started + self.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(match Instant::now() >= deadline {
                true => UpdateDeadline::Interrupt,
                false => UpdateDeadline::Yield(1),
            })
        });
        let mut stats = InvocationStats::default();
        let result = self.run(&mut store, request, &mut stats, started).await;
        stats.duration = started.elapsed();
        stats.peak_memory = store.data().limiter.peak;
        let result = result.map_err(|failed| match failed {
            Failed::Timeout => InvokeError::Timeout(self.timeout),
            Failed::Invalid(message) => InvokeError::Function {
                message,
                retryable: false,
            },
            Failed::Wasm(error) => self.classify(error, store.data()),
        });
        let invocation = result.map(|reply| Invocation {
            outputs: Vec::new(),
            reply: Some(reply),
        });
        (invocation, stats)
    }

    async fn run(
        &self,
        store: &mut Store<HttpHost>,
        request: http::Request<Full<Bytes>>,
        stats: &mut InvocationStats,
        started: Instant,
    ) -> Result<Reply, Failed> {
        let request = request.map(|body| {
            body.map_err(
                |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
            )
        });
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let http = &mut store.data_mut().http();
        let request = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(Failed::Wasm)?;
        let out = http.new_response_outparam(sender).map_err(Failed::Wasm)?;
        let max = self.max_response_size;
        let call = async {
            let proxy = self.pre.instantiate_async(&mut *store).await?;
            stats.instantiation = started.elapsed();
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, request, out)
                .await
        };
        // The guest streams its body after handing over the head: read it
        // while the call runs, or a large body would wait for a reader.
        let read = async {
            let response = match receiver.await {
                Ok(Ok(response)) => response,
                Ok(Err(code)) => {
                    return Err(Failed::Invalid(format!(
                        "the function answered with error-code {code:?}"
                    )));
                }
                Err(_) => return Ok(None),
            };
            let (head, mut body) = response.into_parts();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failed::Invalid(format!("response body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                    if bytes.len() as u64 > max {
                        return Err(Failed::Invalid(format!(
                            "the response body is larger than {max} bytes (max_response_size)"
                        )));
                    }
                }
            }
            let headers = head
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        Bytes::copy_from_slice(value.as_bytes()),
                    )
                })
                .collect();
            Ok(Some(Reply {
                status: head.status.as_u16(),
                headers,
                body: bytes.into(),
            }))
        };
        // A trap ends the call but leaves the response unset until the
        // store is dropped: the call's end decides, the read follows.
        let both = async {
            tokio::pin!(call, read);
            tokio::select! {
                called = &mut call => {
                    called.map_err(Failed::Wasm)?;
                    read.await?
                }
                reply = &mut read => {
                    let reply = reply?;
                    call.await.map_err(Failed::Wasm)?;
                    reply
                }
            }
            .ok_or_else(|| {
                Failed::Invalid("the function returned without setting a response".to_owned())
            })
        };
        // The epoch interrupts guest code; this covers a guest waiting on
        // the host (a body that never ends) past its deadline.
        match tokio::time::timeout(self.timeout + EPOCH_TICK * 4, both).await {
            Ok(result) => result,
            Err(_) => Err(Failed::Timeout),
        }
    }

    fn classify(&self, error: wasmtime::Error, state: &HttpHost) -> InvokeError {
        let stderr = state.stderr_tail();
        super::classify(
            error,
            state.limiter.refused,
            stderr,
            self.memory_limit,
            self.timeout,
        )
    }
}

/// The request an event made by the HTTP trigger describes.
fn to_request(event: &Event) -> Result<http::Request<Full<Bytes>>, String> {
    let attr = |name: &str| event.attributes.get(name).map(String::as_str);
    let method = attr(METHOD).ok_or("the event is not an HTTP request (no method)")?;
    let path = attr(PATH).ok_or("the event is not an HTTP request (no path)")?;
    let host = attr("header-host").unwrap_or("localhost");
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"));
    for (name, value) in &event.attributes {
        if let Some(header) = name.strip_prefix(HEADER_PREFIX) {
            request = request.header(header, value.as_str());
        }
    }
    request
        .body(Full::new(event.data.clone()))
        .map_err(|e| format!("the event is not a valid HTTP request: {e}"))
}
