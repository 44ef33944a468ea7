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
//! outbound `wasi:http/outgoing-handler` requests are refused unless its
//! pipeline grants `http` ([`outbound`](super::outbound)).
//!
//! The call runs on one of the pipeline's invocation threads, driving the
//! async `wasi:http` host on the process's tokio runtime; the guest's
//! streamed body is read as it is written, up to `max_response_size`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::MemoryLimiter;
use super::outbound::{HttpGrant, Outbound};
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

/// Where a response goes while its function still writes it: the caller
/// gets the head at once and the body as it is written, as a client of
/// `wasmtime serve` does. A caller that keeps the reply (an idempotent
/// request) passes none and gets it whole.
pub type Stream = oneshot::Sender<Streaming>;

/// A response whose body is still being written.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, Bytes)>,
    pub body: StreamBody,
}

#[cfg(test)]
impl Streaming {
    /// A response streamed whole: its body, then its end, wait in the stream.
    pub fn finished(status: u16, body: Bytes) -> Self {
        let (tx, rx) = mpsc::channel(2);
        tx.try_send(Chunk::Data(body)).expect("room for the body");
        tx.try_send(Chunk::End).expect("room for the end");
        Self {
            status,
            headers: Vec::new(),
            body: StreamBody {
                chunks: rx,
                ended: false,
            },
        }
    }
}

/// How many chunks wait for a slow client before the guest's writes wait.
const STREAM_CHUNKS: usize = 8;

#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    End,
}

/// A streamed response body. It ends cleanly only when the guest finished
/// it: a trap, a timeout or `max_response_size` part way ends it with an
/// error, so the client sees a cut body rather than a short one.
pub struct StreamBody {
    chunks: mpsc::Receiver<Chunk>,
    ended: bool,
}

/// The error a streamed body ends with when its function did not finish it.
#[derive(Debug, thiserror::Error)]
#[error("the function's response body was cut short")]
pub struct BodyCut;

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyCut>>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Chunk::Data(data))) => {
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Poll::Ready(Some(Chunk::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(BodyCut)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
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
    hooks: Outbound,
    pub(super) limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
}

impl HttpHost {
    fn new(memory_limit: u64, hooks: Outbound) -> Self {
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
            hooks,
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
    /// The pipeline it serves (its outbound requests' metrics' label).
    pub(super) pipeline: String,
    pub(super) memory_limit: u64,
    pub(super) timeout: Duration,
    pub(super) max_response_size: u64,
    /// Outbound HTTP, when the pipeline grants it.
    pub(super) http: Option<Arc<HttpGrant>>,
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
        self.tokio.block_on(self.call(event, None))
    }

    /// Answers the request `event` in a fresh instance, on the caller's
    /// runtime: the guest yields at every epoch tick, so it shares a
    /// worker thread fairly and needs none of its own (a thread of its
    /// own cost two context switches a request: benchmark #8).
    pub async fn call(
        &self,
        event: &Event,
        stream: Option<Stream>,
    ) -> (Result<Invocation, InvokeError>, InvocationStats) {
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
        let label = LogLabel {
            pipeline: self.pipeline.clone(),
            function: self.name.clone(),
            idempotency_key: event.idempotency_key.clone(),
            // Only a function granted `http` sends a request to carry it.
            traceparent: (self.http.as_ref())
                .and_then(|_| crate::telemetry::current())
                .map(|c| c.child().header()),
            ..LogLabel::default()
        };
        let outbound = Outbound::new(
            self.http.clone(),
            label,
            started + self.timeout,
            self.memory_limit,
        );
        let mut store = Store::new(&self.engine, HttpHost::new(self.memory_limit, outbound));
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
        let result = self
            .run(&mut store, request, stream, &mut stats, started)
            .await;
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
        stream: Option<Stream>,
        stats: &mut InvocationStats,
        started: Instant,
    ) -> Result<Reply, Failed> {
        let request = request.map(|body| {
            body.map_err(
                |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
            )
        });
        let (sender, receiver) = oneshot::channel();
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
            let status = head.status.as_u16();
            let headers: Vec<_> = (head.headers.iter())
                .map(|(name, value)| {
                    let value = Bytes::copy_from_slice(value.as_bytes());
                    (name.as_str().to_owned(), value)
                })
                .collect();
            let mut stream = stream;
            // What the caller gets back once the body went to the stream:
            // the head, the client has the body.
            let streamed = |headers| Reply {
                status,
                headers,
                body: Bytes::new(),
            };
            let mut sending: Option<mpsc::Sender<Chunk>> = None;
            let mut buffered = BytesMut::new();
            let mut total: u64 = 0;
            loop {
                // What the guest wrote already is read at once; a caller
                // that takes a stream gets it as soon as the guest makes
                // the host wait, which for a short body that is written
                // in one go is never (it is answered whole, without a
                // channel between).
                let frame = match ready_now(body.frame()) {
                    Some(frame) => frame,
                    None => {
                        if let Some(to) = stream.take() {
                            let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
                            let streaming = Streaming {
                                status,
                                headers: headers.clone(),
                                body: StreamBody {
                                    chunks: rx,
                                    ended: false,
                                },
                            };
                            if to.send(streaming).is_err() {
                                return Ok(Some(streamed(headers)));
                            }
                            sending = Some(tx);
                        }
                        if let Some(tx) = &sending
                            && !buffered.is_empty()
                            && tx
                                .send(Chunk::Data(buffered.split().freeze()))
                                .await
                                .is_err()
                        {
                            // The client went away: stop reading, and the
                            // guest's next write fails.
                            return Ok(Some(streamed(headers)));
                        }
                        body.frame().await
                    }
                };
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| Failed::Invalid(format!("response body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    if total > max {
                        return Err(Failed::Invalid(format!(
                            "the response body is larger than {max} bytes (max_response_size)"
                        )));
                    }
                    buffered.extend_from_slice(&data);
                }
            }
            let body = buffered.freeze();
            if let Some(tx) = sending {
                // Dropped without `End`, the stream tells the client the
                // body was cut short.
                if !body.is_empty() {
                    let _ = tx.send(Chunk::Data(body)).await;
                }
                let _ = tx.send(Chunk::End).await;
                return Ok(Some(streamed(headers)));
            }
            Ok(Some(Reply {
                status,
                headers,
                body,
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

/// The future's output if it is ready without waiting.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
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
