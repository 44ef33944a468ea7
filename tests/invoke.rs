//! `runnel invoke`: one function, one event, locally, outputs printed.

mod harness;

use std::process::Command;

use harness::repo;

fn invoke(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let (ok, stdout, _) = invoke_with_stderr(args, dir);
    (ok, stdout)
}

fn invoke_with_stderr(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    invoke_with_env(args, dir, &[])
}

fn invoke_with_env(
    args: &[&str],
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("invoke")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
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

/// An HTTP pipeline's function on a request given by hand: routed and
/// given its path parameters as the gateway would, its response printed
/// and its body saved; a path no route serves, or an event file without a
/// request, is refused with what to give instead.
#[test]
fn invoke_answers_a_request_for_an_http_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout) = invoke(
        &["pipelines/hello-http.toml", "--request", "GET /hello/Ada"],
        dir.path(),
    );
    assert!(ok, "{stdout}");
    assert!(stdout.contains("status 200"), "{stdout}");
    assert!(stdout.contains("Hello, Ada!"), "{stdout}");

    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"name":"Grace"}"#).unwrap();
    let saved = dir.path().join("response.json");
    let (ok, stdout) = invoke(
        &[
            "pipelines/hello-http.toml",
            "--request",
            "POST /hello",
            "--header",
            "content-type: application/json",
            "--event",
            body.to_str().unwrap(),
            "--out",
            saved.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(ok, "{stdout}");
    let answer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(answer["greeting"], "Hello, Grace!", "{stdout}");

    let (ok, _, stderr) = invoke_with_stderr(
        &["pipelines/hello-http.toml", "--request", "GET /elsewhere"],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("no route of pipeline hello-http serves /elsewhere"),
        "{stderr}"
    );
    let (ok, _, stderr) = invoke_with_stderr(
        &["pipelines/hello-http.toml", "--request", "DELETE /hello"],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("DELETE is not allowed on /hello"),
        "{stderr}"
    );
    let (ok, _, stderr) = invoke_with_stderr(
        &[
            "pipelines/hello-http.toml",
            "--event",
            body.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(stderr.contains("--request"), "{stderr}");
}

/// A schedule pipeline needs no `--event`: its function runs on the next
/// tick's event (the shipped heartbeat, a beat to each of its two sinks);
/// any other pipeline without one is told what to give.
#[test]
fn invoke_runs_a_schedule_pipeline_on_its_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, stdout) = invoke(
        &["pipelines/heartbeat.toml", "--out", out.to_str().unwrap()],
        dir.path(),
    );
    assert!(ok, "{stdout}");
    assert!(stdout.contains("2 output(s)"), "{stdout}");
    let saved: Vec<_> = std::fs::read_dir(out.join("heartbeats"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let beat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved[0]).unwrap()).unwrap();
    assert_eq!(beat["status"], "up");
    assert_eq!(beat["pipeline"], "heartbeat");
    // Every 5 minutes: the tick is on a multiple of 300 s, in the next 5 minutes.
    let scheduled: jiff::Timestamp = beat["scheduled"].as_str().unwrap().parse().unwrap();
    assert_eq!(scheduled.as_second() % 300, 0, "{scheduled}");
    let ahead = scheduled.as_second() - jiff::Timestamp::now().as_second();
    assert!((0..=300).contains(&ahead), "{scheduled} is {ahead} s ahead");
    assert_eq!(
        saved[0].file_name().unwrap().to_str().unwrap(),
        beat["scheduled"].as_str().unwrap()
    );

    let (ok, _, stderr) = invoke_with_stderr(&["pipelines/notify.toml"], dir.path());
    assert!(!ok);
    assert!(stderr.contains("give --event FILE"), "{stderr}");
}

/// A database pipeline takes a file holding a Debezium change event as
/// that event (the shipped sample); an empty file is a tombstone, no event.
#[test]
fn invoke_reads_a_debezium_change_event_for_a_database_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = invoke_with_stderr(
        &[
            "pipelines/postgres/order-changed.toml",
            "--event",
            "pipelines/postgres/order-shipped.json",
        ],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Order 42 is now shipped."), "{stdout}");
    assert!(
        stdout.contains("2 output(s)"),
        "one for each sink: {stdout}"
    );

    let empty = dir.path().join("tombstone.json");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, stderr) = invoke_with_stderr(
        &[
            "pipelines/postgres/order-changed.toml",
            "--event",
            empty.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(stderr.contains("tombstone"), "{stderr}");
}

/// A function reads its pipeline's `[function.variables]` (a `${NAME}` of
/// runnel's environment expanded when the pipeline is read) through the
/// `variables` import, and nothing of the process environment: a name the
/// pipeline does not set is unset even when the environment has it. A
/// bad name or a value that is not a string is refused with its place.
#[test]
fn a_function_reads_its_pipelines_variables_and_not_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |name: &str, variable: &str, variables: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\n[source]\ntype = \"topic\"\ntopic = \"in\"\n[function]\npath = \"{}\"\n[function.config]\nmode = \"variable\"\nvariable = \"{variable}\"\n[function.variables]\n{variables}\n[sinks.out]\ntype = \"topic\"\ntopic = \"out\"\n",
                repo().join("functions/testing/probe").display()
            ),
        )
        .unwrap();
        file
    };
    let event = dir.path().join("event.txt");
    std::fs::write(&event, "x").unwrap();
    let run = |file: &std::path::Path| {
        let args = [file.to_str().unwrap(), "--event", event.to_str().unwrap()];
        let env = [
            ("RUNNEL_TEST_GREETING", "hej då"),
            ("RUNNEL_TEST_SECRET", "s3cr3t"),
        ];
        invoke_with_env(&args, dir.path(), &env)
    };

    let (ok, stdout, stderr) = run(&pipeline(
        "greeting",
        "greeting",
        "greeting = \"${RUNNEL_TEST_GREETING}\"\nother = \"plain\"",
    ));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("hej då"), "{stdout}");

    let (ok, stdout, _) = run(&pipeline("env", "RUNNEL_TEST_SECRET", "other = \"plain\""));
    assert!(ok);
    assert!(
        stdout.contains("<unset>"),
        "the environment is not visible: {stdout}"
    );
    assert!(!stdout.contains("s3cr3t"), "{stdout}");

    let (ok, _, stderr) = run(&pipeline("bad", "x", "\"not-a-name\" = \"v\"\nnumber = 7"));
    assert!(!ok);
    assert!(
        stderr.contains("function.variables.\"not-a-name\"") || stderr.contains("not-a-name"),
        "{stderr}"
    );
    assert!(stderr.contains("letters, digits and `_`"), "{stderr}");
    assert!(stderr.contains("number"), "{stderr}");

    // A wasi:http function is not linked with the variables import.
    let http = dir.path().join("http.toml");
    std::fs::write(
        &http,
        format!(
            "name = \"h\"\n[source]\ntype = \"http\"\nroutes = [\"/h\"]\n[function]\npath = \"{}\"\n[function.variables]\na = \"b\"\n",
            repo().join("functions/hello-http").display()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = run(&http);
    assert!(!ok);
    assert!(stderr.contains("function.variables"), "{stderr}");
    assert!(stderr.contains("cannot read variables yet"), "{stderr}");
}
