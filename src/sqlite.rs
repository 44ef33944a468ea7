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
    // Group commit holds each caller's work in a savepoint, whose undo
    // SQLite keeps in a temporary file: one created, written and closed
    // per transaction (benchmark #11: a file and 40 writes per commit).
    // In memory it costs a copy; a crash loses nothing, as the savepoint
    // only undoes work that never committed.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Without it a statement is compiled again whenever a bound value
    // changes that the planner looked at (the journal's tables have a
    // partial index, so every append's lookups were, at 5 % of benchmark
    // #4's CPU); runnel's queries have one good plan whatever the values.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// One SQLite connection on a thread of its own that commits whatever work
/// is waiting in one transaction: *group commit*. Under load, one fsync
/// makes many callers' writes durable at once instead of one each; alone,
/// a caller waits for its own commit as before.
///
/// Each piece of work runs in a savepoint, so its failure rolls back only
/// its own changes; a caller hears back only after the transaction holding
/// its work committed (or failed). Work runs in submission order.
///
/// Reads (`read`) run on the caller's thread with a second connection when
/// one is given ([`GroupCommit::start_with_reader`]), else on the writer's
/// thread between its batches.
pub struct GroupCommit {
    jobs: std::sync::mpsc::Sender<Job>,
    reader: Option<std::sync::Mutex<Connection>>,
}

/// One caller's work.
enum Job {
    /// Runs in the batch's open transaction; returns how to tell the
    /// caller the outcome once the commit is known.
    Write(Box<dyn FnOnce(&mut rusqlite::Transaction<'_>) -> Reply + Send>),
    /// Only reads: runs before the batch's writes, on what is committed,
    /// and tells the caller at once.
    Read(Box<dyn FnOnce(&Connection) + Send>),
}
type Reply = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// Work committed together at most: bounds the latency one batch adds.
const MAX_BATCH: usize = 256;

/// Why work sent to a [`GroupCommit`] did not commit.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommitError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The work panicked (its changes were rolled back).
    #[error("panicked: {0}")]
    Panicked(String),
    /// The database thread could not be started.
    #[error("cannot start the database thread: {0}")]
    Thread(std::io::Error),
    /// The database thread is gone, or could not start a transaction.
    #[error("database thread stopped")]
    Stopped,
}

impl GroupCommit {
    /// Moves `conn` to a new thread named `name`.
    pub fn start(name: &str, conn: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run_batches(conn, queue))?;
        Ok(Self { jobs, reader: None })
    }

    /// As [`GroupCommit::start`], with `reader`, a second connection to the
    /// same database (WAL mode), for the reads: they run on the caller's
    /// thread, one at a time, and never wait for the writer. Every read
    /// starts from the last commit, so it sees all work whose caller has
    /// heard back. A lookup of a few pages from the OS's cache takes about
    /// 20 µs, less than the hop to a database thread and back, which under
    /// load cost an event's claim 1.7–2.0 ms (benchmark #3): the embedded
    /// idempotency store's claims. (The reader's page cache is dropped
    /// whenever the writer committed since its last read, so keep it to
    /// lookups of a few rows.)
    pub fn start_with_reader(
        name: &str,
        conn: Connection,
        reader: Connection,
    ) -> std::io::Result<Self> {
        Ok(Self {
            reader: Some(std::sync::Mutex::new(reader)),
            ..Self::start(name, conn)?
        })
    }

    /// Runs `work` and waits until it is committed.
    pub async fn run<R, F>(&self, work: F) -> Result<R, GroupCommitError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job = Job::Write(Box::new(move |tx| {
            let result = in_savepoint(tx, work);
            Box::new(move |commit| {
                let outcome = match (result, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(error), _) => Err(error),
                    (Ok(_), Err(error)) => Err(GroupCommitError::Sqlite(clone_error(error))),
                };
                let _ = sender.send(outcome);
            })
        }));
        self.submit(job, receiver).await
    }

    /// Runs `work`, which only reads, and answers as soon as it ran: it sees
    /// what is committed (not the writes waiting in the same batch, which
    /// no caller has heard of yet) and does not wait for the batch's fsync
    /// (with a reader, for the writer at all).
    /// (The idempotency lookups: an event's claim waited for other events'
    /// commits before, benchmark #3.)
    pub async fn read<R, F>(&self, work: F) -> Result<R, GroupCommitError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let read =
            |conn: &Connection| match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                work(conn)
            })) {
                Ok(result) => result.map_err(GroupCommitError::from),
                Err(panic) => Err(panicked(panic)),
            };
        if let Some(reader) = &self.reader {
            // A panicking read has had its statements dropped: the
            // connection is fine to go on with.
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            return read(&conn);
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job = Job::Read(Box::new(move |conn| {
            let _ = sender.send(read(conn));
        }));
        self.submit(job, receiver).await
    }

    /// Hands `job` to the database thread; `answer` hears how it went.
    async fn submit<R>(
        &self,
        job: Job,
        answer: tokio::sync::oneshot::Receiver<Result<R, GroupCommitError>>,
    ) -> Result<R, GroupCommitError> {
        self.jobs.send(job).map_err(|_| GroupCommitError::Stopped)?;
        answer.await.map_err(|_| GroupCommitError::Stopped)?
    }
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> GroupCommitError {
    GroupCommitError::Panicked(
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default(),
    )
}

fn in_savepoint<R>(
    tx: &mut rusqlite::Transaction<'_>,
    work: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> Result<R, GroupCommitError> {
    // Cached statements rather than rusqlite's `Savepoint`, which formats
    // and parses its SQL anew each time: one savepoint per event is on the
    // embedded pipeline's hot path (benchmarks #3 and #4).
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
    run("SAVEPOINT job")?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(tx)));
    if matches!(result, Ok(Ok(_))) {
        run("RELEASE job")?;
    } else {
        // Undo this job's changes only; the batch's others stay.
        run("ROLLBACK TO job")?;
        run("RELEASE job")?;
    }
    match result {
        Ok(result) => Ok(result?),
        Err(panic) => Err(panicked(panic)),
    }
}

/// The database thread: takes what is waiting (up to [`MAX_BATCH`]), runs
/// the reads and answers them, runs the writes in one transaction, commits,
/// answers their callers; until every sender is gone.
fn run_batches(mut conn: Connection, queue: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::new();
        for job in std::iter::once(first).chain(queue.try_iter().take(MAX_BATCH - 1)) {
            match job {
                Job::Read(read) => read(&conn),
                Job::Write(write) => batch.push(write),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(error) => {
                tracing::error!(%error, "cannot start a transaction");
                // Dropping the jobs tells their callers.
                continue;
            }
        };
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(&mut tx)).collect();
        let commit = tx.commit();
        for reply in replies {
            reply(commit.as_ref().map(drop));
        }
    }
}

/// rusqlite errors are not `Clone`; a failed commit is told to every caller
/// of its batch with its code and message.
fn clone_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn count(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
    }

    /// Work sent at once commits together, yet a failing or panicking piece
    /// rolls back only its own changes and hears its own error; what was
    /// committed is on disk for the next connection.
    #[tokio::test]
    async fn group_commit_isolates_each_piece_of_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let conn = open(&path, Durability::Full).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        let db = Arc::new(GroupCommit::start("test-db", conn).unwrap());
        let runs = (0..100).map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                db.run(move |conn| {
                    conn.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                    match n % 10 {
                        // Fails after writing: its row must not survive.
                        3 => conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map(drop),
                        7 => panic!("work {n} panics"),
                        _ => Ok(()),
                    }
                })
                .await
            })
        });
        let mut outcomes = Vec::new();
        for run in runs.collect::<Vec<_>>() {
            outcomes.push(run.await.unwrap());
        }
        for (n, outcome) in outcomes.iter().enumerate() {
            match n % 10 {
                3 => assert!(
                    matches!(outcome, Err(GroupCommitError::Sqlite(_))),
                    "{n}: {outcome:?}"
                ),
                7 => assert!(
                    matches!(outcome, Err(GroupCommitError::Panicked(m)) if m.contains("panics")),
                    "{n}: {outcome:?}"
                ),
                _ => assert!(outcome.is_ok(), "{n}: {outcome:?}"),
            }
        }
        assert_eq!(db.run(count).await.unwrap(), 80);
        drop(db);
        let reopened = open(&path, Durability::Full).unwrap();
        assert_eq!(count(&reopened).unwrap(), 80);
        let missing: i64 = reopened
            .query_row("SELECT COUNT(*) FROM t WHERE n % 10 IN (3, 7)", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(missing, 0);
    }

    /// Reads see what was committed before them, and a failing or
    /// panicking read hears its own error without disturbing writes.
    #[tokio::test]
    async fn reads_see_committed_work_and_report_failures() {
        for with_reader in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let db = Arc::new(test_db(&dir.path().join("r.db"), with_reader));
            reads_and_writes(&db).await;
        }
    }

    fn test_db(path: &Path, with_reader: bool) -> GroupCommit {
        let conn = open(path, Durability::Full).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
            .unwrap();
        if with_reader {
            let reader = open(path, Durability::Full).unwrap();
            GroupCommit::start_with_reader("test-db", conn, reader).unwrap()
        } else {
            GroupCommit::start("test-db", conn).unwrap()
        }
    }

    async fn reads_and_writes(db: &GroupCommit) {
        for n in 0..10 {
            db.run(move |conn| conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map(drop))
                .await
                .unwrap();
            assert_eq!(db.read(count).await.unwrap(), n + 1);
        }
        let (bad, panicking, write) = tokio::join!(
            db.read(|conn| conn.query_row("SELECT nope FROM t", [], |r| r.get::<_, i64>(0))),
            db.read(|_| -> rusqlite::Result<()> { panic!("a read panics") }),
            db.run(|conn| conn.execute("INSERT INTO t (n) VALUES (10)", []).map(drop)),
        );
        assert!(matches!(bad, Err(GroupCommitError::Sqlite(_))), "{bad:?}");
        assert!(
            matches!(&panicking, Err(GroupCommitError::Panicked(m)) if m.contains("panics")),
            "{panicking:?}"
        );
        write.unwrap();
        assert_eq!(db.read(count).await.unwrap(), 11);
    }

    /// With a reader, a read is answered while the writer is busy, from
    /// what was committed before.
    #[tokio::test]
    async fn a_reader_answers_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let db = test_db(&dir.path().join("w.db"), true);
        db.run(|conn| conn.execute("INSERT INTO t (n) VALUES (1)", []).map(drop))
            .await
            .unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = db.run(move |conn| {
            conn.execute("INSERT INTO t (n) VALUES (2)", [])?;
            started_tx.send(()).unwrap();
            // Held until the read below has been answered.
            release_rx.recv().unwrap();
            Ok(())
        });
        let read = async {
            tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
                .await
                .unwrap();
            let seen = tokio::time::timeout(std::time::Duration::from_secs(10), db.read(count))
                .await
                .expect("the read did not wait for the writer")
                .unwrap();
            release_tx.send(()).unwrap();
            seen
        };
        let (busy, seen) = tokio::join!(busy, read);
        busy.unwrap();
        assert_eq!(seen, 1, "the read saw only what was committed");
        assert_eq!(db.read(count).await.unwrap(), 2);
    }
}
