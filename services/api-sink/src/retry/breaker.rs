//! [`GlobalBreaker`]: every lane backs off together while most requests fail, so an API that
//! is down is not hit by every partition's own retry loop.
//!
//! Guarantee: it only ever delays requests — it never drops or dead-letters a change. Its
//! only sleep is [`GlobalBreaker::wait`], on tokio's clock (tests run it on paused time).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryConfig;

/// Backs every partition off together while most requests fail, so a down API is not hit by
/// every partition's own retry loop. Shared (`Arc`) by all lanes.
///
/// It watches the last `global_backoff_window` outcomes across partitions. Once the window is
/// full and the share of API failures in it reaches `global_backoff_failure_ratio`, it opens:
/// a pause that every lane honours ([`GlobalBreaker::wait`]) before its next request. Pauses
/// grow like the backoff (`initial × multiplier^(n−1)`, at most `max_backoff`, no jitter —
/// each lane's own jittered backoff spreads the restart). Failures reported while a pause is
/// running do not lengthen it, so many lanes failing at once count as one escalation. Any
/// success closes it and resets the escalation.
#[derive(Debug)]
pub struct GlobalBreaker {
    /// Outcomes measured over.
    window: usize,
    /// Failure share that opens it.
    threshold: f64,
    /// Pause growth, as for [`super::Backoff`].
    initial: Duration,
    max: Duration,
    multiplier: f64,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    /// Last outcomes, `true` = API failure.
    outcomes: VecDeque<bool>,
    failures: usize,
    /// Pauses since the last success.
    escalation: u32,
    paused_until: Option<Instant>,
    /// Times it opened, ever (for a metric).
    opened_total: u64,
}

impl GlobalBreaker {
    /// From `[sink.retry]`.
    pub fn new(retry: &RetryConfig) -> Self {
        GlobalBreaker {
            window: retry.global_backoff_window.max(1),
            threshold: retry.global_backoff_failure_ratio,
            initial: retry.initial_backoff(),
            max: retry.max_backoff(),
            multiplier: retry.multiplier,
            state: Mutex::new(BreakerState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // Never held across an await or a panic point that leaves the state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request's outcome (see [`super::Classification::is_api_failure`]); returns the end
    /// of the pause when this outcome opened (or re-opened) the breaker.
    pub fn record(&self, api_failure: bool, now: Instant) -> Option<Instant> {
        let mut state = self.state();
        state.outcomes.push_back(api_failure);
        state.failures += usize::from(api_failure);
        while state.outcomes.len() > self.window {
            if state.outcomes.pop_front() == Some(true) {
                state.failures -= 1;
            }
        }
        if !api_failure {
            state.escalation = 0;
            state.paused_until = None;
            return None;
        }
        let pausing = state.paused_until.is_some_and(|until| until > now);
        let full = state.outcomes.len() >= self.window;
        let ratio = state.failures as f64 / state.outcomes.len() as f64;
        if pausing || !full || ratio < self.threshold {
            return None;
        }
        state.escalation = state.escalation.saturating_add(1);
        let pause =
            super::backoff::grown(self.initial, self.multiplier, self.max, state.escalation);
        let until = now + pause;
        state.paused_until = Some(until);
        state.opened_total += 1;
        Some(until)
    }

    /// The end of the running pause, if one is running at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.state().paused_until.filter(|until| *until > now)
    }

    /// Whether a pause is running at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        self.paused_until(now).is_some()
    }

    /// Times it has opened since start.
    pub fn opened_total(&self) -> u64 {
        self.state().opened_total
    }

    /// Waits out the running pause (and any that starts meanwhile); returns at once when closed.
    pub async fn wait(&self) {
        while let Some(until) = self.paused_until(Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> GlobalBreaker {
        GlobalBreaker::new(&RetryConfig {
            global_backoff_window: 10,
            global_backoff_failure_ratio: 0.8,
            ..RetryConfig::default()
        })
    }

    #[test]
    fn the_breaker_opens_at_the_ratio_over_a_full_window() {
        let breaker = breaker();
        let now = Instant::now();
        for _ in 0..9 {
            assert_eq!(breaker.record(true, now), None, "window not full yet");
        }
        let until = breaker.record(true, now).expect("10 of 10 failed");
        assert_eq!(until, now + Duration::from_millis(500));
        assert!(breaker.is_open(now));
        assert!(!breaker.is_open(until));
        assert_eq!(breaker.opened_total(), 1);

        let below = GlobalBreaker::new(&RetryConfig {
            global_backoff_window: 10,
            ..RetryConfig::default()
        });
        for i in 0..40 {
            // 7 failures in every 10: below 0.8.
            assert_eq!(below.record(i % 10 < 7, now), None);
        }
        assert!(!below.is_open(now));
    }

    #[test]
    fn the_breaker_escalates_once_per_pause_and_closes_on_success() {
        let breaker = breaker();
        let t0 = Instant::now();
        for _ in 0..10 {
            breaker.record(true, t0);
        }
        // Lanes failing during the pause do not lengthen it.
        for _ in 0..20 {
            assert_eq!(breaker.record(true, t0 + Duration::from_millis(100)), None);
        }
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            breaker.record(true, t1),
            Some(t1 + Duration::from_secs(1)),
            "second pause doubles"
        );
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(breaker.record(true, t2), Some(t2 + Duration::from_secs(2)));
        assert_eq!(breaker.record(false, t2), None);
        assert!(!breaker.is_open(t2), "a success closes it");
        let t3 = t2 + Duration::from_millis(1);
        assert_eq!(
            breaker.record(true, t3),
            Some(t3 + Duration::from_millis(500)),
            "escalation reset"
        );
        assert_eq!(breaker.opened_total(), 4);
    }

    #[test]
    fn the_breaker_pause_is_capped() {
        let breaker = breaker();
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            if let Some(until) = breaker.record(true, now) {
                last = until - now;
                now = until;
            }
        }
        assert_eq!(last, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn every_lane_waits_out_the_pause() {
        let breaker = std::sync::Arc::new(breaker());
        let start = Instant::now();
        breaker.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "closed: no wait");
        for _ in 0..10 {
            breaker.record(true, start);
        }
        let lanes: Vec<_> = (0..3)
            .map(|_| {
                let breaker = breaker.clone();
                tokio::spawn(async move {
                    breaker.wait().await;
                    Instant::now()
                })
            })
            .collect();
        for lane in lanes {
            assert!(lane.await.unwrap() >= start + Duration::from_millis(500));
        }
    }
}
