//! The embedded idempotency store: a SQLite table that survives `kill -9`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Completion, IdempotencyError, IdempotencyStore};
use crate::sqlite::{self, Durability};

pub struct EmbeddedIdempotency {
    conn: Arc<Mutex<Connection>>,
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            ttl,
        })
    }

    async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, IdempotencyError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            work(&conn)
        })
        .await
        .expect("idempotency task panicked")
        .map_err(|e| IdempotencyError(e.to_string()))
    }
}

#[async_trait]
impl IdempotencyStore for EmbeddedIdempotency {
    async fn completion(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<Option<Completion>, IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        let cutoff = now_ms() - self.ttl.as_millis() as i64;
        let how: Option<String> = self
            .run(move |conn| {
                conn.query_row(
                    "SELECT how FROM completions
                     WHERE pipeline = ?1 AND key = ?2 AND completed_ms >= ?3",
                    params![p, k, cutoff],
                    |row| row.get(0),
                )
                .optional()
            })
            .await?;
        Ok(how.map(|h| Completion::parse(&h)))
    }

    async fn complete(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
    ) -> Result<(), IdempotencyError> {
        let (p, k) = (pipeline.to_owned(), key.to_owned());
        self.run(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO completions (pipeline, key, how, completed_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![p, k, how.as_str(), now_ms()],
            )
            .map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
