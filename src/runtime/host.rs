//! What a function instance can reach: its log, its pipeline's variables,
//! what its pipeline grants (key-value state, outbound HTTP through
//! [`outbound`](super::outbound)), and WASI with nothing in it.
//!
//! Components built for `wasm32-wasip2` import WASI because the Rust
//! standard library does. Each instance gets a WASI context that grants no
//! files (no preopens), no environment or arguments, no sockets or name
//! lookups, a wall clock frozen at the Unix epoch and a monotonic clock
//! frozen at zero, and deterministic randomness: functions stay pure.
//! Standard error is kept in a small buffer so a panic message can be
//! reported with the trap it caused.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::Variables;
use super::bindings::runnel::function::kv::{Host as KvHost, KvError as WitKvError};
use super::bindings::runnel::function::log::{Host as LogHost, Level};
use super::bindings::runnel::function::variables::Host as VariablesHost;
use super::limits::MemoryLimiter;
use super::outbound::Outbound;
use crate::kv::{KvError, KvGrant};

/// How much of a function's stderr is kept for error reports.
const STDERR_CAPACITY: usize = 16 << 10;

/// The data of one invocation's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) stderr: MemoryOutputPipe,
    /// `[function.variables]`, for the `variables` import.
    variables: Variables,
    /// The key-value store the pipeline grants, if any.
    kv: Option<KvGrant>,
    http: WasiHttpCtx,
    /// Decides on and sends the function's outbound requests.
    outbound: Outbound,
}

/// Who is running: pipeline, function, event; what its log lines are
/// tagged with and its outbound requests carry.
#[derive(Clone, Debug, Default)]
pub struct LogLabel {
    pub pipeline: String,
    pub function: String,
    pub event_id: String,
    /// The event's trace (W3C trace id, hex), empty when it has none.
    pub trace_id: String,
    /// The event's idempotency key (outbound requests' `Idempotency-Key`).
    pub idempotency_key: String,
    /// The W3C `traceparent` outbound requests carry, when traced.
    pub traceparent: Option<String>,
}

impl HostState {
    /// `outbound` holds the invocation's [`LogLabel`], which tags the
    /// function's log lines too.
    pub fn new(
        memory_limit: u64,
        variables: Variables,
        kv: Option<KvGrant>,
        outbound: Outbound,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(Deterministic(0x5eed))
            .insecure_random(Deterministic(0x5eed))
            .insecure_random_seed(0)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            stderr,
            variables,
            kv,
            http: WasiHttpCtx::new(),
            outbound,
        }
    }

    /// The granted store and scope, or the error saying how to grant one.
    fn kv(&self) -> Result<&KvGrant, WitKvError> {
        self.kv.as_ref().ok_or_else(|| {
            WitKvError::NotGranted(format!(
                "pipeline {} grants no key-value store: add [function.capabilities] kv = \"<store>\"",
                self.outbound.label().pipeline
            ))
        })
    }

    /// The tail of what the function wrote to stderr (a panic message).
    pub fn stderr_tail(&self) -> Option<String> {
        tail(&self.stderr.contents())
    }
}

/// The last thousand bytes or so of `bytes`, as text; `None` when blank.
pub(super) fn tail(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let start = text.len().saturating_sub(1000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    Some(text[start..].to_owned())
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl super::bindings::runnel::function::types::Host for HostState {}

impl LogHost for HostState {
    fn log(&mut self, level: Level, message: String) {
        let LogLabel {
            pipeline,
            function,
            event_id,
            trace_id,
            ..
        } = self.outbound.label();
        match level {
            Level::Trace => {
                tracing::trace!(target: "runnel::function", %pipeline, %function, %event_id, %trace_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "runnel::function", %pipeline, %function, %event_id, %trace_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "runnel::function", %pipeline, %function, %event_id, %trace_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "runnel::function", %pipeline, %function, %event_id, %trace_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "runnel::function", %pipeline, %function, %event_id, %trace_id, "{message}")
            }
        }
    }
}

struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A fixed-seed xorshift generator: randomness without a side channel to
/// the host, and the same on every run.
struct Deterministic(u64);

impl rand_core::TryRng for Deterministic {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|x| x as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        Ok(x)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl VariablesHost for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        self.variables.get(&name).map(str::to_owned)
    }
}

fn to_wit(error: KvError) -> WitKvError {
    match error {
        KvError::TooLarge(m) => WitKvError::TooLarge(m),
        KvError::Invalid(m) => WitKvError::Invalid(m),
        KvError::Unavailable(m) => WitKvError::Unavailable(m),
    }
}

fn ttl(ms: Option<u64>) -> Option<std::time::Duration> {
    ms.map(std::time::Duration::from_millis)
}

impl KvHost for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitKvError> {
        let grant = self.kv()?;
        grant.store.get(&grant.scope, &key).map_err(to_wit)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), WitKvError> {
        let grant = self.kv()?;
        grant
            .store
            .set(&grant.scope, &key, &value, ttl(ttl_ms))
            .map_err(to_wit)
    }

    fn delete(&mut self, key: String) -> Result<bool, WitKvError> {
        let grant = self.kv()?;
        grant.store.delete(&grant.scope, &key).map_err(to_wit)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, WitKvError> {
        let grant = self.kv()?;
        grant
            .store
            .compare_and_swap(&grant.scope, &key, expected.as_deref(), &value, ttl(ttl_ms))
            .map_err(to_wit)
    }

    fn increment(&mut self, key: String, delta: i64) -> Result<i64, WitKvError> {
        let grant = self.kv()?;
        grant
            .store
            .increment(&grant.scope, &key, delta)
            .map_err(to_wit)
    }
}
