//! A test HTTP function; what it does is chosen by the last path segment:
//!
//! - `echo`: answers 200 with one line each for the method, the path with
//!   query, every header (`name: value`) and the body's length;
//! - `trap`: panics; `spin`: loops forever (the timeout);
//! - `busy?ms=N`: busy-waits N milliseconds, then answers 200;
//! - `big?bytes=N`: answers N bytes of `x`, written 4 KiB at a time;
//! - `outbound`: tries an outbound request and answers with what happened;
//! - `status?code=N`: answers with status N and a `x-probe: yes` header;
//! - `drip?ms=N`: writes `first`, waits N milliseconds, writes `second`;
//!   with `&trap=1` it panics instead of writing `second`.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Probe;
wasip2::http::proxy::export!(Probe);

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_query.split_once('?').unwrap_or((&path_query, ""));
        let number = |name: &str| -> u64 {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match path.rsplit('/').next().unwrap_or_default() {
            "echo" => {
                let method = match request.method() {
                    Method::Get => "GET".to_owned(),
                    Method::Post => "POST".to_owned(),
                    Method::Other(other) => other,
                    other => format!("{other:?}"),
                };
                let headers = request.headers().entries();
                let body = read_body(request);
                let mut text = format!("method: {method}\npath: {path_query}\n");
                for (name, value) in headers {
                    text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                text.push_str(&format!("body: {} bytes\n", body.len()));
                respond(out, 200, &[], &[text.as_bytes()]);
            }
            "trap" => panic!("the probe was asked to trap"),
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "busy" => {
                let until = Instant::now() + Duration::from_millis(number("ms"));
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                respond(out, 200, &[], &[b"done\n"]);
            }
            "big" => {
                let chunk = [b'x'; 4096];
                let total = number("bytes") as usize;
                let chunks: Vec<&[u8]> = (0..total.div_ceil(4096))
                    .map(|i| &chunk[..(total - i * 4096).min(4096)])
                    .collect();
                respond(out, 200, &[], &chunks);
            }
            "outbound" => {
                let result = outbound();
                respond(out, 200, &[], &[result.as_bytes()]);
            }
            "status" => {
                let code = number("code") as u16;
                respond(out, code, &[("x-probe", "yes")], &[b"status\n"]);
            }
            "drip" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("a body");
                ResponseOutparam::set(out, Ok(response));
                let mut stream = body.write().expect("a stream");
                stream
                    .write_all(b"first\n")
                    .expect("the host reads the body");
                stream.flush().expect("the host reads the body");
                wasip2::clocks::monotonic_clock::subscribe_duration(number("ms") * 1_000_000)
                    .block();
                if number("trap") == 1 {
                    panic!("the probe was asked to trap part way");
                }
                stream
                    .write_all(b"second\n")
                    .expect("the host reads the body");
                let _ = stream.flush();
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
            }
            _ => respond(out, 404, &[], &[b"no such probe\n"]),
        }
    }
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume() {
        if let Ok(mut stream) = incoming.stream() {
            let _ = stream.read_to_end(&mut body);
        }
        let _ = IncomingBody::finish(incoming);
    }
    body
}

fn outbound() -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some("example.com"));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(e) => format!("refused: {e:?}\n"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("status {}\n", response.status()),
                Some(Ok(Err(e))) => format!("refused: {e:?}\n"),
                other => format!("unexpected: {other:?}\n"),
            }
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) {
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
    let response = OutgoingResponse::new(Fields::from_list(&list).expect("valid headers"));
    let _ = response.set_status_code(status);
    let body = response.body().expect("a body");
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = body.write().expect("a stream");
        for chunk in chunks {
            stream.write_all(chunk).expect("the host reads the body");
        }
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
