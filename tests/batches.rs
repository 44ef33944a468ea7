//! Batches (`[source] batch`) through a running pipeline, with the
//! batch-probe component: the function gets many events in one instance,
//! one bad event is retried or dead-lettered alone while the others of its
//! batch complete, a batch that traps runs each of its events again alone,
//! and order per key holds. And what is refused, naming the input.

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{Runnel, eventually, repo};

const WAIT: Duration = Duration::from_secs(90);

/// A pipeline of `function` from topic `in-<name>` to `out-<name>`, dead
/// letters on `dead-<name>`, two attempts 10 ms apart.
fn pipeline(dir: &Path, name: &str, function: &str, source_extra: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\n[source]\ntype = \"topic\"\ntopic = \"in-{name}\"\n{source_extra}\n[function]\npath = \"{}\"\n[sinks.out]\ntype = \"topic\"\ntopic = \"out-{name}\"\n[dead_letter]\ntype = \"topic\"\ntopic = \"dead-{name}\"\n[retry]\nmax_attempts = 2\ninitial_delay = \"10ms\"\n",
            repo().join("functions/testing").join(function).display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_runs_in_one_instance_and_its_failures_go_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = [pipeline(
        dir.path(),
        "b",
        "batch-probe",
        "batch = { max_events = 50, max_wait = \"300ms\" }",
    )];
    let runnel = Runnel::start(&dir.path().join("runnel"), &pipelines, &[], "").await;
    // 240 good events on 5 keys, and three bad ones among them.
    let mut sent = Vec::new();
    for i in 0..243 {
        let body = match i {
            40 => "reject".to_owned(),
            120 => "retry".to_owned(),
            200 => "trap".to_owned(),
            _ => format!("m{i:03}"),
        };
        let key = format!("k{}", i % 5);
        runnel.publish("in-b", Some(&key), &body).await;
        sent.push((key, body));
    }
    let out = eventually("240 outputs", WAIT, || async {
        let out = runnel.topic("out-b").await;
        (out.len() >= 240).then_some(out)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = {
        let again = runnel.topic("out-b").await;
        assert_eq!(again.len(), out.len(), "no output written twice");
        again
    };
    assert_eq!(out.len(), 240, "every good event once");

    // In batches: never more than max_events, and many at once.
    let sizes: Vec<u64> = (out.iter())
        .map(|m| {
            m["headers"]["batch-size"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(sizes.iter().all(|&s| (1..=50).contains(&s)), "{sizes:?}");
    let largest = *sizes.iter().max().unwrap();
    assert!(largest >= 10, "events came in batches: largest {largest}");
    // The trap's batch ran again one event at a time.
    assert!(
        sizes.contains(&1),
        "the trapped batch's events ran alone: {sizes:?}"
    );

    // Order per key: each key's events in the order they were sent.
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &out {
        let key = m["key"].as_str().unwrap().to_owned();
        by_key
            .entry(key)
            .or_default()
            .push(m["payload"].as_str().unwrap().to_owned());
    }
    for (key, payloads) in &by_key {
        let expected: Vec<String> = (sent.iter())
            .filter(|(k, body)| k == key && body.starts_with('m'))
            .map(|(_, body)| body.clone())
            .collect();
        assert_eq!(payloads, &expected, "key {key} in order");
    }

    // Each bad event dead-lettered alone, after its own attempts.
    let dead = eventually("3 dead letters", WAIT, || async {
        let dead = runnel.topic("dead-b").await;
        (dead.len() >= 3).then_some(dead)
    })
    .await;
    let mut records: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for m in &dead {
        let record: serde_json::Value =
            serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
        let data = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            record["event"]["data"].as_str().unwrap(),
        )
        .unwrap();
        let data = String::from_utf8(data).unwrap();
        records.insert(data, record);
    }
    assert_eq!(dead.len(), 3, "{records:#?}");
    let attempts = |data: &str| records[data]["attempts"].as_u64().unwrap();
    let outcome = |data: &str| records[data]["outcome"].as_str().unwrap().to_owned();
    assert_eq!(
        (attempts("reject"), outcome("reject").as_str()),
        (1, "error")
    );
    assert_eq!((attempts("retry"), outcome("retry").as_str()), (2, "error"));
    assert_eq!((attempts("trap"), outcome("trap").as_str()), (1, "trap"));

    // Every offset committed: nothing is left to redeliver.
    let metric = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let runnel = &runnel;
        async move { runnel.metric(name, labels).await }
    };
    assert_eq!(
        metric("runnel_dead_letters_total", &[("pipeline", "b")]).await,
        3.0
    );
    let ok = metric(
        "runnel_invocations_total",
        &[
            ("pipeline", "b"),
            ("function", "batch-probe"),
            ("outcome", "ok"),
        ],
    )
    .await;
    assert!(ok >= 240.0, "an invocation counted per event: {ok}");
}

/// Runs `runnel` with `args`; whether it succeeded, and what it printed.
fn runnel(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .output()
        .unwrap();
    let printed =
        String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap();
    (output.status.success(), printed)
}

/// What `runnel validate` says of `pipeline`, which it must refuse.
fn refused(pipeline: &Path) -> String {
    let (ok, report) = runnel(&["validate".as_ref(), pipeline.as_os_str()]);
    assert!(!ok, "{report}");
    report
}

/// What `runnel up` says of `pipeline`, which it must refuse at start.
fn up_fails(dir: &Path, pipeline: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{}\"\n[functions]\ncache_dir = {:?}\n",
            dir.join("data"),
            harness::free_port(),
            harness::cache_dir()
        ),
    )
    .unwrap();
    let (ok, printed) = runnel(&[
        "--config".as_ref(),
        config.as_os_str(),
        "up".as_ref(),
        pipeline.as_os_str(),
    ]);
    assert!(!ok, "{pipeline:?} was refused: {printed}");
    printed
}

/// A batch where the source cannot gather one, a batch function where no
/// batch is set, and a one-event function given batches are refused,
/// each naming the way out.
#[test]
fn mismatches_are_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let http = dir.path().join("http.toml");
    std::fs::write(
        &http,
        format!(
            "name = \"h\"\n[source]\ntype = \"http\"\nroutes = [\"/h\"]\nbatch = {{ max_events = 10 }}\n[function]\npath = \"{}\"\n",
            repo().join("functions/testing/batch-probe").display()
        ),
    )
    .unwrap();
    let report = refused(&http);
    assert!(report.contains("source.batch"), "{report}");
    assert!(
        report.contains("batches are for storage, topic and database sources"),
        "{report}"
    );

    let big = pipeline(
        dir.path(),
        "big",
        "batch-probe",
        "batch = { max_events = 20000 }",
    );
    let report = refused(&big);
    assert!(report.contains("source.batch.max_events"), "{report}");

    let unbatched = pipeline(dir.path(), "unbatched", "batch-probe", "");
    let error = up_fails(&dir.path().join("u"), &unbatched);
    assert!(error.contains("exports `handle-batch`"), "{error}");
    assert!(error.contains("set [source] batch"), "{error}");

    let single = pipeline(dir.path(), "single", "probe", "batch = {}");
    let error = up_fails(&dir.path().join("s"), &single);
    assert!(
        error.contains("[source] batch is set, but function probe exports `handle`"),
        "{error}"
    );
}

/// `runnel invoke` runs a batch function on its one event, as a batch of
/// one, and reports that event's failure as any function's.
#[test]
fn invoke_runs_a_batch_function_on_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let batched = pipeline(dir.path(), "inv", "batch-probe", "batch = {}");
    let invoke = |body: &str| {
        let event = dir.path().join("event.txt");
        std::fs::write(&event, body).unwrap();
        runnel(&[
            "--data-dir".as_ref(),
            dir.path().join("data").as_os_str(),
            "invoke".as_ref(),
            batched.as_os_str(),
            "--event".as_ref(),
            event.as_os_str(),
        ])
    };
    let (ok, printed) = invoke("hello");
    assert!(ok, "{printed}");
    assert!(printed.contains("1 output(s)"), "{printed}");
    assert!(printed.contains("sink=out"), "{printed}");
    assert!(printed.contains("batch-size"), "{printed}");
    let (ok, printed) = invoke("reject");
    assert!(!ok, "{printed}");
    assert!(printed.contains("was rejected"), "{printed}");
}
