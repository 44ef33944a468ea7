//! Rate limits: a token bucket per route and per API key.
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`; a
//! request takes one, and a request that finds none is answered 429 with
//! `Retry-After` saying when one will be there. Limits are per process:
//! several runnel instances behind a balancer each allow their own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::reader::Field;

/// `rate_limit = { per_second = 50, burst = 100 }`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitConfig {
    /// Requests a second, sustained.
    pub per_second: f64,
    /// Requests at once after a quiet spell (default: one second's worth,
    /// at least 1).
    pub burst: f64,
}

impl RateLimitConfig {
    pub fn read(field: Field<'_, '_>) -> Option<Self> {
        let table = field.table()?;
        let per_second = table.required("per_second").and_then(|f| {
            let value = f.number()?;
            if !(value > 0.0 && value.is_finite()) {
                f.error("must be more than 0");
                return None;
            }
            Some(value)
        });
        let burst = match table.get("burst") {
            None => None,
            Some(f) => match f.integer_in(1..=1_000_000) {
                Some(n) => Some(Some(n as f64)),
                None => return None,
            },
        };
        table.finish();
        let per_second = per_second?;
        Some(Self {
            per_second,
            burst: burst.flatten().unwrap_or(per_second.ceil().max(1.0)),
        })
    }
}

/// One token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    config: RateLimitConfig,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            state: Mutex::new((config.burst, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let refilled = now.saturating_duration_since(*last).as_secs_f64() * self.config.per_second;
        *tokens = (*tokens + refilled).min(self.config.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - *tokens) / self.config.per_second,
            ))
        }
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1).
pub fn retry_after(wait: Duration) -> String {
    wait.as_secs_f64().ceil().max(1.0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let bucket = TokenBucket::new(RateLimitConfig {
            per_second: 2.0,
            burst: 3.0,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(bucket.take_at(start).is_ok());
        }
        let wait = bucket.take_at(start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after(wait), "1");
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        assert!(bucket.take_at(later).is_ok());
        assert!(bucket.take_at(later).is_err());
        // A long quiet spell refills to the burst, not beyond.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take_at(much_later).is_ok());
        }
        assert!(bucket.take_at(much_later).is_err());
    }
}
