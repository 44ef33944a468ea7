//! The key-value store on Redis, shared by every runnel process of a
//! deployment (`[kv] type = "redis"`).
//!
//! A scope's keys live in one Redis hash (`<prefix>{<scope>}:data`), with
//! their expiry times in a sorted set and the bytes the scope keeps in a
//! counter beside it; the braces put all three in one hash slot. Each call
//! is one Lua script, so checking a limit, comparing and swapping, and
//! keeping the byte count right are atomic across processes. Expiry is
//! Redis's clock (`TIME`): a key past its expiry reads as absent and is
//! dropped, with its bytes, by the next call on its scope (up to a hundred
//! at a time), so the byte count follows what is really kept.
//!
//! [`KvStore`] is synchronous (the invocation threads call it): each call
//! blocks its thread on the process's runtime, under [`TIMEOUT`].

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{KvError, KvLimits, KvStore};

/// A call that takes longer failed: the event is retried.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Shared by every script: the time, and dropping expired keys.
const PRELUDE: &str = r#"
local data, expiry, bytes = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function remove(f)
  local size = redis.call('HSTRLEN', data, f)
  redis.call('ZREM', expiry, f)
  if redis.call('HDEL', data, f) == 1 then
    redis.call('DECRBY', bytes, #f + size)
    return 1
  end
  return 0
end
for _, f in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 100)) do
  remove(f)
end
local function live(f)
  local at = redis.call('ZSCORE', expiry, f)
  if at and tonumber(at) <= now then remove(f) end
end
-- Sets f to v (ttl in ms, 0 for none) unless the scope would pass max.
local function put(f, v, ttl, max)
  local before = 0
  if redis.call('HEXISTS', data, f) == 1 then
    before = #f + redis.call('HSTRLEN', data, f)
  end
  local delta = #f + #v - before
  if delta > 0 and tonumber(redis.call('GET', bytes) or '0') + delta > max then
    return redis.error_reply('RUNNEL_FULL')
  end
  redis.call('HSET', data, f, v)
  redis.call('INCRBY', bytes, delta)
  if ttl > 0 then
    redis.call('ZADD', expiry, now + ttl, f)
  else
    redis.call('ZREM', expiry, f)
  end
  return 1
end
"#;

const GET: &str = "live(ARGV[1]) return redis.call('HGET', data, ARGV[1])";
const SET: &str =
    "live(ARGV[1]) return put(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))";
const DELETE: &str = "live(ARGV[1]) return remove(ARGV[1])";
/// ARGV: key, whether a value is expected ("1"/"0"), the expected value,
/// the new value, ttl, max.
const COMPARE_AND_SWAP: &str = r#"
live(ARGV[1])
local current = redis.call('HGET', data, ARGV[1])
if ARGV[2] == '0' then
  if current then return 0 end
elseif current ~= ARGV[3] then
  return 0
end
return put(ARGV[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
"#;
/// Keeps the key's expiry; the sum as a string (exact past 2^53).
const INCREMENT: &str = r#"
live(ARGV[1])
local before = 0
if redis.call('HEXISTS', data, ARGV[1]) == 1 then
  before = redis.call('HSTRLEN', data, ARGV[1])
else
  before = -#ARGV[1]
end
local sum = redis.pcall('HINCRBY', data, ARGV[1], ARGV[2])
if type(sum) == 'table' and sum.err then return redis.error_reply('RUNNEL_INVALID ' .. sum.err) end
redis.call('INCRBY', bytes, redis.call('HSTRLEN', data, ARGV[1]) - before)
return redis.call('HGET', data, ARGV[1])
"#;

pub struct RedisKv {
    connection: ConnectionManager,
    prefix: String,
    limits: KvLimits,
    runtime: tokio::runtime::Handle,
    scripts: Scripts,
}

struct Scripts {
    get: redis::Script,
    set: redis::Script,
    delete: redis::Script,
    compare_and_swap: redis::Script,
    increment: redis::Script,
}

impl RedisKv {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS) from
    /// within the runtime the calls will block on; the connection
    /// reconnects by itself after failures.
    pub async fn connect(url: &str, prefix: &str, limits: KvLimits) -> Result<Self, KvError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let connection = tokio::time::timeout(TIMEOUT, client.get_connection_manager())
            .await
            .map_err(|_| {
                KvError::Unavailable(format!("redis: no answer from {url} within {TIMEOUT:?}"))
            })?
            .map_err(unavailable)?;
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}\n{body}"));
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            limits,
            runtime: tokio::runtime::Handle::current(),
            scripts: Scripts {
                get: script(GET),
                set: script(SET),
                delete: script(DELETE),
                compare_and_swap: script(COMPARE_AND_SWAP),
                increment: script(INCREMENT),
            },
        })
    }

    /// Runs `script` on `scope`'s keys with `args`, blocking.
    fn call<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        scope: &str,
        args: &[&[u8]],
    ) -> Result<T, KvError> {
        let base = format!("{}{{{scope}}}", self.prefix);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(format!("{base}:data"))
            .key(format!("{base}:expiry"))
            .key(format!("{base}:bytes"));
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        let result = self.runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, invocation.invoke_async(&mut connection)).await
        });
        match result {
            Err(_) => Err(KvError::Unavailable(format!(
                "redis: no answer within {TIMEOUT:?}"
            ))),
            Ok(Err(error)) => Err(self.error(error)),
            Ok(Ok(value)) => Ok(value),
        }
    }

    fn error(&self, error: redis::RedisError) -> KvError {
        let text = error.to_string();
        if text.contains("RUNNEL_FULL") {
            KvError::TooLarge(format!(
                "the store is full: this pipeline keeps at most {} bytes in it (max_store_size)",
                self.limits.max_store_size
            ))
        } else if text.contains("RUNNEL_INVALID") {
            KvError::Invalid(
                "increment: the value is not a decimal integer, or the sum overflows".into(),
            )
        } else {
            unavailable(error)
        }
    }
}

fn unavailable(error: redis::RedisError) -> KvError {
    KvError::Unavailable(format!("redis: {error}"))
}

fn ttl_ms(ttl: Option<Duration>) -> String {
    ttl.map_or(0, |t| t.as_millis().clamp(1, u64::MAX as u128) as u64)
        .to_string()
}

impl KvStore for RedisKv {
    fn get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.limits.check(key, None)?;
        self.call(&self.scripts.get, scope, &[key.as_bytes()])
    }

    fn set(
        &self,
        scope: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.limits.check(key, Some(value))?;
        let (ttl, max) = (ttl_ms(ttl), self.limits.max_store_size.to_string());
        let _: i64 = self.call(
            &self.scripts.set,
            scope,
            &[key.as_bytes(), value, ttl.as_bytes(), max.as_bytes()],
        )?;
        Ok(())
    }

    fn delete(&self, scope: &str, key: &str) -> Result<bool, KvError> {
        self.limits.check(key, None)?;
        let deleted: i64 = self.call(&self.scripts.delete, scope, &[key.as_bytes()])?;
        Ok(deleted == 1)
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
        let (ttl, max) = (ttl_ms(ttl), self.limits.max_store_size.to_string());
        let (flag, expected): (&[u8], &[u8]) = match expected {
            Some(e) => (b"1", e),
            None => (b"0", b""),
        };
        let swapped: i64 = self.call(
            &self.scripts.compare_and_swap,
            scope,
            &[
                key.as_bytes(),
                flag,
                expected,
                value,
                ttl.as_bytes(),
                max.as_bytes(),
            ],
        )?;
        Ok(swapped == 1)
    }

    fn increment(&self, scope: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        self.limits.check(key, None)?;
        let delta = delta.to_string();
        let sum: String = self.call(
            &self.scripts.increment,
            scope,
            &[key.as_bytes(), delta.as_bytes()],
        )?;
        sum.parse()
            .map_err(|_| KvError::Invalid(format!("increment: {sum:?} is not a decimal integer")))
    }
}
