//! Object-created events for stores that send no notifications: list the
//! bucket every interval and report keys whose etag was not seen before.
//!
//! What has been reported and finished is a durable checkpoint in SQLite
//! (one table, keyed by consumer, bucket and key), so a restart reports only
//! what changed meanwhile. The first run reports every existing object.
//! Objects listed but not yet finished are reported again after a restart.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};

use crate::event::{ObjectCreated, Position};
use crate::feed::{Commit, Feed, FeedError, Item};
use crate::sqlite::{self, Durability};

pub struct PollFeed {
    s3: aws_sdk_s3::Client,
    bucket: String,
    interval: Duration,
    next_seq: u64,
    /// Keys reported in this process and not yet committed (key, etag).
    pending: HashSet<(String, String)>,
    committer: Arc<PollCommit>,
}

struct PollCommit {
    conn: Mutex<Connection>,
    consumer: String,
    bucket: String,
    /// What each reported number stands for, until committed.
    reported: Mutex<BTreeMap<u64, (String, String)>>,
}

impl PollFeed {
    pub fn open(
        s3: aws_sdk_s3::Client,
        bucket: &str,
        consumer: &str,
        interval: Duration,
        checkpoint: &Path,
    ) -> Result<Self, String> {
        let conn = sqlite::open(checkpoint, Durability::Full)
            .and_then(|conn| {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS s3_poll_seen (
                        consumer TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL,
                        PRIMARY KEY (consumer, bucket, key)) WITHOUT ROWID;",
                )?;
                Ok(conn)
            })
            .map_err(|e| format!("opening the poll checkpoint {}: {e}", checkpoint.display()))?;
        Ok(Self {
            s3,
            bucket: bucket.to_owned(),
            interval,
            next_seq: 0,
            pending: HashSet::new(),
            committer: Arc::new(PollCommit {
                conn: Mutex::new(conn),
                consumer: consumer.to_owned(),
                bucket: bucket.to_owned(),
                reported: Mutex::default(),
            }),
        })
    }

    async fn list(&self) -> Result<Vec<(String, String, u64)>, FeedError> {
        let mut out = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                FeedError(format!(
                    "listing {}: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))
            })?;
            for object in page.contents() {
                let key = object.key().unwrap_or_default().to_owned();
                let etag = object
                    .e_tag()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_owned();
                out.push((key, etag, object.size().unwrap_or(0).max(0) as u64));
            }
        }
        Ok(out)
    }

    fn seen(&self) -> Result<HashSet<(String, String)>, FeedError> {
        let conn = self
            .committer
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, etag FROM s3_poll_seen WHERE consumer = ?1 AND bucket = ?2",
            )
            .map_err(|e| FeedError(e.to_string()))?;
        let rows = stmt
            .query_map(params![self.committer.consumer, self.bucket], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| FeedError(e.to_string()))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| FeedError(e.to_string()))
    }
}

#[async_trait]
impl Feed<ObjectCreated> for PollFeed {
    async fn poll(&mut self, max: usize) -> Result<Vec<Item<ObjectCreated>>, FeedError> {
        loop {
            let listed = self.list().await?;
            let seen = self.seen()?;
            let mut items = Vec::new();
            for (key, etag, size) in listed {
                let id = (key.clone(), etag.clone());
                if seen.contains(&id) || self.pending.contains(&id) {
                    continue;
                }
                let position = Position {
                    partition: 0,
                    offset: self.next_seq,
                };
                self.next_seq += 1;
                self.committer
                    .reported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(position.offset, id.clone());
                self.pending.insert(id);
                items.push(Item {
                    position,
                    item: Ok(ObjectCreated {
                        bucket: self.bucket.clone(),
                        key,
                        etag,
                        size,
                        content_type: None,
                        metadata: BTreeMap::new(),
                        version_id: None,
                    }),
                });
                if items.len() >= max {
                    break;
                }
            }
            if !items.is_empty() {
                return Ok(items);
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    fn committer(&self) -> Arc<dyn Commit> {
        self.committer.clone()
    }
}

#[async_trait]
impl Commit for PollCommit {
    async fn commit(&self, _partition: u32, next_offset: u64) -> Result<(), FeedError> {
        let done: Vec<(String, String)> = {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            let rest = reported.split_off(&next_offset);
            std::mem::replace(&mut *reported, rest)
                .into_values()
                .collect()
        };
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(|e| FeedError(e.to_string()))?;
        for (key, etag) in done {
            tx.execute(
                "INSERT OR REPLACE INTO s3_poll_seen (consumer, bucket, key, etag) VALUES (?1, ?2, ?3, ?4)",
                params![self.consumer, self.bucket, key, etag],
            )
            .map_err(|e| FeedError(e.to_string()))?;
        }
        tx.commit().map_err(|e| FeedError(e.to_string()))
    }
}
