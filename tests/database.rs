//! The database trigger from the outside: a real PostgreSQL (Debian's
//! packages, started per test with `wal_level = logical`), `runnel up` with
//! a pipeline on two of its tables, and the probe echoing each change event
//! to a webhook. Changes arrive in order per key with Debezium's shape;
//! kill -9, a server restart and a dead-lettered row lose nothing; an idle
//! slot's position still advances.

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::services::Postgres;
use harness::{Runnel, WebhookReceiver, eventually, repo};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const SLOT: &str = "runnel_changes";

fn pipeline(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"
name = "changes"
concurrency = 8

[source]
type = "database"
database = "main"
tables = ["public.orders", "public.customers"]
{extra}

[function]
path = "{probe}"
timeout = "5s"

[function.config]
sink = "hook"

[sinks.hook]
type = "webhook"
url = "${{CHANGES_WEBHOOK_URL}}"

[retry]
max_attempts = 2
initial_delay = "10ms"

[dead_letter]
type = "storage"
bucket = "dead-letters"
"#,
        probe = repo().join("functions/testing/probe").display()
    );
    let file = dir.join("changes.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn schema(pg: &Postgres) {
    pg.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10,2), notes text);
         CREATE TABLE customers (id bigint PRIMARY KEY, name text, vip boolean);
         ALTER TABLE customers REPLICA IDENTITY FULL;
         CREATE TABLE unwatched (id serial PRIMARY KEY, filler text);",
    );
}

async fn start(dir: &Path, pg: &Postgres, webhook: &WebhookReceiver, extra: &str) -> Runnel {
    Runnel::start(
        dir,
        &[pipeline(dir, extra)],
        &[("CHANGES_WEBHOOK_URL", &webhook.url)],
        &pg.database_toml("main"),
    )
    .await
}

/// The change events the webhook received, in arrival order.
fn changes(webhook: &WebhookReceiver) -> Vec<Value> {
    webhook
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body)))
        .collect()
}

/// `table/id` of a change, from `after` or else `before`.
fn key(change: &Value) -> String {
    let row = if change["after"].is_null() {
        &change["before"]
    } else {
        &change["after"]
    };
    format!(
        "{}/{}",
        change["source"]["table"].as_str().unwrap(),
        row["id"]
    )
}

async fn wait_for_slot(pg: &Postgres) {
    wait_for_slot_named(pg, SLOT).await;
}

async fn wait_for_slot_named(pg: &Postgres, slot: &str) {
    let query = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'");
    eventually("the slot to exist", WAIT, || async {
        (pg.sql(&query) == "1").then_some(())
    })
    .await;
}

/// Once the shipped pipeline's slot exists: order 42 placed, then shipped.
async fn place_and_ship_order_42(pg: &Postgres) {
    wait_for_slot_named(pg, "runnel_order_changed").await;
    pg.sql(
        "INSERT INTO orders VALUES (42, 'ada@example.com', 'placed');
         UPDATE orders SET status = 'shipped' WHERE id = 42;",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_the_function_in_order_per_key_shaped_as_debezium_events() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    schema(&pg);
    let webhook = WebhookReceiver::start().await;
    let runnel = start(&dir.path().join("runnel"), &pg, &webhook, "").await;
    wait_for_slot(&pg).await;

    // A value large enough to be TOASTed out of line, then left unchanged
    // by an update of another column.
    pg.sql(
        "INSERT INTO orders VALUES (1, 'new', 10.50, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i));
         INSERT INTO customers VALUES (7, 'Ada', false);
         BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1; UPDATE customers SET vip = true WHERE id = 7; COMMIT;
         INSERT INTO orders VALUES (2, 'new', 3, 'short');
         UPDATE orders SET status = 'shipped' WHERE id = 1;
         DELETE FROM customers WHERE id = 7;
         DELETE FROM orders WHERE id = 2;
         INSERT INTO unwatched (filler) VALUES ('not published');",
    );
    let all = eventually("eight changes", WAIT, || async {
        let all = changes(&webhook);
        (all.len() >= 8).then_some(all)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = if changes(&webhook).len() > all.len() {
        changes(&webhook)
    } else {
        all
    };
    assert_eq!(
        all.len(),
        8,
        "one event per changed row, none for the unwatched table: {all:#?}"
    );

    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for change in &all {
        by_key.entry(key(change)).or_default().push(change);
    }
    let ops = |k: &str| {
        by_key[k]
            .iter()
            .map(|c| c["op"].as_str().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ops("orders/1"), ["c", "u", "u"]);
    assert_eq!(ops("orders/2"), ["c", "d"]);
    assert_eq!(ops("customers/7"), ["c", "u", "d"]);

    let orders = &by_key["orders/1"];
    assert_eq!(orders[0]["before"], Value::Null);
    assert_eq!(orders[0]["after"]["id"], json!(1));
    assert_eq!(orders[0]["after"]["total"], json!("10.50"));
    assert_eq!(
        orders[0]["after"]["notes"].as_str().unwrap().len(),
        400 * 32
    );
    // Default replica identity: `before` is the key alone, and the
    // TOASTed column the update left alone is marked, not null.
    assert_eq!(orders[1]["before"], json!({"id": 1}));
    assert_eq!(orders[1]["after"]["status"], json!("paid"));
    assert_eq!(
        orders[1]["after"]["notes"],
        json!("__debezium_unavailable_value")
    );
    assert_eq!(orders[2]["after"]["status"], json!("shipped"));
    let source = &orders[1]["source"];
    assert_eq!(source["connector"], json!("postgresql"));
    assert_eq!(
        (
            source["db"].as_str(),
            source["schema"].as_str(),
            source["table"].as_str()
        ),
        (Some("postgres"), Some("public"), Some("orders"))
    );
    assert!(source["txId"].as_u64().unwrap() > 0 && source["lsn"].as_u64().unwrap() > 0);
    assert!(source["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    // The two updates of one transaction carry its id.
    assert_eq!(by_key["customers/7"][1]["source"]["txId"], source["txId"]);

    // REPLICA IDENTITY FULL: the whole old row.
    let customers = &by_key["customers/7"];
    assert_eq!(
        customers[1]["before"],
        json!({"id": 7, "name": "Ada", "vip": false})
    );
    assert_eq!(
        customers[1]["after"],
        json!({"id": 7, "name": "Ada", "vip": true})
    );
    assert_eq!(
        customers[2]["before"],
        json!({"id": 7, "name": "Ada", "vip": true})
    );
    assert_eq!(customers[2]["after"], Value::Null);
    let deleted = &by_key["orders/2"][1];
    assert_eq!(deleted["before"], json!({"id": 2}));

    // Each event was the one transaction's rows: the slot moves past it all.
    let end = pg.wal_position();
    eventually("the slot to confirm every handled change", WAIT, || async {
        (pg.confirmed(SLOT) >= end).then_some(())
    })
    .await;
    assert_eq!(
        runnel
            .metric(
                "runnel_events_completed_total",
                &[("pipeline", "changes"), ("result", "done")]
            )
            .await,
        8.0
    );
    let lag = runnel
        .metric(
            "runnel_source_lag",
            &[("pipeline", "changes"), ("slot", SLOT)],
        )
        .await;
    assert!(lag < 1e6, "lag {lag}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_database_s_slot_still_advances() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    schema(&pg);
    let webhook = WebhookReceiver::start().await;
    let _runnel = start(&dir.path().join("runnel"), &pg, &webhook, "").await;
    wait_for_slot(&pg).await;
    // Writes the pipeline does not watch: nothing to handle, yet the
    // server must be told it may drop this WAL.
    pg.sql("INSERT INTO unwatched (filler) SELECT repeat('x', 500) FROM generate_series(1, 5000)");
    let end = pg.wal_position();
    eventually(
        "the idle slot to advance past unwatched writes",
        WAIT,
        || async { (pg.confirmed(SLOT) >= end).then_some(()) },
    )
    .await;
    assert_eq!(webhook.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_row_does_not_stop_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    schema(&pg);
    let webhook = WebhookReceiver::start().await;
    let runnel = start(&dir.path().join("runnel"), &pg, &webhook, "").await;
    wait_for_slot(&pg).await;
    pg.sql(
        "INSERT INTO orders VALUES (1, 'new', 1, 'fine');
         INSERT INTO orders VALUES (2, 'new', 1, 'probe-mode=reject');
         INSERT INTO orders VALUES (3, 'new', 1, 'fine');
         UPDATE orders SET status = 'paid' WHERE id = 2;",
    );
    eventually("the rows after the rejected one", WAIT, || async {
        let keys: Vec<String> = changes(&webhook).iter().map(key).collect();
        (keys.contains(&"orders/1".to_owned()) && keys.contains(&"orders/3".to_owned()))
            .then_some(())
    })
    .await;
    runnel
        .wait_for_metric("runnel_dead_letters_total", &[("pipeline", "changes")], 2.0)
        .await;
    let end = pg.wal_position();
    eventually(
        "the slot to move past the dead-lettered rows",
        WAIT,
        || async { (pg.confirmed(SLOT) >= end).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restart_mid_stream_resumes_and_kill_9_loses_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(&dir.path().join("pg"));
    schema(&pg);
    let webhook = WebhookReceiver::start().await;
    let mut runnel = start(&dir.path().join("runnel"), &pg, &webhook, "").await;
    wait_for_slot(&pg).await;

    // 2,000 changes in 200 transactions, written while runnel is killed.
    let port = pg.port;
    let writer = std::thread::spawn(move || {
        for batch in 0..200 {
            let rows: Vec<String> = (0..10)
                .map(|i| format!("({}, 'new', 1, 'row')", batch * 10 + i))
                .collect();
            let out = std::process::Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-qAt",
                    "-v",
                    "ON_ERROR_STOP=1",
                ])
                .args([
                    "-c",
                    &format!("INSERT INTO orders VALUES {}", rows.join(", ")),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    eventually("some changes before the kill", WAIT, || async {
        (webhook.count() >= 200).then_some(())
    })
    .await;
    runnel.kill_and_restart(None).await;
    writer.join().unwrap();
    let ids = |webhook: &WebhookReceiver| {
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        for change in changes(webhook) {
            *seen
                .entry(change["after"]["id"].as_i64().unwrap())
                .or_default() += 1;
        }
        seen
    };
    eventually("all 2,000 changes after kill -9", WAIT, || async {
        (ids(&webhook).len() == 2000).then_some(())
    })
    .await;
    let repeats: usize = ids(&webhook).values().map(|n| n - 1).sum();
    // Only what was in flight at the kill comes again: at most a batch
    // per slot of the pipeline, far below the 1,800 changes after it.
    assert!(repeats <= 64 + 8, "{repeats} changes delivered twice");

    // The server restarts mid-stream: /readyz says so, and runnel resumes.
    let before = webhook.count();
    pg.restart();
    pg.sql(
        "INSERT INTO orders SELECT i, 'after restart', 1, 'x' FROM generate_series(5000, 5049) i",
    );
    eventually(
        "the 50 changes after the server's restart",
        WAIT,
        || async {
            let after: usize = changes(&webhook)
                .iter()
                .filter(|c| c["after"]["status"] == json!("after restart"))
                .count();
            (after >= 50).then_some(())
        },
    )
    .await;
    assert!(webhook.count() >= before + 50);
    let ready = runnel
        .client
        .get(runnel.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready again once the stream resumed");
}

/// A slot the server invalidates (its WAL passed `max_slot_wal_keep_size`
/// while runnel was stopped) is no silent resnapshot: `/readyz` fails
/// saying what to do, and doing it (dropping the slot) lets runnel go on
/// with a new one.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_slot_fails_readyz_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    schema(&pg);
    let webhook = WebhookReceiver::start().await;
    let mut runnel = start(&dir.path().join("runnel"), &pg, &webhook, "").await;
    wait_for_slot(&pg).await;
    runnel.kill();

    pg.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    pg.sql("SELECT pg_reload_conf()");
    pg.sql("INSERT INTO unwatched (filler) SELECT repeat(md5(i::text), 16) FROM generate_series(1, 100000) i");
    eventually("the server to invalidate the slot", WAIT, || async {
        pg.sql("SELECT pg_switch_wal()");
        pg.sql("CHECKPOINT");
        (pg.sql(&format!(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        )) == "lost")
            .then_some(())
    })
    .await;

    runnel.kill_and_restart(None).await;
    let body: Value = eventually("/readyz to report the lost slot", WAIT, || async {
        let response = runnel.client.get(runnel.url("/readyz")).send().await.ok()?;
        (response.status() == 503).then_some(())?;
        response.json().await.ok()
    })
    .await;
    let problem = body["checks"]["source:changes"].as_str().unwrap();
    assert!(
        problem.contains("max_slot_wal_keep_size")
            && problem.contains(&format!("pg_drop_replication_slot('{SLOT}')")),
        "{problem}"
    );
    let healthz = runnel
        .client
        .get(runnel.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        healthz.status(),
        200,
        "the backends are fine: only readiness fails"
    );

    pg.sql(&format!("SELECT pg_drop_replication_slot('{SLOT}')"));
    pg.sql("ALTER SYSTEM RESET max_slot_wal_keep_size");
    pg.sql("SELECT pg_reload_conf()");
    eventually("/readyz to pass with a new slot", WAIT, || async {
        let response = runnel.client.get(runnel.url("/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    pg.sql("INSERT INTO orders VALUES (9, 'new', 1, 'after the new slot')");
    eventually("the change after the new slot", WAIT, || async {
        changes(&webhook)
            .iter()
            .any(|c| c["after"]["id"] == json!(9))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_runnel_cannot_use_fails_readyz_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    schema(&pg);
    let webhook = WebhookReceiver::start().await;
    // A slot of another plugin under the pipeline's slot name.
    pg.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{SLOT}', 'test_decoding')"
    ));
    let runnel = start(&dir.path().join("runnel-lost"), &pg, &webhook, "").await;
    let body: Value = eventually("/readyz to report the slot", WAIT, || async {
        let response = runnel.client.get(runnel.url("/readyz")).send().await.ok()?;
        (response.status() == 503).then_some(())?;
        response.json().await.ok()
    })
    .await;
    let problem = body["checks"]["source:changes"].as_str().unwrap();
    assert!(
        problem.contains("test_decoding") && problem.contains("source.slot"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_order_changed_pipeline_tells_the_customer() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY, customer text, status text NOT NULL)");
    let webhook = WebhookReceiver::start().await;
    let runnel = Runnel::start(
        &dir.path().join("runnel"),
        &[repo().join("pipelines/postgres/order-changed.toml")],
        &[("ORDER_WEBHOOK_URL", &webhook.url)],
        &pg.database_toml("main"),
    )
    .await;
    place_and_ship_order_42(&pg).await;
    let texts = eventually("two notifications", WAIT, || async {
        let texts: Vec<String> = changes(&webhook)
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        (texts.len() >= 2).then_some(texts)
    })
    .await;
    assert_eq!(
        texts,
        ["Thank you! Order 42 is placed.", "Order 42 is now shipped."]
    );
    let published = runnel.topic("order-notifications").await;
    assert_eq!(published.len(), 2, "{published:?}");
}

/// What Debezium's PostgreSQL connector writes to Kafka for a change of
/// `orders` (Kafka Connect's JSON; `wrapped`: with its schema).
fn debezium_message(op: &str, before: Value, after: Value, lsn: u64, wrapped: bool) -> String {
    let payload = json!({
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1_764_806_400_123_u64,
        "source": {
            "version": "2.7.3.Final", "connector": "postgresql", "name": "shop",
            "ts_ms": 1_764_806_400_000_u64, "snapshot": "false", "db": "shop",
            "sequence": format!("[null,\"{lsn}\"]"), "schema": "public", "table": "orders",
            "txId": 771, "lsn": lsn, "xmin": null,
        },
        "transaction": null,
    });
    if wrapped {
        json!({"schema": {"type": "struct", "optional": false, "name": "shop.public.orders.Envelope"}, "payload": payload}).to_string()
    } else {
        payload.to_string()
    }
}

/// One function serves both: `order-status` on the database trigger and
/// on Debezium's output read from a topic (`format = "debezium"`, with and
/// without the schema wrapper, a tombstone between) tells the customer
/// the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn debezium_on_a_topic_gives_the_database_trigger_s_event() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY, customer text, status text NOT NULL)");
    let webhook = WebhookReceiver::start().await;
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let from_topic = pipelines.join("order-changed-debezium.toml");
    std::fs::write(
        &from_topic,
        format!(
            r#"
name = "order-changed-debezium"
[source]
type = "topic"
topic = "shop.public.orders"
format = "debezium"
[function]
path = "{}"
[sinks.notifications]
type = "topic"
topic = "debezium-notifications"
"#,
            repo().join("functions/order-status").display()
        ),
    )
    .unwrap();
    let runnel = Runnel::start(
        &dir.path().join("runnel"),
        &[
            repo().join("pipelines/postgres/order-changed.toml"),
            from_topic,
        ],
        &[("ORDER_WEBHOOK_URL", &webhook.url)],
        &pg.database_toml("main"),
    )
    .await;
    place_and_ship_order_42(&pg).await;

    let row = |status: &str| json!({"id": 42, "customer": "ada@example.com", "status": status});
    let key = json!({"schema": {"type": "struct"}, "payload": {"id": 42}}).to_string();
    let messages = [
        debezium_message("c", Value::Null, row("placed"), 26_000_000, true),
        String::new(), // a tombstone: skipped
        debezium_message("u", json!({"id": 42}), row("shipped"), 26_000_512, false),
    ];
    for body in messages {
        let response = runnel
            .client
            .post(runnel.url("/v1/topics/shop.public.orders"))
            .header("x-runnel-key", &key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    let payloads = |topic: &'static str| {
        let runnel = &runnel;
        async move {
            let messages = runnel.topic(topic).await;
            (messages.len() >= 2).then(|| {
                messages
                    .iter()
                    .map(|m| m["payload"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
        }
    };
    let from_database = eventually("the database's two notifications", WAIT, || {
        payloads("order-notifications")
    })
    .await;
    let from_debezium = eventually("Debezium's two notifications", WAIT, || {
        payloads("debezium-notifications")
    })
    .await;
    assert_eq!(from_debezium, from_database);
    let first: Value = serde_json::from_str(&from_debezium[0]).unwrap();
    assert_eq!(first["text"], "Thank you! Order 42 is placed.");
    let pipeline = [("pipeline", "order-changed-debezium")];
    assert_eq!(
        runnel
            .metric("runnel_events_received_total", &pipeline)
            .await,
        2.0,
        "the tombstone is no event"
    );
    assert_eq!(
        runnel.metric("runnel_dead_letters_total", &pipeline).await,
        0.0
    );
}

/// Debezium's output on a real Kafka broker: the tombstone is a record
/// with a null value (what Kafka Connect writes after a delete), skipped;
/// the changes around it reach the function as change events.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread")]
async fn debezium_on_kafka_skips_null_tombstones() {
    use harness::services;
    let dir = tempfile::tempdir().unwrap();
    let kafka = services::tansu(dir.path());
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    services::create_topics(&bootstrap, &[("shop.public.orders", 2)]).await;
    let webhook = WebhookReceiver::start().await;
    let pipeline = dir.path().join("orders.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
name = "orders-from-debezium"
[source]
type = "topic"
topic = "shop.public.orders"
format = "debezium"
[function]
path = "{}"
[sinks.customer]
type = "webhook"
url = "${{ORDER_WEBHOOK_URL}}"
[dead_letter]
type = "storage"
bucket = "dead-letters"
"#,
            repo().join("functions/order-status").display()
        ),
    )
    .unwrap();
    let runnel = Runnel::start(
        &dir.path().join("runnel"),
        &[pipeline],
        &[("ORDER_WEBHOOK_URL", &webhook.url)],
        &format!("[broker]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n"),
    )
    .await;

    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let key = r#"{"id":42}"#;
    let row = |status: &str| json!({"id": 42, "customer": "ada@example.com", "status": status});
    let placed = debezium_message("c", Value::Null, row("placed"), 26_000_000, true);
    let deleted = debezium_message("d", row("placed"), Value::Null, 26_000_256, true);
    let again = debezium_message("c", Value::Null, row("placed again"), 26_000_512, false);
    // The tombstone: a record with the key and no value at all.
    for payload in [Some(&placed), Some(&deleted), None, Some(&again)] {
        let record = rdkafka::producer::FutureRecord::<str, str>::to("shop.public.orders").key(key);
        let record = match payload {
            Some(payload) => record.payload(payload.as_str()),
            None => record,
        };
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let texts = eventually("the two notifications", WAIT, || async {
        let texts: Vec<String> = changes(&webhook)
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        (texts.len() >= 2).then_some(texts)
    })
    .await;
    assert_eq!(
        texts,
        [
            "Thank you! Order 42 is placed.",
            "Thank you! Order 42 is placed again."
        ]
    );
    let pipeline = [("pipeline", "orders-from-debezium")];
    runnel
        .wait_for_metric(
            "runnel_events_completed_total",
            &[("pipeline", "orders-from-debezium"), ("result", "done")],
            3.0,
        )
        .await;
    assert_eq!(
        runnel
            .metric("runnel_events_received_total", &pipeline)
            .await,
        3.0,
        "the tombstone is no event"
    );
    assert_eq!(
        runnel.metric("runnel_dead_letters_total", &pipeline).await,
        0.0
    );
}
