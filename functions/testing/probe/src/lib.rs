//! A test guest for runnel's own tests, not a function anyone deploys.
//!
//! Each mode (see [`mode::Mode`]) makes the function behave in one way the
//! host must cope with: succeed, fail, trap, run forever, eat memory or
//! produce a lot of output. The host's runtime-limit and pipeline tests
//! load this component and pick the mode per event or per pipeline.

mod mode;

use std::alloc::{Layout, alloc, dealloc};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use mode::Mode;

wit_bindgen::generate!({ path: "../../wit", world: "function" });

struct Probe;

export!(Probe);

impl Guest for Probe {
    fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        let mode = Mode::select(&event.data, config(&ctx, "mode")).map_err(reject)?;
        let sink = config(&ctx, "sink").unwrap_or("out").to_owned();
        match mode {
            Mode::Echo => Ok(vec![Output {
                sink,
                key: event.subject,
                content_type: event.content_type,
                attributes: Vec::new(),
                data: event.data,
            }]),
            Mode::Noop => Ok(Vec::new()),
            Mode::Counter => {
                use runnel::function::kv::{KvError, increment};
                let delta = config(&ctx, "delta")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(1);
                let sum = increment("count", delta).map_err(|e| {
                    let (message, retryable) = match e {
                        KvError::Unavailable(m) => (m, true),
                        KvError::NotGranted(m) | KvError::TooLarge(m) | KvError::Invalid(m) => {
                            (m, false)
                        }
                    };
                    Error { message, retryable }
                })?;
                Ok(vec![Output {
                    sink,
                    key: event.subject,
                    content_type: Some("text/plain".into()),
                    attributes: Vec::new(),
                    data: sum.to_string().into_bytes(),
                }])
            }
            Mode::Http => {
                let request = runnel_sdk::http::Request {
                    method: config(&ctx, "method").unwrap_or("GET").to_owned(),
                    url: config(&ctx, "url").unwrap_or("").to_owned(),
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body: event.data,
                };
                (0..number(&ctx, "count", 1)?)
                    .map(|i| {
                        let response = runnel_sdk::http::send(&request).map_err(|e| Error {
                            retryable: matches!(e, runnel_sdk::http::HttpError::Unavailable(_)),
                            message: e.to_string(),
                        })?;
                        Ok(Output {
                            sink: sink.clone(),
                            key: Some(format!("{}-{i}", event.id)),
                            content_type: Some("text/plain".into()),
                            attributes: vec![("status".into(), response.status.to_string())],
                            data: response.body,
                        })
                    })
                    .collect()
            }
            Mode::Variable => {
                let name = config(&ctx, "variable").unwrap_or("");
                let value = runnel::function::variables::get(name);
                Ok(vec![Output {
                    sink,
                    key: event.subject,
                    content_type: Some("text/plain".into()),
                    attributes: Vec::new(),
                    data: value.unwrap_or_else(|| "<unset>".into()).into_bytes(),
                }])
            }
            Mode::Spin => spin(),
            Mode::Hog => hog(),
            Mode::Trap => panic!("probe: asked to trap"),
            Mode::Fail => Err(Error {
                message: "probe: asked to fail".into(),
                retryable: true,
            }),
            Mode::Reject => Err(reject("probe: asked to reject".into())),
            Mode::Big => {
                let bytes = number(&ctx, "bytes", 1 << 20)?;
                Ok(vec![Output {
                    sink,
                    key: event.subject,
                    content_type: Some("application/octet-stream".into()),
                    attributes: Vec::new(),
                    // A pattern rather than zeros, so nothing on the way can
                    // cheat by treating the payload as sparse.
                    data: (0..bytes).map(|i| (i % 251) as u8).collect(),
                }])
            }
            Mode::Flood => Ok((0..1_000_000)
                .map(|i: u32| Output {
                    sink: sink.clone(),
                    key: Some(i.to_string()),
                    content_type: None,
                    attributes: Vec::new(),
                    data: Vec::new(),
                })
                .collect()),
            Mode::Giant => Ok(vec![Output {
                sink,
                key: event.subject,
                content_type: None,
                attributes: Vec::new(),
                data: vec![0x5A; 1 << 30],
            }]),
            Mode::Residue => Ok(vec![Output {
                sink,
                key: event.subject,
                content_type: Some("text/plain".into()),
                attributes: Vec::new(),
                data: residue().into_bytes(),
            }]),
            Mode::Stray => Ok(vec![Output {
                sink: "undeclared".into(),
                key: event.subject,
                content_type: None,
                attributes: Vec::new(),
                data: event.data,
            }]),
            Mode::Many => {
                let count = number(&ctx, "count", 10)?;
                let base = event.subject.unwrap_or(event.id);
                Ok((0..count)
                    .map(|i| Output {
                        sink: sink.clone(),
                        key: Some(format!("{base}-{i}")),
                        content_type: Some("text/plain".into()),
                        attributes: Vec::new(),
                        data: i.to_string().into_bytes(),
                    })
                    .collect())
            }
        }
    }
}

/// Burns CPU until the host's deadline interrupts it; `black_box` keeps the
/// optimizer from proving the loop useless and deleting it.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Keeps every megabyte it allocates, each one written to (so the pages are
/// really committed), until allocation fails and the guest aborts.
fn hog() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        black_box(&hoard);
    }
}

/// Events this instance handled before the current one (zero-initialized
/// static memory).
static EVENTS: AtomicU32 = AtomicU32::new(0);

/// Bytes of heap [`residue`] looks at and dirties.
const RESIDUE_BYTES: usize = 8 << 20;

/// What earlier events left in this instance's memory: the static counter,
/// and how many pages of a fresh heap allocation are not zero. Each call
/// then dirties both, so that an instance (or its memory slot) reused for
/// the next event would be caught by that event's call.
fn residue() -> String {
    let before = EVENTS.fetch_add(1, Ordering::Relaxed);
    let layout = Layout::from_size_align(RESIDUE_BYTES, 4096).expect("valid layout");
    // SAFETY: a non-zero-sized layout; the allocation is read as raw bytes
    // (volatile, uninitialized on purpose: that is what is being checked),
    // written whole, and freed with the layout it was made with.
    let dirty = unsafe {
        let heap = alloc(layout);
        assert!(!heap.is_null(), "probe: no memory for the residue check");
        let dirty = (0..RESIDUE_BYTES)
            .step_by(4096)
            .filter(|&page| {
                (0..4096)
                    .step_by(512)
                    .any(|at| heap.add(page + at).read_volatile() != 0)
            })
            .count();
        heap.write_bytes(0xA5, RESIDUE_BYTES);
        dealloc(black_box(heap), layout);
        dirty
    };
    format!("events before: {before}, dirty pages: {dirty}")
}

fn config<'a>(ctx: &'a Context, key: &str) -> Option<&'a str> {
    ctx.config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn number(ctx: &Context, key: &str, default: usize) -> Result<usize, Error> {
    match config(ctx, key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| reject(format!("probe: config `{key}` is not a number: {v:?}"))),
    }
}

fn reject(message: String) -> Error {
    Error {
        message,
        retryable: false,
    }
}
