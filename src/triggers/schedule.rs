//! The schedule trigger: one event per tick of a clock (`cron`, `every` or
//! a single `at`), in a time zone.
//!
//! A tick's idempotency key is the pipeline and the tick's scheduled time,
//! so every process that shares an idempotency store computes the same
//! event for it and the store's claims let one of them run it; a retried
//! or redelivered tick is the same event. Two durable marks in that store
//! say how far the schedule got: `dispatched` (the latest tick handed to
//! the handler) and `done` (every tick before it is finished, moved by the
//! feed driver's acknowledgements like a feed's offset, the tick's time in
//! milliseconds standing for the offset). On a start, ticks between the two
//! were in flight when the process stopped and run again whatever `missed`
//! says; ticks after `dispatched` that are already due were missed, and
//! `missed` decides: none (`skip`) or the latest `catch_up_limit` of them
//! (`catch_up`), with a warning that counts what is not run.
//!
//! Daylight saving time, for `cron` (and an `at` without an offset) in a
//! zone that has it: a local time that does not exist is skipped, and a
//! local time that happens twice fires once, at its first occurrence.
//! croner would run a fixed time that falls in a gap just after it, and an
//! interval pattern twice over a repeated hour; runnel narrows both to the
//! one rule, which is what Spring's and Quartz's schedulers do for gaps and
//! what a person reading `0 30 2 * * *` expects for a repeated hour.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, Zoned};

use crate::config::reader::Table;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::engine::{Delivery, Pending};
use crate::event::{Event, Position, SCHEDULE_TICK};
use crate::feed::{Acks, Commit, FeedError};
use crate::idempotency::IdempotencyStore;

/// Missed ticks run at most this many on a start, unless configured.
pub const DEFAULT_CATCH_UP_LIMIT: u32 = 10;
/// Missed ticks are counted this far at most (for the warning).
const COUNT_LIMIT: usize = 100_000;
/// The shortest `every`.
const MIN_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ScheduleTriggerConfig {
    /// When it ticks: `cron`, `every` or `at`, exactly one.
    pub when: When,
    /// `timezone`: the IANA zone `cron` and an offset-less `at` are read in
    /// (default UTC).
    pub timezone: TimeZone,
    /// `missed`: what a start does with ticks that fell due while no
    /// process ran (default skip).
    pub missed: Missed,
    /// `jitter`: each tick fires up to this much later, at random, so many
    /// schedules on one boundary do not start at once (default none). The
    /// tick's scheduled time, and so its key, does not move.
    pub jitter: Duration,
}

#[derive(Clone, Debug)]
pub enum When {
    /// `cron = "0 30 2 * * *"`: five fields, or six with seconds first.
    Cron { expression: String, cron: Box<Cron> },
    /// `every = "15m"`: at every multiple of the period since the Unix
    /// epoch, so every process ticks at the same instants.
    Every(Duration),
    /// `at = "2027-01-01T00:00:00Z"`: once.
    At(Timestamp),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Missed {
    Skip,
    CatchUp { limit: u32 },
}

impl ScheduleTriggerConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let timezone = match table.get("timezone") {
            None => Some(TimeZone::UTC),
            Some(field) => {
                let name = field.string()?;
                TimeZone::get(&name)
                    .map_err(|_| {
                        field.error(format!(
                            "unknown time zone {name:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\""
                        ))
                    })
                    .ok()
            }
        };
        let fields: Vec<_> = ["cron", "every", "at"]
            .into_iter()
            .filter_map(|key| table.get(key).map(|field| (key, field)))
            .collect();
        let when = match fields.as_slice() {
            [] => {
                table.error("a schedule needs one of cron, every or at");
                None
            }
            [(key, field)] => {
                let text = field.string()?;
                let parsed = match *key {
                    "cron" => parse_cron(&text),
                    "every" => parse_every(&text),
                    _ => parse_at(&text, timezone.as_ref().unwrap_or(&TimeZone::UTC)),
                };
                parsed.map_err(|e| field.error(e)).ok()
            }
            [_, (key, field), ..] => {
                field.error(format!(
                    "a schedule takes one of cron, every or at; {key} is a second one"
                ));
                None
            }
        };
        if let (Some(When::Every(_)), Some(field)) = (&when, table.get("timezone")) {
            field.error(
                "every ticks at the same instants in every zone; timezone applies to cron and at",
            );
        }
        let missed = match table.get("missed") {
            None => Some("skip".to_owned()),
            Some(field) => {
                let text = field.string()?;
                match text.as_str() {
                    "skip" | "catch_up" => Some(text),
                    other => {
                        field.error(format!(
                            "unknown policy {other:?}; expected \"skip\" or \"catch_up\""
                        ));
                        None
                    }
                }
            }
        };
        let limit = match table.get("catch_up_limit") {
            None => Some(DEFAULT_CATCH_UP_LIMIT),
            Some(field) => {
                if missed.as_deref() == Some("skip") {
                    field.error("catch_up_limit bounds missed = \"catch_up\"; this schedule skips missed ticks");
                }
                field.integer_in(1..=10_000).map(|n| n as u32)
            }
        };
        let jitter = table.duration("jitter").unwrap_or_default();
        if let (Some(When::Every(period)), Some(field)) = (&when, table.get("jitter"))
            && jitter >= *period
        {
            field.error("jitter must be shorter than every, or ticks would overtake each other");
        }
        let missed = match missed?.as_str() {
            "catch_up" => Missed::CatchUp { limit: limit? },
            _ => Missed::Skip,
        };
        Some(Self {
            when: when?,
            timezone: timezone?,
            missed,
            jitter,
        })
    }

    /// The expression as written, for events and the log: `cron 0 30 2 * * *`.
    pub fn describe(&self) -> String {
        match &self.when {
            When::Cron { expression, .. } => format!("cron {expression}"),
            When::Every(period) => format!("every {period:?}"),
            When::At(at) => format!("at {at}"),
        }
    }

    /// The first tick strictly after `after`, by the DST rule above; `None`
    /// when there is none (an `at` past, a pattern that never matches).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.when {
            When::At(at) => (*at > after).then_some(*at),
            When::Every(period) => {
                let period = period.as_millis() as i64;
                let next = (after.as_millisecond().div_euclid(period) + 1) * period;
                Timestamp::from_millisecond(next).ok()
            }
            When::Cron { cron, .. } => {
                let mut cursor = after.to_zoned(self.timezone.clone());
                // Each skipped candidate is one DST transition's: a pattern
                // that never matches a real local time ends croner's search.
                for _ in 0..1_000 {
                    let candidate = cron.find_next_occurrence(&cursor, false).ok()?;
                    if self.fires(cron, &candidate) {
                        return Some(candidate.timestamp());
                    }
                    cursor = candidate;
                }
                None
            }
        }
    }

    /// Whether croner's `candidate` is a tick under runnel's DST rule: its
    /// local time matches the pattern (croner moves a time that falls in a
    /// gap to just after it), and it is not the second pass of a repeated
    /// local time.
    fn fires(&self, cron: &Cron, candidate: &Zoned) -> bool {
        if !cron.is_time_matching(candidate).unwrap_or(false) {
            return false;
        }
        let local = self.timezone.to_ambiguous_zoned(candidate.datetime());
        match local.offset() {
            AmbiguousOffset::Fold { .. } => local
                .earlier()
                .is_ok_and(|first| first.timestamp() == candidate.timestamp()),
            _ => true,
        }
    }
}

fn parse_cron(text: &str) -> Result<When, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| {
            format!(
                "not a cron expression ({e}); write five fields (minute hour day-of-month month day-of-week) \
                 or six with seconds first, such as \"0 30 2 * * *\""
            )
        })?;
    Ok(When::Cron {
        expression: text.to_owned(),
        cron: Box::new(cron),
    })
}

fn parse_every(text: &str) -> Result<When, String> {
    let period = crate::config::units::parse_duration(text)?;
    if period < MIN_EVERY {
        return Err(format!("every {text:?} is too short; the shortest is 1s"));
    }
    if period.as_nanos() % 1_000_000 != 0 {
        return Err(format!("every {text:?} must be whole milliseconds"));
    }
    Ok(When::Every(period))
}

/// An instant with an offset (`2027-01-01T00:00:00Z`, `…+01:00`), or a
/// local time read in `zone` (`2027-01-01T00:00:00`).
fn parse_at(text: &str, zone: &TimeZone) -> Result<When, String> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(When::At(at));
    }
    let local: jiff::civil::DateTime = text.parse().map_err(|_| {
        "not a time; write \"2027-01-01T00:00:00Z\", with an offset, or without one to read it in timezone".to_owned()
    })?;
    let ambiguous = zone.to_ambiguous_zoned(local);
    if let AmbiguousOffset::Gap { .. } = ambiguous.offset() {
        return Err(format!(
            "{text} does not exist in {} (the clocks skip it for daylight saving time)",
            zone.iana_name().unwrap_or("the time zone")
        ));
    }
    // A repeated local time fires at its first occurrence.
    ambiguous
        .earlier()
        .map(|at| When::At(at.timestamp()))
        .map_err(|e| e.to_string())
}

/// Names of the two marks in the idempotency store.
const DISPATCHED: &str = "schedule.dispatched";
const DONE: &str = "schedule.done";

pub(super) struct ScheduleTrigger {
    config: ScheduleTriggerConfig,
    pipeline: String,
    marks: Arc<dyn IdempotencyStore>,
    acks: Arc<Acks>,
    /// Ticks to hand out before waiting for the clock: redeliveries and
    /// caught-up ticks, oldest first, with whether they were missed.
    backlog: VecDeque<(Timestamp, bool)>,
    /// The latest tick handed out or passed over; `None` until the marks
    /// are read.
    cursor: Option<Timestamp>,
}

pub(super) fn open(
    config: &ScheduleTriggerConfig,
    pipeline: &str,
    marks: Arc<dyn IdempotencyStore>,
) -> ScheduleTrigger {
    let done = Arc::new(DoneMark {
        pipeline: pipeline.to_owned(),
        marks: marks.clone(),
    });
    ScheduleTrigger {
        config: config.clone(),
        pipeline: pipeline.to_owned(),
        marks,
        acks: Acks::new(done),
        backlog: VecDeque::new(),
        cursor: None,
    }
}

/// The feed driver's commits, as the `done` mark: "every tick before this
/// (ms since the epoch) is finished".
struct DoneMark {
    pipeline: String,
    marks: Arc<dyn IdempotencyStore>,
}

#[async_trait]
impl Commit for DoneMark {
    async fn commit(&self, _partition: u32, next_offset: u64) -> Result<(), FeedError> {
        self.marks
            .advance_mark(&self.pipeline, DONE, next_offset)
            .await
            .map_err(|e| FeedError(e.to_string()))
    }
}

/// What a start finds to run before the clock's next tick.
#[derive(Debug, PartialEq)]
pub struct Restart {
    /// Ticks handed out before the stop and perhaps not finished.
    pub redeliver: Vec<Timestamp>,
    /// Missed ticks to run (`catch_up`).
    pub catch_up: Vec<Timestamp>,
    /// Missed ticks not run (beyond the limit, or all of them with
    /// `skip`); at most [`COUNT_LIMIT`] are counted.
    pub dropped: usize,
    /// Where the clock continues from.
    pub cursor: Timestamp,
}

impl ScheduleTriggerConfig {
    /// The plan for a start at `now`, from the marks: `dispatched` (the
    /// latest tick handed out) and `done` (every tick before it finished).
    pub fn restart(&self, now: Timestamp, dispatched: Option<u64>, done: Option<u64>) -> Restart {
        let millis = |m: u64| Timestamp::from_millisecond(m as i64).unwrap_or(Timestamp::MAX);
        let Some(dispatched) = dispatched.map(millis) else {
            // The first start: the clock starts now.
            return Restart {
                redeliver: Vec::new(),
                catch_up: Vec::new(),
                dropped: 0,
                cursor: now,
            };
        };
        let mut redeliver = Vec::new();
        let from = done.map(millis).unwrap_or(dispatched);
        let mut tick = Some(from)
            .filter(|t| self.is_tick(*t))
            .or_else(|| self.next_after(from));
        while let Some(t) = tick.filter(|t| *t <= dispatched) {
            redeliver.push(t);
            tick = self.next_after(t);
        }
        let limit = match self.missed {
            Missed::Skip => 0,
            Missed::CatchUp { limit } => limit as usize,
        };
        let mut catch_up = VecDeque::with_capacity(limit);
        let mut missed = 0;
        let mut tick = self.next_after(dispatched);
        while let Some(t) = tick.filter(|t| *t <= now) {
            missed += 1;
            if limit > 0 {
                if catch_up.len() == limit {
                    catch_up.pop_front();
                }
                catch_up.push_back(t);
            }
            if missed == COUNT_LIMIT {
                break;
            }
            tick = self.next_after(t);
        }
        // Beyond the count, the clock resumes from now.
        let cursor = if now > dispatched { now } else { dispatched };
        Restart {
            dropped: missed - catch_up.len(),
            redeliver,
            catch_up: catch_up.into(),
            cursor,
        }
    }

    /// The event of `pipeline`'s tick scheduled at `scheduled`, firing
    /// now; `catch_up` when it is a missed tick run late.
    pub fn tick_event(&self, pipeline: &str, scheduled: Timestamp, catch_up: bool) -> Event {
        let key = format!("schedule/{pipeline}/{scheduled}");
        let actual = Timestamp::now();
        let local = scheduled.to_zoned(self.timezone.clone());
        let zone = self.timezone.iana_name().unwrap_or("UTC").to_owned();
        let data = serde_json::json!({
            "schedule": self.describe(),
            "timezone": zone,
            "scheduled": scheduled.to_string(),
            "scheduled_local": local.to_string(),
            "actual": actual.to_string(),
            "catch_up": catch_up,
        });
        let mut attributes = std::collections::BTreeMap::from([
            ("schedule".to_owned(), self.describe()),
            ("timezone".to_owned(), zone),
            ("scheduled".to_owned(), scheduled.to_string()),
            ("actual".to_owned(), actual.to_string()),
        ]);
        if catch_up {
            attributes.insert("catch_up".to_owned(), "true".to_owned());
        }
        Event {
            id: key.clone(),
            source: format!("schedule://{pipeline}"),
            event_type: SCHEDULE_TICK.to_owned(),
            subject: None,
            content_type: Some("application/json".to_owned()),
            attributes,
            data: Bytes::from(data.to_string()),
            idempotency_key: key,
        }
    }

    /// Whether `at` is itself a tick (a `done` mark is one past a tick).
    fn is_tick(&self, at: Timestamp) -> bool {
        let before = at.checked_sub(jiff::SignedDuration::from_millis(1)).ok();
        before.and_then(|b| self.next_after(b)) == Some(at)
    }
}

impl ScheduleTrigger {
    async fn start(&mut self) -> Result<(), FeedError> {
        let unavailable = |e: crate::idempotency::IdempotencyError| FeedError(e.to_string());
        let dispatched = self
            .marks
            .mark(&self.pipeline, DISPATCHED)
            .await
            .map_err(unavailable)?;
        let done = self
            .marks
            .mark(&self.pipeline, DONE)
            .await
            .map_err(unavailable)?;
        let plan = self.config.restart(Timestamp::now(), dispatched, done);
        let pipeline = &self.pipeline;
        if !plan.redeliver.is_empty() {
            tracing::info!(%pipeline, ticks = plan.redeliver.len(), first = %plan.redeliver[0], "running again the ticks in flight when runnel stopped");
        }
        let missed = plan.catch_up.len() + plan.dropped;
        if missed > 0 {
            let more = if plan.dropped + plan.catch_up.len() >= COUNT_LIMIT {
                " or more"
            } else {
                ""
            };
            match self.config.missed {
                Missed::Skip => {
                    tracing::warn!(%pipeline, "{missed}{more} ticks fell due while runnel was stopped; skipping them (source.missed = \"skip\")")
                }
                Missed::CatchUp { limit } => {
                    tracing::warn!(%pipeline, "{missed}{more} ticks fell due while runnel was stopped; running the latest {} (source.catch_up_limit = {limit}), skipping {}{more}", plan.catch_up.len(), plan.dropped)
                }
            }
        }
        // Exported from the start, at zero when nothing was missed.
        metrics::counter!(crate::metrics::SCHEDULE_TICKS_SKIPPED, "pipeline" => pipeline.clone())
            .increment(plan.dropped as u64);
        if plan.catch_up.is_empty() && self.config.next_after(plan.cursor).is_none() {
            tracing::warn!(%pipeline, schedule = %self.config.describe(), "the schedule has no tick left to fire");
        }
        self.backlog
            .extend(plan.redeliver.into_iter().map(|t| (t, false)));
        self.backlog
            .extend(plan.catch_up.into_iter().map(|t| (t, true)));
        self.cursor = Some(plan.cursor);
        Ok(())
    }

    fn delivery(&self, scheduled: Timestamp, missed: bool) -> Delivery {
        let event = self.config.tick_event(&self.pipeline, scheduled, missed);
        Delivery {
            position: Position {
                partition: 0,
                offset: scheduled.as_millisecond().max(0) as u64,
            },
            idempotency_key: event.idempotency_key.clone(),
            ordering_key: None,
            pending: Pending::Event(Box::new(event)),
        }
    }

    async fn dispatched(&self, tick: Timestamp) -> Result<(), FeedError> {
        self.marks
            .advance_mark(
                &self.pipeline,
                DISPATCHED,
                tick.as_millisecond().max(0) as u64,
            )
            .await
            .map_err(|e| FeedError(e.to_string()))
    }
}

#[async_trait]
impl Pull for ScheduleTrigger {
    fn acks(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    fn description(&self) -> String {
        let zone = self.config.timezone.iana_name().unwrap_or("UTC");
        format!("schedule {} ({zone})", self.config.describe())
    }

    async fn next(&mut self, max: usize) -> Result<Pulled, FeedError> {
        if self.cursor.is_none() {
            self.start().await?;
        }
        if !self.backlog.is_empty() {
            let n = max.min(self.backlog.len());
            let last = self.backlog[n - 1].0;
            self.dispatched(last).await?;
            let ticks: Vec<_> = self.backlog.drain(..n).collect();
            let deliveries = ticks
                .into_iter()
                .map(|(tick, missed)| self.delivery(tick, missed))
                .collect();
            return Ok(Pulled {
                deliveries,
                skipped: Vec::new(),
            });
        }
        let cursor = self.cursor.unwrap_or_else(Timestamp::now);
        let Some(tick) = self.config.next_after(cursor) else {
            // An `at` that has fired: nothing more, ever (the driver stops
            // waiting on shutdown).
            return std::future::pending().await;
        };
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(fastrand::u64(..=self.config.jitter.as_millis() as u64))
        };
        let fire_at = tick
            .checked_add(jiff::SignedDuration::try_from(jitter).unwrap_or_default())
            .unwrap_or(tick);
        // A wall clock that moves (NTP) makes one sleep short or long:
        // look at it again after each.
        loop {
            let now = Timestamp::now();
            if now >= fire_at {
                break;
            }
            let wait = now.duration_until(fire_at).unsigned_abs();
            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
        }
        self.dispatched(tick).await?;
        self.cursor = Some(tick);
        Ok(Pulled {
            deliveries: vec![self.delivery(tick, false)],
            skipped: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, zone: &str) -> ScheduleTriggerConfig {
        ScheduleTriggerConfig {
            when: parse_cron(cron).unwrap(),
            timezone: TimeZone::get(zone).unwrap(),
            missed: Missed::Skip,
            jitter: Duration::ZERO,
        }
    }

    fn every(period: &str, missed: Missed) -> ScheduleTriggerConfig {
        ScheduleTriggerConfig {
            when: parse_every(period).unwrap(),
            timezone: TimeZone::UTC,
            missed,
            jitter: Duration::ZERO,
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The ticks from `from` (exclusive) to `to` (inclusive).
    fn ticks(config: &ScheduleTriggerConfig, from: &str, to: &str) -> Vec<String> {
        let (mut t, to) = (at(from), at(to));
        let mut out = Vec::new();
        while let Some(next) = config.next_after(t).filter(|n| *n <= to) {
            out.push(next.to_string());
            t = next;
        }
        out
    }

    #[test]
    fn a_daily_time_follows_the_zone() {
        let s = schedule("0 30 2 * * *", "Europe/Berlin");
        // CET is UTC+1 in winter, CEST UTC+2 in summer.
        assert_eq!(
            s.next_after(at("2026-12-03T10:00:00Z"))
                .unwrap()
                .to_string(),
            "2026-12-04T01:30:00Z"
        );
        assert_eq!(
            s.next_after(at("2026-07-01T00:00:00Z"))
                .unwrap()
                .to_string(),
            "2026-07-01T00:30:00Z"
        );
    }

    #[test]
    fn five_fields_mean_second_zero() {
        let s = schedule("*/15 * * * *", "UTC");
        assert_eq!(
            ticks(&s, "2026-12-03T10:00:00Z", "2026-12-03T10:45:00Z"),
            [
                "2026-12-03T10:15:00Z",
                "2026-12-03T10:30:00Z",
                "2026-12-03T10:45:00Z"
            ]
        );
    }

    #[test]
    fn a_local_time_that_does_not_exist_is_skipped() {
        // Berlin, 2027-03-28: 02:00 CET becomes 03:00 CEST.
        let s = schedule("0 30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2027-03-26T12:00:00Z", "2027-03-29T12:00:00Z"),
            // 27th 02:30 CET, (28th skipped), 29th 02:30 CEST.
            ["2027-03-27T01:30:00Z", "2027-03-29T00:30:00Z"]
        );
        // An interval pattern: the minutes inside the gap do not exist.
        let s = schedule("0 */30 * * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2027-03-28T00:00:00Z", "2027-03-28T01:30:00Z"),
            // 01:30 CET, 03:00 CEST, 03:30 CEST.
            [
                "2027-03-28T00:30:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-28T01:30:00Z"
            ]
        );
    }

    #[test]
    fn a_local_time_that_happens_twice_fires_once() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:xx happens twice.
        let s = schedule("0 30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            // The 25th at its first 02:30 (CEST, 00:30Z), not again at 01:30Z.
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        let s = schedule("0 */30 * * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2026-10-24T23:45:00Z", "2026-10-25T02:00:00Z"),
            // 02:00 and 02:30 CEST; the repeated 02:00 and 02:30 CET do not
            // fire; 03:00 CET.
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z"
            ]
        );
    }

    #[test]
    fn every_ticks_on_multiples_of_its_period() {
        let s = every("15m", Missed::Skip);
        assert_eq!(
            ticks(&s, "2026-12-03T10:07:00Z", "2026-12-03T10:31:00Z"),
            ["2026-12-03T10:15:00Z", "2026-12-03T10:30:00Z"]
        );
    }

    #[test]
    fn at_ticks_once() {
        let s = ScheduleTriggerConfig {
            when: parse_at(
                "2027-01-01T00:00:00",
                &TimeZone::get("Europe/Berlin").unwrap(),
            )
            .unwrap(),
            timezone: TimeZone::get("Europe/Berlin").unwrap(),
            missed: Missed::Skip,
            jitter: Duration::ZERO,
        };
        assert_eq!(
            s.next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-31T23:00:00Z"))
        );
        assert_eq!(s.next_after(at("2026-12-31T23:00:00Z")), None);
        let gap = parse_at(
            "2027-03-28T02:30:00",
            &TimeZone::get("Europe/Berlin").unwrap(),
        );
        assert!(gap.unwrap_err().contains("does not exist in Europe/Berlin"));
    }

    #[test]
    fn a_first_start_begins_now() {
        let s = every("1s", Missed::CatchUp { limit: 5 });
        let plan = s.restart(at("2026-12-03T10:00:00.5Z"), None, None);
        assert_eq!(plan.cursor, at("2026-12-03T10:00:00.5Z"));
        assert!(plan.redeliver.is_empty() && plan.catch_up.is_empty());
    }

    #[test]
    fn a_restart_runs_the_ticks_in_flight_and_the_missed_as_configured() {
        let ms = |t: &str| at(t).as_millisecond() as u64;
        // Ticks up to 10:00:03 were handed out; everything before 10:00:02
        // finished; it is now 10:01:00.
        let (now, dispatched, done) = (
            at("2026-12-03T10:01:00Z"),
            Some(ms("2026-12-03T10:00:03Z")),
            Some(ms("2026-12-03T10:00:01Z") + 1),
        );
        let skip = every("1s", Missed::Skip).restart(now, dispatched, done);
        assert_eq!(
            skip.redeliver,
            [at("2026-12-03T10:00:02Z"), at("2026-12-03T10:00:03Z")]
        );
        assert!(skip.catch_up.is_empty());
        assert_eq!(skip.dropped, 57, "10:00:04 to 10:01:00");
        assert_eq!(skip.cursor, now);

        let catch_up = every("1s", Missed::CatchUp { limit: 3 }).restart(now, dispatched, done);
        assert_eq!(catch_up.redeliver, skip.redeliver);
        assert_eq!(
            catch_up.catch_up,
            [
                at("2026-12-03T10:00:58Z"),
                at("2026-12-03T10:00:59Z"),
                at("2026-12-03T10:01:00Z")
            ]
        );
        assert_eq!(catch_up.dropped, 54);

        // All finished, nothing due: nothing to run.
        let quiet = every("1s", Missed::CatchUp { limit: 3 }).restart(
            at("2026-12-03T10:00:03.5Z"),
            dispatched,
            Some(ms("2026-12-03T10:00:03Z") + 1),
        );
        assert!(quiet.redeliver.is_empty() && quiet.catch_up.is_empty());
        assert_eq!(quiet.dropped, 0);
    }
}
