//! [`AdaptiveConcurrency`]: how many requests may be in flight to the host, adapted to what it
//! can take — additive increase, multiplicative decrease (AIMD), as TCP and Vector's adaptive
//! request concurrency do.
//!
//! The limit starts at `max_in_flight` (an API that never pushes back gets the configured
//! concurrency from the first request) and stays between 1 and `max_in_flight`:
//! - **back-pressure** — a 429, a 5xx, a timeout, or a delivered answer slower than
//!   `latency_threshold` × the usual latency (and by more than scheduler noise) — multiplies it by `decrease_factor`, at most
//!   once per round trip: only a request sent after the last decrease can lower it again, so
//!   sixteen lanes refused at once are one decrease, not sixteen;
//! - a **success** while the limit is in full use adds `1/limit` (one more slot per limit's
//!   worth of successes, about one per round trip).
//!
//! The "usual latency" is a slow moving average of delivered answers; it follows a lasting
//! change, so a slower API settles at a new normal instead of being pushed down for ever.
//!
//! Guarantee: it only delays requests. Lowering the limit never cancels a request in flight;
//! new ones wait until the count is below the new limit.

use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::retry::Classification;

/// Delivered answers averaged before latency can count as back-pressure.
const LATENCY_WARM_UP: u32 = 20;
/// Weight of one answer in the usual latency (a slow average: ~1/α answers).
const LATENCY_WEIGHT: f64 = 0.05;
/// A slow answer must also be this much slower than usual: on a fast API a few milliseconds
/// are the scheduler's noise (a busy 2-core host), not the server's load.
const LATENCY_NOISE: Duration = Duration::from_millis(25);

/// What one answer says about the host's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feedback {
    /// Delivered, after `latency`.
    Success {
        /// Request start to classified answer.
        latency: Duration,
    },
    /// 429, 5xx or a timeout: the host is overloaded.
    BackPressure,
    /// Says nothing about load (a 4xx, a refused connection: the breaker's business).
    Neutral,
}

impl Feedback {
    /// The feedback of a classified result that took `latency`.
    pub fn of(classification: &Classification, latency: Duration) -> Feedback {
        match classification {
            Classification::Delivered { .. } => Feedback::Success { latency },
            Classification::Transient {
                status: Some(429 | 500..=599),
                ..
            }
            | Classification::Transient {
                reason: "timeout", ..
            } => Feedback::BackPressure,
            _ => Feedback::Neutral,
        }
    }
}

/// Settings of the limit (`[sink.throttle]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConcurrencySettings {
    /// `max_in_flight`: the ceiling, and the start.
    pub max: usize,
    /// False: the limit stays at `max` (a fixed semaphore).
    pub adaptive: bool,
    /// Multiplies the limit on back-pressure, in (0, 1).
    pub decrease_factor: f64,
    /// A delivered answer slower than this × the usual latency is back-pressure; `None`: latency
    /// is not a signal.
    pub latency_threshold: Option<f64>,
}

/// Requests in flight to the host, under an adaptive limit. Shared by every lane.
#[derive(Debug)]
pub struct AdaptiveConcurrency {
    settings: ConcurrencySettings,
    state: Mutex<LimitState>,
    /// Wakes waiting lanes when a slot frees or the limit grows.
    released: Notify,
}

#[derive(Debug)]
struct LimitState {
    /// The limit; requests may start while `in_flight < floor(limit)`.
    limit: f64,
    in_flight: usize,
    /// When the limit was last lowered.
    last_decrease: Option<Instant>,
    /// Usual latency of a delivered answer, in seconds.
    usual_latency: f64,
    /// Delivered answers averaged so far (up to the warm-up).
    samples: u32,
}

/// A slot in flight; frees it when dropped.
#[derive(Debug)]
pub struct ConcurrencyPermit<'a> {
    limiter: &'a AdaptiveConcurrency,
}

impl Drop for ConcurrencyPermit<'_> {
    fn drop(&mut self) {
        self.limiter.state().in_flight -= 1;
        self.limiter.released.notify_waiters();
    }
}

impl AdaptiveConcurrency {
    /// Starts at `settings.max`.
    pub fn new(settings: ConcurrencySettings) -> AdaptiveConcurrency {
        let max = settings.max.max(1);
        AdaptiveConcurrency {
            settings: ConcurrencySettings { max, ..settings },
            state: Mutex::new(LimitState {
                limit: max as f64,
                in_flight: 0,
                last_decrease: None,
                usual_latency: 0.0,
                samples: 0,
            }),
            released: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, LimitState> {
        // Never held across an await; every update is complete before unlock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> usize {
        whole(self.state().limit)
    }

    /// Waits for a slot under the current limit.
    pub async fn acquire(&self) -> ConcurrencyPermit<'_> {
        loop {
            // Registered before the check, so a release in between is not missed.
            let mut released = pin!(self.released.notified());
            released.as_mut().enable();
            {
                let mut state = self.state();
                if state.in_flight < whole(state.limit) {
                    state.in_flight += 1;
                    return ConcurrencyPermit { limiter: self };
                }
            }
            released.await;
        }
    }

    /// Learns from the answer to a request sent at `sent_at` (and still holding its permit);
    /// returns the new whole limit when it changed.
    pub fn feedback(&self, feedback: Feedback, sent_at: Instant, now: Instant) -> Option<usize> {
        if !self.settings.adaptive {
            return None;
        }
        let mut state = self.state();
        let before = whole(state.limit);
        let overloaded = match feedback {
            Feedback::Neutral => return None,
            Feedback::BackPressure => true,
            Feedback::Success { latency } => self.slow(&mut state, latency),
        };
        // A request sent before the last decrease was sent under the old limit.
        let current = state.last_decrease.is_none_or(|at| sent_at >= at);
        if !current {
            return None;
        }
        if overloaded {
            state.limit = (state.limit * self.settings.decrease_factor).max(1.0);
            state.last_decrease = Some(now);
        } else if state.in_flight >= before {
            state.limit = (state.limit + 1.0 / state.limit).min(self.settings.max as f64);
        }
        let after = whole(state.limit);
        drop(state);
        if after > before {
            self.released.notify_waiters();
        }
        (after != before).then_some(after)
    }

    /// Whether a delivered answer was slow enough to count as back-pressure; averages it in.
    fn slow(&self, state: &mut LimitState, latency: Duration) -> bool {
        let seconds = latency.as_secs_f64();
        let slow = match self.settings.latency_threshold {
            Some(threshold) if state.samples >= LATENCY_WARM_UP => {
                seconds > threshold * state.usual_latency
                    && seconds - state.usual_latency > LATENCY_NOISE.as_secs_f64()
            }
            _ => false,
        };
        state.usual_latency = if state.samples == 0 {
            seconds
        } else {
            state.usual_latency + LATENCY_WEIGHT * (seconds - state.usual_latency)
        };
        state.samples = state.samples.saturating_add(1).min(LATENCY_WARM_UP);
        slow
    }
}

/// Whole requests of a limit (at least 1).
fn whole(limit: f64) -> usize {
    (limit.floor() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(max: usize) -> AdaptiveConcurrency {
        AdaptiveConcurrency::new(ConcurrencySettings {
            max,
            adaptive: true,
            decrease_factor: 0.5,
            latency_threshold: Some(3.0),
        })
    }

    /// A limiter past the latency warm-up, its usual latency `usual_ms`.
    fn limiter_with_usual(max: usize, usual_ms: u64) -> AdaptiveConcurrency {
        let limiter = limiter(max);
        let t0 = Instant::now();
        for _ in 0..LATENCY_WARM_UP {
            limiter.feedback(ok(usual_ms), t0, t0);
        }
        limiter
    }

    fn ok(ms: u64) -> Feedback {
        Feedback::Success {
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn back_pressure_halves_the_limit_once_per_round_trip() {
        let limiter = limiter(16);
        let t0 = Instant::now();
        let t1 = t0 + 10 * MS;
        assert_eq!(limiter.feedback(Feedback::BackPressure, t0, t1), Some(8));
        // Fifteen more refusals of requests sent before the decrease: no further decrease.
        for _ in 0..15 {
            assert_eq!(limiter.feedback(Feedback::BackPressure, t0, t1), None);
        }
        assert_eq!(limiter.limit(), 8);
        // A request sent under the new limit and refused again: halves again, down to 1.
        assert_eq!(limiter.feedback(Feedback::BackPressure, t1, t1), Some(4));
        for _ in 0..10 {
            limiter.feedback(Feedback::BackPressure, t1 + MS, t1 + MS);
        }
        assert_eq!(limiter.limit(), 1, "never below one");
        assert_eq!(limiter.feedback(Feedback::Neutral, t1 + MS, t1 + MS), None);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_at_the_limit_grow_it_by_one_per_round_trip_up_to_max() {
        let limiter = limiter(4);
        let t0 = Instant::now();
        limiter.feedback(Feedback::BackPressure, t0, t0);
        assert_eq!(limiter.limit(), 2);
        // Successes while the limit is not in use do not grow it.
        let t1 = t0 + MS;
        assert_eq!(limiter.feedback(ok(10), t1, t1), None);
        assert_eq!(limiter.limit(), 2);
        // In full use: each success adds 1/limit (2 → 2.5 → 2.9 → 3.24).
        let _a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        assert_eq!(limiter.feedback(ok(10), t1, t1), None);
        assert_eq!(limiter.feedback(ok(10), t1, t1), None);
        assert_eq!(limiter.feedback(ok(10), t1, t1), Some(3));
        let _c = limiter.acquire().await;
        for _ in 0..20 {
            limiter.feedback(ok(10), t1, t1);
        }
        let _d = limiter.acquire().await;
        for _ in 0..20 {
            limiter.feedback(ok(10), t1, t1);
        }
        assert_eq!(limiter.limit(), 4, "capped at max_in_flight");
    }

    #[test]
    fn an_answer_much_slower_than_usual_is_back_pressure_after_the_warm_up() {
        let limiter = limiter(8);
        let t0 = Instant::now();
        // During the warm-up a slow answer is only averaged in.
        assert_eq!(limiter.feedback(ok(500), t0, t0), None);
        for _ in 0..LATENCY_WARM_UP {
            limiter.feedback(ok(20), t0, t0);
        }
        assert_eq!(limiter.limit(), 8);
        // Twice the usual: fine. Far beyond three times: back-pressure.
        assert_eq!(limiter.feedback(ok(60), t0, t0), None);
        assert_eq!(limiter.feedback(ok(2_000), t0, t0), Some(4));

        // On a fast API, a few milliseconds more are noise, even at ten times the usual.
        let fast = limiter_with_usual(8, 1);
        assert_eq!(fast.feedback(ok(10), t0, t0), None);
        assert_eq!(fast.limit(), 8);

        let fixed = AdaptiveConcurrency::new(ConcurrencySettings {
            latency_threshold: None,
            ..limiter.settings
        });
        for _ in 0..=LATENCY_WARM_UP {
            fixed.feedback(ok(20), t0, t0);
        }
        assert_eq!(fixed.feedback(ok(2_000), t0, t0), None, "latency ignored");
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let fixed = AdaptiveConcurrency::new(ConcurrencySettings {
            adaptive: false,
            ..limiter(8).settings
        });
        let t0 = Instant::now();
        assert_eq!(fixed.feedback(Feedback::BackPressure, t0, t0), None);
        assert_eq!(fixed.limit(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_start_only_below_the_limit_and_wake_when_a_slot_frees() {
        let limiter = Arc::new(limiter(4));
        let t0 = Instant::now();
        limiter.feedback(Feedback::BackPressure, t0, t0);
        let a = limiter.acquire().await;
        let b = limiter.acquire().await;
        let third = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let _permit = limiter.acquire().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !third.is_finished(),
            "a third request waits at a limit of 2"
        );
        drop(a);
        assert_eq!(third.await.unwrap(), t0 + Duration::from_secs(1));
        drop(b);
        assert_eq!(limiter.state().in_flight, 0, "every permit returned");
    }
}
