//! The embedded key-value store: SQLite at `<data_dir>/kv.db` (the runtime
//! config's `[kv] path`), for one process.
//!
//! A row per key with its expiry (Unix milliseconds; an expired row reads
//! as absent and is purged now and then), and a row per scope with the
//! bytes its keys and values hold, kept in the same transaction as every
//! write so the store limit is checked without scanning. Each call is one
//! transaction, committed with the configured durability before it
//! returns.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{KvError, KvLimits, KvStore};
use crate::sqlite::Durability;

/// Every this many writes, a scope's expired keys are deleted.
const PURGE_EVERY: u64 = 256;

pub struct EmbeddedKv {
    conn: Mutex<Connection>,
    limits: KvLimits,
    writes: AtomicU64,
}

impl EmbeddedKv {
    pub fn open(path: &Path, durability: Durability, limits: KvLimits) -> rusqlite::Result<Self> {
        let conn = crate::sqlite::open(path, durability)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                 scope TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires INTEGER,
                 PRIMARY KEY (scope, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS kv_sizes (
                 scope TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            limits,
            writes: AtomicU64::new(0),
        })
    }

    /// Runs `work` in one transaction and commits it.
    fn write<T>(
        &self,
        scope: &str,
        work: impl FnOnce(&Transaction<'_>, i64) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(unavailable)?;
        let now = now_ms();
        if self.writes.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
            purge(&tx, scope, now).map_err(unavailable)?;
        }
        let result = work(&tx, now)?;
        tx.commit().map_err(unavailable)?;
        Ok(result)
    }

    /// Replaces `key`'s row (live or expired) with `value`, keeping the
    /// scope's size and refusing what would pass its limit.
    fn put(
        &self,
        tx: &Transaction<'_>,
        scope: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<(), KvError> {
        let sizes = || -> Result<(i64, i64), KvError> {
            let old: i64 = tx
                .query_row(
                    "SELECT length(key) + length(value) FROM kv WHERE scope = ?1 AND key = ?2",
                    params![scope, key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0);
            let used = used(tx, scope)?;
            Ok((used, used - old + (key.len() + value.len()) as i64))
        };
        let over =
            |(used, after): (i64, i64)| after > self.limits.max_store_size as i64 && after > used;
        let mut sizes_now = sizes()?;
        if over(sizes_now) {
            // Expired keys give their bytes back before a write is refused.
            purge(tx, scope, now_ms()).map_err(unavailable)?;
            sizes_now = sizes()?;
        }
        let (used, after) = sizes_now;
        if over((used, after)) {
            return Err(KvError::TooLarge(format!(
                "the store would hold {after} bytes for this pipeline, over its max_store_size of {}",
                self.limits.max_store_size
            )));
        }
        tx.execute(
            "INSERT OR REPLACE INTO kv (scope, key, value, expires) VALUES (?1, ?2, ?3, ?4)",
            params![scope, key, value, expires],
        )
        .map_err(unavailable)?;
        set_used(tx, scope, after)
    }
}

fn used(tx: &Transaction<'_>, scope: &str) -> Result<i64, KvError> {
    tx.query_row(
        "SELECT bytes FROM kv_sizes WHERE scope = ?1",
        [scope],
        |r| r.get(0),
    )
    .optional()
    .map_err(unavailable)
    .map(|bytes| bytes.unwrap_or(0))
}

fn set_used(tx: &Transaction<'_>, scope: &str, bytes: i64) -> Result<(), KvError> {
    tx.execute(
        "INSERT INTO kv_sizes (scope, bytes) VALUES (?1, ?2)
         ON CONFLICT (scope) DO UPDATE SET bytes = excluded.bytes",
        params![scope, bytes],
    )
    .map_err(unavailable)?;
    Ok(())
}

/// A key's value and its expiry (Unix milliseconds).
type Row = (Vec<u8>, Option<i64>);

/// The live value of `key` and its expiry (an expired one reads as absent).
fn live_row(conn: &Connection, scope: &str, key: &str, now: i64) -> Result<Option<Row>, KvError> {
    conn.query_row(
        "SELECT value, expires FROM kv WHERE scope = ?1 AND key = ?2 AND (expires IS NULL OR expires > ?3)",
        params![scope, key, now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(unavailable)
}

/// The live value of `key`.
fn live(conn: &Connection, scope: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, KvError> {
    Ok(live_row(conn, scope, key, now)?.map(|(value, _)| value))
}

/// Deletes `scope`'s expired keys and counts its bytes again.
fn purge(tx: &Transaction<'_>, scope: &str, now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM kv WHERE scope = ?1 AND expires IS NOT NULL AND expires <= ?2",
        params![scope, now],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO kv_sizes (scope, bytes)
         SELECT ?1, coalesce(sum(length(key) + length(value)), 0) FROM kv WHERE scope = ?1",
        [scope],
    )?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn expiry(now: i64, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64))
}

fn unavailable(error: rusqlite::Error) -> KvError {
    KvError::Unavailable(format!("the embedded key-value store: {error}"))
}

impl KvStore for EmbeddedKv {
    fn get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.limits.check(key, None)?;
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        live(&conn, scope, key, now_ms())
    }

    fn set(
        &self,
        scope: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.limits.check(key, Some(value))?;
        self.write(scope, |tx, now| {
            self.put(tx, scope, key, value, expiry(now, ttl))
        })
    }

    fn delete(&self, scope: &str, key: &str) -> Result<bool, KvError> {
        self.limits.check(key, None)?;
        self.write(scope, |tx, now| {
            let was_live = live(tx, scope, key, now)?.is_some();
            let freed: Option<i64> = tx
                .query_row(
                    "DELETE FROM kv WHERE scope = ?1 AND key = ?2 RETURNING length(key) + length(value)",
                    params![scope, key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(freed) = freed {
                let used = used(tx, scope)?;
                set_used(tx, scope, (used - freed).max(0))?;
            }
            Ok(was_live)
        })
    }

    fn compare_and_swap(
        &self,
        scope: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        self.limits.check(key, Some(value))?;
        self.write(scope, |tx, now| {
            if live(tx, scope, key, now)?.as_deref() != expected {
                return Ok(false);
            }
            self.put(tx, scope, key, value, expiry(now, ttl))?;
            Ok(true)
        })
    }

    fn increment(&self, scope: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        self.limits.check(key, None)?;
        self.write(scope, |tx, now| {
            let row = live_row(tx, scope, key, now)?;
            let current = match &row {
                None => 0,
                Some((bytes, _)) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| {
                        KvError::Invalid(format!("the value at {key:?} is not a decimal integer"))
                    })?,
            };
            let sum = current.checked_add(delta).ok_or_else(|| {
                KvError::Invalid(format!("{current} + {delta} at {key:?} overflows 64 bits"))
            })?;
            let expires = row.and_then(|(_, expires)| expires);
            self.put(tx, scope, key, sum.to_string().as_bytes(), expires)?;
            Ok(sum)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limits: KvLimits) -> (tempfile::TempDir, EmbeddedKv) {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(&dir.path().join("kv.db"), Durability::Normal, limits).unwrap();
        (dir, kv)
    }

    #[test]
    fn get_set_delete_and_scopes() {
        let (_dir, kv) = store(KvLimits::default());
        assert_eq!(kv.get("a", "k").unwrap(), None);
        kv.set("a", "k", b"one", None).unwrap();
        assert_eq!(kv.get("a", "k").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(kv.get("b", "k").unwrap(), None, "another pipeline's scope");
        assert!(kv.delete("a", "k").unwrap());
        assert!(!kv.delete("a", "k").unwrap());
        assert_eq!(kv.get("a", "k").unwrap(), None);
    }

    #[test]
    fn compare_and_swap_and_increment() {
        let (_dir, kv) = store(KvLimits::default());
        assert!(kv.compare_and_swap("a", "k", None, b"1", None).unwrap());
        assert!(
            !kv.compare_and_swap("a", "k", None, b"2", None).unwrap(),
            "not absent any more"
        );
        assert!(
            !kv.compare_and_swap("a", "k", Some(b"9"), b"2", None)
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("a", "k", Some(b"1"), b"2", None)
                .unwrap()
        );
        assert_eq!(kv.increment("a", "k", 40).unwrap(), 42);
        assert_eq!(kv.increment("a", "fresh", -3).unwrap(), -3);
        kv.set("a", "text", b"abc", None).unwrap();
        assert!(matches!(
            kv.increment("a", "text", 1),
            Err(KvError::Invalid(_))
        ));
        kv.set("a", "max", i64::MAX.to_string().as_bytes(), None)
            .unwrap();
        assert!(matches!(
            kv.increment("a", "max", 1),
            Err(KvError::Invalid(_))
        ));
    }

    #[test]
    fn values_expire() {
        let (_dir, kv) = store(KvLimits::default());
        kv.set("a", "k", b"v", Some(Duration::from_millis(50)))
            .unwrap();
        assert!(kv.get("a", "k").unwrap().is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(kv.get("a", "k").unwrap(), None);
        assert!(
            kv.compare_and_swap("a", "k", None, b"again", None).unwrap(),
            "expired is absent"
        );
    }

    #[test]
    fn limits_are_refused_by_name() {
        let limits = KvLimits {
            max_key_size: 8,
            max_value_size: 16,
            max_store_size: 40,
        };
        let (_dir, kv) = store(limits);
        let err = kv.set("a", "a-long-key", b"v", None).unwrap_err();
        assert!(err.to_string().contains("max_key_size of 8"), "{err}");
        let err = kv.set("a", "k", &[0; 17], None).unwrap_err();
        assert!(err.to_string().contains("max_value_size of 16"), "{err}");
        kv.set("a", "k1", &[0; 16], None).unwrap();
        kv.set("a", "k2", &[0; 16], None).unwrap();
        let err = kv.set("a", "k3", &[0; 16], None).unwrap_err();
        assert!(err.to_string().contains("max_store_size of 40"), "{err}");
        kv.set("b", "k3", &[0; 16], None).unwrap();
        kv.set("a", "k1", &[0; 4], None).unwrap();
        kv.delete("a", "k2").unwrap();
        kv.set("a", "k3", &[0; 16], None).unwrap();
    }
}
