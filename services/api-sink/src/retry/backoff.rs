//! How long a lane waits before retrying a change, and when it stops retrying: [`Backoff`]
//! (exponential with full jitter, a `Retry-After` as its floor) and [`RetryBudget`] (the
//! optional `max_attempts` / `max_retry_age_ms`).
//!
//! Guarantee: by default the budget is unlimited — a transient failure is retried until it
//! succeeds, and only an explicitly configured budget turns it into a dead letter (as
//! `retry_budget_exhausted`, never silently). Pure: the clock is passed in, the jitter comes
//! from a seedable generator.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::config::RetryConfig;

/// Exponential backoff with full jitter (a uniform draw from zero to the ceiling), per
/// partition or lane. Full jitter spreads retries of many partitions that failed together.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Ceiling after the first failure.
    initial: Duration,
    /// Largest ceiling.
    max: Duration,
    /// Ceiling growth per failure.
    multiplier: f64,
    /// Seeded per instance, so lanes do not draw the same sequence.
    rng: SmallRng,
}

impl Backoff {
    /// From `[sink.retry]`, seeded from the OS.
    pub fn new(retry: &RetryConfig) -> Self {
        Self::with_rng(retry, SmallRng::from_entropy())
    }

    /// From `[sink.retry]`, with a fixed seed (tests, reproducible runs).
    pub fn with_seed(retry: &RetryConfig, seed: u64) -> Self {
        Self::with_rng(retry, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(retry: &RetryConfig, rng: SmallRng) -> Self {
        Backoff {
            initial: retry.initial_backoff(),
            max: retry.max_backoff(),
            multiplier: retry.multiplier,
            rng,
        }
    }

    /// The ceiling after `attempt` failed attempts (1 = the first failure):
    /// `initial × multiplier^(attempt−1)`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        grown(self.initial, self.multiplier, self.max, attempt)
    }

    /// How long to wait after `attempt` failed attempts: a uniform draw from
    /// `[0, ceiling(attempt)]`, or the server's `Retry-After` if that is longer.
    ///
    /// A `Retry-After` is honoured even beyond `max_backoff`: the server said when it can take
    /// the request again, and retrying sooner only earns another 429/503. A change that must
    /// not wait that long is what `max_retry_age_ms` is for.
    pub fn next_delay(&mut self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(self.rng.gen_range(0..=nanos));
        match retry_after {
            Some(asked) if asked > jittered => asked,
            _ => jittered,
        }
    }
}

/// The `n`-th step (1 = the first) of a growing wait: `initial × multiplier^(n−1)`, at most
/// `max` — a lane's backoff ceiling, and the pauses every lane shares (the breaker's, the
/// host's after a 429 without `Retry-After`).
pub fn grown(initial: Duration, multiplier: f64, max: Duration, n: u32) -> Duration {
    let exponent = n.saturating_sub(1).min(i32::MAX as u32) as i32;
    let wait = initial.as_secs_f64() * multiplier.powi(exponent);
    if wait.is_finite() && wait < max.as_secs_f64() {
        Duration::from_secs_f64(wait)
    } else {
        max
    }
}

/// The optional limits on retrying one change (`max_attempts`, `max_retry_age_ms`); without
/// either, retries are unlimited — no data loss by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Attempts allowed per change.
    max_attempts: Option<u32>,
    /// Time allowed since the first attempt.
    max_age: Option<Duration>,
}

impl RetryBudget {
    /// From `[sink.retry]`.
    pub fn new(retry: &RetryConfig) -> Self {
        RetryBudget {
            max_attempts: retry.max_attempts,
            max_age: retry.max_retry_age(),
        }
    }

    /// Whether a change that failed `attempts` times, first tried at `first_attempt_at`, has
    /// used up its budget (then it goes to `dead-letters` as [`super::REASON_RETRY_BUDGET_EXHAUSTED`]).
    pub fn is_exhausted(&self, attempts: u32, first_attempt_at: Instant, now: Instant) -> bool {
        let too_many = self.max_attempts.is_some_and(|max| attempts >= max);
        let too_old = self
            .max_age
            .is_some_and(|max| now.saturating_duration_since(first_attempt_at) >= max);
        too_many || too_old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        let backoff = Backoff::with_seed(&RetryConfig::default(), 1);
        let ceilings: Vec<u64> = (1..=9)
            .map(|attempt| backoff.ceiling(attempt).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(60));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(500));
    }

    #[test]
    fn backoff_is_fully_jittered_within_its_ceiling() {
        let mut backoff = Backoff::with_seed(&RetryConfig::default(), 7);
        for attempt in [1, 3, 12] {
            let ceiling = backoff.ceiling(attempt);
            let draws: Vec<Duration> = (0..200)
                .map(|_| backoff.next_delay(attempt, None))
                .collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: the whole range is used, low and high.
            assert!(draws.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
        let mut same = Backoff::with_seed(&RetryConfig::default(), 7);
        let mut again = Backoff::with_seed(&RetryConfig::default(), 7);
        assert_eq!(
            same.next_delay(4, None),
            again.next_delay(4, None),
            "seeded"
        );
    }

    #[test]
    fn backoff_honours_retry_after_even_beyond_its_cap() {
        let mut backoff = Backoff::with_seed(&RetryConfig::default(), 3);
        assert_eq!(
            backoff.next_delay(1, Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
        // A shorter Retry-After is a floor, not a replacement for the backoff.
        for _ in 0..50 {
            let delay = backoff.next_delay(5, Some(Duration::from_millis(100)));
            assert!(delay >= Duration::from_millis(100));
            assert!(delay <= backoff.ceiling(5));
        }
    }

    #[test]
    fn the_budget_is_unlimited_unless_configured() {
        let start = Instant::now();
        let later = start + Duration::from_secs(86_400 * 365);
        assert!(!RetryBudget::new(&RetryConfig::default()).is_exhausted(u32::MAX, start, later));
        let retry = RetryConfig {
            max_attempts: Some(3),
            max_retry_age_ms: Some(60_000),
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&retry);
        assert!(!budget.is_exhausted(2, start, start + Duration::from_secs(59)));
        assert!(budget.is_exhausted(3, start, start), "attempts");
        assert!(
            budget.is_exhausted(1, start, start + Duration::from_secs(60)),
            "age"
        );
    }
}
