//! The idempotency store on Redis, shared by every runnel process of a
//! deployment: a completion recorded by one process is seen by the others,
//! so an event redelivered to another consumer after a rebalance or a crash
//! is skipped there too. Keys expire after the TTL (Redis does the pruning).

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

use super::{Completion, IdempotencyError, IdempotencyStore};

pub struct RedisIdempotency {
    connection: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

fn unavailable(error: redis::RedisError) -> IdempotencyError {
    IdempotencyError(format!("redis: {error}"))
}

impl RedisIdempotency {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS);
    /// the connection reconnects by itself after failures.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, IdempotencyError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let connection = client.get_connection_manager().await.map_err(unavailable)?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    fn key(&self, pipeline: &str, key: &str) -> String {
        format!("{}{pipeline}:{key}", self.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
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
        Ok(how.map(|h| match h.as_str() {
            "dead-lettered" => Completion::DeadLettered,
            _ => Completion::Done,
        }))
    }

    async fn complete(
        &self,
        pipeline: &str,
        key: &str,
        how: Completion,
    ) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        let seconds = self.ttl.as_secs().max(1);
        connection
            .set_ex::<_, _, ()>(self.key(pipeline, key), how.as_str(), seconds)
            .await
            .map_err(unavailable)
    }
}
