//! The last invocations, with the log lines their function wrote: what the
//! dashboard lists under "last invocations".
//!
//! They are taken from the log itself, the `runnel::invocation` line the
//! handler writes after every attempt, the `runnel::function` lines a
//! guest writes while it runs, and the `runnel::dead_letter` line of an
//! event that ran out of attempts (listed as an entry of its own), by a [`tracing`] layer with a filter of its
//! own (so `RUST_LOG=warn` hides them from the terminal, not from the
//! dashboard). The engine does nothing extra per event for it, and the
//! layer reads nothing until a process serving the dashboard [`enable`]s
//! it; it keeps a bounded ring, so memory does not grow with traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Invocations kept.
const KEPT: usize = 200;
/// Events whose log lines are held until their invocation line arrives.
const PENDING: usize = 512;
/// Log lines kept per invocation, and characters per line.
const LINES: usize = 20;
const LINE_CHARS: usize = 500;

/// One attempt of one event, as the invocation line tells it.
#[derive(Clone, Debug, Serialize)]
pub struct Invocation {
    /// Increases by one per invocation, so a reader asks for what is new.
    pub seq: u64,
    /// Unix milliseconds when the attempt ended.
    pub at_ms: u64,
    pub pipeline: String,
    pub function: String,
    pub event_id: String,
    pub trace_id: String,
    pub attempt: u64,
    /// ok, error, trap, timeout, oom; `dead-lettered` for the entry of an
    /// event sent to the dead-letter sink (its `event_id` is then the
    /// idempotency key, its error the last failure's, with its stage).
    pub outcome: String,
    pub duration_us: Option<u64>,
    pub error: Option<String>,
    pub logs: Vec<LogLine>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    invocations: VecDeque<Invocation>,
    /// Log lines by event id, waiting for the event's invocation line.
    pending: HashMap<String, Vec<LogLine>>,
    /// The pending ids, oldest first, for evicting.
    order: VecDeque<String>,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts keeping invocations (a process with the dashboard on).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The process's activity, which the layer installed at start-up fills.
pub fn recent() -> &'static Activity {
    static RECENT: OnceLock<Activity> = OnceLock::new();
    RECENT.get_or_init(Activity::default)
}

impl Activity {
    /// The invocations after `seq`, oldest first, at most `limit` (the
    /// newest of them).
    pub fn since(&self, seq: u64, limit: usize) -> Vec<Invocation> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let newer: Vec<_> = inner
            .invocations
            .iter()
            .filter(|i| i.seq > seq)
            .cloned()
            .collect();
        newer[newer.len().saturating_sub(limit)..].to_vec()
    }

    fn log(&self, event_id: String, line: LogLine) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        match inner.pending.get_mut(&event_id) {
            Some(lines) => {
                if lines.len() < LINES {
                    lines.push(line);
                }
            }
            None => {
                if inner.order.len() >= PENDING
                    && let Some(old) = inner.order.pop_front()
                {
                    inner.pending.remove(&old);
                }
                inner.order.push_back(event_id.clone());
                inner.pending.insert(event_id, vec![line]);
            }
        }
    }

    fn invoked(&self, mut invocation: Invocation) {
        let lines = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let lines = inner.pending.remove(&invocation.event_id);
            if lines.is_some() {
                inner.order.retain(|id| *id != invocation.event_id);
            }
            lines
        };
        invocation.logs = lines.unwrap_or_default();
        self.add(invocation);
    }

    fn add(&self, mut invocation: Invocation) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seq += 1;
        invocation.seq = inner.seq;
        if inner.invocations.len() >= KEPT {
            inner.invocations.pop_front();
        }
        inner.invocations.push_back(invocation);
    }
}

/// The layer that fills [`recent`]; install it with the filter from
/// [`filter`].
pub struct Layer;

/// The lines the layer reads: invocations, and functions' own lines from
/// debug up.
pub fn filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_target("runnel::invocation", tracing::Level::INFO)
        .with_target("runnel::function", tracing::Level::DEBUG)
        .with_target("runnel::dead_letter", tracing::Level::WARN)
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        match event.metadata().target() {
            "runnel::function" => recent().log(
                fields.text.remove("event_id").unwrap_or_default(),
                LogLine {
                    level: event.metadata().level().as_str().to_ascii_lowercase(),
                    message: fields
                        .text
                        .remove("message")
                        .unwrap_or_default()
                        .chars()
                        .take(LINE_CHARS)
                        .collect(),
                },
            ),
            "runnel::invocation" => {
                let mut text = |name: &str| fields.text.remove(name).unwrap_or_default();
                let invocation = Invocation {
                    seq: 0,
                    at_ms: now_ms(),
                    pipeline: text("pipeline"),
                    function: text("function"),
                    event_id: text("id"),
                    trace_id: text("trace_id"),
                    outcome: text("outcome"),
                    error: fields.text.remove("error"),
                    attempt: fields.numbers.get("attempt").copied().unwrap_or(1),
                    duration_us: fields.numbers.get("duration_us").copied(),
                    logs: Vec::new(),
                };
                recent().invoked(invocation);
            }
            "runnel::dead_letter" => {
                let mut text = |name: &str| fields.text.remove(name).unwrap_or_default();
                let (stage, error) = (text("stage"), text("error"));
                let entry = Invocation {
                    seq: 0,
                    at_ms: now_ms(),
                    pipeline: text("pipeline"),
                    function: text("function"),
                    event_id: text("key"),
                    trace_id: String::new(),
                    outcome: "dead-lettered".to_owned(),
                    error: Some(format!("{stage}: {error}")),
                    attempt: fields.numbers.get("attempts").copied().unwrap_or(0),
                    duration_us: None,
                    logs: Vec::new(),
                };
                recent().add(entry);
            }
            _ => {}
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Fields {
    text: HashMap<&'static str, String>,
    numbers: HashMap<&'static str, u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text.insert(field.name(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.text.insert(field.name(), value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.numbers.insert(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.numbers.insert(field.name(), value.max(0) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(event_id: &str) -> Invocation {
        Invocation {
            seq: 0,
            at_ms: 0,
            pipeline: "p".into(),
            function: "f".into(),
            event_id: event_id.into(),
            trace_id: String::new(),
            attempt: 1,
            outcome: "ok".into(),
            duration_us: Some(5),
            error: None,
            logs: Vec::new(),
        }
    }

    /// A function's log lines travel with its event's invocation, and a
    /// reader asking after a sequence number gets only what is newer.
    #[test]
    fn log_lines_join_their_invocation_and_readers_get_what_is_new() {
        let activity = Activity::default();
        let line = |m: &str| LogLine {
            level: "info".into(),
            message: m.into(),
        };
        activity.log("e1".into(), line("one"));
        activity.log("e2".into(), line("other"));
        activity.log("e1".into(), line("two"));
        activity.invoked(invocation("e1"));
        activity.invoked(invocation("e3"));
        let all = activity.since(0, 10);
        assert_eq!(all.len(), 2);
        let messages: Vec<_> = all[0].logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["one", "two"]);
        assert!(all[1].logs.is_empty());
        assert_eq!(activity.since(all[0].seq, 10).len(), 1);
        assert_eq!(activity.since(0, 1)[0].event_id, "e3");
    }

    /// Memory stays bounded: old invocations and orphaned log lines go.
    #[test]
    fn the_ring_is_bounded() {
        let activity = Activity::default();
        for i in 0..(PENDING + 10) {
            activity.log(
                format!("orphan{i}"),
                LogLine {
                    level: "info".into(),
                    message: "x".into(),
                },
            );
        }
        for i in 0..(KEPT + 10) {
            activity.invoked(invocation(&format!("e{i}")));
        }
        let inner = activity.inner.lock().unwrap();
        assert_eq!(inner.invocations.len(), KEPT);
        assert_eq!(inner.pending.len(), PENDING);
        assert_eq!(inner.invocations.back().unwrap().seq, (KEPT + 10) as u64);
    }
}
