//! runnel's SDK for functions written in Rust: the bindings of runnel's WIT
//! (`functions/wit/function.wit`) and the glue every function needs, written
//! once — config values, sink lookup, JSON payloads, errors that say whether
//! a retry could help, log lines.
//!
//! ```ignore
//! use runnel_sdk::{Context, Error, Event, Guest, Output};
//!
//! struct Hello;
//! runnel_sdk::export!(Hello);
//!
//! impl Guest for Hello {
//!     fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
//!         let request: serde_json::Value = event.json()?;      // not JSON: rejected, naming the event
//!         let sink = ctx.config("sink").unwrap_or("results");
//!         runnel_sdk::log::info(&format!("greeting {}", request["name"]));
//!         Ok(vec![Output::json(sink, &request)?.with_key(event.subject.clone())])
//!     }
//! }
//! ```

/// The generated bindings (in a module of their own: a `pub` export macro
/// generated at the crate root would be defined twice).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        // The `function` world and wasi:http's outgoing handler: a function
        // imports only what it calls, so one that sends no request does
        // not import wasi:http.
        world: "function-with-http",
        generate_all,
        pub_export_macro: true,
        default_bindings_module: "runnel_sdk::bindings",
    });
}

/// Functions that take their events in batches: a pipeline whose source
/// sets `batch = { max_events, max_wait }` hands such a function up to
/// `max_events` events in one instance, and the function answers for each
/// one on its own, so one bad event is retried or dead-lettered alone.
///
/// ```ignore
/// use runnel_sdk::batch::Guest;
/// use runnel_sdk::{Context, Error, Event, Output};
///
/// struct Readings;
/// runnel_sdk::batch::export!(Readings);
///
/// impl Guest for Readings {
///     fn handle_batch(ctx: Context, events: Vec<Event>) -> Vec<Result<Vec<Output>, Error>> {
///         events.into_iter().map(|event| Ok(vec![Output::new("out", event.data)])).collect()
///     }
/// }
/// ```
pub mod batch {
    /// The `batch-function` world's export, on the types and imports of
    /// the crate's other bindings.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments, reason = "generated: a list's pointer and length are two")]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "batch-function",
            with: {
                "runnel:function/types@0.1.0": crate::bindings::runnel::function::types,
                "runnel:function/log@0.1.0": crate::bindings::runnel::function::log,
                "runnel:function/variables@0.1.0": crate::bindings::runnel::function::variables,
                "runnel:function/kv@0.1.0": crate::bindings::runnel::function::kv,
            },
            pub_export_macro: true,
            export_macro_name: "export_batch",
            default_bindings_module: "runnel_sdk::batch::bindings",
        });
    }

    pub use bindings::Guest;
    /// Exports a type implementing [`Guest`] as the function.
    pub use bindings::export_batch as export;
}

pub use bindings::runnel::function::types::Sink;
pub use bindings::{Context, Error, Event, Guest, Output, export};

/// The pipeline's `[function.variables]` value called `name` (a setting or
/// a secret), or `None` when the pipeline sets no such variable.
pub fn variable(name: &str) -> Option<String> {
    bindings::runnel::function::variables::get(name)
}

/// Key-value state that outlives an event, on the store the pipeline's
/// `[function.capabilities] kv` grants (its keys the pipeline's own).
/// A write is not undone when the event later fails: a retried event runs
/// it again. `?` turns a [`kv::KvError`] into the function's [`Error`]: a
/// store that did not answer is retried, anything else is not.
pub mod kv {
    pub use super::bindings::runnel::function::kv::{
        KvError, compare_and_swap, delete, get, increment, set,
    };

    impl From<KvError> for super::Error {
        fn from(error: KvError) -> Self {
            let (what, message, retryable) = match error {
                KvError::NotGranted(m) => ("not granted", m, false),
                KvError::TooLarge(m) => ("too large", m, false),
                KvError::Invalid(m) => ("invalid", m, false),
                KvError::Unavailable(m) => ("unavailable", m, true),
            };
            super::Error {
                message: format!("key-value store: {what}: {message}"),
                retryable,
            }
        }
    }
}

pub mod http;

/// Lines in runnel's log, tagged with the pipeline, function and event id.
pub mod log {
    use super::bindings::runnel::function::log::{Level, log};

    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

impl Error {
    /// The event can never succeed (bad input, a misconfigured pipeline):
    /// it goes to the dead-letter sink without retries.
    pub fn reject(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            retryable: false,
        }
    }

    /// A transient failure: the event is tried again, with backoff.
    pub fn retry(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            retryable: true,
        }
    }
}

impl Context {
    /// `[function.config]`'s `key`: a TOML string as it is, any other
    /// value JSON-encoded.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `[function.config]`'s `key` as a list of names: a TOML array of
    /// strings, or one string of comma-separated names. `None` when the key
    /// is not set; an error naming the key when it is empty or not names.
    pub fn config_names(&self, key: &str) -> Result<Option<Vec<String>>, Error> {
        let Some(value) = self.config(key) else {
            return Ok(None);
        };
        names(value)
            .map(Some)
            .map_err(|reason| Error::reject(format!("config `{key}` = {value:?}: {reason}")))
    }

    /// The declared sink called `name`.
    pub fn sink(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// The declared sink called `name`, or an error (not retried: the
    /// pipeline must declare it) naming the pipeline's sinks.
    pub fn require_sink(&self, name: &str) -> Result<&Sink, Error> {
        self.sink(name).ok_or_else(|| {
            Error::reject(format!(
                "pipeline `{}` declares no sink `{name}` (it has: {})",
                self.pipeline,
                self.sink_names().join(", ")
            ))
        })
    }

    /// The names of the declared sinks, in order.
    pub fn sink_names(&self) -> Vec<&str> {
        self.sinks.iter().map(|s| s.name.as_str()).collect()
    }
}

fn names(value: &str) -> Result<Vec<String>, String> {
    let trimmed = value.trim();
    let names: Vec<String> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| format!("not a list of names ({e})"))?
    } else {
        trimmed.split(',').map(|s| s.trim().to_owned()).collect()
    };
    let names: Vec<String> = names.into_iter().filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err("no names given".into());
    }
    Ok(names)
}

impl Event {
    /// Names the event for an error: its id, and its subject when it has one.
    pub fn describe(&self) -> String {
        match &self.subject {
            Some(subject) => format!("event {} (subject {subject})", self.id),
            None => format!("event {}", self.id),
        }
    }

    /// The attribute called `name` (`bucket`, `meta-user`, `header-x`, ...).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The payload as JSON of type `T`; an error (not retried) naming the
    /// event and saying that it is not `what`.
    pub fn json_as<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, Error> {
        serde_json::from_slice(&self.data)
            .map_err(|e| Error::reject(format!("{}: not {what} ({e})", self.describe())))
    }

    /// The payload as JSON; an error (not retried) naming the event.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        self.json_as("JSON of the expected shape")
    }
}

impl Output {
    /// `data` for the sink called `sink`, with no key, type or attributes.
    pub fn new(sink: impl Into<String>, data: impl Into<Vec<u8>>) -> Output {
        Output {
            sink: sink.into(),
            key: None,
            content_type: None,
            attributes: Vec::new(),
            data: data.into(),
        }
    }

    /// `value` as JSON (`application/json`) for the sink called `sink`.
    pub fn json(sink: impl Into<String>, value: &impl serde::Serialize) -> Result<Output, Error> {
        let data = serde_json::to_vec(value)
            .map_err(|e| Error::reject(format!("the output is not JSON: {e}")))?;
        Ok(Output::new(sink, data).with_content_type("application/json"))
    }

    /// The object key (required for storage sinks) or the message key.
    pub fn with_key(mut self, key: impl Into<Option<String>>) -> Output {
        self.key = key.into();
        self
    }

    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Output {
        self.content_type = Some(content_type.into());
        self
    }

    /// Object metadata, a message header or an HTTP header.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Output {
        self.attributes.push((name.into(), value.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(config: &[(&str, &str)]) -> Context {
        Context {
            pipeline: "p".into(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sinks: vec![Sink {
                name: "out".into(),
                kind: "topic".into(),
                target: "t".into(),
            }],
            attempt: 1,
        }
    }

    #[test]
    fn config_names_take_both_spellings_and_name_the_key() {
        let names = |v: &str| context(&[("sinks", v)]).config_names("sinks");
        assert_eq!(names(r#"["a","b"]"#).unwrap().unwrap(), ["a", "b"]);
        assert_eq!(names("a, b").unwrap().unwrap(), ["a", "b"]);
        assert_eq!(context(&[]).config_names("sinks").unwrap(), None);
        for bad in ["", "[]", " , ", "[1,2]", r#"["a""#] {
            let err = names(bad).unwrap_err();
            assert!(!err.retryable);
            assert!(
                err.message.starts_with("config `sinks`"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn a_missing_sink_names_the_ones_there_are() {
        let ctx = context(&[]);
        assert_eq!(ctx.require_sink("out").unwrap().target, "t");
        let err = ctx.require_sink("gone").unwrap_err();
        assert_eq!(
            err.message,
            "pipeline `p` declares no sink `gone` (it has: out)"
        );
    }

    #[test]
    fn bad_json_names_the_event() {
        let event = Event {
            id: "e1".into(),
            source: "s".into(),
            event_type: "t".into(),
            subject: Some("k".into()),
            content_type: None,
            attributes: vec![("bucket".into(), "b".into())],
            data: b"{nope".to_vec(),
        };
        assert_eq!(event.attribute("bucket"), Some("b"));
        let err = event.json_as::<serde_json::Value>("a report").unwrap_err();
        assert!(
            err.message
                .starts_with("event e1 (subject k): not a report ("),
            "{}",
            err.message
        );
    }

    #[test]
    fn outputs_are_built_in_one_line() {
        let output = Output::json("out", &serde_json::json!({"a": 1}))
            .unwrap()
            .with_key(Some("k".to_owned()))
            .with_attribute("x", "y");
        assert_eq!(output.data, br#"{"a":1}"#);
        assert_eq!(output.content_type.as_deref(), Some("application/json"));
        assert_eq!(output.key.as_deref(), Some("k"));
        assert_eq!(output.attributes, [("x".to_owned(), "y".to_owned())]);
    }
}
