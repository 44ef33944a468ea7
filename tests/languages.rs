//! Functions in Python and JavaScript: `runnel up` and `runnel invoke`
//! build them from their projects (componentize-py, jco), cache the
//! build and the compiled component, say which tool is missing, and refuse
//! a component whose imports are not granted, naming the interface.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Runnel, WebhookReceiver, edited_pipeline, eventually, photo_jpeg, repo};

/// `runnel invoke <target> --event <event>`, its data under `dir`, with
/// `env` set: whether it succeeded, its stdout and its stderr.
fn invoke(dir: &Path, target: &Path, event: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("invoke")
        .arg(target)
        .arg("--event")
        .arg(event)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Each language's notify project, by the suffix its pipeline gets.
const NOTIFY: [(&str, &str); 3] = [
    ("rust", "notify"),
    ("python", "notify-python"),
    ("javascript", "notify-js"),
];

/// `pipelines/notify.toml` with its function's path pointed at `project`,
/// and its name (so its consumer group), its topic and its webhook its own.
fn notify_pipeline(language: &str, project: &str, dir: &Path, webhook: &str) -> PathBuf {
    let name = format!("notify-{language}");
    let topic = format!("topic = \"notifications-{language}\"");
    let url = format!("url = \"{webhook}\"");
    let path = format!("/functions/{project}\"");
    edited_pipeline(
        "notify.toml",
        &dir.join(language),
        &[
            ("name = \"notify\"", &format!("name = \"{name}\"")),
            ("/functions/notify\"", &path),
            ("topic = \"notifications\"", &topic),
            ("url = \"${NOTIFY_WEBHOOK_URL:-}\"", &url),
        ],
    )
}

/// The reference workload with notify in Rust, Python and JavaScript side
/// by side: two uploads, and two reports no notify can read posted to
/// `image-processed`. Every language writes the same notifications, byte
/// for byte, to its topic and its webhook, and dead-letters the same two
/// reports at the first attempt.
#[tokio::test(flavor = "multi_thread")]
async fn notify_writes_the_same_bytes_in_rust_python_and_javascript() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhooks = Vec::new();
    let mut pipelines = vec![repo().join("pipelines/image-upload.toml")];
    for (language, project) in NOTIFY {
        let webhook = WebhookReceiver::start().await;
        pipelines.push(notify_pipeline(language, project, dir.path(), &webhook.url));
        webhooks.push(webhook);
    }
    let runnel = Runnel::start(&dir.path().join("runnel"), &pipelines, &[], "").await;

    for (key, user) in [("photos/a.jpg", Some("alice")), ("photos/ü b.jpg", None)] {
        let response = runnel
            .upload("uploads", key, photo_jpeg(640, 480), user)
            .await;
        assert_eq!(response.status(), 201, "{key}");
    }
    for bad in [
        &b"{not json"[..],
        br#"{"source":{"key":"k"},"thumbnails":"x"}"#,
    ] {
        let response = runnel
            .client
            .post(runnel.url("/v1/topics/image-processed"))
            .body(bad.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    for (language, _) in NOTIFY {
        let pipeline = format!("notify-{language}");
        runnel
            .wait_for_metric("runnel_dead_letters_total", &[("pipeline", &pipeline)], 2.0)
            .await;
        let listing = runnel
            .get_json(&format!("/v1/dashboard/pipelines/{pipeline}/dead-letters"))
            .await;
        let letters = listing["dead_letters"].as_array().unwrap();
        assert_eq!(letters.len(), 2, "{pipeline}: {listing}");
        for letter in letters {
            let record = &letter["record"];
            assert_eq!(record["attempts"], 1, "{pipeline}: {record}");
            assert_eq!(record["retryable"], false, "{pipeline}: {record}");
            let error = record["error"].as_str().unwrap();
            assert!(
                error.contains("not an image-processed report"),
                "{pipeline}: {error}"
            );
        }
    }
    eventually(
        "two notifications from each language",
        Duration::from_secs(120),
        || async { webhooks.iter().all(|w| w.count() == 2).then_some(()) },
    )
    .await;

    // What each language wrote: the webhook's bodies and content types,
    // the topic's keys, content types and payloads; by object key.
    let mut written = Vec::new();
    for ((language, _), webhook) in NOTIFY.iter().zip(&webhooks) {
        let mut calls: Vec<_> = webhook
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.content_type.clone(), r.body.clone()))
            .collect();
        calls.sort();
        let mut messages: Vec<_> = runnel
            .topic(&format!("notifications-{language}"))
            .await
            .iter()
            .map(|m| {
                (
                    m["key"].as_str().unwrap().to_owned(),
                    m["headers"]["content-type"].to_string(),
                    m["payload"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        messages.sort();
        assert_eq!(messages.len(), 2, "{language}: {messages:?}");
        written.push((language, calls, messages));
    }
    let (_, rust_calls, rust_messages) = &written[0];
    let alice: serde_json::Value = serde_json::from_str(&rust_messages[0].2).unwrap();
    assert_eq!(
        alice["message"],
        "photos/a.jpg for alice: 2 thumbnails ready"
    );
    assert_eq!(
        rust_messages[1].2.split(',').next().unwrap(),
        r#"{"message":"photos/ü b.jpg: 2 thumbnails ready""#,
        "raw UTF-8, compact"
    );
    assert_eq!(rust_calls[0].0, "application/json");
    for (language, calls, messages) in &written[1..] {
        assert_eq!(
            calls, rust_calls,
            "{language}'s webhook calls differ from Rust's"
        );
        assert_eq!(
            messages, rust_messages,
            "{language}'s messages differ from Rust's"
        );
    }
    for (language, _) in NOTIFY {
        let pipeline = format!("notify-{language}");
        let ok = runnel
            .metric(
                "runnel_invocations_total",
                &[
                    ("pipeline", &pipeline),
                    (
                        "function",
                        NOTIFY.iter().find(|n| n.0 == language).unwrap().1,
                    ),
                    ("outcome", "ok"),
                ],
            )
            .await;
        assert_eq!(ok, 2.0, "{pipeline}");
    }
}

/// `runnel invoke` on a Python project: the first run builds it (saying
/// so, and that it still is while it takes) and compiles it; a second run
/// with nothing changed does neither and is quick; a changed source is
/// built again.
#[test]
fn a_python_function_is_built_once_and_rebuilt_when_its_sources_change() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello");
    std::fs::create_dir_all(&project).unwrap();
    let app = |greeting: &str| {
        format!(
            "import runnel\n\ndef handle(ctx, event):\n    runnel.log.info('saying it')\n    return [runnel.Output('out', data='{greeting} ' + event.text(), key=event.subject)]\n"
        )
    };
    std::fs::write(project.join("app.py"), app("hello")).unwrap();
    let event = dir.path().join("name.txt");
    std::fs::write(&event, "dora").unwrap();
    let invoke = || {
        let started = Instant::now();
        let (ok, stdout, stderr) = invoke(dir.path(), &project, &event, &[("RUST_LOG", "info")]);
        assert!(ok, "{stdout}\n{stderr}");
        (stdout, stderr, started.elapsed())
    };

    let (stdout, stderr, first) = invoke();
    assert!(stdout.contains("hello dora"), "{stdout}");
    assert!(
        stderr.contains("building a Python function with componentize-py"),
        "{stderr}"
    );
    assert!(stderr.contains("built with componentize-py"), "{stderr}");
    assert!(
        stderr.contains("compiling (once: cached after)"),
        "{stderr}"
    );
    if first > Duration::from_secs(12) {
        assert!(
            stderr.contains("still "),
            "a long first start says it is still going: {stderr}"
        );
    }
    assert!(
        stderr.contains("saying it"),
        "the function's log line: {stderr}"
    );

    let (stdout, stderr, second) = invoke();
    assert!(stdout.contains("hello dora"), "{stdout}");
    assert!(
        !stderr.contains("componentize-py"),
        "not built again: {stderr}"
    );
    assert!(
        !stderr.contains("compiling"),
        "not compiled again: {stderr}"
    );
    assert!(
        second < first / 3,
        "the second start ({second:?}) is far quicker than the first ({first:?})"
    );

    std::fs::write(project.join("app.py"), app("hi")).unwrap();
    let (stdout, stderr, _) = invoke();
    assert!(stdout.contains("hi dora"), "{stdout}");
    assert!(stderr.contains("built with componentize-py"), "{stderr}");
}

/// What a user without the tools, or with a broken project, is told.
#[test]
fn a_missing_tool_or_a_broken_project_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.txt");
    std::fs::write(&event, "x").unwrap();
    let invoke = |project: &Path, path_env: Option<&str>| {
        let env: Vec<(&str, &str)> = path_env.map(|path| ("PATH", path)).into_iter().collect();
        let (ok, _, stderr) = invoke(dir.path(), project, &event, &env);
        assert!(!ok, "{project:?} should fail");
        stderr
    };
    let project = |name: &str, files: &[(&str, &str)]| {
        let project = dir.path().join(name);
        std::fs::create_dir_all(&project).unwrap();
        for (file, text) in files {
            std::fs::write(project.join(file), text).unwrap();
        }
        project
    };

    let python = project(
        "py",
        &[("app.py", "def handle(ctx, event):\n    return []\n")],
    );
    let stderr = invoke(&python, Some("/usr/bin:/bin"));
    assert!(
        stderr.contains("building the Python function at")
            && stderr.contains("needs componentize-py, which was not found")
            && stderr.contains("pip install componentize-py==0.25.1"),
        "{stderr}"
    );

    let js = project(
        "js",
        &[
            ("package.json", r#"{"type":"module","main":"f.js"}"#),
            ("f.js", ""),
        ],
    );
    let stderr = invoke(&js, Some("/usr/bin:/bin"));
    assert!(
        stderr.contains("needs jco, which was not found")
            && stderr.contains("npm install --save-dev @bytecodealliance/jco@1.34.0"),
        "{stderr}"
    );
    let no_main = project("js-no-main", &[("package.json", r#"{"main":"gone.js"}"#)]);
    let stderr = invoke(&no_main, None);
    assert!(
        stderr.contains("package.json's main module gone.js does not exist"),
        "{stderr}"
    );

    let both = project("both", &[("app.py", ""), ("package.json", "{}")]);
    let stderr = invoke(&both, None);
    assert!(
        stderr.contains("more than one language (app.py, package.json)"),
        "{stderr}"
    );

    let no_handle = project("no-handle", &[("app.py", "x = 1\n")]);
    let stderr = invoke(&no_handle, None);
    assert!(
        stderr.contains("app.py defines no handle(ctx, event) function"),
        "{stderr}"
    );
    assert!(
        stderr.contains("componentize-py failed to build"),
        "{stderr}"
    );
}

/// A component importing an interface runnel does not link (here
/// `wasi:keyvalue`, built by jco from a world that adds it) fails to load
/// naming the interface and what grants key-value state instead, not with
/// the linker's message.
#[test]
fn an_ungranted_import_is_named_with_what_would_grant_it() {
    let dir = tempfile::tempdir().unwrap();
    let jco = repo().join("functions/notify-js/node_modules/.bin/jco");
    assert!(
        jco.is_file(),
        "scripts/test installs functions/notify-js's dependencies"
    );
    let wit = dir.path().join("wit");
    std::fs::create_dir_all(wit.join("deps/keyvalue")).unwrap();
    std::fs::copy(
        repo().join("functions/wit/function.wit"),
        wit.join("function.wit"),
    )
    .unwrap();
    std::fs::write(
        wit.join("with-keyvalue.wit"),
        "package runnel:function@0.1.0;\n\nworld with-keyvalue {\n    include function;\n    import wasi:keyvalue/store@0.2.0-draft;\n}\n",
    )
    .unwrap();
    std::fs::write(
        wit.join("deps/keyvalue/store.wit"),
        "package wasi:keyvalue@0.2.0-draft;\n\ninterface store {\n    get: func(key: string) -> option<string>;\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("f.js"),
        "import { get } from \"wasi:keyvalue/store@0.2.0-draft\";\nexport function handle(ctx, event) { get(\"k\"); return []; }\n",
    )
    .unwrap();
    let wasm = dir.path().join("f.wasm");
    let built = Command::new(&jco)
        .arg("componentize")
        .arg(dir.path().join("f.js"))
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "with-keyvalue", "--disable", "all", "--out"])
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let event = dir.path().join("event.txt");
    std::fs::write(&event, "x").unwrap();
    let (ok, _, stderr) = invoke(dir.path(), &wasm, &event, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("it imports `wasi:keyvalue/store@0.2.0-draft`, which is not granted"),
        "{stderr}"
    );
    assert!(stderr.contains("[function.capabilities] kv"), "{stderr}");
    assert!(
        !stderr.contains("matching implementation was not found"),
        "{stderr}"
    );
}

/// A Python function reads `[function.variables]` with `runnel.variable`;
/// a name the pipeline does not set is None, whatever the environment
/// holds.
#[test]
fn a_python_function_reads_its_pipelines_variables() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("regional");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("app.py"),
        "import runnel\n\ndef handle(ctx, event):\n    found = [f'{n}={runnel.variable(n)}' for n in ('region', 'HOME')]\n    return [runnel.Output('out', data=' '.join(found))]\n",
    )
    .unwrap();
    let pipeline = dir.path().join("regional.toml");
    std::fs::write(
        &pipeline,
        "name = \"regional\"\n[source]\ntype = \"topic\"\ntopic = \"in\"\n[function]\npath = \"regional\"\n[function.variables]\nregion = \"${RUNNEL_TEST_REGION}\"\n[sinks.out]\ntype = \"topic\"\ntopic = \"out\"\n",
    )
    .unwrap();
    let event = dir.path().join("event.txt");
    std::fs::write(&event, "x").unwrap();
    let (ok, stdout, stderr) = invoke(
        dir.path(),
        &pipeline,
        &event,
        &[("RUNNEL_TEST_REGION", "eu-north")],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("region=eu-north HOME=None"), "{stdout}");
}
