//! {{name}}: a runnel function (created by `runnel new rust {{name}}`).
//!
//! It reads a JSON event such as `{"name": "Dora"}` and writes a greeting to
//! the pipeline's `results` sink. Edit `greet` (and its tests: `cargo test`)
//! to make it yours; `runnel up` rebuilds it when its sources change.

wit_bindgen::generate!({ path: "wit", world: "function" });

use runnel::function::log::{Level, log};

struct Function;

export!(Function);

impl Guest for Function {
    fn handle(_ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        let greeting = greet(&event.data).map_err(|reason| Error {
            message: format!("event {}: {reason}", event.id),
            // Bad input never gets better: dead-letter it without retries.
            retryable: false,
        })?;
        log(Level::Info, &greeting);
        Ok(vec![Output {
            sink: "results".into(),
            key: event.subject.clone(),
            content_type: Some("application/json".into()),
            attributes: Vec::new(),
            data: serde_json::json!({ "greeting": greeting }).to_string().into_bytes(),
        }])
    }
}

/// The greeting for an event's JSON payload.
fn greet(data: &[u8]) -> Result<String, String> {
    let request: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("not JSON ({e})"))?;
    let name = request["name"]
        .as_str()
        .ok_or("no \"name\" string in the event")?;
    Ok(format!("Hello, {name}!"))
}

#[cfg(test)]
mod tests {
    use super::greet;

    #[test]
    fn greets_by_name() {
        assert_eq!(greet(br#"{"name":"Dora"}"#).unwrap(), "Hello, Dora!");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(greet(b"{not json").unwrap_err().starts_with("not JSON"));
        assert!(greet(br#"{"name":7}"#).is_err());
    }
}
