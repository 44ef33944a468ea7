//! A durable, partitioned record log in SQLite, with consumer-group offsets.
//!
//! Two embedded backends are built on it: the embedded broker (one stream
//! per topic) and local storage's change feed (one stream per bucket, the
//! way S3 stores push object-created notifications to a queue). It keeps the
//! semantics of a Kafka topic so that pipelines behave the same on both:
//! records are ordered per partition, equal keys share a partition, each
//! consumer group commits the next offset it wants per partition, and a new
//! group starts at the beginning.
//!
//! Appends may carry a producer id: appending the same id twice returns the
//! first record's position instead of writing a duplicate (what Kafka's
//! idempotent producer gives), so a redelivered event that republishes its
//! outputs does not fan out twice.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use crate::event::{Message, Position};
use crate::sqlite::{self, Durability, GroupCommit, GroupCommitError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal_streams (
    stream TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_records (
    stream TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    producer_id TEXT,
    key TEXT,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    appended_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, partition, offset)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS journal_producer_ids
    ON journal_records (stream, producer_id) WHERE producer_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS journal_offsets (
    stream TEXT NOT NULL,
    consumer TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (stream, consumer, partition)
) WITHOUT ROWID;
";

/// Errors of the journal are I/O errors of its database: worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    path: String,
    #[source]
    source: GroupCommitError,
}

/// A handle to one journal database; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: String,
    db: GroupCommit,
    /// Per stream, woken on every append to it, so that consumers wait
    /// instead of polling, and an append wakes only its own stream's (a
    /// thousand pipelines on as many buckets read once per upload, not a
    /// thousand times: benchmark #10).
    appended: Mutex<HashMap<String, Arc<Notify>>>,
    /// Whether the task that notices other processes' appends runs.
    watching: std::sync::atomic::AtomicBool,
    default_partitions: u32,
}

/// How often the journal looks for appends made by another process (a
/// `runnel dlq replay` beside `runnel up`): one `PRAGMA data_version` per
/// journal, rather than a read per consumer.
const OTHER_PROCESSES: Duration = Duration::from_millis(500);

/// A record read back from the journal.
#[derive(Clone, Debug)]
pub struct Record {
    pub position: Position,
    pub message: Message,
}

impl Journal {
    /// Opens the journal at `path`. Streams created later get
    /// `default_partitions` partitions.
    pub fn open(
        path: &Path,
        durability: Durability,
        default_partitions: u32,
    ) -> Result<Self, JournalError> {
        let display = path.display().to_string();
        let wrap = |source| JournalError {
            path: display.clone(),
            source,
        };
        let conn = sqlite::open(path, durability).map_err(|e| wrap(e.into()))?;
        conn.execute_batch(SCHEMA).map_err(|e| wrap(e.into()))?;
        let db = GroupCommit::start("runnel-journal", conn)
            .map_err(|e| wrap(GroupCommitError::Thread(e)))?;
        let journal = Self {
            inner: Arc::new(Inner {
                path: display,
                db,
                appended: Mutex::default(),
                watching: Default::default(),
                default_partitions: default_partitions.max(1),
            }),
        };
        journal.watch();
        Ok(journal)
    }

    fn error(&self, source: GroupCommitError) -> JournalError {
        JournalError {
            path: self.inner.path.clone(),
            source,
        }
    }

    /// Runs `work` atomically on the journal's database thread and returns
    /// once it is committed (together with whatever else was waiting: see
    /// [`GroupCommit`]). Other embedded tables (object metadata) use this to
    /// commit together with an append.
    pub async fn transaction<R, F>(&self, work: F) -> Result<R, JournalError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &Journal) -> rusqlite::Result<R> + Send + 'static,
    {
        let journal = self.clone();
        self.inner
            .db
            .run(move |conn| work(conn, &journal))
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs a schema statement batch (for tables that live beside the log).
    pub async fn execute_batch(&self, sql: &'static str) -> Result<(), JournalError> {
        self.transaction(move |tx, _| tx.execute_batch(sql)).await
    }

    /// Appends one record and wakes consumers once it is committed.
    pub async fn append(
        &self,
        stream: &str,
        producer_id: Option<String>,
        message: Message,
    ) -> Result<Position, JournalError> {
        let name = stream.to_owned();
        let position = self
            .transaction(move |tx, journal| {
                journal.append_in(tx, &name, producer_id.as_deref(), &message)
            })
            .await?;
        self.notify_appended(stream);
        Ok(position)
    }

    /// Wakes `stream`'s consumers; call after committing a transaction that
    /// appended to it.
    pub fn notify_appended(&self, stream: &str) {
        let waiting = self.lock_appended().get(stream).cloned();
        if let Some(notify) = waiting {
            notify.notify_waiters();
        }
    }

    /// Starts the watch for other processes' appends, once, on the
    /// current runtime: at open when there is one, so that its first look
    /// comes before any consumer reads.
    fn watch(&self) {
        if tokio::runtime::Handle::try_current().is_ok()
            && !(self.inner.watching).swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(watch_other_processes(Arc::downgrade(&self.inner)));
        }
    }

    fn lock_appended(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // Nothing panics while holding it.
        (self.inner.appended.lock()).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What wakes `stream`'s consumers; the first one starts the watch
    /// for other processes' appends.
    fn appended(&self, stream: &str) -> Arc<Notify> {
        self.watch();
        let mut streams = self.lock_appended();
        streams.entry(stream.to_owned()).or_default().clone()
    }

    /// Appends inside an open transaction (see [`Journal::transaction`]).
    pub fn append_in(
        &self,
        tx: &Connection,
        stream: &str,
        producer_id: Option<&str>,
        message: &Message,
    ) -> rusqlite::Result<Position> {
        if let Some(id) = producer_id {
            let existing = tx
                .prepare_cached(
                    "SELECT partition, offset FROM journal_records
                     WHERE stream = ?1 AND producer_id = ?2",
                )?
                .query_row(params![stream, id], |row| {
                    Ok(position(row.get(0)?, row.get(1)?))
                })
                .optional()?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
        }
        let partitions = self.partitions_in(tx, stream)?;
        let partition = partition_for(message.key.as_deref().or(producer_id), partitions);
        let next: i64 = tx
            .prepare_cached(
                "SELECT COALESCE(MAX(offset) + 1, 0) FROM journal_records
             WHERE stream = ?1 AND partition = ?2",
            )?
            .query_row(params![stream, partition], |row| row.get(0))?;
        let headers = serde_json::to_string(&message.headers).expect("headers serialize");
        tx.prepare_cached(
            "INSERT INTO journal_records
             (stream, partition, offset, producer_id, key, headers, payload, appended_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            stream,
            partition,
            next,
            producer_id,
            message.key,
            headers,
            &message.payload[..],
            now_ms()
        ])?;
        Ok(position(partition, next))
    }

    fn partitions_in(&self, tx: &Connection, stream: &str) -> rusqlite::Result<u32> {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO journal_streams (stream, partitions) VALUES (?1, ?2)",
        )?
        .execute(params![stream, self.inner.default_partitions])?;
        tx.prepare_cached("SELECT partitions FROM journal_streams WHERE stream = ?1")?
            .query_row(params![stream], |row| row.get(0))
    }

    /// Opens a consumer on `stream` for group `consumer`, starting at the
    /// group's committed offsets (or the beginning for a new group).
    pub async fn subscribe(&self, stream: &str, consumer: &str) -> Result<Cursor, JournalError> {
        let (s, c) = (stream.to_owned(), consumer.to_owned());
        let (partitions, committed) = self
            .transaction(move |tx, journal| {
                let partitions = journal.partitions_in(tx, &s)?;
                let mut stmt = tx.prepare(
                    "SELECT partition, next_offset FROM journal_offsets
                     WHERE stream = ?1 AND consumer = ?2",
                )?;
                let committed = stmt
                    .query_map(params![s, c], |row| {
                        Ok((row.get::<_, u32>(0)?, row.get::<_, i64>(1)? as u64))
                    })?
                    .collect::<rusqlite::Result<BTreeMap<u32, u64>>>()?;
                Ok((partitions, committed))
            })
            .await?;
        let next = (0..partitions)
            .map(|p| (p, committed.get(&p).copied().unwrap_or(0)))
            .collect();
        Ok(Cursor {
            journal: self.clone(),
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            next,
        })
    }

    /// Reads records at or after `from` in every partition, without a
    /// consumer group (inspection only).
    pub async fn peek(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let mut cursor = self.subscribe_from(stream, from).await?;
        cursor.read(limit).await
    }

    async fn subscribe_from(&self, stream: &str, from: u64) -> Result<Cursor, JournalError> {
        let s = stream.to_owned();
        let partitions = self
            .transaction(move |tx, journal| journal.partitions_in(tx, &s))
            .await?;
        Ok(Cursor {
            journal: self.clone(),
            stream: stream.to_owned(),
            consumer: String::new(),
            next: (0..partitions).map(|p| (p, from)).collect(),
        })
    }

    /// Deletes records appended before `cutoff`, whatever their consumers
    /// did with them (retention, as on a Kafka topic).
    pub async fn prune(&self, cutoff: SystemTime) -> Result<usize, JournalError> {
        let cutoff_ms = cutoff
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        self.transaction(move |tx, _| {
            tx.prepare_cached("DELETE FROM journal_records WHERE appended_ms < ?1")?
                .execute(params![cutoff_ms])
        })
        .await
    }
}

/// Wakes every consumer when another process committed to the journal's
/// database (its `data_version` moved), until the journal is dropped.
async fn watch_other_processes(journal: Weak<Inner>) {
    let mut seen = None;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(OTHER_PROCESSES).await;
        }
        let Some(inner) = journal.upgrade() else {
            return;
        };
        let version = (inner.db)
            .read(|conn| conn.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0)))
            .await;
        let Ok(version) = version else { continue };
        if seen.is_some_and(|seen| seen != version) {
            let streams: Vec<_> = (inner.appended.lock())
                .map(|streams| streams.values().cloned().collect())
                .unwrap_or_default();
            for notify in streams {
                notify.notify_waiters();
            }
        }
        seen = Some(version);
    }
}

/// One consumer group's reading position in one stream.
pub struct Cursor {
    journal: Journal,
    stream: String,
    consumer: String,
    /// Next offset to read per partition (ahead of what is committed).
    next: BTreeMap<u32, u64>,
}

impl Cursor {
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Waits until records are available and returns up to `max` of them,
    /// in offset order within each partition.
    pub async fn poll(&mut self, max: usize) -> Result<Vec<Record>, JournalError> {
        let waker = self.journal.appended(&self.stream);
        loop {
            // Register interest before reading so an append that commits
            // between the read and the wait still wakes us.
            let appended = waker.notified();
            tokio::pin!(appended);
            // `notify_waiters` wakes only registered waiters: register now.
            appended.as_mut().enable();
            let records = self.read(max).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            appended.await;
        }
    }

    async fn read(&mut self, max: usize) -> Result<Vec<Record>, JournalError> {
        let stream = self.stream.clone();
        let next = self.next.clone();
        let per_partition = (max / next.len().max(1)).max(1);
        let records = self
            .journal
            .transaction(move |tx, _| {
                let mut stmt = tx.prepare_cached(
                    "SELECT offset, key, headers, payload FROM journal_records
                     WHERE stream = ?1 AND partition = ?2 AND offset >= ?3
                     ORDER BY offset LIMIT ?4",
                )?;
                let mut out = Vec::new();
                for (&partition, &from) in &next {
                    let rows = stmt.query_map(
                        params![stream, partition, from as i64, per_partition as i64],
                        |row| {
                            let offset: i64 = row.get(0)?;
                            let headers: String = row.get(2)?;
                            let payload: Vec<u8> = row.get(3)?;
                            Ok(Record {
                                position: position(partition, offset),
                                message: Message {
                                    key: row.get(1)?,
                                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                                    payload: Bytes::from(payload),
                                },
                            })
                        },
                    )?;
                    for row in rows {
                        out.push(row?);
                    }
                }
                Ok(out)
            })
            .await?;
        for record in &records {
            let Position { partition, offset } = record.position;
            self.next.insert(partition, offset + 1);
        }
        Ok(records)
    }

    /// Records that the group is done with everything before `next_offset`
    /// in `partition`.
    pub async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), JournalError> {
        self.committer().commit(partition, next_offset).await
    }

    /// A handle that commits for this cursor's group while the cursor polls.
    pub fn committer(&self) -> Committer {
        Committer {
            journal: self.journal.clone(),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
        }
    }
}

/// Commits offsets of one consumer group in one stream.
#[derive(Clone)]
pub struct Committer {
    journal: Journal,
    stream: String,
    consumer: String,
}

impl Committer {
    /// Commits never move backwards, whatever order they arrive in.
    pub async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), JournalError> {
        let (s, c) = (self.stream.clone(), self.consumer.clone());
        self.journal
            .transaction(move |tx, _| {
                tx.prepare_cached(
                    "INSERT INTO journal_offsets (stream, consumer, partition, next_offset)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (stream, consumer, partition)
                     DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                )?
                .execute(params![s, c, partition, next_offset as i64])
                .map(drop)
            })
            .await
    }
}

fn position(partition: u32, offset: i64) -> Position {
    Position {
        partition,
        offset: offset as u64,
    }
}

/// Equal keys land in the same partition, so ordering per key holds.
/// Unkeyed records spread by producer id, or go to partition 0.
fn partition_for(key: Option<&str>, partitions: u32) -> u32 {
    match key {
        Some(key) => {
            // FNV-1a: stable across processes and Rust versions, unlike
            // `DefaultHasher`, which partitioning must be.
            let mut hasher = Fnv1a::default();
            key.hash(&mut hasher);
            (hasher.finish() % partitions as u64) as u32
        }
        None => 0,
    }
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= *byte as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: &str, payload: &'static str) -> Message {
        Message {
            key: Some(key.into()),
            headers: vec![("h".into(), "v".into())],
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    #[tokio::test]
    async fn committed_offsets_survive_reopen_and_producer_ids_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let journal = Journal::open(&path, Durability::Normal, 4).unwrap();
            let a = journal
                .append("t", Some("p1".into()), message("k", "a"))
                .await
                .unwrap();
            let again = journal
                .append("t", Some("p1".into()), message("k", "a"))
                .await
                .unwrap();
            assert_eq!(a, again, "same producer id must not append twice");
            journal.append("t", None, message("k", "b")).await.unwrap();
            let mut cursor = journal.subscribe("t", "g").await.unwrap();
            let records = cursor.poll(10).await.unwrap();
            let payloads: Vec<_> = records.iter().map(|r| r.message.payload.clone()).collect();
            assert_eq!(payloads, vec![Bytes::from("a"), Bytes::from("b")]);
            assert_eq!(records[0].position.partition, records[1].position.partition);
            assert_eq!(
                records[0].message.headers,
                vec![("h".to_owned(), "v".to_owned())]
            );
            cursor.commit(a.partition, a.offset + 1).await.unwrap();
        }
        let journal = Journal::open(&path, Durability::Normal, 4).unwrap();
        let mut cursor = journal.subscribe("t", "g").await.unwrap();
        let records = cursor.poll(10).await.unwrap();
        assert_eq!(
            records.len(),
            1,
            "only the uncommitted record is redelivered"
        );
        assert_eq!(records[0].message.payload, Bytes::from("b"));
    }

    /// A consumer waiting on one stream wakes for its own stream's append,
    /// not for another's; and for an append by another process (another
    /// handle on the same file) within the watch's period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_wakes_for_its_stream_and_for_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(&path, Durability::Normal, 1).unwrap();
        let mut cursor = journal.subscribe("mine", "g").await.unwrap();
        let waiting = tokio::spawn(async move {
            let first = cursor.poll(10).await.unwrap();
            let second = cursor.poll(10).await.unwrap();
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        journal
            .append("other", None, message("k", "x"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "another stream's append is not ours"
        );
        journal
            .append("mine", None, message("k", "a"))
            .await
            .unwrap();
        let other_process = Journal::open(&path, Durability::Normal, 1).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        other_process
            .append("mine", None, message("k", "b"))
            .await
            .unwrap();
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken within the watch's period")
            .unwrap();
        assert_eq!(first[0].message.payload, Bytes::from("a"));
        assert_eq!(second[0].message.payload, Bytes::from("b"));
        assert!(
            started.elapsed() < OTHER_PROCESSES * 3,
            "{:?}",
            started.elapsed()
        );
    }
}
