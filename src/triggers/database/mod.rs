//! The database trigger: one event per row a PostgreSQL database commits,
//! read from the write-ahead log through a logical replication slot with
//! the built-in `pgoutput` plugin, shaped as a Debezium change event.
//!
//! Rows get offsets in commit order and run through the feed driver, in
//! order per primary key. The slot's confirmed position (what PostgreSQL
//! may discard) moves past a transaction only once every row before its
//! end is done (written or dead-lettered), and on the server's keepalives
//! when nothing is pending, so an idle database does not keep its WAL. A
//! restart resumes from the slot; what was in flight comes again with the
//! same idempotency keys (the commit's position and the row's place in it).

pub mod change;
pub mod debezium;
pub mod pgoutput;
#[cfg(feature = "postgres")]
mod stream;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::config::reader::Table;
use crate::engine::Delivery;
use crate::engine::feed_driver::{Pull, Pulled};
use crate::feed::{Acks, Commit, FeedError};
use crate::health::Backends;
use change::Op;

#[derive(Clone, Debug)]
pub struct DatabaseTriggerConfig {
    /// `database`: a name under the runtime config's `[databases]`.
    pub database: String,
    /// `tables`: `schema.table` (or `table`, in `public`), as the catalog
    /// names them.
    pub tables: Vec<(String, String)>,
    /// `operations` to handle (default insert, update and delete;
    /// `truncate` too when listed).
    pub operations: Vec<Op>,
    /// `publication` to read (default `runnel_<pipeline>`, created with
    /// the tables when missing).
    pub publication: Option<String>,
    /// `slot`: the replication slot (default `runnel_<pipeline>`,
    /// created when missing).
    pub slot: Option<String>,
}

impl DatabaseTriggerConfig {
    pub fn read(table: &Table<'_, '_>) -> Option<Self> {
        let database = table.required_string("database");
        let tables = table.required("tables").and_then(|field| {
            let names = field.strings()?;
            let mut tables = Vec::new();
            for name in &names {
                match parse_table(name) {
                    Ok(parsed) => tables.push(parsed),
                    Err(problem) => field.error(problem),
                }
            }
            if names.is_empty() {
                field.error("list at least one table, e.g. [\"public.orders\"]");
            }
            (tables.len() == names.len() && !tables.is_empty()).then_some(tables)
        });
        let operations = match table.get("operations") {
            None => Some(vec![Op::Create, Op::Update, Op::Delete]),
            Some(field) => field.strings().and_then(|names| {
                if names.is_empty() {
                    field.error("list at least one operation, e.g. [\"insert\", \"update\"]");
                }
                let mut operations = Vec::new();
                for name in names {
                    match [Op::Create, Op::Update, Op::Delete, Op::Truncate]
                        .into_iter()
                        .find(|op| op.name() == name)
                    {
                        Some(op) => operations.push(op),
                        None => field.error(format!(
                            "unknown operation {name:?}; expected \"insert\", \"update\", \"delete\" or \"truncate\""
                        )),
                    }
                }
                (!operations.is_empty()).then_some(operations)
            }),
        };
        let publication = table.get("publication").and_then(|field| {
            let name = field.string()?;
            identifier(&name).map_err(|e| field.error(e)).ok()?;
            Some(name)
        });
        let slot = table.get("slot").and_then(|field| {
            let name = field.string()?;
            slot_name(&name).map_err(|e| field.error(e)).ok()?;
            Some(name)
        });
        Some(Self {
            database: database?,
            tables: tables?,
            operations: operations?,
            publication,
            slot,
        })
    }

    /// The replication slot's name for `pipeline`.
    pub fn slot_for(&self, pipeline: &str) -> String {
        self.slot.clone().unwrap_or_else(|| default_name(pipeline))
    }

    /// The publication's name for `pipeline`, and whether runnel owns it
    /// (then it adds tables the pipeline lists and the publication lacks).
    pub fn publication_for(&self, pipeline: &str) -> (String, bool) {
        match &self.publication {
            Some(name) => (name.clone(), false),
            None => (default_name(pipeline), true),
        }
    }
}

/// `runnel_<pipeline>`, in the lower case and underscores slot names need.
fn default_name(pipeline: &str) -> String {
    format!("runnel_{}", pipeline.to_lowercase().replace('-', "_"))
}

fn parse_table(name: &str) -> Result<(String, String), String> {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    identifier(schema)
        .and_then(|()| identifier(table))
        .map_err(|e| format!("table {name:?}: {e}"))?;
    Ok((schema.to_owned(), table.to_owned()))
}

fn identifier(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a name runnel takes: 1-63 letters, digits, '_' or '$', not starting with a digit"
        ))
    }
}

fn slot_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a replication slot name: 1-63 lower-case letters, digits or '_'"
        ))
    }
}

/// Rows handed out and transactions finished, shared by the stream and
/// the commits the feed driver makes.
#[derive(Default)]
struct Progress {
    /// One past the last offset handed out.
    handed_out: u64,
    /// Everything before this offset is done.
    committed: u64,
    /// Transactions whose rows end before the key, by the position their
    /// commit ends at: confirmable once `committed` reaches the key.
    boundaries: BTreeMap<u64, u64>,
    /// The position reported to the server as flushed.
    confirmed: u64,
}

/// Moves the slot's confirmed position as rows are done.
struct Confirm {
    progress: Arc<Mutex<Progress>>,
    confirmed: watch::Sender<u64>,
}

impl Confirm {
    /// Confirms the transactions whose rows are all done.
    fn advance(&self, progress: &mut Progress) {
        let done: Vec<u64> = progress
            .boundaries
            .range(..=progress.committed)
            .map(|(offset, _)| *offset)
            .collect();
        for offset in done {
            if let Some(lsn) = progress.boundaries.remove(&offset) {
                progress.confirmed = progress.confirmed.max(lsn);
            }
        }
        self.confirmed.send_if_modified(|sent| {
            let moved = progress.confirmed > *sent;
            *sent = (*sent).max(progress.confirmed);
            moved
        });
    }
}

#[async_trait]
impl Commit for Confirm {
    async fn commit(&self, _partition: u32, next_offset: u64) -> Result<(), FeedError> {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress.committed = progress.committed.max(next_offset);
        self.advance(&mut progress);
        Ok(())
    }
}

/// Rows travel from the stream's task in batches of at most this many.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
const BATCH: usize = 64;

pub(super) struct DatabaseTrigger {
    rows: mpsc::Receiver<Result<Vec<Delivery>, FeedError>>,
    acks: Arc<Acks>,
    description: String,
    _stop: tokio_util::sync::DropGuard,
}

pub(super) fn open(
    config: &DatabaseTriggerConfig,
    pipeline: &str,
    backends: &Backends,
) -> Result<DatabaseTrigger, FeedError> {
    let Some(database) = backends.databases.get(&config.database) else {
        return Err(FeedError(format!(
            "source.database {:?} is not in the runtime config: add [databases.{}] with its url",
            config.database, config.database
        )));
    };
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (confirmed, confirmed_rx) = watch::channel(0);
    let confirm = Arc::new(Confirm {
        progress: progress.clone(),
        confirmed,
    });
    let (tx, rows) = mpsc::channel(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let description = format!(
        "database {} ({}), slot {}",
        config.database,
        database.describe(),
        config.slot_for(pipeline)
    );
    #[cfg(feature = "postgres")]
    tokio::spawn(
        stream::Stream {
            config: config.clone(),
            database: database.clone(),
            pipeline: pipeline.to_owned(),
            rows: tx,
            confirm: confirm.clone(),
            confirmed: confirmed_rx,
            problems: backends.sources.clone(),
            stop: stop.clone(),
        }
        .run(),
    );
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (tx, confirmed_rx);
        return Err(FeedError(
            "this runnel was built without the \"postgres\" feature, which database sources need"
                .to_owned(),
        ));
    }
    #[allow(unreachable_code)]
    Ok(DatabaseTrigger {
        rows,
        acks: Acks::new(confirm),
        description,
        _stop: stop.drop_guard(),
    })
}

#[async_trait]
impl Pull for DatabaseTrigger {
    fn acks(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    async fn next(&mut self, _max: usize) -> Result<Pulled, FeedError> {
        match self.rows.recv().await {
            Some(rows) => Ok(Pulled {
                deliveries: rows?,
                skipped: Vec::new(),
            }),
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_slot_moves_only_past_transactions_whose_rows_are_all_done() {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (confirmed, rx) = watch::channel(0);
        let confirm = Confirm {
            progress: progress.clone(),
            confirmed,
        };
        {
            let mut p = progress.lock().unwrap();
            // Transaction one: rows 0..3, ends at 100; two: rows 3..5, ends at 200.
            p.handed_out = 5;
            p.boundaries.insert(3, 100);
            p.boundaries.insert(5, 200);
        }
        confirm.commit(0, 2).await.unwrap();
        assert_eq!(
            *rx.borrow(),
            0,
            "row 2 of the first transaction is not done"
        );
        confirm.commit(0, 4).await.unwrap();
        assert_eq!(*rx.borrow(), 100);
        confirm.commit(0, 5).await.unwrap();
        assert_eq!(*rx.borrow(), 200);
        assert!(progress.lock().unwrap().boundaries.is_empty());
    }

    #[test]
    fn names_default_to_the_pipeline_and_are_checked() {
        assert_eq!(default_name("Order-Changed"), "runnel_order_changed");
        assert!(slot_name("runnel_orders").is_ok());
        assert!(slot_name("Orders").is_err());
        assert_eq!(
            parse_table("orders").unwrap(),
            ("public".to_owned(), "orders".to_owned())
        );
        assert!(parse_table("public.orders; drop table x").is_err());
    }
}
