//! The schedule trigger from the outside: `runnel up` with a pipeline that
//! ticks every second, the probe echoing each tick's event to a webhook.
//! Each tick reaches the webhook once (alone, and with two processes on one
//! Redis), and a restart after `kill -9` runs the missed ticks as
//! `missed` says.
#![cfg(feature = "redis")]

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{Runnel, WebhookReceiver, eventually, repo};

const WAIT: Duration = Duration::from_secs(60);

/// A pipeline `tick` on `schedule` (extra `[source]` lines), echoing each
/// tick to the webhook at `$TICK_WEBHOOK_URL`.
fn tick_pipeline(dir: &Path, schedule: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"
name = "tick"
concurrency = 4

[source]
type = "schedule"
{schedule}

[function]
path = "{probe}"
timeout = "2s"

[function.config]
sink = "hook"

[sinks.hook]
type = "webhook"
url = "${{TICK_WEBHOOK_URL}}"

[dead_letter]
type = "storage"
bucket = "dead-letters"
"#,
        probe = repo().join("functions/testing/probe").display()
    );
    let file = dir.join("tick.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The ticks the webhook received: scheduled time → (times received, the
/// tick's event as JSON).
fn ticks(webhook: &WebhookReceiver) -> BTreeMap<String, (usize, serde_json::Value)> {
    let mut ticks = BTreeMap::new();
    for received in webhook.received.lock().unwrap().iter() {
        let body: serde_json::Value = serde_json::from_str(&received.body)
            .unwrap_or_else(|e| panic!("{e}: {}", received.body));
        let scheduled = body["scheduled"].as_str().unwrap().to_owned();
        let entry = ticks.entry(scheduled).or_insert((0, body.clone()));
        entry.0 += 1;
    }
    ticks
}

fn seconds(scheduled: &str) -> i64 {
    scheduled.parse::<jiff::Timestamp>().unwrap().as_second()
}

/// Every second apart, in order, with none missing between the first
/// and the last.
fn assert_consecutive(scheduled: &[&String]) {
    for pair in scheduled.windows(2) {
        assert_eq!(
            seconds(pair[1]) - seconds(pair[0]),
            1,
            "a tick is missing between {} and {}: {scheduled:?}",
            pair[0],
            pair[1]
        );
    }
}

/// `every = "1s"`: each second's tick runs once, carries its scheduled
/// and actual time, and is counted in the pipeline's metrics.
#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_every_second_fires_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = WebhookReceiver::start().await;
    let pipeline = tick_pipeline(&dir.path().join("pipelines"), "every = \"1s\"");
    let mut runnel = Runnel::start(
        &dir.path().join("runnel"),
        &[pipeline],
        &[("TICK_WEBHOOK_URL", webhook.url.as_str())],
        "",
    )
    .await;
    eventually("four ticks", WAIT, || async {
        (ticks(&webhook).len() >= 4).then_some(())
    })
    .await;
    let status = runnel.terminate();
    assert!(status.success(), "{status}");
    let ticks = ticks(&webhook);
    let scheduled: Vec<_> = ticks.keys().collect();
    assert_consecutive(&scheduled);
    for (at, (count, event)) in &ticks {
        assert_eq!(*count, 1, "tick {at} ran {count} times");
        assert_eq!(seconds(at) * 1000 % 1000, 0);
        let actual: jiff::Timestamp = event["actual"].as_str().unwrap().parse().unwrap();
        let scheduled: jiff::Timestamp = at.parse().unwrap();
        let late = actual.duration_since(scheduled);
        assert!(
            late >= jiff::SignedDuration::ZERO && late < jiff::SignedDuration::from_secs(2),
            "tick {at} fired at {actual}"
        );
        assert_eq!(event["schedule"], "every 1s");
        assert_eq!(event["timezone"], "UTC");
        assert_eq!(event["catch_up"], false);
    }
    let log = runnel.log_text();
    assert!(log.contains("schedule every 1s (UTC)"), "{log}");
}

/// Two processes sharing one Redis idempotency store run the same schedule:
/// each tick runs once between them, none is missed.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_redis_fire_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = harness::services::redis(dir.path());
    let webhook = WebhookReceiver::start().await;
    let pipeline = tick_pipeline(&dir.path().join("pipelines"), "every = \"1s\"");
    let config = format!(
        "[idempotency]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\nttl = \"1h\"\n",
        redis.port
    );
    let env = [("TICK_WEBHOOK_URL", webhook.url.as_str())];
    let (dir_a, dir_b, pipelines) = (dir.path().join("a"), dir.path().join("b"), [pipeline]);
    let (mut a, mut b) = tokio::join!(
        Runnel::start(&dir_a, &pipelines, &env, &config),
        Runnel::start(&dir_b, &pipelines, &env, &config),
    );
    // Count only ticks both processes were up for.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = jiff::Timestamp::now().as_second() + 1;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let to = jiff::Timestamp::now().as_second() - 2;
    // Each tick one process ran and the other found done.
    let mut skipped = 0.0;
    for runnel in [&a, &b] {
        skipped += runnel
            .metric("runnel_duplicates_skipped_total", &[("pipeline", "tick")])
            .await;
    }
    let (sa, sb) = (a.terminate(), b.terminate());
    assert!(sa.success() && sb.success(), "{sa} {sb}");
    let ticks = ticks(&webhook);
    let both: Vec<_> = ticks
        .keys()
        .filter(|at| (from..=to).contains(&seconds(at)))
        .collect();
    assert_eq!(
        both.len() as i64,
        to - from + 1,
        "every tick from {from} to {to}: {both:?}"
    );
    assert_consecutive(&both);
    for at in both {
        assert_eq!(ticks[at].0, 1, "tick {at} ran {} times", ticks[at].0);
    }
    assert!(
        skipped >= (to - from) as f64,
        "{skipped} ticks found done by the other process, of {}",
        to - from + 1
    );
}

/// `kill -9`, 6 s down, restart: with `missed = "catch_up"` and a limit of
/// 3, exactly the latest 3 missed ticks run (marked catch_up) and the
/// others are counted as skipped; with `skip`, none runs. No tick runs
/// twice, before or after.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_kill_runs_the_missed_ticks_as_configured() {
    for (policy, caught_up) in [
        ("missed = \"catch_up\"\ncatch_up_limit = 3", 3),
        ("missed = \"skip\"", 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let webhook = WebhookReceiver::start().await;
        let pipeline = tick_pipeline(
            &dir.path().join("pipelines"),
            &format!("every = \"1s\"\n{policy}"),
        );
        let env = [("TICK_WEBHOOK_URL", webhook.url.as_str())];
        let mut runnel = Runnel::start(&dir.path().join("runnel"), &[pipeline], &env, "").await;
        // Killed between ticks: once two have run and each is recorded
        // complete. (A tick killed between its webhook and its completion
        // is redelivered, as any event is: at least once.)
        eventually("two ticks, recorded complete", WAIT, || async {
            let seen = ticks(&webhook).len();
            let completed = runnel
                .metric(
                    "runnel_events_completed_total",
                    &[("pipeline", "tick"), ("result", "done")],
                )
                .await as usize;
            (seen >= 2 && completed == seen).then_some(())
        })
        .await;
        runnel.kill();
        let killed = jiff::Timestamp::now().as_second();
        let before = ticks(&webhook);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let restarted = jiff::Timestamp::now().as_second();
        runnel.kill_and_restart(None).await;
        eventually("a tick after the restart", WAIT, || async {
            ticks(&webhook)
                .keys()
                .any(|at| seconds(at) > restarted + 1)
                .then_some(())
        })
        .await;
        // About six ticks fell due while it was down; what did not run is
        // counted.
        let skipped = runnel
            .metric(
                "runnel_schedule_ticks_skipped_total",
                &[("pipeline", "tick")],
            )
            .await as usize;
        assert!(
            (5..=9).contains(&(skipped + caught_up)),
            "{policy}: {skipped} skipped, {caught_up} caught up"
        );
        let status = runnel.terminate();
        assert!(status.success(), "{policy}: {status}");

        let after = ticks(&webhook);
        for (at, (count, _)) in &after {
            assert_eq!(*count, 1, "{policy}: tick {at} ran {count} times");
        }
        let late: Vec<_> = after
            .iter()
            .filter(|(_, (_, event))| event["catch_up"] == true)
            .map(|(at, _)| seconds(at))
            .collect();
        assert_eq!(late.len(), caught_up, "{policy}: caught up {late:?}");
        // The latest missed ones: just before the restart, one apart.
        for pair in late.windows(2) {
            assert_eq!(pair[1] - pair[0], 1, "{policy}: {late:?}");
        }
        if let Some(last) = late.last() {
            assert!(
                (restarted - 1..=restarted + 2).contains(last),
                "{policy}: the last caught-up tick {last} is the latest missed (restart at {restarted})"
            );
        }
        // What ran between the kill and the restart is only the catch-up.
        let down: Vec<_> = after
            .keys()
            .filter(|at| !before.contains_key(*at))
            .map(|at| seconds(at))
            .filter(|s| *s > killed + 1 && *s < restarted - 3)
            .collect();
        assert!(down.is_empty(), "{policy}: ran while down: {down:?}");
        let log = runnel.log_text();
        let said = if caught_up > 0 {
            "running the latest 3"
        } else {
            "skipping them (source.missed = \"skip\")"
        };
        assert!(log.contains(said), "{policy}: {log}");
    }
}
