//! A test guest for runnel's own tests, not a function anyone deploys.
//!
//! Each mode (see [`mode::Mode`]) makes the function behave in one way the
//! host must cope with: succeed, fail, trap, run forever, eat memory or
//! produce a lot of output. The host's runtime-limit and pipeline tests
//! load this component and pick the mode per event or per pipeline.

mod mode;

use std::hint::black_box;

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
