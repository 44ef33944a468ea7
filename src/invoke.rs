//! `runnel invoke`: run one function on one event, locally, and show what it
//! returned — the debugging loop serverless users miss. Nothing is written
//! to any sink; outputs are printed (and saved with `--out`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest, Md5};
use serde::Deserialize;

use crate::config::pipeline::PipelineConfig;
use crate::config::runtime::RuntimeConfig;
use crate::event::{Consumed, Event, MESSAGE, Message, ObjectCreated, Position};
use crate::runtime::{
    Context, FunctionConfig, FunctionLocation, LogLabel, Runtime, RuntimeSettings,
};
use crate::triggers::TriggerConfig;
use crate::triggers::database::debezium;
use crate::triggers::http::{HttpTriggerConfig, Mode};
use crate::triggers::topic::Format;

/// An event written by hand: every field optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventFile {
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    subject: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// The payload as text.
    data: Option<String>,
    /// The payload as base64, for bytes.
    data_base64: Option<String>,
}

/// What `invoke` runs: a pipeline's function with its config and sinks, or
/// a bare function.
pub enum Target {
    Pipeline(Box<PipelineConfig>),
    Function(FunctionConfig),
}

impl Target {
    pub fn function(&self) -> &FunctionConfig {
        match self {
            Self::Pipeline(p) => &p.function,
            Self::Function(f) => f,
        }
    }
}

/// A function given by path, with default limits.
pub fn bare_function(path: &Path) -> anyhow::Result<FunctionConfig> {
    let location = if path.extension().is_some_and(|e| e == "wasm") {
        FunctionLocation::Component(path.to_owned())
    } else if path.is_dir() {
        FunctionLocation::Project {
            dir: path.to_owned(),
            language: crate::runtime::build::Language::detect(path).map_err(anyhow::Error::msg)?,
        }
    } else {
        bail!(
            "{} is not a pipeline file, a .wasm component or a function project",
            path.display()
        );
    };
    Ok(FunctionConfig {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        location,
        memory_limit: crate::runtime::DEFAULT_MEMORY_LIMIT,
        timeout: crate::runtime::DEFAULT_TIMEOUT,
        config: Vec::new(),
        max_outputs: crate::runtime::DEFAULT_MAX_OUTPUTS,
        max_output_bytes: crate::runtime::DEFAULT_MAX_OUTPUT_BYTES,
        variables: Default::default(),
        capabilities: Default::default(),
    })
}

/// The HTTP trigger of a pipeline that has one.
fn http_trigger(target: &Target) -> Option<(&str, &HttpTriggerConfig)> {
    match target {
        Target::Pipeline(p) => match &p.source {
            TriggerConfig::Http(http) => Some((p.name.as_str(), http)),
            _ => None,
        },
        Target::Function(_) => None,
    }
}

/// The event an HTTP pipeline's gateway would make of the request
/// `line` (`"GET /hello/Ada?x=1"`) with `headers` and the body in `body`.
pub fn request_event(
    target: &Target,
    line: &str,
    headers: &[(String, String)],
    body: Option<&Path>,
) -> anyhow::Result<Event> {
    let Some((pipeline, http)) = http_trigger(target) else {
        bail!("--request is for a pipeline whose [source] has type = \"http\"");
    };
    let (method, path) = line.trim().split_once(' ').with_context(|| {
        format!("--request {line:?}: expected a method and a path, e.g. \"GET /hello/Ada\"")
    })?;
    let mut request = axum::http::Request::builder()
        .method(method.trim())
        .uri(path.trim());
    for (name, value) in headers {
        request = request.header(name.trim(), value.trim());
    }
    let body = match body {
        Some(file) => std::fs::read(file)
            .with_context(|| format!("reading the request body {}", file.display()))?,
        None => Vec::new(),
    };
    let (parts, ()) = request
        .body(())
        .with_context(|| {
            format!("--request {line:?} (with its --header values) is not a valid HTTP request")
        })?
        .into_parts();
    http.request_event(pipeline, &parts, Bytes::from(body))
        .map_err(|e| anyhow::anyhow!("--request {line:?}: {e}"))
}

/// The event of a schedule pipeline's next tick, as if it were due now
/// (`runnel invoke` without `--event`).
pub fn next_tick_event(target: &Target) -> anyhow::Result<Event> {
    let Target::Pipeline(pipeline) = target else {
        bail!("give --event FILE: the event to run the function on");
    };
    let TriggerConfig::Schedule(schedule) = &pipeline.source else {
        bail!(
            "give --event FILE (or --request \"METHOD /path\" for an HTTP pipeline): only a schedule pipeline makes its own event"
        );
    };
    let now = jiff::Timestamp::now();
    let tick = schedule.next_after(now).with_context(|| {
        format!(
            "pipeline {}'s schedule ({}) has no tick after now",
            pipeline.name,
            schedule.describe()
        )
    })?;
    Ok(schedule.tick_event(&pipeline.name, tick, false))
}

/// Reads the event: a JSON event file (`.json` with event fields), or any
/// other file as the payload of the event the pipeline's source would make.
pub fn read_event(
    target: &Target,
    file: &Path,
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<Event> {
    if let Some((pipeline, _)) = http_trigger(target) {
        bail!(
            "pipeline {pipeline} takes HTTP requests: give --request \"METHOD /path\" (its body from --event, its headers from --header)"
        );
    }
    let bytes =
        std::fs::read(file).with_context(|| format!("reading event file {}", file.display()))?;
    if file.extension().is_some_and(|e| e == "json")
        && let Ok(hand) = serde_json::from_slice::<EventFile>(&bytes)
    {
        return from_event_file(hand, file);
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if takes_debezium(target) {
        let consumed = Consumed {
            topic: format!("invoke:{name}"),
            position: Position::default(),
            message: Message {
                key: None,
                headers: Vec::new(),
                payload: Bytes::from(bytes),
            },
        };
        return debezium::decode(consumed)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            .with_context(|| format!("{} is empty: a tombstone, no event", file.display()));
    }
    let bucket = match target {
        Target::Pipeline(p) => match &p.source {
            TriggerConfig::Storage(s) => Some(s.bucket.clone()),
            TriggerConfig::Topic(_)
            | TriggerConfig::Http(_)
            | TriggerConfig::Schedule(_)
            | TriggerConfig::Database(_) => None,
        },
        Target::Function(_) => None,
    };
    Ok(match bucket {
        Some(bucket) => ObjectCreated {
            bucket,
            key: name,
            etag: hex::encode(Md5::digest(&bytes)),
            size: bytes.len() as u64,
            content_type: None,
            metadata: metadata.clone(),
            version_id: None,
        }
        .into_event(Bytes::from(bytes)),
        None => Event {
            id: format!("invoke:{name}"),
            source: "runnel://invoke".to_owned(),
            event_type: MESSAGE.to_owned(),
            subject: Some(name.clone()),
            content_type: None,
            attributes: metadata
                .iter()
                .map(|(k, v)| (format!("meta-{k}"), v.clone()))
                .collect(),
            data: Bytes::from(bytes),
            idempotency_key: format!("invoke:{name}"),
        },
    })
}

/// Whether the pipeline's events are Debezium change events, so that a
/// file holding one (as Debezium writes it) is read as its event.
fn takes_debezium(target: &Target) -> bool {
    match target {
        Target::Pipeline(p) => match &p.source {
            TriggerConfig::Database(_) => true,
            TriggerConfig::Topic(topic) => topic.format == Format::Debezium,
            TriggerConfig::Storage(_) | TriggerConfig::Http(_) | TriggerConfig::Schedule(_) => {
                false
            }
        },
        Target::Function(_) => false,
    }
}

fn from_event_file(hand: EventFile, file: &Path) -> anyhow::Result<Event> {
    let data = match (hand.data, hand.data_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .with_context(|| format!("{}: data_base64 is not base64", file.display()))?,
        ),
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => bail!(
            "{}: give either data or data_base64, not both",
            file.display()
        ),
    };
    let id = hand.id.unwrap_or_else(|| "invoke".to_owned());
    Ok(Event {
        idempotency_key: id.clone(),
        id,
        source: hand.source.unwrap_or_else(|| "runnel://invoke".to_owned()),
        event_type: hand.event_type.unwrap_or_else(|| MESSAGE.to_owned()),
        subject: hand.subject,
        content_type: hand.content_type,
        attributes: hand.attributes,
        data,
    })
}

/// Runs the function once and prints its outputs. Returns whether it succeeded.
pub fn run(
    runtime_config: &RuntimeConfig,
    target: &Target,
    event: &Event,
    out: Option<&PathBuf>,
) -> anyhow::Result<bool> {
    let function_config = target.function();
    let wasm = crate::app::component_path(function_config, &runtime_config.functions)?;
    let runtime = Runtime::new(&RuntimeSettings {
        pooling: false,
        max_instances: 1,
        max_memory: function_config.memory_limit,
        keep_resident: 0,
        cache_dir: runtime_config
            .functions
            .cache
            .then(|| runtime_config.functions.cache_dir.clone()),
    })?;
    if let Some((pipeline, http)) = http_trigger(target)
        && http.mode == Mode::Sync
    {
        let function =
            runtime.load_http(pipeline, function_config, &wasm, http.max_response_size)?;
        return answer(&function, event, out);
    }
    let mut function = runtime.load(function_config, &wasm)?;
    // A granted key-value store is a scratch one here, as the sinks are
    // not written: invoking must not change what the pipeline keeps.
    let _scratch = match (&function_config.capabilities.kv, target) {
        (Some(name), Target::Pipeline(p)) => {
            let dir = tempfile::tempdir().context("a scratch directory for the key-value store")?;
            let store = crate::kv::embedded::EmbeddedKv::open(
                &dir.path().join("kv.db"),
                crate::sqlite::Durability::Normal,
                runtime_config.kv.limits,
            )?;
            function = function.granting_kv(crate::kv::KvGrant {
                store: std::sync::Arc::new(store),
                scope: format!("{name}/{}", p.name),
                name: name.clone(),
            });
            Some(dir)
        }
        _ => None,
    };
    let context = match target {
        Target::Pipeline(p) => Context {
            pipeline: p.name.clone(),
            config: p.function.config.clone(),
            sinks: p
                .sinks
                .iter()
                .map(|(n, s)| (n.clone(), s.kind().to_owned(), s.target().to_owned()))
                .collect(),
            attempt: 1,
        },
        Target::Function(f) => Context {
            pipeline: "invoke".to_owned(),
            config: f.config.clone(),
            sinks: Vec::new(),
            attempt: 1,
        },
    };
    let label = LogLabel {
        pipeline: context.pipeline.clone(),
        function: function.name().to_owned(),
        event_id: event.id.clone(),
        trace_id: event
            .attributes
            .get("trace_id")
            .cloned()
            .unwrap_or_default(),
        idempotency_key: event.idempotency_key.clone(),
        traceparent: None,
    };
    let (result, stats) = function.invoke(&context, event, label);
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "invoked {} on {} in {:.3} ms (instantiation {:.3} ms, peak memory {} bytes)",
        function.name(),
        event.id,
        stats.duration.as_secs_f64() * 1e3,
        stats.instantiation.as_secs_f64() * 1e3,
        stats.peak_memory
    )?;
    let outputs = match result {
        Ok(outputs) => outputs,
        Err(error) => {
            writeln!(stdout, "failed ({}): {error}", error.outcome())?;
            writeln!(stdout, "retryable: {}", error.retryable())?;
            return Ok(false);
        }
    };
    writeln!(stdout, "{} output(s)", outputs.len())?;
    for (i, output) in outputs.iter().enumerate() {
        writeln!(
            stdout,
            "#{i} sink={} key={} content-type={} bytes={}",
            output.sink,
            output.key.as_deref().unwrap_or("-"),
            output.content_type.as_deref().unwrap_or("-"),
            output.data.len()
        )?;
        for (name, value) in &output.attributes {
            writeln!(stdout, "   {name}: {value}")?;
        }
        match std::str::from_utf8(&output.data) {
            Ok(text) if output.data.len() <= 4096 => writeln!(stdout, "   {text}")?,
            _ => {}
        }
        if let Some(dir) = out {
            let name = output.key.clone().unwrap_or_else(|| format!("output-{i}"));
            crate::storage::validate_key(&name)?;
            let path = dir.join(&output.sink).join(name);
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, &output.data)
                .with_context(|| format!("writing {}", path.display()))?;
            writeln!(stdout, "   saved to {}", path.display())?;
        }
    }
    Ok(true)
}

/// Runs an HTTP function on one request and prints its response.
fn answer(
    function: &crate::runtime::http::HttpFunction,
    event: &Event,
    out: Option<&PathBuf>,
) -> anyhow::Result<bool> {
    let label = LogLabel {
        pipeline: String::new(),
        function: function.name().to_owned(),
        event_id: event.id.clone(),
        trace_id: event
            .attributes
            .get("trace_id")
            .cloned()
            .unwrap_or_default(),
        idempotency_key: event.idempotency_key.clone(),
        traceparent: None,
    };
    let (result, stats) = function.invoke(&Context::default(), event, label);
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "invoked {} on {} {} in {:.3} ms (instantiation {:.3} ms, peak memory {} bytes)",
        function.name(),
        event
            .attributes
            .get(crate::runtime::http::METHOD)
            .map_or("?", String::as_str),
        event
            .attributes
            .get(crate::runtime::http::PATH)
            .map_or("?", String::as_str),
        stats.duration.as_secs_f64() * 1e3,
        stats.instantiation.as_secs_f64() * 1e3,
        stats.peak_memory
    )?;
    let reply = match result.map(|invocation| invocation.reply) {
        Ok(Some(reply)) => reply,
        Ok(None) => {
            writeln!(stdout, "failed: the function gave no response")?;
            return Ok(false);
        }
        Err(error) => {
            writeln!(stdout, "failed ({}): {error}", error.outcome())?;
            return Ok(false);
        }
    };
    writeln!(stdout, "status {}", reply.status)?;
    for (name, value) in &reply.headers {
        writeln!(stdout, "{name}: {}", String::from_utf8_lossy(value))?;
    }
    writeln!(stdout, "{} body bytes", reply.body.len())?;
    match std::str::from_utf8(&reply.body) {
        Ok(text) if reply.body.len() <= 4096 => writeln!(stdout, "{text}")?,
        _ => {}
    }
    if let Some(path) = out {
        std::fs::write(path, &reply.body).with_context(|| format!("writing {}", path.display()))?;
        writeln!(stdout, "body saved to {}", path.display())?;
    }
    Ok(true)
}
