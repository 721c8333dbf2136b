//! [`TokenBucket`]: `rate_limit_per_second` requests started per second across the service,
//! with bursts of up to `rate_limit_burst` after a quiet spell — a token bucket, kept as its
//! equivalent GCRA (one "theoretical arrival time" instead of a token count refilled by a
//! timer).
//!
//! Guarantee: it only delays requests. A start is reserved when a lane asks; a lane cancelled
//! while it waits leaves its slot unused (the rate is briefly lower, never higher).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Requests started per second, with a burst.
#[derive(Debug)]
pub struct TokenBucket {
    /// One second over the rate: the spacing of starts once the burst is spent.
    interval: Duration,
    /// How far ahead of the steady schedule a start may run: `(burst − 1) × interval`.
    tolerance: Duration,
    /// When the next start would be due on the steady schedule.
    next_due: Mutex<Option<Instant>>,
}

impl TokenBucket {
    /// `per_second` > 0 (checked with the config), `burst` ≥ 1.
    pub fn new(per_second: f64, burst: u32) -> TokenBucket {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        TokenBucket {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            next_due: Mutex::new(None),
        }
    }

    /// Reserves the next start at or after `now`; returns when it is.
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut next_due = self.next_due.lock().unwrap_or_else(PoisonError::into_inner);
        let due = next_due.map_or(now, |due| due.max(now));
        let start = due
            .checked_sub(self.tolerance)
            .map_or(now, |at| at.max(now));
        *next_due = Some(due + self.interval);
        start
    }

    /// Waits for this request's start.
    pub async fn wait(&self) {
        let start = self.reserve(Instant::now());
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(duration: Duration) -> u128 {
        duration.as_millis()
    }

    #[test]
    fn a_burst_starts_at_once_then_starts_are_spaced_by_the_rate() {
        let bucket = TokenBucket::new(10.0, 3);
        let t0 = Instant::now();
        let starts: Vec<_> = (0..6).map(|_| millis(bucket.reserve(t0) - t0)).collect();
        assert_eq!(starts, [0, 0, 0, 100, 200, 300]);
    }

    #[test]
    fn a_quiet_spell_refills_the_burst_and_no_more() {
        let bucket = TokenBucket::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            bucket.reserve(t0);
        }
        // 10 s quiet: the burst is back, but only 3, not 100.
        let t1 = t0 + Duration::from_secs(10);
        let starts: Vec<_> = (0..4).map(|_| millis(bucket.reserve(t1) - t1)).collect();
        assert_eq!(starts, [0, 0, 0, 100]);
    }

    #[test]
    fn burst_one_spaces_every_start() {
        let bucket = TokenBucket::new(4.0, 1);
        let t0 = Instant::now();
        let starts: Vec<_> = (0..3).map(|_| millis(bucket.reserve(t0) - t0)).collect();
        assert_eq!(starts, [0, 250, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_lanes_are_released_at_the_rate() {
        let bucket = std::sync::Arc::new(TokenBucket::new(2.0, 1));
        let t0 = Instant::now();
        let lanes: Vec<_> = (0..3)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move {
                    bucket.wait().await;
                    millis(Instant::now() - t0)
                })
            })
            .collect();
        let mut started = Vec::new();
        for lane in lanes {
            started.push(lane.await.unwrap());
        }
        started.sort();
        assert_eq!(started, [0, 500, 1000]);
    }
}
