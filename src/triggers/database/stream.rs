//! The replication session: connects, makes sure the publication and slot
//! exist, streams `pgoutput` and turns each row into a delivery. It
//! reconnects after the server restarts or the network breaks, from the
//! slot's confirmed position, and reports what stops it on `/readyz`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pgwire_replication::{
    Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::change::{self, Change, Op};
use super::pgoutput::{self, Message};
use super::{BATCH, Confirm, DatabaseTriggerConfig};
use crate::config::runtime::{DatabaseConfig, DatabaseTls};
use crate::engine::{Delivery, Pending};
use crate::event::{DATABASE_CHANGE, Event, Position};
use crate::feed::FeedError;
use crate::health::SourceProblems;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

pub(super) struct Stream {
    pub config: DatabaseTriggerConfig,
    pub database: DatabaseConfig,
    pub pipeline: String,
    pub rows: mpsc::Sender<Result<Vec<Delivery>, FeedError>>,
    pub confirm: Arc<Confirm>,
    pub confirmed: watch::Receiver<u64>,
    pub problems: Arc<SourceProblems>,
    pub stop: CancellationToken,
}

/// Why a session ended.
struct Ended(String);

impl<E: std::fmt::Display> From<E> for Ended {
    fn from(error: E) -> Self {
        Ended(error.to_string())
    }
}

/// The transaction being read.
struct Transaction {
    commit_lsn: u64,
    xid: u32,
    commit_ms: i64,
    /// The place of the next row change in the transaction.
    index: u32,
    /// Already confirmed: handled before a reconnect.
    seen: bool,
    rows: Vec<Delivery>,
}

impl Stream {
    pub async fn run(mut self) {
        let mut failures = 0u32;
        let stop = self.stop.clone();
        loop {
            let ended = tokio::select! {
                _ = stop.cancelled() => return,
                ended = self.session() => ended,
            };
            if self.stop.is_cancelled() {
                return;
            }
            let Ended(problem) = ended;
            self.problems.set(&self.pipeline, Some(problem.clone()));
            failures = failures.saturating_add(1);
            // Short at first (a server restart is back in seconds), at most
            // half a minute (a misconfiguration stays until fixed).
            let delay =
                Duration::from_millis(500u64 << failures.min(6)).min(Duration::from_secs(30));
            tracing::warn!(pipeline = %self.pipeline, database = %self.config.database, error = %problem, ?delay, "reading the database's changes stopped; reconnecting");
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.rows.send(Err(FeedError(problem))) => {}
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            if failures > 0 && self.rows.is_closed() {
                return;
            }
        }
    }

    fn replication_config(&self, from: u64) -> ReplicationConfig {
        let db = &self.database;
        let (publication, _) = self.config.publication_for(&self.pipeline);
        let mode = match db.tls {
            DatabaseTls::Disable => SslMode::Disable,
            DatabaseTls::Prefer => SslMode::Prefer,
            DatabaseTls::Require => SslMode::Require,
            DatabaseTls::VerifyCa => SslMode::VerifyCa,
            DatabaseTls::VerifyFull => SslMode::VerifyFull,
        };
        let tls = TlsConfig {
            mode,
            ca_pem_path: db.ca_file.clone(),
            ..TlsConfig::disabled()
        };
        let config = ReplicationConfig::new(
            db.host.clone(),
            db.user.clone(),
            db.password.clone(),
            db.dbname.clone(),
            self.config.slot_for(&self.pipeline),
            publication,
        )
        .with_port(db.port)
        .with_tls(tls)
        .with_application_name(format!("runnel {}", self.pipeline))
        // Positions reach the server within a second of being confirmed.
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(1024);
        if from == 0 {
            config
        } else {
            config.with_start_lsn(Lsn(from)).with_ack_lsn(Lsn(from))
        }
    }

    /// One connection, from set-up until it breaks.
    async fn session(&mut self) -> Ended {
        let from = *self.confirmed.borrow();
        let mut client = match ReplicationClient::connect_gated(self.replication_config(from)).await
        {
            Ok(client) => client,
            Err(e) => return Ended(format!("connecting to {}: {e}", self.database.describe())),
        };
        let primary_keys = match self.set_up(&mut client).await {
            Ok(keys) => keys,
            Err(ended) => return ended,
        };
        if let Err(e) = client.start().await {
            return Ended(e.to_string());
        }
        if let Err(e) = client.wait_started().await {
            return Ended(explain_start_error(
                &e.to_string(),
                &self.config.slot_for(&self.pipeline),
            ));
        }
        self.problems.set(&self.pipeline, None);
        tracing::info!(pipeline = %self.pipeline, database = %self.config.database, slot = %self.config.slot_for(&self.pipeline), from = %Lsn(from), "reading the database's changes");
        let ended = self.read(&mut client, &primary_keys).await;
        client.abort();
        ended
    }

    /// Checks the server and the tables, and creates the publication and
    /// slot when missing. Returns each table's primary key columns.
    async fn set_up(
        &self,
        client: &mut ReplicationClient,
    ) -> Result<HashMap<(String, String), Vec<String>>, Ended> {
        let wal_level = scalar(client.simple_query("SHOW wal_level").await?);
        if wal_level.as_deref() != Some("logical") {
            return Err(Ended(format!(
                "the server's wal_level is {}, not logical: set wal_level = logical in postgresql.conf and restart PostgreSQL",
                wal_level.unwrap_or_default()
            )));
        }
        let mut primary_keys = HashMap::new();
        for (schema, table) in &self.config.tables {
            let rows = client
                .simple_query(&format!(
                    "SELECT c.relreplident, a.attname FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
                     LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
                     WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p') \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    literal(schema),
                    literal(table)
                ))
                .await?;
            if rows.is_empty() {
                return Err(Ended(format!(
                    "table {schema}.{table} (source.tables) does not exist in database {}",
                    self.database.dbname
                )));
            }
            let identity = text(&rows[0], 0);
            let key: Vec<String> = rows.iter().filter_map(|row| text(row, 1)).collect();
            if key.is_empty() && identity.as_deref() != Some("f") {
                tracing::warn!(pipeline = %self.pipeline, table = %format!("{schema}.{table}"), "the table has no primary key: its changes are keyed by the replica identity, and PostgreSQL refuses updates and deletes on it without one (ALTER TABLE ... REPLICA IDENTITY FULL)");
            }
            primary_keys.insert((schema.clone(), table.clone()), key);
        }
        self.publication(client).await?;
        self.slot(client).await?;
        Ok(primary_keys)
    }

    async fn publication(&self, client: &mut ReplicationClient) -> Result<(), Ended> {
        let (name, owned) = self.config.publication_for(&self.pipeline);
        let exists = client
            .simple_query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {}",
                literal(&name)
            ))
            .await?;
        let tables: Vec<String> = self
            .config
            .tables
            .iter()
            .map(|(s, t)| format!("{}.{}", ident(s), ident(t)))
            .collect();
        if exists.is_empty() {
            if !owned {
                return Err(Ended(format!(
                    "publication {name} (source.publication) does not exist: create it (CREATE PUBLICATION {} FOR TABLE {}), or leave source.publication out and runnel creates its own",
                    ident(&name),
                    tables.join(", ")
                )));
            }
            let publish: Vec<&str> = self.config.operations.iter().map(|op| op.name()).collect();
            client
                .simple_query(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = '{}')",
                    ident(&name),
                    tables.join(", "),
                    publish.join(", ")
                ))
                .await
                .map_err(|e| Ended(format!("creating publication {name}: {e} (the database user needs CREATE on the database and ownership of the tables)")))?;
            tracing::info!(pipeline = %self.pipeline, publication = %name, "created the publication");
            return Ok(());
        }
        let published = client
            .simple_query(&format!(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {}",
                literal(&name)
            ))
            .await?;
        let published: Vec<(String, String)> = published
            .iter()
            .filter_map(|row| Some((text(row, 0)?, text(row, 1)?)))
            .collect();
        for (schema, table) in &self.config.tables {
            if published.iter().any(|(s, t)| s == schema && t == table) {
                continue;
            }
            let add = format!(
                "ALTER PUBLICATION {} ADD TABLE {}.{}",
                ident(&name),
                ident(schema),
                ident(table)
            );
            if !owned {
                return Err(Ended(format!(
                    "publication {name} does not include {schema}.{table}: {add}"
                )));
            }
            client.simple_query(&add).await?;
        }
        Ok(())
    }

    async fn slot(&self, client: &mut ReplicationClient) -> Result<(), Ended> {
        let slot = self.config.slot_for(&self.pipeline);
        let rows = client
            .simple_query(&format!(
                "SELECT plugin, wal_status, database FROM pg_replication_slots WHERE slot_name = {}",
                literal(&slot)
            ))
            .await?;
        match rows.first() {
            None => {
                client
                    .simple_query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT", ident(&slot)))
                    .await
                    .map_err(|e| Ended(format!("creating replication slot {slot}: {e} (the database user needs the REPLICATION attribute, and max_replication_slots a free slot)")))?;
                tracing::info!(pipeline = %self.pipeline, %slot, "created the replication slot; changes from now on are read");
                Ok(())
            }
            Some(row) => {
                if text(row, 0).as_deref() != Some("pgoutput") {
                    return Err(Ended(format!(
                        "replication slot {slot} uses plugin {}, not pgoutput: name another slot in source.slot",
                        text(row, 0).unwrap_or_default()
                    )));
                }
                if text(row, 2).as_deref() != Some(self.database.dbname.as_str()) {
                    return Err(Ended(format!(
                        "replication slot {slot} belongs to database {}, not {}: name another slot in source.slot",
                        text(row, 2).unwrap_or_default(),
                        self.database.dbname
                    )));
                }
                if text(row, 1).as_deref() == Some("lost") {
                    return Err(Ended(lost(&slot)));
                }
                Ok(())
            }
        }
    }

    async fn read(
        &mut self,
        client: &mut ReplicationClient,
        primary_keys: &HashMap<(String, String), Vec<String>>,
    ) -> Ended {
        let mut tables: HashMap<u32, change::Table> = HashMap::new();
        let mut transaction: Option<Transaction> = None;
        let lag = metrics::gauge!(crate::metrics::SOURCE_LAG, "pipeline" => self.pipeline.clone(), "slot" => self.config.slot_for(&self.pipeline));
        let mut server_end = 0u64;
        loop {
            let event = tokio::select! {
                changed = self.confirmed.changed() => {
                    if changed.is_err() {
                        return Ended("stopped".to_owned());
                    }
                    let confirmed = *self.confirmed.borrow_and_update();
                    client.update_applied_lsn(Lsn(confirmed));
                    lag.set(server_end.saturating_sub(confirmed) as f64);
                    continue;
                }
                event = client.recv() => event,
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => return Ended("the server ended the replication stream".to_owned()),
                Err(e) => {
                    return Ended(explain_start_error(
                        &e.to_string(),
                        &self.config.slot_for(&self.pipeline),
                    ));
                }
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    let seen = final_lsn.0 <= *self.confirmed.borrow();
                    transaction = Some(Transaction {
                        commit_lsn: final_lsn.0,
                        xid,
                        commit_ms: (commit_time_micros + PG_EPOCH_MICROS) / 1000,
                        index: 0,
                        seen,
                        rows: Vec::new(),
                    });
                }
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => {
                    let Some(tx) = transaction.as_mut() else {
                        if let Ok(Message::Relation(relation)) = pgoutput::decode(data) {
                            self.relation(&mut tables, relation, primary_keys);
                        }
                        continue;
                    };
                    if let Err(ended) = self
                        .change(tx, &mut tables, primary_keys, wal_start.0, data)
                        .await
                    {
                        return ended;
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    if let Some(tx) = transaction.take()
                        && !tx.rows.is_empty()
                        && !self.send(tx.rows).await
                    {
                        return Ended("stopped".to_owned());
                    }
                    server_end = server_end.max(end_lsn.0);
                    // Confirmable once every row handed out so far is done.
                    let mut progress = self
                        .confirm
                        .progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let at = progress.handed_out;
                    let entry = progress.boundaries.entry(at).or_default();
                    *entry = (*entry).max(end_lsn.0);
                    self.confirm.advance(&mut progress);
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    server_end = server_end.max(wal_end.0);
                    if transaction.is_none() {
                        let mut progress = self
                            .confirm
                            .progress
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if progress.committed >= progress.handed_out
                            && progress.boundaries.is_empty()
                        {
                            // Nothing pending: what the server has sent is handled.
                            progress.confirmed = progress.confirmed.max(wal_end.0);
                            self.confirm.advance(&mut progress);
                        }
                    }
                    lag.set(server_end.saturating_sub(*self.confirmed.borrow()) as f64);
                }
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
    }

    fn relation(
        &self,
        tables: &mut HashMap<u32, change::Table>,
        relation: pgoutput::Relation,
        primary_keys: &HashMap<(String, String), Vec<String>>,
    ) {
        let key = primary_keys
            .get(&(relation.schema.clone(), relation.table.clone()))
            .cloned()
            .unwrap_or_default();
        tables.insert(relation.oid, change::Table::new(relation, &key));
    }

    /// One message inside a transaction: rows become deliveries.
    async fn change(
        &self,
        tx: &mut Transaction,
        tables: &mut HashMap<u32, change::Table>,
        primary_keys: &HashMap<(String, String), Vec<String>>,
        lsn: u64,
        data: Bytes,
    ) -> Result<(), Ended> {
        let message = pgoutput::decode(data);
        let changes: Vec<Result<(&change::Table, Change), String>> = match &message {
            Ok(Message::Relation(relation)) => {
                self.relation(tables, relation.clone(), primary_keys);
                return Ok(());
            }
            Ok(Message::Other(_)) => return Ok(()),
            Ok(Message::Insert { relation, new }) => {
                vec![with_table(tables, *relation, |t| Change::insert(t, new))]
            }
            Ok(Message::Update { relation, old, new }) => {
                vec![with_table(tables, *relation, |t| {
                    Change::update(t, old.as_ref(), new)
                })]
            }
            Ok(Message::Delete { relation, old }) => {
                vec![with_table(tables, *relation, |t| Change::delete(t, old))]
            }
            Ok(Message::Truncate { relations }) => relations
                .iter()
                .map(|r| with_table(tables, *r, |_| Change::truncate()))
                .collect(),
            Err(reason) => vec![Err(format!("undecodable pgoutput message: {reason}"))],
        };
        for change in changes {
            let index = tx.index;
            tx.index += 1;
            if tx.seen {
                continue;
            }
            if let Ok((_, change)) = &change
                && !self.config.operations.contains(&change.op)
            {
                continue;
            }
            let key = format!("database/{}/{}/{index}", self.pipeline, Lsn(tx.commit_lsn));
            let offset = {
                let mut progress = self
                    .confirm
                    .progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                progress.handed_out += 1;
                progress.handed_out - 1
            };
            let position = Position {
                partition: 0,
                offset,
            };
            let delivery = match change {
                Ok((table, change)) => {
                    let event = self.event(table, &change, tx, lsn, key.clone());
                    Delivery {
                        position,
                        idempotency_key: key,
                        ordering_key: Some(format!(
                            "{}/{}",
                            table.name(),
                            event.subject.clone().unwrap_or_default()
                        )),
                        pending: Pending::Event(Box::new(event)),
                    }
                }
                Err(reason) => Delivery {
                    position,
                    idempotency_key: key,
                    ordering_key: None,
                    pending: Pending::Undecodable(reason),
                },
            };
            tx.rows.push(delivery);
            if tx.rows.len() >= BATCH {
                let rows = std::mem::take(&mut tx.rows);
                if !self.send(rows).await {
                    return Err(Ended("stopped".to_owned()));
                }
            }
        }
        Ok(())
    }

    fn event(
        &self,
        table: &change::Table,
        change: &Change,
        tx: &Transaction,
        lsn: u64,
        key: String,
    ) -> Event {
        let relation = &table.relation;
        let lsn = if lsn == 0 { tx.commit_lsn } else { lsn };
        let payload = change::payload(
            change,
            &change::Source {
                name: &self.config.database,
                db: &self.database.dbname,
                schema: &relation.schema,
                table: &relation.table,
                tx_id: tx.xid,
                lsn,
                commit_lsn: tx.commit_lsn,
                commit_ms: tx.commit_ms,
            },
        );
        let subject = serde_json::Value::Object(change.key.clone()).to_string();
        let mut attributes = change::Attributes {
            database: &self.config.database,
            schema: &relation.schema,
            table: &relation.table,
            op: change.op.code(),
            lsn: Some(lsn),
            tx_id: Some(tx.xid.into()),
            unavailable: &change.unavailable,
        }
        .into_map();
        attributes.insert("commit_lsn".to_owned(), change::lsn_text(tx.commit_lsn));
        Event {
            id: key.clone(),
            source: format!("database://{}/{}", self.config.database, table.name()),
            event_type: DATABASE_CHANGE.to_owned(),
            subject: (change.op != Op::Truncate).then_some(subject),
            content_type: Some("application/json".to_owned()),
            attributes,
            data: Bytes::from(payload.to_string()),
            idempotency_key: key,
        }
    }

    async fn send(&self, rows: Vec<Delivery>) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            sent = self.rows.send(Ok(rows)) => sent.is_ok(),
        }
    }
}

fn with_table(
    tables: &HashMap<u32, change::Table>,
    relation: u32,
    shape: impl FnOnce(&change::Table) -> Change,
) -> Result<(&change::Table, Change), String> {
    match tables.get(&relation) {
        Some(table) => Ok((table, shape(table))),
        None => Err(format!(
            "a change to relation {relation}, which the stream did not describe first"
        )),
    }
}

/// The first column of the first row, as text.
fn scalar(rows: Vec<pgwire_replication::QueryRow>) -> Option<String> {
    rows.first().and_then(|row| text(row, 0))
}

fn text(row: &pgwire_replication::QueryRow, column: usize) -> Option<String> {
    row.get(column)?
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A string literal; the names runnel sends are checked when read, and
/// quoting keeps it safe regardless.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn lost(slot: &str) -> String {
    format!(
        "replication slot {slot} was invalidated by the server (its WAL passed max_slot_wal_keep_size while runnel was behind or stopped): \
         the changes since are gone from the log and runnel will not guess them. To go on from now, drop the slot \
         (SELECT pg_drop_replication_slot('{slot}')); runnel creates a new one and reads changes from then on. \
         Raise max_slot_wal_keep_size to keep this from happening again."
    )
}

/// Names the slot's loss when that is why the stream would not start.
fn explain_start_error(error: &str, slot: &str) -> String {
    if error.contains("invalidated") || error.contains("can no longer get changes") {
        lost(slot)
    } else {
        error.to_owned()
    }
}
