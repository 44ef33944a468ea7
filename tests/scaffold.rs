//! `runnel new`: each language's template, with each kind of source,
//! builds, passes its own tests, answers `runnel invoke` on its sample
//! event and runs under `runnel up`, as the commands it prints say.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{Runnel, eventually};

fn runnel(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `runnel new <language> <name> --source <source>` in an empty directory,
/// then the printed `runnel invoke`, the template's own tests, and `runnel
/// up` with the sample sent the printed way: the greeting reaches the
/// results topic.
async fn scaffolded(language: &str, source: &str, tests: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hello-{language}");
    let (ok, stdout, stderr) = runnel(dir.path(), &["new", language, &name, "--source", source]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("pipelines/{name}.toml")),
        "{stdout}"
    );
    let invoke = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("runnel invoke"))
        .unwrap_or_else(|| panic!("no invoke command in {stdout}"));
    let args = shell_words(invoke.strip_prefix("runnel ").unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = runnel(
        dir.path(),
        &[&["--data-dir", "invoke-data"], &args[..]].concat(),
    );
    assert!(ok, "{invoke}:\n{out}\n{err}");
    assert!(out.contains("sink=results"), "{out}");
    assert!(
        out.contains(r#"{"greeting":"Hello, Dora!"}"#)
            || out.contains(r#"{"greeting": "Hello, Dora!"}"#),
        "{out}"
    );

    // The template's own tests, with the language's own runner.
    let function = dir.path().join("functions").join(&name);
    let status = Command::new(tests[0])
        .args(&tests[1..])
        .current_dir(&function)
        .status()
        .unwrap();
    assert!(status.success(), "{tests:?} in {}", function.display());

    let pipeline = dir.path().join("pipelines").join(format!("{name}.toml"));
    let up = Runnel::start(&dir.path().join("up"), &[pipeline], &[], "").await;
    let sample = std::fs::read(function.join("sample.json")).unwrap();
    let request = match source {
        "storage" => up
            .client
            .put(up.url(&format!("/v1/objects/{name}-uploads/sample.json"))),
        "topic" => up
            .client
            .post(up.url(&format!("/v1/topics/{name}-requests"))),
        _ => up.client.post(up.url(&format!("/{name}"))),
    };
    let response = request.body(sample).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let results = eventually(
        "the greeting on the results topic",
        Duration::from_secs(60),
        || async {
            let messages = up.topic(&format!("{name}-results")).await;
            (!messages.is_empty()).then_some(messages)
        },
    )
    .await;
    let payload: serde_json::Value =
        serde_json::from_str(results[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["greeting"], "Hello, Dora!", "{results:?}");
}

/// Splits a printed command line: words, and double-quoted words.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').expect("a closing quote");
            words.push(quoted[..end].to_owned());
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    words
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_function_on_a_bucket() {
    scaffolded("rust", "storage", &["cargo", "test", "--quiet"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_function_on_a_topic() {
    scaffolded("python", "topic", &["python3", "-m", "unittest", "--quiet"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_function_behind_an_http_route() {
    scaffolded("js", "http", &["npm", "test", "--silent"]).await;
}

/// A bad name, or an existing function, is refused before anything is
/// written.
#[test]
fn a_bad_name_or_an_existing_function_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = runnel(dir.path(), &["new", "python", "Hello World"]);
    assert!(!ok);
    assert!(
        stderr.contains("name \"Hello World\": use 1 to 40 lowercase letters"),
        "{stderr}"
    );
    assert!(!dir.path().join("functions").exists());
    let (ok, _, stderr) = runnel(dir.path(), &["new", "python", "hello"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = runnel(dir.path(), &["new", "js", "hello"]);
    assert!(!ok);
    assert!(
        stderr.contains("functions/hello already exists"),
        "{stderr}"
    );
    assert!(!dir.path().join("functions/hello/package.json").exists());
}
