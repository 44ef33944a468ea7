//! `runnel invoke`: one function, one event, locally, outputs printed.

mod harness;

use std::process::Command;

use harness::repo;

fn invoke(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("invoke")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A pipeline's function on an image file prints and saves its outputs
/// without writing to any sink; a non-image fails with exit code 1.
#[test]
fn invoke_runs_a_pipeline_function_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, stdout) = invoke(
        &[
            "pipelines/image-upload.toml",
            "--event",
            "tests/fixtures/images/baseline.jpg",
            "--meta",
            "user=dora",
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(ok, "{stdout}");
    assert!(stdout.contains("3 output(s)"), "{stdout}");
    assert!(
        stdout.contains("#0 sink=thumbnails key=baseline-128.jpg content-type=image/jpeg"),
        "{stdout}"
    );
    assert!(stdout.contains("\"user\":\"dora\""), "{stdout}");
    let thumbnail = image::open(out.join("thumbnails/baseline-512.jpg")).unwrap();
    assert_eq!((thumbnail.width(), thumbnail.height()), (512, 384));
    assert!(
        !dir.path().join("data/storage").exists(),
        "invoke writes to no sink"
    );

    let (ok, stdout) = invoke(
        &[
            "pipelines/image-upload.toml",
            "--event",
            "tests/fixtures/images/not-an-image.jpg",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(stdout.contains("failed (error)"), "{stdout}");
    assert!(stdout.contains("retryable: false"), "{stdout}");
}
