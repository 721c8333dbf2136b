//! The limits every attempt passes before it is sent — DESIGN's "good client of a
//! rate-limited API", all shared by every lane of every partition ([`crate::throttle`]):
//! the host's pause after a 429/503 (`Retry-After`, else a shared backoff), the global
//! breaker (every lane backs off together while most requests fail), `rate_limit_per_second`
//! with its burst, and the adaptive in-flight limit (at most `max_in_flight`).
//!
//! Each answer feeds them back ([`Sink::learn`]): the pause and the limit learn from every
//! attempt, not only from failures of the lane that got them.
//!
//! Guarantee: these only ever delay a request. A lane waiting here is cancelled like one
//! waiting to retry (revoke, shutdown) and then sends nothing. The pause is checked once
//! more right before the request goes out ([`Sink::until_host_open`]), so a lane that was
//! already past the other limits when a 429 arrived waits too.

use tokio::time::Instant;

use super::lane::Lane;
use super::{Halt, Sink};
use crate::config::SinkConfig;
use crate::retry::{Classification, GlobalBreaker};
use crate::throttle::pause::Signal;
use crate::throttle::{AdaptiveConcurrency, ConcurrencyPermit, Feedback, HostPause, TokenBucket};

/// What every attempt passes before it is sent.
#[derive(Debug)]
pub(super) struct Admission {
    /// Every lane pauses while the API has asked to slow down.
    pause: HostPause,
    /// Every lane backs off together while most requests fail.
    pub(super) breaker: GlobalBreaker,
    /// `rate_limit_per_second`, `rate_limit_burst`.
    rate: Option<TokenBucket>,
    /// Requests in flight, under the adaptive limit.
    in_flight: AdaptiveConcurrency,
}

impl Admission {
    pub(super) fn new(config: &SinkConfig) -> Admission {
        Admission {
            pause: HostPause::new(&config.retry),
            breaker: GlobalBreaker::new(&config.retry),
            rate: config
                .rate_limit_per_second
                .map(|rate| TokenBucket::new(rate, config.rate_limit_burst)),
            in_flight: AdaptiveConcurrency::new(config.throttle.concurrency(config.max_in_flight)),
        }
    }

    /// The in-flight limit now.
    pub(super) fn concurrency_limit(&self) -> usize {
        self.in_flight.limit()
    }
}

impl Sink {
    /// Waits for the host's pause and the breaker, the rate limit and an in-flight slot, in
    /// that order.
    pub(super) async fn admitted(&self, lane: Lane) -> Result<ConcurrencyPermit<'_>, Halt> {
        if self.lanes.cancelled(lane) {
            return Err(Halt::Abandoned);
        }
        let admission = &self.api.admission;
        self.until_host_open(lane).await?;
        // `biased`: the limit first. It is usually open at once, and then the cancellation
        // future is never polled — polling it registers on the lanes' shared Notify and takes
        // the partitions lock, on every attempt of every lane.
        tokio::select! {
            biased;
            _ = admission.breaker.wait() => {}
            _ = self.lanes.until_cancelled(lane) => return Err(Halt::Abandoned),
        }
        if let Some(rate) = &admission.rate {
            tokio::select! {
                biased;
                _ = rate.wait() => {}
                _ = self.lanes.until_cancelled(lane) => return Err(Halt::Abandoned),
            }
        }
        tokio::select! {
            biased;
            permit = admission.in_flight.acquire() => Ok(permit),
            _ = self.lanes.until_cancelled(lane) => Err(Halt::Abandoned),
        }
    }

    /// Waits out the host's pause, if one is running (one lock when none is).
    pub(super) async fn until_host_open(&self, lane: Lane) -> Result<(), Halt> {
        let pause = &self.api.admission.pause;
        if pause.paused_until(Instant::now()).is_none() {
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = pause.wait() => Ok(()),
            _ = self.lanes.until_cancelled(lane) => Err(Halt::Abandoned),
        }
    }

    /// Feeds an answer to a request sent at `sent_at` to the shared limits (the caller still
    /// holds its in-flight slot).
    pub(super) fn learn(&self, classification: &Classification, sent_at: Instant) {
        let now = Instant::now();
        let admission = &self.api.admission;
        if let Some(paused) = admission
            .pause
            .observe(Signal::of(classification), sent_at, now)
        {
            self.metrics
                .throttles
                .with_label_values(&[paused.cause.label()])
                .inc();
            self.metrics
                .throttled_seconds
                .inc_by(paused.added.as_secs_f64());
            tracing::warn!(
                message = "The API asked to slow down; every lane pauses.",
                cause = paused.cause.label(),
                pause_ms = paused.until.saturating_duration_since(now).as_millis() as u64
            );
        }
        let feedback = Feedback::of(classification, now.saturating_duration_since(sent_at));
        if let Some(limit) = admission.in_flight.feedback(feedback, sent_at, now) {
            self.metrics.concurrency_limit.set(limit as i64);
            tracing::debug!(message = "In-flight limit changed.", limit);
        }
        if let Some(until) = admission
            .breaker
            .record(classification.is_api_failure(), now)
        {
            self.metrics.global_backoff.inc();
            tracing::warn!(
                message = "Most requests fail; every lane backs off.",
                pause_ms = until.saturating_duration_since(now).as_millis() as u64
            );
        }
    }
}
