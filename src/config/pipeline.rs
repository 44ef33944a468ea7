//! A pipeline file: one source, one function, named sinks, a dead-letter
//! sink and a retry policy. It names buckets and topics only; what they are
//! is the runtime config's business, so the file is portable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::reader::{Document, Table};
use crate::engine::feed_driver::BatchConfig;
use crate::retry::RetryConfig;
use crate::runtime::FunctionConfig;
use crate::sinks::SinkConfig;
use crate::triggers::TriggerConfig;

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub name: String,
    /// The file it was read from; relative paths in it resolve from here.
    pub file: PathBuf,
    /// Events worked on at once (default: number of cores).
    pub concurrency: usize,
    pub source: TriggerConfig,
    pub function: FunctionConfig,
    /// Declared sinks by name; function outputs address them by name
    /// (none for an HTTP function, which answers with its reply).
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Sinks with a retry policy of their own (`[sinks.<name>.retry]`):
    /// their writes are retried in place under it, without running the
    /// function again.
    pub sink_retry: BTreeMap<String, RetryConfig>,
    /// Where events go when they keep failing (default: topic `<name>.dead-letter`).
    pub dead_letter: SinkConfig,
    pub retry: RetryConfig,
    /// `[source] batch`: the function takes its events in batches (and
    /// `concurrency` counts batches).
    pub batch: Option<BatchConfig>,
}

impl PipelineConfig {
    /// The buckets this pipeline reads or writes.
    pub fn buckets(&self) -> Vec<String> {
        let source = self.source.bucket().map(str::to_owned);
        let sinks = self
            .sinks
            .values()
            .chain([&self.dead_letter])
            .filter_map(|sink| match sink {
                SinkConfig::Storage(s) => Some(s.bucket.clone()),
                _ => None,
            });
        source.into_iter().chain(sinks).collect()
    }
}

/// Names of pipelines and sinks: they appear in metrics labels and logs.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn default_name(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Events in flight per pipeline unless it says: one per core, plus one to
/// keep the cores busy while an event waits on I/O (reading its object,
/// writing outputs, committing). Measured in docs/BENCHMARKS.md (#5).
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
}

/// Reads a pipeline from a parsed document; `None` when anything was wrong
/// (the document then holds every problem).
pub fn read(doc: &Document<'_>, root: Table<'_, '_>) -> Option<PipelineConfig> {
    let name = match root.get("name") {
        Some(field) => field.string().filter(|n| {
            let ok = is_valid_name(n);
            if !ok {
                field.error("use 1-64 letters, digits, '-' or '_'");
            }
            ok
        }),
        None => Some(default_name(doc.file())),
    };
    let _ = root.get("description").map(|f| f.string());
    let concurrency = match root.get("concurrency") {
        Some(field) => field.integer_in(1..=4096).map(|n| n as usize),
        None => Some(default_concurrency()),
    };
    let base = doc.file().parent().unwrap_or(Path::new("."));
    let (source, batch) = match root.required("source").and_then(|f| f.table()) {
        Some(table) => {
            // A known key of the sources that gather batches (an unknown
            // key's error lists it there), refused elsewhere.
            let kind = table
                .get("type")
                .and_then(|f| f.peek_str().map(str::to_owned));
            let batches = matches!(kind.as_deref(), Some("storage" | "topic" | "database"));
            let batch = match batches || table.has("batch") {
                true => table.get("batch").map(|field| {
                    if !batches {
                        field.error("batches are for storage, topic and database sources, whose events are read in order and acknowledged by offset");
                        return None;
                    }
                    field.table().and_then(BatchConfig::read)
                }),
                false => None,
            };
            (TriggerConfig::read(table), batch)
        }
        None => (None, None),
    };
    let function = root
        .required("function")
        .and_then(|f| f.table())
        .and_then(|t| FunctionConfig::read(t, base));
    let mut sinks = BTreeMap::new();
    let mut sink_retry = BTreeMap::new();
    let mut sinks_ok = true;
    // An HTTP function answers with its reply: sinks are optional there
    // (judged by the type alone, so a mistake elsewhere in the source
    // does not also report missing sinks).
    let http_source = root
        .get("source")
        .and_then(|f| f.table())
        .and_then(|t| t.get("type"))
        .is_some_and(|f| f.peek_str() == Some("http"));
    let sinks_field = match http_source {
        true => root.get("sinks"),
        false => root.required("sinks"),
    };
    if let Some(table) = sinks_field.and_then(|f| f.table()) {
        let entries = table.entries();
        if entries.is_empty() {
            table.missing("<name>");
        }
        for (sink_name, field) in entries {
            if !is_valid_name(&sink_name) {
                field.error("sink names use 1-64 letters, digits, '-' or '_'");
                sinks_ok = false;
            }
            match field.table().and_then(SinkConfig::read_with_retry) {
                Some((sink, retry)) => {
                    if let Some(retry) = retry {
                        sink_retry.insert(sink_name.clone(), retry);
                    }
                    sinks.insert(sink_name, sink);
                }
                None => sinks_ok = false,
            }
        }
    }
    let dead_letter = match root.get("dead_letter") {
        Some(field) => field.table().and_then(SinkConfig::read),
        None => name.as_ref().map(|n| {
            SinkConfig::Topic(crate::sinks::topic::TopicSinkConfig {
                topic: format!("{n}.dead-letter"),
            })
        }),
    };
    let retry = match root.get("retry") {
        Some(field) => field.table().and_then(RetryConfig::read),
        None => Some(RetryConfig::default()),
    };
    let spans = (
        root.get("sinks").map(|f| f.span()).unwrap_or(0..0),
        root.get("dead_letter").map(|f| f.span()).unwrap_or(0..0),
    );
    let function_span = root.get("function").map(|f| f.span()).unwrap_or(0..0);
    root.finish();

    // A wasi:http function is linked without runnel's own interfaces.
    if let (Some(TriggerConfig::Http(http)), Some(function)) = (&source, &function)
        && http.mode == crate::triggers::http::Mode::Sync
    {
        if function.variables != Default::default() {
            doc.error(
                function_span.clone(),
                "function.variables",
                "a sync HTTP function (a wasi:http component) cannot read variables yet; use mode = \"async\", or [function.config]",
            );
        }
        if function.capabilities.kv.is_some() {
            doc.error(
                function_span,
                "function.capabilities.kv",
                "a sync HTTP function (a wasi:http component) cannot use a key-value store yet; use mode = \"async\"",
            );
        }
    }

    if let (Some(source), true) = (&source, sinks_ok) {
        check_loops(doc, spans, source, &sinks, dead_letter.as_ref());
    }
    let config = PipelineConfig {
        name: name?,
        file: doc.file().to_owned(),
        concurrency: concurrency?,
        source: source?,
        function: function?,
        sinks: sinks_ok.then_some(sinks)?,
        sink_retry,
        dead_letter: dead_letter?,
        retry: retry?,
        batch: match batch {
            Some(batch) => Some(batch?),
            None => None,
        },
    };
    (!doc.has_errors()).then_some(config)
}

/// A pipeline that writes where it reads would trigger itself forever: the
/// recursive-invocation loop serverless platforms warn about.
fn check_loops(
    doc: &Document<'_>,
    (sinks_span, dead_letter_span): (std::ops::Range<usize>, std::ops::Range<usize>),
    source: &TriggerConfig,
    sinks: &BTreeMap<String, SinkConfig>,
    dead_letter: Option<&SinkConfig>,
) {
    let named = sinks
        .iter()
        .map(|(n, s)| (format!("sinks.{n}"), s, &sinks_span));
    let dead_letter = dead_letter.map(|s| ("dead_letter".to_owned(), s, &dead_letter_span));
    for (path, sink, span) in named.chain(dead_letter) {
        if let Some(reason) = source.loops_through(sink) {
            doc.error(
                span.clone(),
                &path,
                format!("{reason}: every output would trigger this pipeline again"),
            );
        }
    }
}
