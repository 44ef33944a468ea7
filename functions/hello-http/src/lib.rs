//! An HTTP function: a plain `wasi:http/incoming-handler` component, so it
//! runs unchanged under `wasmtime serve` too. Routes (pipelines/hello-http.toml):
//!
//! - `GET /hello/:name` answers `Hello, <name>!` (the parameter arrives as
//!   the `runnel-path-param-name` header), and `GET /hello` (or any GET
//!   without the parameter, as under `wasmtime serve`) `Hello, world!`:
//!   benchmark #8's hello-world;
//! - `POST /hello` with a JSON body `{"name": ..}` answers the same, as JSON.

use std::io::{Read as _, Write as _};

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;
wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, content_type, body) = match request.method() {
            Method::Get => match header(&request, "runnel-path-param-name") {
                Some(name) => (
                    200,
                    "text/plain; charset=utf-8",
                    format!("Hello, {name}!\n"),
                ),
                None => (
                    200,
                    "text/plain; charset=utf-8",
                    "Hello, world!\n".to_owned(),
                ),
            },
            Method::Post => match name_from_json(&read_body(request)) {
                Some(name) => (
                    200,
                    "application/json",
                    format!(
                        "{{\"greeting\":{}}}\n",
                        json_string(&format!("Hello, {name}!"))
                    ),
                ),
                None => (
                    422,
                    "application/json",
                    "{\"error\":\"expected a JSON body with a string \\\"name\\\"\"}\n".to_owned(),
                ),
            },
            _ => (405, "text/plain; charset=utf-8", "GET or POST\n".to_owned()),
        };
        respond(response_out, status, content_type, body.as_bytes());
    }
}

fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
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

/// The `name` of `{"name": "..."}`, without a JSON dependency: enough for
/// an example (no escapes in the name).
fn name_from_json(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let after = &text[text.find("\"name\"")? + 6..];
    let after = after
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let name = &after[..after.find('"')?];
    (!name.is_empty() && !name.contains('\\')).then(|| name.to_owned())
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_owned(), content_type.as_bytes().to_vec())])
            .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("a body");
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = outgoing.write().expect("a stream");
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_name_of_a_json_body() {
        assert_eq!(
            name_from_json(br#"{"name": "Ada"}"#).as_deref(),
            Some("Ada")
        );
        assert_eq!(name_from_json(br#"{"name":""}"#), None);
        assert_eq!(name_from_json(b"not json"), None);
        assert_eq!(json_string("a\"b"), "\"a\\\"b\"");
    }
}
