//! The `kv` capability: key-value state a pipeline grants its function,
//! kept across events and restarts, each pipeline's keys its own, refused
//! to a pipeline that grants none; in Rust (the probe) and in Python; one
//! contract for both stores (embedded and Redis), and a count shared by two
//! processes on Redis.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[cfg(feature = "redis")]
use harness::services;
use harness::{Runnel, eventually};
use runnel::kv::{KvError, KvLimits, KvStore};

/// A probe pipeline counting in the key-value store: from topic `in-<name>`
/// to topic `out-<name>`, the store granted when `store` is given.
fn counter(dir: &Path, name: &str, store: Option<&str>) -> PathBuf {
    let grant = store
        .map(|s| format!("[function.capabilities]\nkv = \"{s}\"\n"))
        .unwrap_or_default();
    harness::probe_topic_pipeline(
        dir,
        name,
        &format!("[function.config]\nmode = \"counter\"\n{grant}"),
    )
}

async fn publish(runnel: &Runnel, topic: &str, key: &str) {
    runnel.publish(topic, Some(key), "x").await;
}

/// The counts a pipeline wrote, in order.
async fn counts(runnel: &Runnel, name: &str, expected: usize) -> Vec<String> {
    eventually(
        &format!("{expected} counts from {name}"),
        Duration::from_secs(60),
        || async {
            let messages = runnel.topic(&format!("out-{name}")).await;
            let mut counts: Vec<String> = messages
                .iter()
                .map(|m| m["payload"].as_str().unwrap().to_owned())
                .collect();
            counts.sort_by_key(|c| c.parse::<i64>().unwrap_or(0));
            (counts.len() >= expected).then_some(counts)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_count_survives_restarts_each_pipeline_its_own_and_none_without_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = [
        counter(dir.path(), "a", Some("counters")),
        counter(dir.path(), "b", Some("counters")),
        counter(dir.path(), "c", None),
    ];
    let mut runnel = Runnel::start(&dir.path().join("runnel"), &pipelines, &[], "").await;
    // One key, so the events of `a` run one after another.
    for _ in 0..3 {
        publish(&runnel, "in-a", "k").await;
    }
    publish(&runnel, "in-b", "k").await;
    publish(&runnel, "in-c", "k").await;
    assert_eq!(counts(&runnel, "a", 3).await, ["1", "2", "3"]);
    assert_eq!(counts(&runnel, "b", 1).await, ["1"], "b's keys are not a's");
    runnel
        .wait_for_metric("runnel_dead_letters_total", &[("pipeline", "c")], 1.0)
        .await;
    let dead = runnel.topic("dead-c").await;
    let record: serde_json::Value =
        serde_json::from_str(dead[0]["payload"].as_str().unwrap()).unwrap();
    let error = record["error"].as_str().unwrap();
    assert!(
        error.contains("pipeline c grants no key-value store"),
        "{error}"
    );
    assert!(error.contains("[function.capabilities] kv"), "{error}");
    assert_eq!(record["attempts"], 1, "not retried: {record}");

    runnel.kill_and_restart(None).await;
    publish(&runnel, "in-a", "k").await;
    assert_eq!(
        counts(&runnel, "a", 4).await,
        ["1", "2", "3", "4"],
        "kept across kill -9"
    );
    assert!(
        dir.path().join("runnel/data/kv.db").is_file(),
        "the embedded store under data_dir"
    );
}

/// A Python function with the grant uses `runnel.kv`; `runnel invoke`
/// gives it a scratch store (invoking changes nothing the pipeline keeps),
/// and a store error surfaces as `runnel.KvError`.
#[test]
fn a_python_function_keeps_state_in_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("visits");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("app.py"),
        r#"import runnel

def handle(ctx, event):
    first = runnel.kv.increment("visits")
    again = runnel.kv.increment("visits", 10)
    runnel.kv.set("last", event.data, ttl_ms=60000)
    swapped = runnel.kv.compare_and_swap("last", event.data, b"new")
    try:
        runnel.kv.increment("last")
        failed = "no error"
    except runnel.KvError as error:
        failed = f"{error.kind} retryable={error.retryable}"
    try:
        runnel.kv.set("big", b"x" * 2048)
        big = "stored"
    except runnel.KvError as error:
        big = error.kind
    found = runnel.kv.get("last")
    return [runnel.Output("out", data=f"{first} {again} {swapped} {found!r} [{failed}] [{big}] {runnel.kv.delete('last')}")]
"#,
    )
    .unwrap();
    let pipeline = dir.path().join("visits.toml");
    std::fs::write(
        &pipeline,
        "name = \"visits\"\n[source]\ntype = \"topic\"\ntopic = \"in\"\n[function]\npath = \"visits\"\n[function.capabilities]\nkv = \"sessions\"\n[sinks.out]\ntype = \"topic\"\ntopic = \"out\"\n",
    )
    .unwrap();
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "[kv]\nmax_value_size = \"1KiB\"\n").unwrap();
    let event = dir.path().join("event.txt");
    std::fs::write(&event, "hello").unwrap();
    let invoke = || {
        let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("invoke")
            .arg(&pipeline)
            .arg("--event")
            .arg(&event)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let expected = "1 11 True b'new' [invalid retryable=False] [too-large] True";
    assert!(invoke().contains(expected), "first invoke");
    assert!(invoke().contains(expected), "a scratch store each time");
    assert!(
        !dir.path().join("data/kv.db").exists(),
        "invoke keeps nothing"
    );
}

/// What every store does, call by call: absent keys, expiry, delete,
/// compare-and-swap, increment, the limits, and scopes kept apart.
fn contract(store: &dyn KvStore, name: &str) {
    let (a, b) = ("s/a", "s/b");
    assert_eq!(store.get(a, "k").unwrap(), None, "{name}");
    store.set(a, "k", b"v1", None).unwrap();
    assert_eq!(
        store.get(a, "k").unwrap().as_deref(),
        Some(&b"v1"[..]),
        "{name}"
    );
    assert_eq!(store.get(b, "k").unwrap(), None, "{name}: scopes apart");
    store
        .set(a, "short", b"gone", Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(store.get(a, "short").unwrap(), None, "{name}: expired");
    assert!(store.delete(a, "k").unwrap(), "{name}");
    assert!(!store.delete(a, "k").unwrap(), "{name}: deleted once");
    assert!(
        store.compare_and_swap(a, "c", None, b"1", None).unwrap(),
        "{name}: absent as expected"
    );
    assert!(
        !store.compare_and_swap(a, "c", None, b"2", None).unwrap(),
        "{name}: not absent"
    );
    assert!(
        !store
            .compare_and_swap(a, "c", Some(b"9"), b"2", None)
            .unwrap(),
        "{name}: not 9"
    );
    assert!(
        store
            .compare_and_swap(a, "c", Some(b"1"), b"2", None)
            .unwrap(),
        "{name}"
    );
    assert_eq!(
        store.get(a, "c").unwrap().as_deref(),
        Some(&b"2"[..]),
        "{name}"
    );
    assert_eq!(
        store.increment(a, "n", 5).unwrap(),
        5,
        "{name}: absent is 0"
    );
    assert_eq!(store.increment(a, "n", -7).unwrap(), -2, "{name}");
    assert_eq!(
        store.increment(a, "c", i64::MAX - 2).unwrap(),
        i64::MAX,
        "{name}: exact"
    );
    assert!(
        matches!(store.increment(a, "c", 1), Err(KvError::Invalid(_))),
        "{name}: overflow"
    );
    store.set(a, "text", b"abc", None).unwrap();
    assert!(
        matches!(store.increment(a, "text", 1), Err(KvError::Invalid(_))),
        "{name}"
    );
    let long_key = "k".repeat(65);
    assert!(
        matches!(store.get(a, &long_key), Err(KvError::TooLarge(_))),
        "{name}"
    );
    assert!(
        matches!(
            store.set(a, "big", &[0; 257], None),
            Err(KvError::TooLarge(_))
        ),
        "{name}"
    );
    // The scope's bytes: 512 at most; an expired key's bytes come back.
    let filler = [7u8; 200];
    store.set(b, "f1", &filler, None).unwrap();
    store
        .set(b, "f2", &filler, Some(Duration::from_millis(50)))
        .unwrap();
    let full = store.set(b, "f3", &filler, None);
    assert!(
        matches!(&full, Err(KvError::TooLarge(m)) if m.contains("max_store_size")),
        "{name}: {full:?}"
    );
    std::thread::sleep(Duration::from_millis(150));
    store
        .set(b, "f3", &filler, None)
        .unwrap_or_else(|e| panic!("{name}: f2 expired: {e}"));
    assert!(store.delete(b, "f1").unwrap());
    store
        .set(b, "f4", &filler, None)
        .unwrap_or_else(|e| panic!("{name}: f1 deleted: {e}"));
}

const CONTRACT_LIMITS: KvLimits = KvLimits {
    max_key_size: 64,
    max_value_size: 256,
    max_store_size: 512,
};

/// The embedded store and the Redis store keep one contract.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn every_store_keeps_the_same_contract() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = runnel::kv::embedded::EmbeddedKv::open(
        &dir.path().join("kv.db"),
        runnel::sqlite::Durability::Normal,
        CONTRACT_LIMITS,
    )
    .unwrap();
    tokio::task::spawn_blocking(move || contract(&embedded, "embedded"))
        .await
        .unwrap();
    let redis = services::redis(dir.path());
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let store = runnel::kv::redis::RedisKv::connect(&url, "test:", CONTRACT_LIMITS)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || contract(&store, "redis"))
        .await
        .unwrap();
}

/// On Redis, two processes running one pipeline count in one store.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_a_count_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = services::redis(dir.path());
    let kv = format!(
        "[kv]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\n",
        redis.port
    );
    let pipeline = [counter(dir.path(), "a", Some("counters"))];
    let first = Runnel::start(&dir.path().join("first"), &pipeline, &[], &kv).await;
    let second = Runnel::start(&dir.path().join("second"), &pipeline, &[], &kv).await;
    publish(&first, "in-a", "k").await;
    assert_eq!(counts(&first, "a", 1).await, ["1"]);
    publish(&first, "in-a", "k").await;
    assert_eq!(counts(&first, "a", 2).await, ["1", "2"]);
    publish(&second, "in-a", "k").await;
    assert_eq!(
        counts(&second, "a", 1).await,
        ["3"],
        "the second process counts on"
    );
    assert!(
        !dir.path().join("first/data/kv.db").exists(),
        "nothing kept in the embedded store"
    );
}
