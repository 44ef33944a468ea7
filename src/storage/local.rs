//! Local storage: a directory of buckets, the embedded default.
//!
//! Objects are plain files under `<root>/<bucket>/<key>`, so users can look
//! at them. Their metadata (etag, content type, user metadata) and the
//! bucket change feed live in a [`Journal`] at `<root>/.runnel/meta.db`;
//! the metadata row and the object-created record commit in one
//! transaction, so an acknowledged upload always has its event, even when
//! the process is killed right after answering.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use rusqlite::{OptionalExtension, params};

use super::{NewObject, ObjectStore, StorageError, Version, validate_bucket, validate_key};
use crate::event::{Message, ObjectCreated};
use crate::feed::{Feed, JournalFeed};
use crate::journal::{Journal, JournalError};
use crate::sqlite::Durability;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
";

pub struct LocalStorage {
    root: PathBuf,
    journal: Journal,
}

impl From<JournalError> for StorageError {
    fn from(error: JournalError) -> Self {
        StorageError::Unavailable(error.to_string())
    }
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> StorageError {
    StorageError::Unavailable(format!("{what} {}: {error}", path.display()))
}

/// The change feed of a bucket is a stream of the journal.
fn stream(bucket: &str) -> String {
    format!("bucket:{bucket}")
}

impl LocalStorage {
    pub async fn open(root: &Path, durability: Durability) -> Result<Self, StorageError> {
        let tmp = root.join(".runnel").join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io_error("creating", &tmp, e))?;
        // One partition: a bucket's notifications stay in upload order.
        let journal = Journal::open(&root.join(".runnel").join("meta.db"), durability, 1)?;
        journal.execute_batch(SCHEMA).await?;
        Ok(Self {
            root: root.to_owned(),
            journal,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, bucket: &str, key: &str) -> Result<PathBuf, StorageError> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        Ok(self.root.join(bucket).join(key))
    }
}

/// Writes to a temporary file, syncs it and renames it into place, so a
/// reader never sees half an object and a crash leaves the old one.
fn write_file(root: &Path, path: &Path, body: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().expect("object paths have a bucket directory");
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    // Readable by others as any file a program creates (0666 less the
    // umask: 0644 usually), so a web server or another user can serve the
    // thumbnails directory. tempfile's own default is 0600.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(root.join(".runnel").join("tmp"))
        .map_err(|e| io_error("creating a temporary file in", root, e))?;
    tmp.write_all(body)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| io_error("writing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| io_error("renaming into", path, e.error))?;
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStorage {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        object: NewObject,
    ) -> Result<ObjectCreated, StorageError> {
        let path = self.path_of(bucket, key)?;
        if path.is_dir() {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "is a prefix of other objects",
            });
        }
        let (root, body) = (self.root.clone(), object.body);
        let size = body.len() as u64;
        // The ETag is hashed beside the write, off the async workers: MD5
        // runs at about 600 MB/s, so an upload at the 64 MiB default limit
        // would hold a worker for a tenth of a second.
        let etag = tokio::task::spawn_blocking(move || {
            let etag = hex::encode(Md5::digest(&body));
            write_file(&root, &path, &body).map(|()| etag)
        })
        .await
        .expect("write task panicked")?;
        let created = ObjectCreated {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag,
            size,
            content_type: object.content_type,
            metadata: object
                .metadata
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            version_id: None,
        };

        let record = created.clone();
        self.journal
            .transaction(move |tx, journal| {
                tx.execute(
                    "INSERT OR REPLACE INTO objects
                     (bucket, key, etag, size, content_type, metadata)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        record.bucket,
                        record.key,
                        record.etag,
                        record.size as i64,
                        record.content_type,
                        serde_json::to_string(&record.metadata).expect("metadata serializes"),
                    ],
                )?;
                let message = Message {
                    key: Some(record.key.clone()),
                    headers: Vec::new(),
                    payload: serde_json::to_vec(&record)
                        .expect("event serializes")
                        .into(),
                };
                journal.append_in(tx, &stream(&record.bucket), None, &message)
            })
            .await?;
        self.journal.notify_appended(&stream(&created.bucket));
        Ok(created)
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        max_size: u64,
        version: Option<Version<'_>>,
    ) -> Result<(ObjectCreated, Bytes), StorageError> {
        let path = self.path_of(bucket, key)?;
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let row = self
            .journal
            .transaction(move |tx, _| {
                tx.query_row(
                    "SELECT etag, size, content_type, metadata FROM objects
                     WHERE bucket = ?1 AND key = ?2",
                    params![b, k],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, Option<String>>(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    },
                )
                .optional()
            })
            .await?;
        let not_found = || StorageError::NotFound {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
        let (etag, size, content_type, metadata) = row.ok_or_else(not_found)?;
        let changed = |etag: &str| StorageError::Changed {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag: etag.to_owned(),
        };
        if let Some(version) = version
            && version.etag != etag
        {
            return Err(changed(version.etag));
        }
        let size = size as u64;
        if size > max_size {
            return Err(StorageError::TooLarge {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                size,
                limit: max_size,
            });
        }
        // A write renames its file into place before it commits the new
        // row, so the file read may be newer than the row: a read for an
        // event checks the bytes' MD5 against the version it names (on the
        // blocking thread that reads them, as `put` hashes).
        let verify = version.is_some();
        let file = path.clone();
        let read = tokio::task::spawn_blocking(move || {
            std::fs::read(&file).map(|body| {
                let md5 = verify.then(|| hex::encode(Md5::digest(&body)));
                (body, md5)
            })
        })
        .await
        .expect("read task panicked");
        let body = match read {
            Ok((body, md5)) => {
                if let (Some(version), Some(md5)) = (version, md5)
                    && md5 != version.etag
                {
                    return Err(changed(version.etag));
                }
                Bytes::from(body)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(match version {
                    Some(version) => changed(version.etag),
                    None => not_found(),
                });
            }
            Err(e) => return Err(io_error("reading", &path, e)),
        };
        let metadata: BTreeMap<String, String> =
            serde_json::from_str(&metadata).unwrap_or_default();
        let info = ObjectCreated {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag,
            size: body.len() as u64,
            content_type,
            metadata,
            version_id: None,
        };
        Ok((info, body))
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate_bucket(bucket)?;
        let (b, p) = (bucket.to_owned(), prefix.to_owned());
        Ok(self
            .journal
            .transaction(move |tx, _| {
                let mut stmt = tx.prepare(
                    "SELECT key FROM objects WHERE bucket = ?1 AND substr(key, 1, length(?2)) = ?2
                     ORDER BY key LIMIT ?3",
                )?;
                let keys = stmt
                    .query_map(params![b, p, limit as i64], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                Ok(keys)
            })
            .await?)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(bucket, key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("deleting", &path, e)),
        }
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.journal
            .transaction(move |tx, _| {
                tx.execute(
                    "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
                    params![b, k],
                )
                .map(drop)
            })
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        bucket: &str,
        consumer: &str,
    ) -> Result<Box<dyn Feed<ObjectCreated>>, StorageError> {
        validate_bucket(bucket)?;
        let cursor = self.journal.subscribe(&stream(bucket), consumer).await?;
        Ok(Box::new(JournalFeed::new(cursor, |message: Message| {
            serde_json::from_slice::<ObjectCreated>(&message.payload)
                .map_err(|e| format!("malformed object notification: {e}"))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// The process's umask, as /proc shows it.
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .expect("Umask in /proc/self/status");
        u32::from_str_radix(value.trim(), 8).unwrap()
    }

    /// A read for an event returns the version the event names, or says
    /// it is gone; a plain read returns the newest.
    #[tokio::test]
    async fn a_read_for_an_event_is_of_the_version_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(dir.path(), Durability::Normal)
            .await
            .unwrap();
        let put = |body: &'static [u8]| NewObject {
            body: Bytes::from_static(body),
            ..Default::default()
        };
        let first = store.put("uploads", "a.jpg", put(b"one")).await.unwrap();
        let (_, body) = store
            .get("uploads", "a.jpg", 100, Some(Version::of(&first)))
            .await
            .unwrap();
        assert_eq!(&body[..], b"one");
        let second = store.put("uploads", "a.jpg", put(b"two")).await.unwrap();
        let error = store
            .get("uploads", "a.jpg", 100, Some(Version::of(&first)))
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::Changed { .. }), "{error}");
        assert!(!error.retryable());
        let (_, body) = store
            .get("uploads", "a.jpg", 100, Some(Version::of(&second)))
            .await
            .unwrap();
        assert_eq!(&body[..], b"two");

        // The file replaced before its row commits (a write in progress).
        std::fs::write(dir.path().join("uploads/a.jpg"), b"three").unwrap();
        let error = store
            .get("uploads", "a.jpg", 100, Some(Version::of(&second)))
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::Changed { .. }), "{error}");
        let (_, body) = store.get("uploads", "a.jpg", 100, None).await.unwrap();
        assert_eq!(&body[..], b"three");
    }

    /// Objects are files others may read (0666 less the umask), not 0600.
    #[tokio::test]
    async fn objects_are_created_readable_under_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(dir.path(), Durability::Normal)
            .await
            .unwrap();
        let object = NewObject {
            body: Bytes::from_static(b"abc"),
            ..Default::default()
        };
        store.put("thumbnails", "a/b.jpg", object).await.unwrap();
        let mode = std::fs::metadata(dir.path().join("thumbnails/a/b.jpg"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o666 & !umask(), "mode {mode:o}");
    }
}
