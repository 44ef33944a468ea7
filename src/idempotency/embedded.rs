//! The embedded idempotency store: a SQLite table that survives `kill -9`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Claim, Completion, IdempotencyError, IdempotencyStore};
use crate::sqlite::{self, Durability, GroupCommit, GroupCommitError};

pub struct EmbeddedIdempotency {
    db: GroupCommit,
    ttl: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl EmbeddedIdempotency {
    pub fn open(
        path: &Path,
        durability: Durability,
        ttl: Duration,
    ) -> Result<Self, IdempotencyError> {
        let wrap = |e: rusqlite::Error| IdempotencyError(format!("{}: {e}", path.display()));
        let conn = sqlite::open(path, durability).map_err(wrap)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS completions (
                pipeline TEXT NOT NULL,
                key TEXT NOT NULL,
                how TEXT NOT NULL,
                completed_ms INTEGER NOT NULL,
                PRIMARY KEY (pipeline, key)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS replies (
                pipeline TEXT NOT NULL,
                key TEXT NOT NULL,
                reply BLOB NOT NULL,
                completed_ms INTEGER NOT NULL,
                PRIMARY KEY (pipeline, key)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS marks (
                pipeline TEXT NOT NULL,
                name TEXT NOT NULL,
                value INTEGER NOT NULL,
                PRIMARY KEY (pipeline, name)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS deliveries (
                pipeline TEXT NOT NULL,
                key TEXT NOT NULL,
                output TEXT NOT NULL,
                delivered_ms INTEGER NOT NULL,
                PRIMARY KEY (pipeline, key, output)
            ) WITHOUT ROWID;",
        )
        .map_err(wrap)?;
        // Forget what is past its TTL at start-up; lookups ignore it anyway.
        let cutoff = now_ms() - ttl.as_millis() as i64;
        conn.execute(
            "DELETE FROM completions WHERE completed_ms < ?1",
            params![cutoff],
        )
        .map_err(wrap)?;
        conn.execute(
            "DELETE FROM deliveries WHERE delivered_ms < ?1",
            params![cutoff],
        )
        .map_err(wrap)?;
        conn.execute(
            "DELETE FROM replies WHERE completed_ms < ?1",
            params![cutoff],
        )
        .map_err(wrap)?;
        // Claims are read on a connection of their own, on the caller's
        // thread: an event's claim neither waits for other events'
        // completions in their fsync nor hops to the database thread and
        // back (benchmark #3: 1.7–2.0 ms a claim that way, 20 µs this way).
        let reader = sqlite::open(path, durability).map_err(wrap)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(wrap)?;
        let db = GroupCommit::start_with_reader("runnel-idempotency", conn, reader)
            .map_err(|e| IdempotencyError(format!("{}: {e}", path.display())))?;
        Ok(Self { db, ttl })
    }

    /// Completions older than this (ms since the epoch) are past the TTL.
    fn cutoff(&self) -> i64 {
        now_ms() - self.ttl.as_millis() as i64
    }
}

/// A database-thread failure as the store's error.
fn failed(error: GroupCommitError) -> IdempotencyError {
    IdempotencyError(error.to_string())
}

const COMPLETION: &str =
    "SELECT how FROM completions WHERE pipeline = ?1 AND key = ?2 AND completed_ms >= ?3";
const DELIVERED: &str = "SELECT output FROM deliveries WHERE pipeline = ?1 AND key = ?2";

/// How the event ended, if it did after `cutoff` (ms; older is past the TTL).
fn completion(
    conn: &rusqlite::Connection,
    pipeline: &str,
    key: &str,
    cutoff: i64,
) -> rusqlite::Result<Option<Completion>> {
    completion_with(
        &mut *conn.prepare_cached(COMPLETION)?,
        pipeline,
        key,
        cutoff,
    )
}

/// [`completion`] with its statement prepared.
fn completion_with(
    statement: &mut rusqlite::Statement<'_>,
    pipeline: &str,
    key: &str,
    cutoff: i64,
) -> rusqlite::Result<Option<Completion>> {
    let how: Option<String> = statement
        .query_row(params![pipeline, key, cutoff], |row| row.get(0))
        .optional()?;
    Ok(how.map(|h| Completion::parse(&h)))
}

fn delivered(
    conn: &rusqlite::Connection,
    pipeline: &str,
    key: &str,
) -> rusqlite::Result<HashSet<String>> {
    delivered_with(&mut *conn.prepare_cached(DELIVERED)?, pipeline, key)
}

/// A claim's lookups, with their statements prepared: how the event
/// ended, or else which of its outputs were delivered.
fn claim_with(
    completions: &mut rusqlite::Statement<'_>,
    outputs: &mut rusqlite::Statement<'_>,
    pipeline: &str,
    key: &str,
    cutoff: i64,
) -> rusqlite::Result<(Claim, HashSet<String>)> {
    match completion_with(completions, pipeline, key, cutoff)? {
        Some(how) => Ok((Claim::Completed(how), HashSet::new())),
        None => Ok((Claim::Acquired, delivered_with(outputs, pipeline, key)?)),
    }
}

/// [`delivered`] with its statement prepared.
fn delivered_with(
    statement: &mut rusqlite::Statement<'_>,
    pipeline: &str,
    key: &str,
) -> rusqlite::Result<HashSet<String>> {
    statement
        .query_map(params![pipeline, key], |row| row.get(0))?
        .collect()
}

#[async_trait]
impl IdempotencyStore for EmbeddedIdempotency {
    async fn completion(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<Option<Completion>, IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        let cutoff = self.cutoff();
        (self.db)
            .read(move |conn| completion(conn, &p, &k, cutoff))
            .await
            .map_err(failed)
    }

    /// Both lookups in one read, on the reader connection.
    async fn claim_with_delivered(
        &self,
        pipeline: &str,
        key: &str,
        _lease: Duration,
    ) -> Result<(Claim, HashSet<String>), IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        let cutoff = self.cutoff();
        (self.db)
            .read(move |conn| {
                let mut completions = conn.prepare_cached(COMPLETION)?;
                let mut outputs = conn.prepare_cached(DELIVERED)?;
                claim_with(&mut completions, &mut outputs, &p, &k, cutoff)
            })
            .await
            .map_err(failed)
    }

    /// Every lookup in one read transaction (one snapshot, its locks
    /// taken once, each statement looked up once: benchmark #11).
    async fn claim_many(
        &self,
        pipeline: &str,
        keys: &[&str],
        _lease: Duration,
    ) -> Result<Vec<(Claim, HashSet<String>)>, IdempotencyError> {
        let p = pipeline.to_owned();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let cutoff = self.cutoff();
        (self.db)
            .read(move |conn| {
                let read = conn.unchecked_transaction()?;
                let mut completions = conn.prepare_cached(COMPLETION)?;
                let mut outputs = conn.prepare_cached(DELIVERED)?;
                let claims = (keys.iter())
                    .map(|k| claim_with(&mut completions, &mut outputs, &p, k, cutoff))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                drop((completions, outputs));
                read.finish()?;
                Ok(claims)
            })
            .await
            .map_err(failed)
    }

    /// One job for the writer: the completions commit together.
    async fn complete_many(
        &self,
        pipeline: &str,
        completions: &[(&str, Completion)],
    ) -> Result<(), IdempotencyError> {
        let p = pipeline.to_owned();
        let completions: Vec<(String, Completion)> = (completions.iter())
            .map(|(k, how)| ((*k).to_owned(), *how))
            .collect();
        (self.db)
            .run(move |conn| {
                let now = now_ms();
                let mut complete = conn.prepare_cached(
                    "INSERT OR REPLACE INTO completions (pipeline, key, how, completed_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (k, how) in &completions {
                    complete.execute(params![p, k, how.as_str(), now])?;
                }
                // Outputs delivered are recorded only for events with more
                // than one: most pipelines' have none to forget, which one
                // lookup tells, inside this transaction.
                let any: bool = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM deliveries WHERE pipeline = ?1)")?
                    .query_row(params![p], |row| row.get(0))?;
                if any {
                    let mut forget = conn.prepare_cached(
                        "DELETE FROM deliveries WHERE pipeline = ?1 AND key = ?2",
                    )?;
                    for (k, _) in &completions {
                        forget.execute(params![p, k])?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(failed)
    }

    async fn delivered(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<HashSet<String>, IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        (self.db)
            .read(move |conn| delivered(conn, &p, &k))
            .await
            .map_err(failed)
    }

    async fn record_delivery(
        &self,
        pipeline: &str,
        key: &str,
        output: &str,
    ) -> Result<(), IdempotencyError> {
        let (p, k, o) = (pipeline.to_owned(), key.to_owned(), output.to_owned());
        // Committed with whatever other events' records are waiting
        // (group commit: one fsync for many).
        (self.db)
            .run(move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO deliveries (pipeline, key, output, delivered_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![p, k, o, now_ms()])
                .map(drop)
            })
            .await
            .map_err(failed)
    }

    async fn reply(&self, pipeline: &str, key: &str) -> Result<Option<Vec<u8>>, IdempotencyError> {
        self.stored_reply(pipeline, key).await
    }

    async fn mark(&self, pipeline: &str, name: &str) -> Result<Option<u64>, IdempotencyError> {
        let (p, n) = (pipeline.to_owned(), name.to_owned());
        (self.db)
            .read(move |conn| {
                conn.prepare_cached("SELECT value FROM marks WHERE pipeline = ?1 AND name = ?2")?
                    .query_row(params![p, n], |row| row.get::<_, i64>(0))
                    .optional()
            })
            .await
            .map(|value| value.map(|v| v as u64))
            .map_err(failed)
    }

    async fn advance_mark(
        &self,
        pipeline: &str,
        name: &str,
        to: u64,
    ) -> Result<(), IdempotencyError> {
        let (p, n) = (pipeline.to_owned(), name.to_owned());
        let to = i64::try_from(to).unwrap_or(i64::MAX);
        (self.db)
            .run(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO marks (pipeline, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (pipeline, name) DO UPDATE SET value = max(value, excluded.value)",
                )?
                .execute(params![p, n, to])
                .map(drop)
            })
            .await
            .map_err(failed)
    }

    async fn complete_with_reply(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
        reply: Option<Vec<u8>>,
    ) -> Result<(), IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        // All or nothing: `run` holds its work in a savepoint.
        (self.db)
            .run(move |conn| {
                let now = now_ms();
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO completions (pipeline, key, how, completed_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![p, k, how.as_str(), now])?;
                if let Some(reply) = &reply {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO replies (pipeline, key, reply, completed_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![p, k, reply, now])?;
                }
                conn.prepare_cached("DELETE FROM deliveries WHERE pipeline = ?1 AND key = ?2")?
                    .execute(params![p, k])
                    .map(drop)
            })
            .await
            .map_err(failed)
    }
}

impl EmbeddedIdempotency {
    async fn stored_reply(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        let cutoff = self.cutoff();
        (self.db)
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT reply FROM replies
                     WHERE pipeline = ?1 AND key = ?2 AND completed_ms >= ?3",
                )?
                .query_row(params![p, k, cutoff], |row| row.get(0))
                .optional()
            })
            .await
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in `dir`, keeping completions for a minute.
    fn open(dir: &tempfile::TempDir) -> EmbeddedIdempotency {
        EmbeddedIdempotency::open(
            &dir.path().join("i.db"),
            Durability::Normal,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    /// A reply kept with a completion is read back; one without has none.
    #[tokio::test]
    async fn a_reply_is_kept_with_its_completion() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .complete_with_reply("p", "k", Completion::Done, Some(b"answer".to_vec()))
            .await
            .unwrap();
        store
            .complete("p", "plain", Completion::Done)
            .await
            .unwrap();
        assert_eq!(
            store.reply("p", "k").await.unwrap().as_deref(),
            Some(&b"answer"[..])
        );
        assert_eq!(store.reply("p", "plain").await.unwrap(), None);
        assert_eq!(store.reply("other", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn completion_survives_reopen_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        let store =
            EmbeddedIdempotency::open(&path, Durability::Normal, Duration::from_secs(60)).unwrap();
        assert_eq!(store.completion("p", "k").await.unwrap(), None);
        store.complete("p", "k", Completion::Done).await.unwrap();
        drop(store);
        let store =
            EmbeddedIdempotency::open(&path, Durability::Normal, Duration::from_secs(60)).unwrap();
        assert_eq!(
            store.completion("p", "k").await.unwrap(),
            Some(Completion::Done)
        );
        assert_eq!(store.completion("other", "k").await.unwrap(), None);
        drop(store);
        let expired = EmbeddedIdempotency::open(&path, Durability::Normal, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expired.completion("p", "k").await.unwrap(), None);
    }

    /// The first attempt's one lookup: a new event is ours with nothing
    /// delivered, a half-written one ours with what was, a finished one done.
    #[tokio::test]
    async fn claim_reads_delivered_outputs_in_the_same_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let lease = Duration::from_secs(30);
        assert_eq!(
            store.claim_with_delivered("p", "k", lease).await.unwrap(),
            (Claim::Acquired, HashSet::new())
        );
        store.record_delivery("p", "k", "k#out/0").await.unwrap();
        assert_eq!(
            store.claim_with_delivered("p", "k", lease).await.unwrap(),
            (Claim::Acquired, HashSet::from(["k#out/0".to_owned()]))
        );
        store
            .complete("p", "k", Completion::DeadLettered)
            .await
            .unwrap();
        assert_eq!(
            store.claim_with_delivered("p", "k", lease).await.unwrap(),
            (Claim::Completed(Completion::DeadLettered), HashSet::new())
        );
    }

    #[tokio::test]
    async fn deliveries_survive_reopen_until_completion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        let open = || EmbeddedIdempotency::open(&path, Durability::Normal, Duration::from_secs(60));
        let store = open().unwrap();
        store.record_delivery("p", "k", "k#out/0").await.unwrap();
        store.record_delivery("p", "k", "k#out/1").await.unwrap();
        store
            .record_delivery("p", "other", "other#out/0")
            .await
            .unwrap();
        drop(store);
        let store = open().unwrap();
        let delivered = store.delivered("p", "k").await.unwrap();
        assert_eq!(
            delivered,
            HashSet::from(["k#out/0".to_owned(), "k#out/1".to_owned()])
        );
        store.complete("p", "k", Completion::Done).await.unwrap();
        assert!(store.delivered("p", "k").await.unwrap().is_empty());
        assert_eq!(store.delivered("p", "other").await.unwrap().len(), 1);
    }

    /// A mark moves only forward, is per pipeline, and outlives the TTL
    /// and a reopen (a schedule's position after a long stop).
    #[tokio::test]
    async fn a_mark_only_moves_forward_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        let store =
            EmbeddedIdempotency::open(&path, Durability::Normal, Duration::from_millis(1)).unwrap();
        assert_eq!(store.mark("p", "m").await.unwrap(), None);
        store.advance_mark("p", "m", 20).await.unwrap();
        store.advance_mark("p", "m", 10).await.unwrap();
        assert_eq!(store.mark("p", "m").await.unwrap(), Some(20));
        assert_eq!(store.mark("other", "m").await.unwrap(), None);
        drop(store);
        std::thread::sleep(Duration::from_millis(5));
        let store =
            EmbeddedIdempotency::open(&path, Durability::Normal, Duration::from_millis(1)).unwrap();
        assert_eq!(store.mark("p", "m").await.unwrap(), Some(20));
        store.advance_mark("p", "m", 30).await.unwrap();
        assert_eq!(store.mark("p", "m").await.unwrap(), Some(30));
    }

    /// A batch's claims read in one go say what one claim each would; its
    /// completions recorded together are each recorded, and forget the
    /// event's delivered outputs.
    #[tokio::test]
    async fn a_batch_is_claimed_and_completed_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let lease = Duration::from_secs(30);
        store
            .complete("p", "done", Completion::DeadLettered)
            .await
            .unwrap();
        store
            .record_delivery("p", "half", "half#out/0")
            .await
            .unwrap();
        let claims = store
            .claim_many("p", &["done", "half", "new"], lease)
            .await
            .unwrap();
        assert_eq!(
            claims,
            vec![
                (Claim::Completed(Completion::DeadLettered), HashSet::new()),
                (Claim::Acquired, HashSet::from(["half#out/0".to_owned()])),
                (Claim::Acquired, HashSet::new()),
            ]
        );
        store
            .complete_many(
                "p",
                &[
                    ("half", Completion::Done),
                    ("new", Completion::DeadLettered),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            store.completion("p", "half").await.unwrap(),
            Some(Completion::Done)
        );
        assert_eq!(
            store.completion("p", "new").await.unwrap(),
            Some(Completion::DeadLettered)
        );
        assert!(store.delivered("p", "half").await.unwrap().is_empty());
        assert_eq!(
            store.completion("q", "new").await.unwrap(),
            None,
            "per pipeline"
        );
        // A pipeline with no delivered outputs on record skips forgetting.
        (store.complete_many("q", &[("x", Completion::Done)]).await).unwrap();
        assert_eq!(
            store.completion("q", "x").await.unwrap(),
            Some(Completion::Done)
        );
    }
}
