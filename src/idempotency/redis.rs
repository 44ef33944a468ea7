//! The idempotency store on Redis, shared by every runnel process of a
//! deployment: a completion recorded by one process is seen by the others,
//! so an event redelivered to another consumer after a rebalance or a crash
//! is skipped there too, and a claim (`SET NX PX`, value naming the owner)
//! keeps two processes from working on one event at once. Keys expire after
//! the TTL, claims after their lease (Redis does the pruning).

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

use super::{Claim, Completion, IdempotencyError, IdempotencyStore};

/// Value prefix of a key claimed and not finished.
const IN_PROGRESS: &str = "in-progress:";

pub struct RedisIdempotency {
    connection: ConnectionManager,
    prefix: String,
    ttl: Duration,
    /// The value of this process's claims: `in-progress:` and who this
    /// process is (random per process, or its instance id).
    claim_value: String,
}

fn lease_ms(lease: Duration) -> u64 {
    lease.as_millis().max(1) as u64
}

fn unavailable(error: redis::RedisError) -> IdempotencyError {
    IdempotencyError(format!("redis: {error}"))
}

impl RedisIdempotency {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS);
    /// the connection reconnects by itself after failures. `instance` names
    /// this process in its claims; with it, a restarted process owns the
    /// claims its predecessor left (without it, each process is new and
    /// waits for them to expire).
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        instance: Option<&str>,
    ) -> Result<Self, IdempotencyError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let connection = client.get_connection_manager().await.map_err(unavailable)?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            ttl,
            claim_value: instance.map_or_else(
                || {
                    format!(
                        "{IN_PROGRESS}{}-{:016x}",
                        std::process::id(),
                        fastrand::u64(..)
                    )
                },
                |id| format!("{IN_PROGRESS}instance:{id}"),
            ),
        })
    }

    /// Where the reply kept with a completion is.
    fn reply_key(&self, pipeline: &str, key: &str) -> String {
        format!("{}{pipeline}:{key}#reply", self.prefix)
    }

    fn key(&self, pipeline: &str, key: &str) -> String {
        format!("{}{pipeline}:{key}", self.prefix)
    }

    /// Claims `key` for `lease` unless it is set (`SET NX PX`): `OK` when it
    /// was not, nil when it was.
    fn set_claim(&self, key: &str, lease: Duration) -> redis::Cmd {
        let mut command = redis::cmd("SET");
        command
            .arg(key)
            .arg(&self.claim_value)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms(lease));
        command
    }

    /// Where a trigger's mark is (no TTL: it outlives every completion).
    fn mark_key(&self, pipeline: &str, name: &str) -> String {
        format!("{}{pipeline}#mark:{name}", self.prefix)
    }

    /// The set of an unfinished event's delivered outputs.
    fn outputs_key(&self, pipeline: &str, key: &str) -> String {
        format!("{}{pipeline}:{key}#outputs", self.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(
        &self,
        pipeline: &str,
        key: &str,
        lease: Duration,
    ) -> Result<Claim, IdempotencyError> {
        let mut connection = self.connection.clone();
        let key = self.key(pipeline, key);
        // A key can expire between the two commands: look again then.
        for _ in 0..3 {
            let set: Option<String> = self
                .set_claim(&key, lease)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if set.is_some() {
                return Ok(Claim::Acquired);
            }
            let value: Option<String> = connection.get(&key).await.map_err(unavailable)?;
            match value {
                None => continue,
                Some(v) if v == self.claim_value => {
                    // Ours already (a retry): extend the lease.
                    let _: bool = connection
                        .pexpire(&key, lease_ms(lease) as i64)
                        .await
                        .map_err(unavailable)?;
                    return Ok(Claim::Acquired);
                }
                Some(v) if v.starts_with(IN_PROGRESS) => return Ok(Claim::Busy),
                Some(v) => return Ok(Claim::Completed(Completion::parse(&v))),
            }
        }
        Ok(Claim::Busy)
    }

    /// The claim's `SET NX` and the read of the outputs set in one
    /// pipelined round trip; when the key is taken, as [`claim`](Self::claim)
    /// (extending our own lease, or waiting on another's), then the set.
    async fn claim_with_delivered(
        &self,
        pipeline: &str,
        key: &str,
        lease: Duration,
    ) -> Result<(Claim, HashSet<String>), IdempotencyError> {
        let mut connection = self.connection.clone();
        let (set, delivered): (Option<String>, HashSet<String>) = redis::pipe()
            .add_command(self.set_claim(&self.key(pipeline, key), lease))
            .smembers(self.outputs_key(pipeline, key))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if set.is_some() {
            return Ok((Claim::Acquired, delivered));
        }
        super::claim_then_delivered(self, pipeline, key, lease).await
    }

    async fn completion(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<Option<Completion>, IdempotencyError> {
        let mut connection = self.connection.clone();
        let how: Option<String> = connection
            .get(self.key(pipeline, key))
            .await
            .map_err(unavailable)?;
        Ok(how
            .filter(|v| !v.starts_with(IN_PROGRESS))
            .map(|v| Completion::parse(&v)))
    }

    async fn check(&self) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn delivered(
        &self,
        pipeline: &str,
        key: &str,
    ) -> Result<HashSet<String>, IdempotencyError> {
        let mut connection = self.connection.clone();
        connection
            .smembers(self.outputs_key(pipeline, key))
            .await
            .map_err(unavailable)
    }

    async fn record_delivery(
        &self,
        pipeline: &str,
        key: &str,
        output: &str,
    ) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        let set = self.outputs_key(pipeline, key);
        redis::pipe()
            .atomic()
            .sadd(&set, output)
            .ignore()
            .expire(&set, self.ttl.as_secs().max(1) as i64)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn complete_with_reply(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
        reply: Option<Vec<u8>>,
    ) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        let seconds = self.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set_ex(self.key(pipeline, key), how.as_str(), seconds)
            .ignore()
            .del(self.outputs_key(pipeline, key))
            .ignore();
        if let Some(reply) = reply {
            pipe.set_ex(self.reply_key(pipeline, key), reply, seconds)
                .ignore();
        }
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn reply(&self, pipeline: &str, key: &str) -> Result<Option<Vec<u8>>, IdempotencyError> {
        let mut connection = self.connection.clone();
        connection
            .get(self.reply_key(pipeline, key))
            .await
            .map_err(unavailable)
    }

    async fn mark(&self, pipeline: &str, name: &str) -> Result<Option<u64>, IdempotencyError> {
        let mut connection = self.connection.clone();
        connection
            .get(self.mark_key(pipeline, name))
            .await
            .map_err(unavailable)
    }

    async fn advance_mark(
        &self,
        pipeline: &str,
        name: &str,
        to: u64,
    ) -> Result<(), IdempotencyError> {
        // Compare and set in one step, so the higher of two writers stays.
        const ADVANCE: &str = "local current = tonumber(redis.call('GET', KEYS[1]))
            if current == nil or current < tonumber(ARGV[1]) then
                redis.call('SET', KEYS[1], ARGV[1])
            end";
        let mut connection = self.connection.clone();
        redis::cmd("EVAL")
            .arg(ADVANCE)
            .arg(1)
            .arg(self.mark_key(pipeline, name))
            .arg(to)
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }
}
