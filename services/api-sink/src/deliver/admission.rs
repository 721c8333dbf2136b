//! The limits every attempt passes before it is sent — DESIGN's "good client of a
//! rate-limited API": the global breaker (every lane backs off together while most requests
//! fail), `rate_limit_per_second` (each start spaced from the last, across the service) and
//! `max_in_flight`.
//!
//! Guarantee: these only ever delay a request. A lane waiting here is cancelled like one
//! waiting to retry (revoke, shutdown) and then sends nothing.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::lane::Lane;
use super::{Halt, Sink};
use crate::config::SinkConfig;
use crate::retry::GlobalBreaker;

/// What every attempt passes before it is sent.
#[derive(Debug)]
pub(super) struct Admission {
    /// Every lane backs off together while most requests fail.
    pub(super) breaker: GlobalBreaker,
    /// `max_in_flight`.
    in_flight: Semaphore,
    /// `rate_limit_per_second`.
    rate: Option<RateLimit>,
}

/// Requests started per second across the service: each start is spaced from the last.
#[derive(Debug)]
struct RateLimit {
    /// One second over the rate.
    spacing: Duration,
    /// When the next request may start.
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    fn new(per_second: f64) -> RateLimit {
        RateLimit {
            spacing: Duration::from_secs_f64(1.0 / per_second.max(1e-6)),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + self.spacing;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

impl Admission {
    pub(super) fn new(config: &SinkConfig) -> Admission {
        Admission {
            breaker: GlobalBreaker::new(&config.retry),
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            rate: config.rate_limit_per_second.map(RateLimit::new),
        }
    }
}

impl Sink {
    /// Waits for the breaker, the rate limit and an in-flight permit, in that order.
    pub(super) async fn admitted(&self, lane: Lane) -> Result<SemaphorePermit<'_>, Halt> {
        if self.lanes.cancelled(lane) {
            return Err(Halt::Abandoned);
        }
        let admission = &self.api.admission;
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
            permit = admission.in_flight.acquire() => permit.map_err(|_| Halt::Abandoned),
            _ = self.lanes.until_cancelled(lane) => Err(Halt::Abandoned),
        }
    }
}
