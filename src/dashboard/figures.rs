//! The dashboard's numbers per pipeline, read from the same registry that
//! `/metrics` renders, so the page and Prometheus never disagree: events/s
//! and the p50/p99 invocation duration over a sliding window (from the
//! counters' and the histogram buckets' growth, as `rate()` and
//! `histogram_quantile()` compute them), counts by outcome since start, the
//! events in flight and the source's lag.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics as m;

/// One scrape, reduced to what the dashboard shows: per pipeline, each
/// series' value by a short name (`completed:done`, `bucket:0.005`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pipelines: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Sample {
    /// Reads the Prometheus text exposition.
    pub fn parse(text: &str) -> Self {
        let mut sample = Self::default();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            // Kafka's lag is labelled by consumer group, not pipeline.
            let pipeline = match (labels.get("pipeline"), labels.get("group")) {
                (Some(pipeline), _) => pipeline.clone(),
                (None, Some(group)) if name == m::SOURCE_LAG => format!("group:{group}"),
                _ => continue,
            };
            let label = |key: &str| labels.get(key).map_or("", String::as_str);
            let short = match name {
                n if n == m::EVENTS_COMPLETED => format!("completed:{}", label("result")),
                n if n == m::INVOCATIONS => format!("invocations:{}", label("outcome")),
                n if n == m::RETRIES => "retries".to_owned(),
                n if n == m::DUPLICATES_SKIPPED => "duplicates".to_owned(),
                n if n == m::DEAD_LETTERS => "dead_letters".to_owned(),
                n if n == m::INFLIGHT => "inflight".to_owned(),
                n if n == m::SOURCE_LAG => "lag".to_owned(),
                n if n == m::SOURCE_ERRORS => "source_errors".to_owned(),
                n if n == format!("{}_bucket", m::INVOCATION_DURATION) => {
                    format!("bucket:{}", label("le"))
                }
                _ => continue,
            };
            // Series that differ in a label not kept (a function, a
            // partition) add up.
            *sample
                .pipelines
                .entry(pipeline)
                .or_default()
                .entry(short)
                .or_default() += value;
        }
        sample
    }

    fn get(&self, pipeline: &str, name: &str) -> f64 {
        self.pipelines
            .get(pipeline)
            .and_then(|s| s.get(name))
            .copied()
            .unwrap_or(0.0)
    }

    fn prefixed<'a>(&'a self, pipeline: &str, prefix: &'a str) -> Vec<(&'a str, f64)> {
        self.pipelines
            .get(pipeline)
            .into_iter()
            .flatten()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, *v)))
            .collect()
    }
}

/// Splits `a="x",b="y"` (values may hold escaped quotes and commas).
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// What the page shows of one pipeline.
#[derive(Debug, Serialize, PartialEq)]
pub struct Figures {
    /// Events finished per second over the rate window.
    pub events_per_second: f64,
    /// Invocation duration quantiles over the quantile window, in seconds
    /// (`None` without invocations in it).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Since start: events done, dead-lettered, skipped as duplicates.
    pub done: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub retries: u64,
    /// Invocations by outcome since start (ok, error, trap, timeout, oom).
    pub invocations: BTreeMap<String, u64>,
    pub in_flight: u64,
    /// The source's lag (Kafka: messages; database: bytes of WAL), when it
    /// reports one.
    pub lag: Option<f64>,
    pub source_errors: u64,
}

/// Samples over time, newest last, to compute rates and windows from.
pub struct History {
    samples: VecDeque<(Instant, Sample)>,
    rate_window: Duration,
    quantile_window: Duration,
}

impl History {
    pub fn new(rate_window: Duration, quantile_window: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            rate_window,
            quantile_window,
        }
    }

    pub fn push(&mut self, at: Instant, sample: Sample) {
        let keep = self.rate_window.max(self.quantile_window);
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| at.duration_since(*t) >= keep)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((at, sample));
    }

    /// The oldest sample at least `window` old (else the oldest there is).
    fn base(&self, window: Duration) -> Option<&(Instant, Sample)> {
        let (now, _) = self.samples.back()?;
        self.samples
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= window)
            .or(self.samples.front())
    }

    /// `group`: the pipeline's Kafka consumer group, whose lag is its own.
    pub fn figures(&self, pipeline: &str, group: Option<&str>) -> Figures {
        let empty = Sample::default();
        let (now_at, now) = self
            .samples
            .back()
            .map_or((Instant::now(), &empty), |(t, s)| (*t, s));
        let completed = |s: &Sample| {
            s.prefixed(pipeline, "completed:")
                .iter()
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        let events_per_second = match self.base(self.rate_window) {
            Some((at, base)) if now_at > *at => {
                (completed(now) - completed(base)).max(0.0)
                    / now_at.duration_since(*at).as_secs_f64()
            }
            _ => 0.0,
        };
        let buckets = |s: &Sample| -> Vec<(f64, f64)> {
            let mut b: Vec<(f64, f64)> = s
                .prefixed(pipeline, "bucket:")
                .into_iter()
                .filter_map(|(le, v)| {
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, v))
                })
                .collect();
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            b
        };
        let mut window = buckets(now);
        // Against a sample from before the window: what grew inside it.
        if let Some((at, base)) = self.base(self.quantile_window)
            && *at < now_at
        {
            let base = buckets(base);
            for (le, count) in &mut window {
                if let Some((_, old)) = base.iter().find(|(l, _)| l == le) {
                    *count -= old;
                }
            }
        }
        let count = |name: &str| now.get(pipeline, name).max(0.0) as u64;
        let lag_of = |key: &str| now.pipelines.get(key).and_then(|s| s.get("lag")).copied();
        let lag = lag_of(pipeline).or_else(|| lag_of(&format!("group:{}", group?)));
        Figures {
            events_per_second,
            p50: quantile(&window, 0.5),
            p99: quantile(&window, 0.99),
            done: count("completed:done"),
            dead_lettered: count("completed:dead-lettered"),
            duplicates: count("duplicates"),
            retries: count("retries"),
            invocations: now
                .prefixed(pipeline, "invocations:")
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v as u64))
                .collect(),
            in_flight: count("inflight"),
            lag,
            source_errors: count("source_errors"),
        }
    }
}

/// The `q` quantile of cumulative buckets `(le, count)`, interpolated
/// inside its bucket as Prometheus's `histogram_quantile` does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(done: u64, fast: u64, slow: u64) -> String {
        format!(
            "# TYPE runnel_events_completed_total counter\n\
             runnel_events_completed_total{{pipeline=\"p\",result=\"done\"}} {done}\n\
             runnel_events_completed_total{{pipeline=\"p\",result=\"dead-lettered\"}} 1\n\
             runnel_invocations_total{{pipeline=\"p\",function=\"f\",outcome=\"ok\"}} {done}\n\
             runnel_invocation_duration_seconds_bucket{{pipeline=\"p\",function=\"f\",le=\"0.001\"}} {fast}\n\
             runnel_invocation_duration_seconds_bucket{{pipeline=\"p\",function=\"f\",le=\"0.01\"}} {}\n\
             runnel_invocation_duration_seconds_bucket{{pipeline=\"p\",function=\"f\",le=\"+Inf\"}} {}\n\
             runnel_inflight_events{{pipeline=\"p\"}} 3\n\
             runnel_source_lag{{topic=\"t\",group=\"g\",partition=\"0\"}} 5\n\
             runnel_source_lag{{topic=\"t\",group=\"g\",partition=\"1\"}} 7\n\
             runnel_source_lag{{pipeline=\"d\",slot=\"s\"}} 4096\n\
             runnel_uploads_total{{bucket=\"uploads\"}} 9\n",
            fast + slow,
            fast + slow
        )
    }

    /// Rates and quantiles come from what grew inside the window, counts
    /// from the totals, and series differing in a dropped label add up.
    #[test]
    fn figures_follow_the_window() {
        let start = Instant::now();
        let mut history = History::new(Duration::from_secs(10), Duration::from_secs(10));
        // Before the window: 100 fast invocations.
        history.push(start, Sample::parse(&text(100, 100, 0)));
        // In it: 50 more events, all slow (1–10 ms).
        history.push(
            start + Duration::from_secs(10),
            Sample::parse(&text(150, 100, 50)),
        );
        let f = history.figures("p", Some("g"));
        assert_eq!(f.events_per_second, 5.0);
        let p50 = f.p50.unwrap();
        assert!((0.001..=0.01).contains(&p50), "{p50}");
        assert_eq!(f.done, 150);
        assert_eq!(f.dead_lettered, 1);
        assert_eq!(f.invocations["ok"], 150);
        assert_eq!(f.in_flight, 3);
        assert_eq!(f.lag, Some(12.0));
        assert_eq!(history.figures("other", None).p50, None);
        assert_eq!(history.figures("other", None).lag, None);
        assert_eq!(history.figures("d", None).lag, Some(4096.0));
    }

    /// Quantiles interpolate inside the bucket that holds the rank.
    #[test]
    fn quantiles_interpolate_as_prometheus_does() {
        let buckets = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&buckets, 0.5), Some(0.1));
        assert!((quantile(&buckets, 0.75).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn labels_with_escapes() {
        let l = labels(r#"pipeline="a",error="say \"hi\", then go",le="+Inf""#);
        assert_eq!(l["pipeline"], "a");
        assert_eq!(l["error"], "say \"hi\", then go");
        assert_eq!(l["le"], "+Inf");
    }
}
