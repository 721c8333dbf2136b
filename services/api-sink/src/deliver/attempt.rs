//! One request, attempted until it is delivered or dead-lettered ([`Sink::send_with_retries`]):
//! a thin I/O loop around the retry decision ([`crate::retry::decide`]). Each attempt waits its
//! turn (`admission`: the host's pause, the global breaker, the rate limit, the in-flight
//! limit), takes the `Authorization` header, sends, classifies the result, and does what the
//! decision says: record the outcome, renew the credentials, or wait and send again.
//!
//! Guarantee: a request is only ever given up in two ways — an outcome the caller records
//! before the offset moves, or [`Halt::Abandoned`] when the lane is cancelled (revoke,
//! shutdown), which leaves the offset undone. A cancelled lane sends nothing more, not even a
//! retry already due: the partition's new owner sends it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use reqwest::header::HeaderValue;
use snapfeed_runtime::records::{now_millis, Attempt};
use tokio::time::Instant;

use super::admission::Admission;
use super::batch::Sent;
use super::lane::Lane;
use super::{Halt, Outcome, Sink};
use crate::auth::Authenticator;
use crate::config::{RetryConfig, SinkConfig};
use crate::metrics::SinkMetrics;
use crate::request::{PreparedBatch, PreparedRequest};
use crate::retry::{
    decide, AttemptResult, AttemptsSoFar, Backoff, Classification, Classifier, Decision,
    RetryBudget,
};

/// One request's attempts, for the receipt or dead letter.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    /// Start of the first attempt (latency, retry budget).
    pub first: Option<Instant>,
    /// Wall-clock time of the first attempt.
    pub first_at: Option<i64>,
    /// Wall-clock time of the last attempt.
    pub last_at: Option<i64>,
    /// Every attempt: when, status, error class.
    pub history: Vec<Attempt>,
}

impl Attempts {
    /// Starts an attempt: returns its wall-clock time.
    fn begin(&mut self) -> i64 {
        self.first.get_or_insert_with(Instant::now);
        let at = now_millis();
        self.first_at.get_or_insert(at);
        self.last_at = Some(at);
        at
    }

    fn so_far(&self, reauthenticated: bool) -> AttemptsSoFar {
        AttemptsSoFar {
            count: self.history.len() as u32,
            first_at: self.first.unwrap_or_else(Instant::now),
            reauthenticated,
        }
    }
}

/// The API as the lanes share it.
#[derive(Debug)]
pub(super) struct Api {
    /// One connection pool for every lane.
    pub(super) client: reqwest::Client,
    /// The `Authorization` header of each attempt.
    pub(super) auth: Authenticator,
    /// Sorts each result.
    classifier: Classifier,
    /// Optional limits on retrying one change.
    budget: RetryBudget,
    /// Each request's own backoff is made from this.
    pub(super) retry: RetryConfig,
    /// `request_timeout_ms`, connect to last body byte.
    request_timeout: Duration,
    /// The global limits every attempt passes.
    pub(super) admission: Admission,
    /// Lanes currently waiting to retry (a gauge).
    paused: AtomicUsize,
    /// How long the API has gone unanswered, for `/readyz`.
    pub(super) reachability: Reachability,
}

impl Api {
    pub(super) fn new(config: &SinkConfig, auth: Authenticator) -> Result<Api, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .build()?;
        Ok(Api {
            client,
            auth,
            classifier: Classifier::new(&config.retry, config.response_excerpt_bytes),
            budget: RetryBudget::new(&config.retry),
            retry: config.retry.clone(),
            request_timeout: config.request_timeout(),
            admission: Admission::new(config),
            paused: AtomicUsize::new(0),
            reachability: Reachability {
                started: Instant::now(),
                unanswered_since_ms: AtomicU64::new(0),
                not_ready_after: config.unreachable_not_ready_after(),
            },
        })
    }
}

/// Whether the API answers at all: the time since the first of an unbroken series of
/// attempts that got no response.
#[derive(Debug)]
pub(super) struct Reachability {
    /// The clock's origin (an atomic holds millis since it).
    started: Instant,
    /// Millis after `started` of the first unanswered attempt in a row (0: the API answers).
    unanswered_since_ms: AtomicU64,
    /// `unreachable_not_ready_after_ms`.
    not_ready_after: Duration,
}

impl Reachability {
    fn record(&self, answered: bool) {
        if answered {
            self.unanswered_since_ms.store(0, Ordering::Relaxed);
        } else {
            let since = self.started.elapsed().as_millis().max(1) as u64;
            let _ = self.unanswered_since_ms.compare_exchange(
                0,
                since,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Unanswered for longer than `unreachable_not_ready_after_ms`.
    pub(super) fn is_unreachable(&self) -> bool {
        let since = self.unanswered_since_ms.load(Ordering::Relaxed);
        since > 0
            && self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(since))
                > self.not_ready_after
    }
}

/// Counts a lane as paused from its first wait until the request ends, however it ends.
struct PausedLane<'a> {
    /// Holds the count.
    api: &'a Api,
    /// Shows it (`snapfeed_api_sink_paused_partitions`).
    metrics: &'a SinkMetrics,
    /// Whether this lane is counted.
    paused: bool,
}

impl PausedLane<'_> {
    fn pause(&mut self) {
        if !self.paused {
            self.paused = true;
            let now = self.api.paused.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics.paused_partitions.set(now as i64);
        }
    }
}

impl Drop for PausedLane<'_> {
    fn drop(&mut self) {
        if self.paused {
            let now = self.api.paused.fetch_sub(1, Ordering::Relaxed) - 1;
            self.metrics.paused_partitions.set(now as i64);
        }
    }
}

impl Sink {
    /// Sends one request until it is delivered, permanently refused, out of budget, or
    /// abandoned.
    pub(super) async fn send_with_retries(
        &self,
        lane: Lane,
        batch: &PreparedBatch,
    ) -> Result<Sent, Halt> {
        let mut attempts = Attempts::default();
        let mut backoff = Backoff::new(&self.api.retry);
        let mut reauthenticated = false;
        let mut paused = PausedLane {
            api: &self.api,
            metrics: &self.metrics,
            paused: false,
        };
        loop {
            let permit = self.admitted(lane).await?;
            let at = attempts.begin();
            let (classification, authorization) = match self.api.auth.header(&self.api.client).await
            {
                Ok(authorization) => {
                    if self.lanes.cancelled(lane) {
                        // Revoked or stopping while waiting for credentials: the new owner
                        // sends it.
                        return Err(Halt::Abandoned);
                    }
                    // A 429 read by another lane while this one waited for its slot or its
                    // credentials holds this request too.
                    self.until_host_open(lane).await?;
                    (
                        Some(self.attempt(&batch.request, authorization.clone()).await.0),
                        authorization,
                    )
                }
                Err(error) => {
                    tracing::warn!(
                        message = "No credentials for the request; retrying.",
                        reason = error.reason()
                    );
                    attempts.history.push(Attempt {
                        at,
                        status: None,
                        error: Some(error.reason().to_string()),
                    });
                    (None, None)
                }
            };
            drop(permit);
            let result = match &classification {
                Some(classification) => {
                    attempts.history.push(attempt_record(classification, at));
                    AttemptResult::Sent {
                        classification,
                        with_credentials: authorization.is_some(),
                    }
                }
                None => AttemptResult::NoCredentials,
            };
            let decision = decide(
                result,
                attempts.so_far(reauthenticated),
                &self.api.budget,
                &mut backoff,
                Instant::now(),
            );
            if let Some(classification) = &classification {
                self.metrics.count_attempt(classification, &decision);
            }
            match decision {
                Decision::Done(outcome) => return Ok(Sent::Done(outcome, attempts)),
                Decision::Reauthenticate => {
                    // An expired or revoked token: fetch a new one, try once more.
                    reauthenticated = true;
                    self.forget_credentials(authorization.as_ref()).await;
                }
                Decision::Retry {
                    after,
                    forget_credentials,
                } => {
                    if let Some(Classification::Unauthorized { status }) = &classification {
                        tracing::warn!(
                            message = "The API refused our credentials; retrying with backoff.",
                            status
                        );
                    }
                    if forget_credentials {
                        self.forget_credentials(authorization.as_ref()).await;
                    }
                    paused.pause();
                    self.wait_or_stop(lane, after).await?;
                    // The request may have taken effect: ask before sending it again.
                    if classification.as_ref().is_some_and(is_ambiguous) {
                        if let Some(landed) = self.confirm(lane, batch).await? {
                            if landed.iter().all(|landed| *landed) {
                                return Ok(Sent::Done(Outcome::CONFIRMED, attempts));
                            }
                            if landed.iter().any(|landed| *landed) {
                                return Ok(Sent::PartlyLanded { landed, attempts });
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sends `request` once and classifies the result (with the response body, empty when
    /// none came); feeds the latency metric, reachability and the shared limits (`admission`).
    /// Every request to the API goes through here: deliveries and confirmation lookups.
    pub(super) async fn attempt(
        &self,
        request: &PreparedRequest,
        authorization: Option<HeaderValue>,
    ) -> (Classification, Bytes) {
        let started = Instant::now();
        let result = request
            .to_reqwest(&self.api.client, authorization, self.api.request_timeout)
            .send()
            .await;
        let (classification, body) = self
            .api
            .classifier
            .classify_with_body(result, Utc::now())
            .await;
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        self.api.reachability.record(classification.is_answer());
        self.learn(&classification, started);
        (classification, body)
    }

    async fn forget_credentials(&self, rejected: Option<&HeaderValue>) {
        if let Some(rejected) = rejected {
            self.api.auth.invalidate(rejected).await;
        }
    }

    /// Sleeps `delay`; `Halt::Abandoned` if the lane is cancelled first.
    pub(super) async fn wait_or_stop(&self, lane: Lane, delay: Duration) -> Result<(), Halt> {
        let slept = tokio::select! {
            _ = tokio::time::sleep(delay) => !self.lanes.cancelled(lane),
            _ = self.lanes.until_cancelled(lane) => false,
        };
        if slept {
            Ok(())
        } else {
            Err(Halt::Abandoned)
        }
    }
}

/// A failure after which the request may or may not have taken effect: it went out and no
/// answer came (timeout, connection lost), or a gateway timed out waiting for the API.
fn is_ambiguous(classification: &Classification) -> bool {
    matches!(
        classification,
        Classification::Transient {
            status: None,
            reason: "timeout" | "transport_error",
            ..
        } | Classification::Transient {
            status: Some(504),
            ..
        }
    )
}

/// The attempt as the receipt or dead letter lists it.
fn attempt_record(classification: &Classification, at: i64) -> Attempt {
    let error = match classification {
        Classification::Transient { reason, .. } => Some(reason.to_string()),
        _ => None,
    };
    Attempt {
        at,
        status: classification.status().map(i32::from),
        error,
    }
}
