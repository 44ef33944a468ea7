//! `runnel validate` on the shipped pipelines and on broken ones kept as
//! fixtures with the exact report expected (every problem, with its place).

mod harness;

use std::process::Command;

fn validate(paths: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("validate")
        .args(paths)
        .current_dir(harness::repo())
        .env_remove("NOTIFY_WEBHOOK_URL")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Every pipeline shipped in `pipelines/` is valid.
#[test]
fn shipped_pipelines_are_valid() {
    let (ok, stdout, stderr) = validate(&["pipelines"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("pipeline image-upload ok"), "{stdout}");
    assert!(stdout.contains("pipeline notify ok"), "{stdout}");
    assert!(stdout.contains("pipeline heartbeat ok"), "{stdout}");
}

/// The database pipelines shipped in `pipelines/postgres/` are valid once
/// the runtime config binds the database they name.
#[test]
fn shipped_database_pipelines_are_valid_with_their_database_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    std::fs::write(
        &config,
        "[databases.main]\nurl = \"postgres://runnel@127.0.0.1:5432/shop\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("validate")
        .arg("--config")
        .arg(&config)
        .arg("pipelines/postgres")
        .current_dir(harness::repo())
        .env_remove("ORDER_WEBHOOK_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("pipeline order-changed ok"), "{stdout}");
}

/// A route at `/` on the API's listener would be hidden by the dashboard:
/// refused, naming the way out, and accepted once the dashboard is off.
#[test]
fn a_route_at_the_root_needs_the_dashboard_off() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("site.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"site\"\n[source]\ntype = \"http\"\nroutes = [\"/\", \"/about\"]\n[function]\npath = {:?}\n",
            harness::repo().join("functions/hello-http")
        ),
    )
    .unwrap();
    let run = |config: &str| {
        let file = dir.path().join("runnel.toml");
        std::fs::write(&file, config).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("validate")
            .arg("--config")
            .arg(&file)
            .arg(&pipeline)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (ok, stderr) = run("");
    assert!(!ok);
    assert!(
        stderr.contains("source.routes: route \"/\" is where runnel serves its dashboard: set http.dashboard = false"),
        "{stderr}"
    );
    let (ok, stderr) = run("[http]\ndashboard = false\n");
    assert!(ok, "{stderr}");
}

/// Each broken fixture reports exactly its `.expected` lines, exit code 1.
#[test]
fn broken_pipelines_report_every_problem_with_its_location() {
    let dir = harness::repo().join("tests/fixtures/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let relative = path
            .strip_prefix(harness::repo())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let (ok, _, stderr) = validate(&[&relative]);
        assert!(!ok, "{relative} must fail");
        let expected_file = path.with_extension("expected");
        if std::env::var_os("RUNNEL_BLESS").is_some() {
            std::fs::write(&expected_file, &stderr).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_else(|_| {
            panic!(
                "{} missing; run with RUNNEL_BLESS=1 and review it",
                expected_file.display()
            )
        });
        assert_eq!(stderr, expected, "{relative}");
        checked += 1;
    }
    assert!(checked >= 3);
}

/// A broken runtime config reports every problem with its place, as the
/// pipelines do (`tests/fixtures/invalid-runtime/runnel.expected`).
#[test]
fn broken_runtime_config_reports_every_problem_with_its_location() {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "validate",
            "--config",
            "tests/fixtures/invalid-runtime/runnel.toml",
        ])
        .arg("pipelines")
        .current_dir(harness::repo())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected_file = harness::repo().join("tests/fixtures/invalid-runtime/runnel.expected");
    if std::env::var_os("RUNNEL_BLESS").is_some() {
        std::fs::write(&expected_file, &stderr).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_file)
        .expect("runnel.expected exists; run with RUNNEL_BLESS=1 and review it");
    assert_eq!(stderr, expected);
}

/// A misspelt `--log-format` is refused, naming the values it takes,
/// instead of silently logging text.
#[test]
fn an_unknown_log_format_is_refused() {
    for (how, value) in [("flag", "jsn"), ("env", "jsn")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
        match how {
            "flag" => command.args(["--log-format", value]),
            _ => command.env("RUNNEL_LOG_FORMAT", value),
        };
        let output = command
            .args(["validate", "pipelines"])
            .current_dir(harness::repo())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{how}: {stderr}");
        assert!(
            stderr.contains("invalid value 'jsn'")
                && stderr.contains("[possible values: text, json]"),
            "{how}: {stderr}"
        );
    }
}
