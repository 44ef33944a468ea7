//! `runnel dlq list` and `runnel dlq replay`: a dead letter is listed, and
//! after the function is fixed, replaying it writes its outputs and removes it.

mod harness;

use std::path::Path;
use std::process::Command;

use harness::{Runnel, repo};

/// The probe pipeline with its mode set in config: `reject` is the broken
/// function, `echo` the fixed one.
fn probe_pipeline(dir: &Path, mode: &str) -> std::path::PathBuf {
    let pipelines = dir.join(format!("pipelines-{mode}"));
    std::fs::create_dir_all(&pipelines).unwrap();
    let text = format!(
        "name = \"probe\"\n[source]\ntype = \"storage\"\nbucket = \"probe-in\"\n\
         [function]\npath = {:?}\n[function.config]\nmode = \"{mode}\"\nsink = \"out\"\n\
         [sinks.out]\ntype = \"storage\"\nbucket = \"probe-out\"\n\
         [dead_letter]\ntype = \"storage\"\nbucket = \"dead-letters\"\n",
        repo().join("functions/testing/probe")
    );
    std::fs::write(pipelines.join("probe.toml"), text).unwrap();
    pipelines
}

fn dlq(dir: &Path, args: &[&str], pipelines: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--config")
        .arg(dir.join("runnel.toml"))
        .arg("dlq")
        .args(args)
        .arg("--pipelines")
        .arg(pipelines)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_replayed_after_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let broken = probe_pipeline(dir.path(), "reject");
    let fixed = probe_pipeline(dir.path(), "echo");
    let mut runnel = Runnel::start(dir.path(), std::slice::from_ref(&broken), &[], "").await;
    assert_eq!(
        runnel
            .upload("probe-in", "doc.txt", b"hello".to_vec(), None)
            .await
            .status(),
        201
    );
    runnel
        .wait_for_metric("runnel_dead_letters_total", &[("pipeline", "probe")], 1.0)
        .await;
    assert!(runnel.terminate().success());

    let (ok, listed) = dlq(dir.path(), &["list", "probe"], &broken);
    assert!(ok, "{listed}");
    assert!(
        listed.contains("probe-in/doc.txt@") && listed.contains("attempts=1"),
        "{listed}"
    );
    assert!(listed.contains("1 dead letter(s)"), "{listed}");

    // Still broken: replay fails again and the dead letter stays.
    let (ok, replayed) = dlq(dir.path(), &["replay", "probe"], &broken);
    assert!(!ok, "{replayed}");
    assert!(replayed.contains("failed again"), "{replayed}");

    // Fixed: replay writes the output and removes the dead letter.
    let (ok, replayed) = dlq(dir.path(), &["replay", "probe"], &fixed);
    assert!(ok, "{replayed}");
    assert!(replayed.contains("replayed (1 attempt(s))"), "{replayed}");
    let out = std::fs::read(dir.path().join("data/storage/probe-out/doc.txt")).unwrap();
    assert_eq!(out, b"hello");
    let (_, listed) = dlq(dir.path(), &["list", "probe"], &fixed);
    assert!(listed.contains("0 dead letter(s)"), "{listed}");

    let (ok, text) = dlq(dir.path(), &["list", "nope"], &fixed);
    assert!(!ok && text.contains("no pipeline named \"nope\""), "{text}");
}
