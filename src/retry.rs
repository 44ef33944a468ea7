//! The one retry policy: exponential backoff with full jitter.
//!
//! Connectors and functions only classify their errors (retryable or not);
//! how often and how long to wait is decided here, once. Full jitter (a
//! random delay between zero and the exponential cap) spreads the retries
//! of many failing events so they do not hit a recovering backend in step.
//! The exponential schedule comes from `backon`; the jitter is applied on top.

use std::time::Duration;

use backon::ExponentialBuilder;

use crate::config::reader::Table;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included (default 5).
    pub max_attempts: u32,
    /// Cap of the first retry's delay (default 200ms); doubles each retry.
    pub initial_delay: Duration,
    /// Largest delay cap (default 30s); also caps a `Retry-After`.
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt (default: none).
    pub max_age: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_age: None,
        }
    }
}

impl RetryConfig {
    /// One attempt, no retry.
    pub const ONCE: RetryConfig = RetryConfig {
        max_attempts: 1,
        initial_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        max_age: None,
    };

    pub fn read(table: Table<'_, '_>) -> Option<Self> {
        let defaults = Self::default();
        let max_attempts = match table.get("max_attempts") {
            Some(f) => f.integer_in(1..=1000).map(|n| n as u32),
            None => Some(defaults.max_attempts),
        };
        let initial_delay = table
            .duration("initial_delay")
            .unwrap_or(defaults.initial_delay);
        let max_delay = table.duration("max_delay").unwrap_or(defaults.max_delay);
        if initial_delay > max_delay
            && let Some(f) = table.get("initial_delay")
        {
            f.error(format!("must not exceed max_delay ({max_delay:?})"));
        }
        let max_age = table.duration("max_age");
        table.finish();
        Some(Self {
            max_attempts: max_attempts?,
            initial_delay,
            max_delay,
            max_age,
        })
    }

    /// Delays before each retry (`max_attempts - 1` of them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin + use<> {
        use backon::BackoffBuilder as _;
        ExponentialBuilder::new()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
            .map(full_jitter)
    }
}

impl RetryConfig {
    /// The wait before the next retry: the backoff's, or what the failing
    /// party asked for (`Retry-After`, capped at `max_delay`) when longer.
    /// `None` (no more retries) stays `None`.
    pub fn adjust(&self, backoff: Option<Duration>, asked: Option<Duration>) -> Option<Duration> {
        let delay = backoff?;
        Some(asked.map_or(delay, |asked| asked.min(self.max_delay).max(delay)))
    }

    /// Whether a retry may still start, `elapsed` after the first attempt.
    pub fn within_age(&self, elapsed: Duration) -> bool {
        self.max_age.is_none_or(|age| elapsed < age)
    }
}

fn full_jitter(cap: Duration) -> Duration {
    let nanos = cap.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_up_to_max_delay_and_never_extends_attempts() {
        let policy = RetryConfig {
            max_delay: Duration::from_secs(5),
            ..RetryConfig::default()
        };
        let ms = Duration::from_millis;
        assert_eq!(policy.adjust(Some(ms(100)), Some(ms(2000))), Some(ms(2000)));
        assert_eq!(
            policy.adjust(Some(ms(100)), Some(ms(60_000))),
            Some(ms(5000))
        );
        assert_eq!(policy.adjust(Some(ms(900)), Some(ms(10))), Some(ms(900)));
        assert_eq!(policy.adjust(None, Some(ms(10))), None);
        let aged = RetryConfig {
            max_age: Some(ms(1000)),
            ..RetryConfig::default()
        };
        assert!(aged.within_age(ms(999)) && !aged.within_age(ms(1000)));
    }

    #[test]
    fn delays_are_capped_jittered_and_counted() {
        let policy = RetryConfig {
            max_attempts: 6,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_age: None,
        };
        let caps = [100, 200, 300, 300, 300];
        let delays: Vec<_> = policy.delays().collect();
        assert_eq!(delays.len(), 5);
        for (delay, cap) in delays.iter().zip(caps) {
            assert!(
                *delay <= Duration::from_millis(cap),
                "{delay:?} over {cap}ms"
            );
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|_| policy.delays().next().unwrap()).collect();
        assert!(spread.len() > 10, "full jitter must vary the delay");
    }
}
