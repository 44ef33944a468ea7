//! Opening SQLite databases the way every embedded backend needs them.
//!
//! The embedded broker, local storage's metadata and the embedded
//! idempotency store are SQLite files in write-ahead-log mode. With
//! `synchronous=FULL` a committed transaction survives power loss; with
//! `NORMAL` it survives a crash of the process (`kill -9`) but the last
//! transactions may be lost if the machine loses power.

use std::path::Path;

use rusqlite::Connection;
use serde::Deserialize;

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints: survives process crashes, not power loss.
    Normal,
}

impl Durability {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Self::Full),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }
}

/// Opens (creating when missing) the database at `path`, its directory too.
pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        // A missing directory shows up as SQLite's "unable to open" below.
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(conn)
}
