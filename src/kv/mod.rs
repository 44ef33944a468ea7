//! Key-value state for functions: the `kv` capability.
//!
//! A pipeline that grants `[function.capabilities] kv = "<store>"` gives its
//! function the `runnel:function/kv` interface on that store; the keys are
//! the pipeline's own (a store's keys are scoped by pipeline, so two
//! pipelines naming one store never see each other's). Without the grant
//! every call answers `not-granted`.
//!
//! The store is called from the invocation threads, so [`KvStore`] is
//! synchronous. [`embedded`] keeps it in SQLite (the default, one
//! process); [`redis`] in Redis, shared by several processes.

pub mod embedded;
#[cfg(feature = "redis")]
pub mod redis;

use std::time::Duration;

/// Why a key-value call failed, as the function sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A key or value over the store's limits, or the store full.
    #[error("{0}")]
    TooLarge(String),
    /// `increment` on a value that is not a decimal integer, or an overflow.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; trying the event again may work.
    #[error("{0}")]
    Unavailable(String),
}

/// The limits of a store, from the runtime config's `[kv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest key, in bytes (default 1 KiB).
    pub max_key_size: usize,
    /// Largest value, in bytes (default 1 MiB).
    pub max_value_size: usize,
    /// Most bytes (keys and values) one pipeline may keep in a store
    /// (default 64 MiB).
    pub max_store_size: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key_size: 1 << 10,
            max_value_size: 1 << 20,
            max_store_size: 64 << 20,
        }
    }
}

impl KvLimits {
    /// The error for a key or value over its limit, if one is.
    pub fn check(&self, key: &str, value: Option<&[u8]>) -> Result<(), KvError> {
        if key.len() > self.max_key_size {
            return Err(KvError::TooLarge(format!(
                "a key of {} bytes is over the store's max_key_size of {}",
                key.len(),
                self.max_key_size
            )));
        }
        if let Some(value) = value
            && value.len() > self.max_value_size
        {
            return Err(KvError::TooLarge(format!(
                "a value of {} bytes is over the store's max_value_size of {}",
                value.len(),
                self.max_value_size
            )));
        }
        Ok(())
    }
}

/// A key-value store; `scope` is the pipeline (and store name) whose keys
/// a call may touch.
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Sets `key`, replacing any value; `ttl` makes it expire.
    fn set(
        &self,
        scope: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), KvError>;
    /// Whether there was a value to delete.
    fn delete(&self, scope: &str, key: &str) -> Result<bool, KvError>;
    /// Sets `key` to `value` only if it holds `expected` now (`None`: only
    /// if it is absent); whether it did.
    fn compare_and_swap(
        &self,
        scope: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, KvError>;
    /// Adds `delta` to the decimal integer at `key` (absent: 0), keeping
    /// its expiry, and returns the sum.
    fn increment(&self, scope: &str, key: &str, delta: i64) -> Result<i64, KvError>;
}

/// What an invocation may reach of a store: the store and its scope.
#[derive(Clone)]
pub struct KvGrant {
    pub store: std::sync::Arc<dyn KvStore>,
    /// `<store>/<pipeline>`.
    pub scope: String,
    /// The store's name, for messages.
    pub name: String,
}

impl std::fmt::Debug for KvGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvGrant")
            .field("scope", &self.scope)
            .finish()
    }
}
