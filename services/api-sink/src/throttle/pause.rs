//! [`HostPause`]: the API said "slow down" (429, or 503), so no lane sends until it may.
//!
//! With `Retry-After`, the pause ends when the header says — counted from when the answer was
//! read, so it never ends before the server's own window. Without it, every lane pauses for a
//! shared backoff (`[sink.retry]` `initial_backoff_ms × multiplier^(n−1)`, at most
//! `max_backoff_ms`) that grows while requests sent after the last pause are refused again,
//! and resets on a success.
//!
//! Guarantee: it only delays requests. A pause is only ever lengthened, never cut short by a
//! later, shorter answer — the longest wait any answer asked for holds.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryConfig;
use crate::retry::Classification;

/// What one answer says about the host's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A 2xx: the host takes requests.
    Accepted,
    /// 429 or 503 — or any retried status with a `Retry-After`: wait this long, or, when
    /// `None`, the shared backoff.
    Throttled(Option<Duration>),
    /// Anything else (a 4xx, a connection error, a 500): not a request to slow down — the
    /// breaker and the concurrency limit handle failures.
    Other,
}

impl Signal {
    /// The signal of a classified result.
    pub fn of(classification: &Classification) -> Signal {
        match classification {
            Classification::Delivered { .. } => Signal::Accepted,
            Classification::Transient {
                status: Some(429 | 503),
                retry_after,
                ..
            } => Signal::Throttled(*retry_after),
            Classification::Transient {
                retry_after: Some(after),
                ..
            } => Signal::Throttled(Some(*after)),
            _ => Signal::Other,
        }
    }
}

/// Why a pause started or grew (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// The answer's `Retry-After`.
    RetryAfter,
    /// A 429 or 503 without `Retry-After`: the shared backoff.
    Backoff,
}

impl PauseCause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            PauseCause::RetryAfter => "retry_after",
            PauseCause::Backoff => "backoff",
        }
    }
}

/// A pause that started or grew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// When every lane may send again.
    pub until: Instant,
    /// Why.
    pub cause: PauseCause,
    /// Time added to the host's paused time (0 < added ≤ until − now).
    pub added: Duration,
}

/// The host's pause, shared (`Arc`) by every lane.
#[derive(Debug)]
pub struct HostPause {
    /// Shared backoff growth, as for [`crate::retry::Backoff`] (no jitter: there is one pause).
    initial: Duration,
    max: Duration,
    multiplier: f64,
    state: Mutex<PauseState>,
}

#[derive(Debug, Default)]
struct PauseState {
    /// When the running (or last) pause ends.
    until: Option<Instant>,
    /// When the last pause started: a refusal of a request sent before it says nothing new.
    began: Option<Instant>,
    /// Shared backoffs since the last success.
    escalation: u32,
}

impl HostPause {
    /// The shared backoff from `[sink.retry]`.
    pub fn new(retry: &RetryConfig) -> HostPause {
        HostPause {
            initial: retry.initial_backoff(),
            max: retry.max_backoff(),
            multiplier: retry.multiplier,
            state: Mutex::new(PauseState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PauseState> {
        // Never held across an await; every update is complete before unlock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Learns from the answer to a request sent at `sent_at` and read at `now`; returns the
    /// pause when it started or grew.
    pub fn observe(&self, signal: Signal, sent_at: Instant, now: Instant) -> Option<Paused> {
        let mut state = self.state();
        let (until, cause) = match signal {
            Signal::Other => return None,
            Signal::Accepted => {
                state.escalation = 0;
                return None;
            }
            Signal::Throttled(Some(after)) => (now + after, PauseCause::RetryAfter),
            Signal::Throttled(None) => {
                let pausing = state.until.is_some_and(|until| until > now);
                let stale = state.began.is_some_and(|began| sent_at < began);
                if pausing || stale {
                    // Many lanes refused at once are one escalation, not many.
                    return None;
                }
                state.escalation = state.escalation.saturating_add(1);
                (now + self.backoff(state.escalation), PauseCause::Backoff)
            }
        };
        let running = state.until.filter(|current| *current > now);
        if running.is_some_and(|current| current >= until) {
            return None;
        }
        let added = until - running.unwrap_or(now);
        if running.is_none() {
            state.began = Some(now);
        }
        state.until = Some(until);
        Some(Paused {
            until,
            cause,
            added,
        })
    }

    /// `initial × multiplier^(escalation−1)`, at most `max`.
    fn backoff(&self, escalation: u32) -> Duration {
        crate::retry::backoff::grown(self.initial, self.multiplier, self.max, escalation)
    }

    /// The end of the running pause, if one is running at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.state().until.filter(|until| *until > now)
    }

    /// Waits out the running pause (and any that starts meanwhile); returns at once when none.
    pub async fn wait(&self) {
        while let Some(until) = self.paused_until(Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn pause() -> HostPause {
        HostPause::new(&RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            multiplier: 2.0,
            ..RetryConfig::default()
        })
    }

    fn transient(status: Option<u16>, retry_after: Option<Duration>) -> Classification {
        Classification::Transient {
            status,
            retry_after,
            reason: "test",
        }
    }

    #[test]
    fn throttling_answers_are_429_503_and_any_retry_after() {
        let secs = Some(Duration::from_secs(2));
        assert_eq!(
            Signal::of(&transient(Some(429), secs)),
            Signal::Throttled(secs)
        );
        assert_eq!(
            Signal::of(&transient(Some(503), None)),
            Signal::Throttled(None)
        );
        assert_eq!(
            Signal::of(&transient(Some(502), secs)),
            Signal::Throttled(secs)
        );
        assert_eq!(Signal::of(&transient(Some(500), None)), Signal::Other);
        assert_eq!(Signal::of(&transient(None, None)), Signal::Other, "timeout");
        let delivered = Classification::Delivered {
            status: 200,
            response_id: None,
        };
        assert_eq!(Signal::of(&delivered), Signal::Accepted);
        let refused = Classification::Permanent {
            status: Some(400),
            excerpt: String::new(),
        };
        assert_eq!(Signal::of(&refused), Signal::Other);
    }

    #[test]
    fn retry_after_pauses_the_host_and_only_ever_lengthens_it() {
        let pause = pause();
        let t0 = Instant::now();
        let paused = pause
            .observe(Signal::Throttled(Some(Duration::from_secs(2))), t0, t0)
            .expect("a pause");
        assert_eq!(paused.until, t0 + Duration::from_secs(2));
        assert_eq!(paused.cause, PauseCause::RetryAfter);
        assert_eq!(paused.added, Duration::from_secs(2));
        assert_eq!(pause.paused_until(t0 + 1999 * MS), Some(paused.until));
        assert_eq!(pause.paused_until(paused.until), None);

        // A shorter answer read meanwhile does not shorten it.
        let t1 = t0 + 500 * MS;
        assert_eq!(
            pause.observe(Signal::Throttled(Some(Duration::from_secs(1))), t1, t1),
            None
        );
        // A longer one lengthens it, counting only the added time.
        let longer = pause
            .observe(Signal::Throttled(Some(Duration::from_secs(3))), t1, t1)
            .expect("longer");
        assert_eq!(longer.until, t1 + Duration::from_secs(3));
        assert_eq!(longer.added, 1500 * MS);
        // A success does not end a server-stated pause.
        pause.observe(Signal::Accepted, t0, t1);
        assert_eq!(pause.paused_until(t1), Some(longer.until));
    }

    #[test]
    fn without_retry_after_the_shared_backoff_grows_once_per_pause_and_resets_on_success() {
        let pause = pause();
        let t0 = Instant::now();
        let first = pause.observe(Signal::Throttled(None), t0, t0).unwrap();
        assert_eq!(
            (first.until, first.cause),
            (t0 + 100 * MS, PauseCause::Backoff)
        );
        // Other lanes refused during the pause: one escalation.
        assert_eq!(
            pause.observe(Signal::Throttled(None), t0, t0 + 10 * MS),
            None
        );
        // Refused after the pause, but sent before it began: stale.
        let t1 = t0 + 100 * MS;
        assert_eq!(
            pause.observe(Signal::Throttled(None), t0 - MS, t1),
            None,
            "sent before the pause"
        );
        // Sent after it and refused again: doubles.
        let second = pause.observe(Signal::Throttled(None), t1, t1).unwrap();
        assert_eq!(second.until, t1 + 200 * MS);
        let t2 = second.until;
        assert_eq!(
            pause
                .observe(Signal::Throttled(None), t2, t2)
                .unwrap()
                .until,
            t2 + 400 * MS
        );
        let t3 = t2 + 400 * MS;
        pause.observe(Signal::Accepted, t3, t3);
        assert_eq!(
            pause
                .observe(Signal::Throttled(None), t3, t3)
                .unwrap()
                .until,
            t3 + 100 * MS,
            "a success resets the escalation"
        );
        // Capped at max_backoff_ms.
        let mut now = t3 + 100 * MS;
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            if let Some(paused) = pause.observe(Signal::Throttled(None), now, now) {
                last = paused.until - now;
                now = paused.until;
            }
        }
        assert_eq!(last, Duration::from_secs(1));
        // Other answers change nothing.
        assert_eq!(pause.observe(Signal::Other, now, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiter_sleeps_until_the_pause_ends() {
        let pause = std::sync::Arc::new(pause());
        let start = Instant::now();
        pause.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no pause: no wait");
        pause.observe(
            Signal::Throttled(Some(Duration::from_secs(2))),
            start,
            start,
        );
        let lanes: Vec<_> = (0..3)
            .map(|_| {
                let pause = pause.clone();
                tokio::spawn(async move {
                    pause.wait().await;
                    Instant::now()
                })
            })
            .collect();
        for lane in lanes {
            assert_eq!(lane.await.unwrap(), start + Duration::from_secs(2));
        }
    }
}
