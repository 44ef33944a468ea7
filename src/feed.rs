//! Feeds: the partitioned, committable logs that pulled triggers read, and
//! the bookkeeping that turns out-of-order completions into safe commits.
//!
//! A pipeline works on several events of a feed at once and they finish in
//! any order. A feed's commit says "everything before this offset is done",
//! so per partition we may only commit up to the lowest offset still in
//! flight: [`Acks`] tracks that and commits as the watermark advances. After a
//! crash, everything past the last commit is delivered again; idempotency
//! keys make that harmless.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::event::{Message, Position};
use crate::journal::{Committer, Cursor, JournalError};

/// Why a feed could not be read or committed. Feeds are remote or on disk:
/// their failures are worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FeedError(pub String);

impl From<JournalError> for FeedError {
    fn from(error: JournalError) -> Self {
        FeedError(error.to_string())
    }
}

/// One item of a feed. `item` is `Err` when the record could not be
/// decoded; it still has to be acknowledged (and dead-lettered).
pub struct Item<T> {
    pub position: Position,
    pub item: Result<T, String>,
}

#[async_trait]
pub trait Feed<T>: Send {
    /// Waits for items and returns up to `max`, ordered per partition.
    async fn poll(&mut self, max: usize) -> Result<Vec<Item<T>>, FeedError>;

    /// The handle that commits this feed's offsets, usable while `poll` runs.
    fn committer(&self) -> Arc<dyn Commit>;
}

#[async_trait]
pub trait Commit: Send + Sync {
    /// Everything before `next_offset` in `partition` is done.
    async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), FeedError>;
}

/// A [`Feed`] over a journal stream, decoding each record with `decode`.
pub struct JournalFeed<T> {
    cursor: Cursor,
    decode: fn(Message) -> Result<T, String>,
    committer: Arc<JournalCommit>,
}

impl<T> JournalFeed<T> {
    pub fn new(cursor: Cursor, decode: fn(Message) -> Result<T, String>) -> Self {
        let committer = Arc::new(JournalCommit(cursor.committer()));
        Self {
            cursor,
            decode,
            committer,
        }
    }
}

struct JournalCommit(Committer);

#[async_trait]
impl Commit for JournalCommit {
    async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), FeedError> {
        Ok(self.0.commit(partition, next_offset).await?)
    }
}

#[async_trait]
impl<T: Send + 'static> Feed<T> for JournalFeed<T> {
    async fn poll(&mut self, max: usize) -> Result<Vec<Item<T>>, FeedError> {
        let records = self.cursor.poll(max).await?;
        Ok(records
            .into_iter()
            .map(|record| Item {
                position: record.position,
                item: (self.decode)(record.message),
            })
            .collect())
    }

    fn committer(&self) -> Arc<dyn Commit> {
        self.committer.clone()
    }
}

/// Tracks in-flight offsets per partition and commits the watermark.
///
/// One commit per partition is under way at a time, and it commits the
/// newest watermark: the events that finish while it runs are covered by
/// the next one, not by one commit each (benchmark #4: a commit per event
/// held every finished event in line behind the previous one's fsync).
pub struct Acks {
    state: std::sync::Mutex<BTreeMap<u32, Partition>>,
    committer: Arc<dyn Commit>,
}

#[derive(Default)]
struct Partition {
    /// Offsets handed out and not finished, with how many times: after a
    /// rebalance hands a partition back, an offset can be in flight twice.
    in_flight: BTreeMap<u64, u32>,
    /// One past the highest offset handed out.
    next: u64,
    committed: u64,
    /// Held while committing, so commits never go backwards.
    committing: Arc<tokio::sync::Mutex<()>>,
}

impl Partition {
    /// Everything before it is finished.
    fn watermark(&self) -> u64 {
        self.in_flight.keys().next().copied().unwrap_or(self.next)
    }
}

impl Acks {
    pub fn new(committer: Arc<dyn Commit>) -> Arc<Self> {
        Arc::new(Self {
            state: Default::default(),
            committer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Partition>> {
        // Nothing panics while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a position as handed out to the pipeline.
    pub async fn started(&self, position: Position) {
        let mut state = self.lock();
        let partition = state.entry(position.partition).or_default();
        if partition.in_flight.is_empty() && partition.next == 0 {
            partition.committed = position.offset;
        }
        *partition.in_flight.entry(position.offset).or_default() += 1;
        partition.next = partition.next.max(position.offset + 1);
    }

    /// Marks a position as finished and returns once a commit covers
    /// everything that became contiguous with it: this call's own, or one
    /// that another call made meanwhile.
    pub async fn finished(&self, position: Position) -> Result<(), FeedError> {
        self.finished_many(&[position]).await
    }

    /// [`finished`](Self::finished) for several positions at once (a
    /// batch's): one look at the state, and a commit per partition.
    pub async fn finished_many(&self, positions: &[Position]) -> Result<(), FeedError> {
        let mut partitions: Vec<(u32, Arc<tokio::sync::Mutex<()>>)> = Vec::new();
        {
            let mut state = self.lock();
            for position in positions {
                let partition = state.entry(position.partition).or_default();
                if let Some(count) = partition.in_flight.get_mut(&position.offset) {
                    *count -= 1;
                    if *count == 0 {
                        partition.in_flight.remove(&position.offset);
                    }
                }
                if !partitions.iter().any(|(p, _)| *p == position.partition) {
                    partitions.push((position.partition, partition.committing.clone()));
                }
            }
            partitions.retain(|(p, _)| {
                let partition = &state[p];
                partition.watermark() > partition.committed
            });
        }
        for (partition, committing) in partitions {
            self.commit(partition, &committing).await?;
        }
        Ok(())
    }

    /// Commits `partition`'s watermark, unless a commit made while waiting
    /// for `committing` covers it already.
    async fn commit(
        &self,
        partition: u32,
        committing: &tokio::sync::Mutex<()>,
    ) -> Result<(), FeedError> {
        let _turn = committing.lock().await;
        // The watermark may have moved on while we waited (commit the
        // newest), or a commit made meanwhile may cover ours already.
        let watermark = {
            let state = self.lock();
            let state = &state[&partition];
            let watermark = state.watermark();
            if watermark <= state.committed {
                return Ok(());
            }
            watermark
        };
        self.committer.commit(partition, watermark).await?;
        let mut state = self.lock();
        let state = state.entry(partition).or_default();
        state.committed = state.committed.max(watermark);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u32, u64)>>);

    #[async_trait]
    impl Commit for Recorder {
        async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), FeedError> {
            self.0.lock().unwrap().push((partition, next_offset));
            Ok(())
        }
    }

    #[tokio::test]
    async fn commits_only_below_the_lowest_offset_in_flight() {
        let recorder = Arc::new(Recorder::default());
        let acks = Acks::new(recorder.clone());
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        for offset in 5..9 {
            acks.started(at(offset)).await;
        }
        acks.finished(at(7)).await.unwrap();
        acks.finished(at(6)).await.unwrap();
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "5 is still in flight"
        );
        acks.finished(at(5)).await.unwrap();
        acks.finished(at(8)).await.unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), vec![(0, 8), (0, 9)]);
    }

    /// A batch's positions, finished together: one commit per partition,
    /// up to the lowest still in flight.
    #[tokio::test]
    async fn finishing_many_commits_once_per_partition() {
        let recorder = Arc::new(Recorder::default());
        let acks = Acks::new(recorder.clone());
        let at = |partition, offset| Position { partition, offset };
        for offset in 0..6 {
            acks.started(at(0, offset)).await;
            acks.started(at(1, offset)).await;
        }
        let batch: Vec<_> = (0..6)
            .map(|o| at(1, o))
            .chain([0, 1, 3].map(|o| at(0, o)))
            .collect();
        acks.finished_many(&batch).await.unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), vec![(1, 6), (0, 2)]);
        acks.finished_many(&[at(0, 2)]).await.unwrap();
        assert_eq!(recorder.0.lock().unwrap().last(), Some(&(0, 4)));
    }

    /// With a slow commit under way, events finishing meanwhile share the
    /// next commit instead of making one each; every call returns only once
    /// a commit covers its offset, and commits never go backwards.
    #[tokio::test]
    async fn finishing_events_share_commits() {
        #[derive(Default)]
        struct Slow(Mutex<Vec<(u32, u64)>>);
        #[async_trait]
        impl Commit for Slow {
            async fn commit(&self, partition: u32, next_offset: u64) -> Result<(), FeedError> {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                self.0.lock().unwrap().push((partition, next_offset));
                Ok(())
            }
        }
        let slow = Arc::new(Slow::default());
        let acks = Acks::new(slow.clone());
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        for offset in 0..100 {
            acks.started(at(offset)).await;
        }
        let mut finishing = tokio::task::JoinSet::new();
        for offset in 0..100 {
            let (acks, slow) = (acks.clone(), slow.clone());
            finishing.spawn(async move {
                acks.finished(at(offset)).await.unwrap();
                let committed = slow.0.lock().unwrap().last().map(|&(_, n)| n);
                assert!(
                    committed > Some(offset),
                    "{offset} returned before a commit covered it"
                );
            });
            if offset % 10 == 9 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        while let Some(done) = finishing.join_next().await {
            done.unwrap();
        }
        let commits = slow.0.lock().unwrap().clone();
        assert_eq!(commits.last(), Some(&(0, 100)));
        assert!(commits.windows(2).all(|w| w[0].1 < w[1].1), "{commits:?}");
        assert!(
            commits.len() <= 10,
            "one commit per event or near it: {commits:?}"
        );
    }

    #[tokio::test]
    async fn an_offset_in_flight_twice_holds_the_watermark_until_both_finish() {
        let recorder = Arc::new(Recorder::default());
        let acks = Acks::new(recorder.clone());
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        acks.started(at(3)).await;
        // The partition came back after a rebalance: 3 is delivered again.
        acks.started(at(3)).await;
        acks.finished(at(3)).await.unwrap();
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "the other 3 still runs"
        );
        acks.finished(at(3)).await.unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), vec![(0, 4)]);
    }
}
