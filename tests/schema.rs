//! The JSON Schemas that editors (Taplo, VS Code's Even Better TOML) complete
//! and check runnel's files with, `schemas/pipeline.schema.json` and
//! `schemas/runtime.schema.json`, kept true to runnel's reader: they are
//! valid draft 2020-12 with every property described, every shipped file
//! names its schema and matches it, and where a file is broken in a way a
//! schema can say, the schema finds each problem where `runnel validate`
//! reports it — no fewer, no more.
//!
//! The schemas are applied by Python's `jsonschema` (tests/schema_check.py):
//! python3 with jsonschema and PyYAML is required, and its absence fails
//! these tests; scripts/test installs it (scripts/setup.sh).

mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const PIPELINE_SCHEMA: &str = "schemas/pipeline.schema.json";
const RUNTIME_SCHEMA: &str = "schemas/runtime.schema.json";
const NEEDS: &str = "the schema tests need python3 (3.11 or later) with jsonschema and PyYAML; \
                     scripts/test installs them (scripts/setup.sh)";

/// A file's problems by the schema: (dotted path, message).
type Problems = Vec<(String, String)>;

/// Checks `files` (paths from the repository, or `file.yaml#key` for a
/// ConfigMap's entry) against `schema`, which is itself checked first.
fn check(schema: &str, files: &[String]) -> Vec<(String, Problems)> {
    let output = Command::new("python3")
        .arg("tests/schema_check.py")
        .arg(schema)
        .args(files)
        .current_dir(harness::repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {NEEDS}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(3) => panic!("{stderr}{NEEDS}"),
        _ => panic!(
            "tests/schema_check.py {schema}: {}\n{stderr}",
            output.status
        ),
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    let reports: Vec<_> = stdout
        .lines()
        .map(|line| {
            let report: serde_json::Value = serde_json::from_str(line).unwrap();
            let problems = report["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let text = |key: &str| e[key].as_str().unwrap().to_owned();
                    (text("path"), text("message"))
                })
                .collect();
            (report["file"].as_str().unwrap().to_owned(), problems)
        })
        .collect();
    assert_eq!(reports.len(), files.len(), "{stdout}");
    reports
}

/// Where the problems are, as runnel places them: a list's items at the
/// list (`source.tables`, not `source.tables[1]`).
fn places(problems: &Problems) -> BTreeSet<String> {
    problems
        .iter()
        .map(|(path, _)| {
            let mut place = String::new();
            let mut index = false;
            for c in path.chars() {
                match c {
                    '[' => index = true,
                    ']' if index => index = false,
                    _ if index => {}
                    c => place.push(c),
                }
            }
            place
        })
        .collect()
}

/// The message of the problem at `path`.
fn message<'p>(problems: &'p Problems, path: &str) -> &'p str {
    problems
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, m)| m.as_str())
        .unwrap_or_else(|| panic!("no problem at {path}: {problems:#?}"))
}

/// The places of runnel's diagnostics about `file` in a report
/// (`file:line:column: path: message`; "" for a problem with no path).
fn runnel_places(report: &str, file: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(file)?.strip_prefix(':')?;
            let mut parts = rest.splitn(3, ':');
            let (_line, _column) = (parts.next()?, parts.next()?);
            let text = parts.next()?.strip_prefix(' ')?;
            Some(match text.split_once(": ") {
                Some((path, _)) if !path.contains(char::is_whitespace) => path.to_owned(),
                _ => String::new(),
            })
        })
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(harness::repo())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `*.toml` files under `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A shipped file's first line is Taplo's schema directive, naming `schema`
/// relative to the file.
fn assert_names_its_schema(file: &Path, schema: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let first = text.lines().next().unwrap_or_default();
    let Some(target) = first.strip_prefix("#:schema ") else {
        panic!(
            "{}: the first line should be `#:schema <{schema}, relative to the file>` \
             (Taplo's schema directive), found {first:?}",
            file.display()
        );
    };
    let named = file.parent().unwrap().join(target.trim()).canonicalize();
    let schema = harness::repo().join(schema).canonicalize().unwrap();
    assert_eq!(named.ok(), Some(schema), "{}: {first}", file.display());
}

/// Both schemas are valid draft 2020-12 and give every property a
/// description (schema_check.py refuses them otherwise).
#[test]
fn the_schemas_are_valid_draft_2020_12_and_describe_every_property() {
    for schema in [PIPELINE_SCHEMA, RUNTIME_SCHEMA] {
        assert!(check(schema, &[]).is_empty());
        let text = std::fs::read_to_string(harness::repo().join(schema)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{schema}"
        );
    }
}

/// Every shipped pipeline (`pipelines/**/*.toml`) names the pipeline schema
/// and matches it, and so does every valid fixture pipeline.
#[test]
fn shipped_and_fixture_pipelines_match_the_pipeline_schema() {
    let repo = harness::repo();
    let shipped = toml_files(&repo.join("pipelines"));
    assert!(shipped.len() >= 5, "{shipped:?}");
    for file in &shipped {
        assert_names_its_schema(file, PIPELINE_SCHEMA);
    }
    let fixtures = toml_files(&repo.join("tests/fixtures/pipelines"));
    assert!(fixtures.len() >= 4, "{fixtures:?}");
    let files: Vec<String> = shipped
        .iter()
        .chain(&fixtures)
        .map(|f| relative(f))
        .collect();
    for (file, problems) in check(PIPELINE_SCHEMA, &files) {
        assert!(problems.is_empty(), "{file}: {problems:#?}");
    }
}

/// The shipped runtime configs match the runtime schema: the Kafka and S3
/// example (which names its schema) and the one in the Kubernetes ConfigMap.
#[test]
fn shipped_runtime_configs_match_the_runtime_schema() {
    let example = "deploy/runnel.kafka-s3.toml";
    assert_names_its_schema(&harness::repo().join(example), RUNTIME_SCHEMA);
    let files = [
        example.to_owned(),
        "deploy/kubernetes/config.yaml#runnel.toml".to_owned(),
    ];
    for (file, problems) in check(RUNTIME_SCHEMA, &files) {
        assert!(problems.is_empty(), "{file}: {problems:#?}");
    }
}

/// Every broken pipeline fixture (but `syntax`, which is not TOML), with
/// the problems of its `.expected` report that a schema cannot see: what
/// runnel computes from values (a size's range, a time daylight saving
/// time skips, a cron field's range, whether a time zone exists, how two
/// fields compare, a loop, a number too large, a database the runtime
/// config must bind).
const BROKEN_PIPELINES: &[(&str, &[&str])] = &[
    (
        "capabilities",
        &[
            "function.capabilities.http",
            "function.capabilities.http_timeout",
            "function.capabilities.http_max_response_size",
        ],
    ),
    (
        "capabilities-limits",
        &[
            "function.capabilities.http_timeout",
            "function.capabilities.http_max_response_size",
        ],
    ),
    ("database-no-operations", &[]),
    ("database-source", &[]),
    ("database-unbound", &["source.database"]),
    ("http-source", &[]),
    ("loop", &["sinks.thumbnails", "retry.initial_delay"]),
    ("many-problems", &["function.memory_limit"]),
    (
        "overflow",
        &[
            "source.max_object_size",
            "function.timeout",
            "retry.max_delay",
        ],
    ),
    ("schedule-at", &["source.at"]),
    ("schedule-clocks", &[]),
    ("schedule-every", &["source.jitter"]),
    ("schedule-source", &["source.cron", "source.timezone"]),
    ("topic-source", &[]),
    ("wrong-kinds", &[]),
    ("wrong-types", &[]),
];

/// The schema finds every other problem of each broken fixture at the place
/// runnel reports it, and nothing runnel does not report.
#[test]
fn the_pipeline_schema_finds_what_runnel_finds_in_the_broken_fixtures() {
    let repo = harness::repo();
    let mut fixtures: Vec<String> = toml_files(&repo.join("tests/fixtures/invalid"))
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().to_owned())
        .filter(|name| name != "syntax")
        .collect();
    fixtures.sort();
    let listed: Vec<&str> = BROKEN_PIPELINES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        fixtures, listed,
        "list each fixture of tests/fixtures/invalid in BROKEN_PIPELINES, with what the schema cannot see"
    );
    let files: Vec<String> = listed
        .iter()
        .map(|name| format!("tests/fixtures/invalid/{name}.toml"))
        .collect();
    let mut found = Vec::new();
    for ((_, blind), (file, problems)) in
        BROKEN_PIPELINES.iter().zip(check(PIPELINE_SCHEMA, &files))
    {
        let report =
            std::fs::read_to_string(repo.join(file.replace(".toml", ".expected"))).unwrap();
        let runnel = runnel_places(&report, &file);
        for place in *blind {
            assert!(
                runnel.contains(*place),
                "{file}: runnel does not report {place}"
            );
        }
        let expected: BTreeSet<String> = runnel
            .into_iter()
            .filter(|place| !blind.contains(&place.as_str()))
            .collect();
        assert_eq!(
            places(&problems),
            expected,
            "{file}: the schema found {problems:#?}\nrunnel reports:\n{report}"
        );
        found.push(problems);
    }
    // What the schema says, where it says it.
    let index = |name: &str| listed.iter().position(|n| *n == name).unwrap();
    let topic = &found[index("topic-source")];
    assert!(
        message(topic, "source.format").contains("debezium"),
        "{topic:#?}"
    );
    assert!(
        message(topic, "source.idempotency_key").contains("{json.PATH}"),
        "{topic:#?}"
    );
    assert!(
        message(topic, "dead_letter.retry").starts_with("unknown field"),
        "{topic:#?}"
    );
    let database = &found[index("database-source")];
    assert!(
        message(database, "source.tables[1]").contains("'bad name'"),
        "{database:#?}"
    );
    assert!(
        message(database, "source.tables[2]").contains("'a.b.c'"),
        "{database:#?}"
    );
    assert!(
        message(database, "source.operations[1]").contains("'upsert'"),
        "{database:#?}"
    );
    assert!(
        message(database, "source.slot").contains("lower-case"),
        "{database:#?}"
    );
    assert!(
        message(database, "source.topic").starts_with("unknown field"),
        "{database:#?}"
    );
    let types = &found[index("wrong-types")];
    assert_eq!(types.len(), 27, "{types:#?}");
    assert!(message(types, "sinks.hook.retry.max_attempts").contains("not of type 'integer'"));
    assert!(message(types, "source.suffixes").contains("'array', 'string'"));
    let kinds = &found[index("wrong-kinds")];
    assert!(
        message(kinds, "source.type").starts_with("unknown type 1"),
        "{kinds:#?}"
    );
    let schedule = &found[index("schedule-source")];
    assert!(message(schedule, "source.catch_up_limit").contains("skips missed ticks"));
    assert!(found[index("overflow")].is_empty());

    let syntax = check(
        PIPELINE_SCHEMA,
        &["tests/fixtures/invalid/syntax.toml".to_owned()],
    );
    assert!(
        matches!(syntax[0].1.as_slice(), [(path, m)] if path.is_empty() && m.starts_with("not TOML")),
        "{syntax:?}"
    );
}

/// The broken runtime config: the schema finds each of its problems where
/// runnel reports it.
#[test]
fn the_runtime_schema_finds_what_runnel_finds_in_the_broken_runtime_config() {
    let file = "tests/fixtures/invalid-runtime/runnel.toml";
    let report =
        std::fs::read_to_string(harness::repo().join(file.replace(".toml", ".expected"))).unwrap();
    let checked = check(RUNTIME_SCHEMA, &[file.to_owned()]);
    let problems = &checked[0].1;
    assert_eq!(
        places(problems),
        runnel_places(&report, file),
        "{problems:#?}\n{report}"
    );
    for (path, words) in [
        ("http.auth.keys.both.token_sha256", "not several"),
        ("http.auth.keys.none.token", "missing required field"),
        ("http.auth.keys.short.token", "at least 16 characters"),
        ("http.auth.keys.short.scopes[0]", "'objects:delete:uploads'"),
        ("http.auth.allow_anonymous", "choose one"),
        ("broker.type", "unknown type 'rabbitmq'"),
        ("idempotency.url", "missing required field"),
        ("colour", "unknown field"),
    ] {
        let found = problems.iter().any(|(p, m)| p == path && m.contains(words));
        assert!(
            found,
            "no problem at {path} saying {words:?}: {problems:#?}"
        );
    }
}

/// Files beyond the shipped ones and the fixtures, written here: every
/// source, sink and backend kind with its fields, valid (`[]`), or broken
/// at the places listed. `FUNCTION` and `HTTP_FUNCTION` are function
/// crates, `TOKEN_FILE` a file holding a token.
const PIPELINES: &[(&str, &str, &[&str])] = &[
    (
        "topic-debezium",
        r#"name = "orders-cdc"
concurrency = 8
[source]
type = "topic"
topic = "dbserver1.public.orders"
group = "cdc"
format = "debezium"
idempotency_key = "{topic}/{partition}/{offset}/{{x}}/{header.ce_id}/{json.id}/{key}-${SUFFIX:-a}"
[function]
path = "FUNCTION"
name = "cdc"
memory_limit = "64 MiB"
timeout = "1.5s"
max_outputs = 10
max_output_bytes = "10MB"
[function.config]
flag = true
nested = { a = 1, list = [1, 2] }
when = 2027-01-01T00:00:00Z
[sinks.out]
type = "webhook"
url = "https://example.org/hook"
timeout = "250ms"
headers = { authorization = "Bearer ${TOKEN:-x}" }
[sinks.out.retry]
max_attempts = 20
max_age = "1h"
[dead_letter]
type = "topic"
topic = "orders-cdc.dead"
[retry]
max_attempts = 1
initial_delay = "0ms"
max_delay = "0ms"
"#,
        &[],
    ),
    (
        "http-async",
        r#"name = "inbox"
[source]
type = "http"
routes = "/inbox/..."
methods = ["post", "PUT"]
mode = "async"
topic = "inbox.requests"
auth = "jwt"
rate_limit = { per_second = 0.5 }
cors = { origins = ["*"], headers = "x-custom", max_age = "1h" }
max_body_size = "2MiB"
max_header_size = "8KiB"
max_response_size = "1MiB"
[function]
path = "FUNCTION"
[sinks.out]
type = "storage"
bucket = "inbox.archive"
"#,
        &[],
    ),
    (
        "http-sync",
        r#"name = "api"
[source]
type = "http"
routes = ["/", "/api/users/:id", "/api/users/me", "/files/...", "/.well-known/x", "/a:b"]
auth = "none"
listen = "127.0.0.1:9000"
cors = { origins = "https://app.example.com:8443" }
rate_limit = { per_second = 50, burst = 100 }
[function]
path = "HTTP_FUNCTION"
"#,
        &[],
    ),
    (
        "schedule-cron",
        r#"name = "nightly"
[source]
type = "schedule"
cron = "0 30 2 * * *"
timezone = "Europe/Berlin"
missed = "catch_up"
catch_up_limit = 3
jitter = "30s"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &[],
    ),
    (
        "schedule-at",
        r#"[source]
type = "schedule"
at = "2027-01-01T00:00:00"
timezone = "America/New_York"
missed = "skip"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &[],
    ),
    (
        "schedule-every",
        r#"[source]
type = "schedule"
every = "1.5m"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &[],
    ),
    (
        "database",
        r#"[source]
type = "database"
database = "main"
tables = "orders"
operations = ["insert", "truncate"]
publication = "orders_pub"
slot = "orders_slot"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &[],
    ),
    (
        "storage",
        r#"[source]
type = "storage"
bucket = "${BUCKET:-uploads}"
prefix = "photos/"
suffixes = ".JPG"
max_object_size = "1GB"
idempotency_key = "{bucket}/{key}#{meta.user}/{size}"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &[],
    ),
    (
        "http-sync-topic",
        r#"[source]
type = "http"
routes = "/x"
topic = "q"
[function]
path = "HTTP_FUNCTION"
"#,
        &["source.topic"],
    ),
    (
        "http-async-listen",
        r#"[source]
type = "http"
routes = "/x"
mode = "async"
listen = "127.0.0.1:9000"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &["source.listen"],
    ),
    (
        "http-limits",
        r#"[source]
type = "http"
routes = ["/x", "/x/"]
cors = { origins = ["https://app.example.com/", "https://app.example.com/path"], max_age = 600 }
rate_limit = { per_second = 0 }
[function]
path = "HTTP_FUNCTION"
"#,
        &[
            "source.routes",
            "source.cors.origins",
            "source.cors.max_age",
            "source.rate_limit.per_second",
        ],
    ),
    (
        "function-and-sinks",
        r#"[source]
type = "topic"
topic = "in"
[function]
path = "FUNCTION"
max_outputs = 0
extra = 1
[sinks.out]
type = "topic"
topic = ".."
[sinks.hook]
type = "webhook"
url = "https://example.org"
headers = { x = 1 }
[sinks.hook.retry]
max_attempts = 1001
backoff = "1s"
[sinks."a!b"]
type = "topic"
topic = "out"
"#,
        &[
            "function.max_outputs",
            "function.extra",
            "sinks.out.topic",
            "sinks.hook.headers.x",
            "sinks.hook.retry.max_attempts",
            "sinks.hook.retry.backoff",
            "sinks.a!b",
        ],
    ),
    (
        "no-sinks",
        r#"[source]
type = "topic"
topic = "in"
[function]
path = "FUNCTION"
"#,
        &["sinks"],
    ),
    (
        "no-source-type",
        r#"[source]
topic = "in"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &["source.type"],
    ),
    (
        "schedule-without-clock",
        r#"[source]
type = "schedule"
[function]
path = "FUNCTION"
[sinks.out]
type = "topic"
topic = "out"
"#,
        &["source"],
    ),
];

const RUNTIMES: &[(&str, &str, &[&str])] = &[
    (
        "runtime-all",
        r#"data_dir = "data"
shutdown_grace = "1m"
instance_id = "runnel-0"
[http]
listen = "[::1]:8080"
max_upload_size = "1GiB"
max_body_size = "512KiB"
dashboard = false
[http.auth.keys.a]
token = "0123456789abcdef"
scopes = "metrics"
rate_limit = { per_second = 2, burst = 4 }
[http.auth.keys.b]
token_file = "TOKEN_FILE"
scopes = ["invoke:*", "events:s3", "dashboard", "replay:notify"]
[http.auth.keys.c]
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
scopes = ["objects:read:thumbnails", "topics:write:t", "objects:write:*", "topics:read:*"]
[http.auth.jwt]
jwks_file = "jwks.json"
issuer = "https://idp.example.com/"
audience = "orders"
algorithms = ["RS256", "EdDSA", "HS512"]
leeway = "5s"
[storage]
type = "s3"
endpoint = ""
region = "eu-west-1"
force_path_style = false
access_key_id = "${AWS_ACCESS_KEY_ID:-}"
secret_access_key = "${AWS_SECRET_ACCESS_KEY:-}"
multipart_threshold = "32MiB"
[storage.events]
type = "sqs"
queues = { uploads = "https://sqs.eu-west-1.amazonaws.com/1/uploads" }
wait = "10s"
visibility_timeout = "10m"
[broker]
type = "kafka"
bootstrap_servers = "127.0.0.1:9092"
[broker.options]
"security.protocol" = "SASL_SSL"
"session.timeout.ms" = 10000
[idempotency]
type = "redis"
url = "redis://127.0.0.1:6379/0"
prefix = "r:"
ttl = "1d"
[databases.main]
url = "postgres://runnel@127.0.0.1:5432/shop?sslmode=require"
tls = "verify-full"
ca_file = "ca.pem"
[databases.other-db]
url = "postgresql:///shop?host=/run/postgresql"
[functions]
pooling = false
cache = false
build = false
cache_dir = "cache"
keep_resident = "0B"
components_dir = "components"
[telemetry]
otlp_endpoint = "${OTLP_ENDPOINT:-}"
service_name = "runnel-test"
"#,
        &[],
    ),
    (
        "runtime-embedded",
        r#"[http.auth]
allow_anonymous = true
[http.auth.jwt]
jwks_url = "https://idp.example.com/jwks.json"
issuer = "i"
audience = "a"
[storage]
type = "local"
root = "storage"
durability = "normal"
[broker]
path = "broker.db"
partitions = 8
durability = "normal"
retention = "1d"
[idempotency]
path = "idempotency.db"
ttl = "12h"
"#,
        &[],
    ),
    (
        "runtime-webhook-events",
        r#"[storage]
type = "s3"
[storage.events]
type = "webhook"
topic = "s3-events"
auth_token = "${S3_WEBHOOK_TOKEN:-}"
[broker]
type = "embedded"
[idempotency]
type = "embedded"
"#,
        &[],
    ),
    (
        "runtime-poll-events",
        r#"[storage]
type = "s3"
[storage.events]
type = "poll"
interval = "1m"
"#,
        &[],
    ),
    (
        "runtime-jwt",
        r#"[http.auth.jwt]
jwks_file = "jwks.json"
jwks_url = "https://idp.example.com/jwks.json"
audience = "a"
algorithms = ["none"]
"#,
        &[
            "http.auth.jwt.jwks_url",
            "http.auth.jwt.issuer",
            "http.auth.jwt.algorithms",
        ],
    ),
    (
        "runtime-keys",
        r#"[http.auth.keys.a]
token = "0123456789abcdef"
token_file = "TOKEN_FILE"
scopes = ["metrics:x"]
[http.auth.keys.b]
token = "0123456789abcdef"
scopes = "metrics"
rate_limit = { burst = 1 }
"#,
        &[
            "http.auth.keys.a.token_file",
            "http.auth.keys.a.scopes",
            "http.auth.keys.b.rate_limit.per_second",
        ],
    ),
    (
        "runtime-backends",
        r#"[storage]
type = "s3"
events = { type = "kafka" }
root = "x"
[broker]
type = "kafka"
path = "x"
[idempotency]
type = "embedded"
url = "redis://x"
"#,
        &[
            "storage.events.type",
            "storage.root",
            "broker.bootstrap_servers",
            "broker.path",
            "idempotency.url",
        ],
    ),
    (
        "runtime-kv",
        "[kv]\ntype = \"embedded\"\nurl = \"redis://x\"\n",
        &["kv.url"],
    ),
    (
        "runtime-s3-without-events",
        "[storage]\ntype = \"s3\"\n",
        &["storage.events"],
    ),
    (
        "runtime-sqs",
        r#"[storage]
type = "s3"
[storage.events]
type = "sqs"
wait = 20
"#,
        &["storage.events.queues", "storage.events.wait"],
    ),
    (
        "runtime-databases",
        r#"[databases.main]
url = "mysql://x/y"
[databases.b]
tls = "verify"
url = "postgres://x/y"
[databases.c]
ca_file = 5
url = "postgres://x/y"
"#,
        &[
            "databases.main.url",
            "databases.b.tls",
            "databases.c.ca_file",
        ],
    ),
    (
        // Without a url, its siblings are still read, not "unknown".
        "runtime-database-without-url",
        r#"[databases.main]
tls = "require"
ca_file = "ca.pem"
"#,
        &["databases.main.url"],
    ),
    (
        "runtime-events-topic-name",
        r#"[storage]
type = "s3"
[storage.events]
type = "topic"
topic = "no spaces allowed"
"#,
        &["storage.events.topic"],
    ),
];

/// `runnel validate` and the schemas agree on the files above: both accept
/// the valid ones, and both find the broken ones' problems at the same
/// places.
#[test]
fn the_schemas_and_runnel_agree_on_every_kind_of_source_sink_and_backend() {
    let repo = harness::repo();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let databases = dir.path().join("databases.toml");
    std::fs::write(
        &databases,
        "[databases.main]\nurl = \"postgres://runnel@127.0.0.1:5432/shop\"\n",
    )
    .unwrap();
    let fill = |text: &str| {
        let path = |p: &str| repo.join(p).to_str().unwrap().to_owned();
        text.replace("HTTP_FUNCTION", &path("functions/hello-http"))
            .replace("FUNCTION", &path("functions/notify"))
            .replace("TOKEN_FILE", token_file.to_str().unwrap())
    };
    let runnel = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("validate")
            .args(args)
            .current_dir(&repo)
            .env_remove("NOTIFY_WEBHOOK_URL")
            .env_remove("BUCKET")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        (output.status.success(), text)
    };
    for (schema, cases) in [(PIPELINE_SCHEMA, PIPELINES), (RUNTIME_SCHEMA, RUNTIMES)] {
        let files: Vec<String> = cases
            .iter()
            .map(|(name, text, _)| {
                let file = dir.path().join(format!("{name}.toml"));
                std::fs::write(&file, fill(text)).unwrap();
                file.to_str().unwrap().to_owned()
            })
            .collect();
        let checked = check(schema, &files);
        for ((name, _, broken), (file, problems)) in cases.iter().zip(checked) {
            let (ok, report) = if schema == PIPELINE_SCHEMA {
                runnel(&["--config", databases.to_str().unwrap(), file.as_str()])
            } else {
                runnel(&["--config", file.as_str(), "pipelines/notify.toml"])
            };
            let expected: BTreeSet<String> = broken.iter().map(|p| p.to_string()).collect();
            assert_eq!(ok, broken.is_empty(), "{name}: runnel says\n{report}");
            assert_eq!(
                runnel_places(&report, &file),
                expected,
                "{name}: runnel says\n{report}"
            );
            assert_eq!(
                places(&problems),
                expected,
                "{name}: the schema found {problems:#?}"
            );
        }
    }
}
