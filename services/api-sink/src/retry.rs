//! What to do after a request: [`Classifier`] sorts an outcome into delivered, transient
//! (retry the same change later) or permanent (dead-letter it); [`Backoff`] says how long a
//! partition or lane waits before the retry; [`RetryBudget`] says when an optional limit is
//! reached; [`GlobalBreaker`] makes every partition back off together while the API is down.
//!
//! Guarantee: nothing here drops a change. By default a transient failure is retried without
//! limit — the unacknowledged consumer offset *is* the retry state — and only a permanent
//! answer or an explicitly configured budget ends the retries (as a dead letter, never
//! silently). No I/O except reading a response body; no sleeping except
//! [`GlobalBreaker::wait`], on tokio's clock (so tests run it on paused time).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::config::RetryConfig;

/// Dead-letter reason when `max_attempts` or `max_retry_age_ms` is exceeded.
pub const REASON_RETRY_BUDGET_EXHAUSTED: &str = "retry_budget_exhausted";

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// A 2xx: the change is delivered.
    Delivered {
        /// The response status.
        status: u16,
        /// The API's id for the effect: a top-level JSON `id` (string or number), else
        /// `form_id` (CommCare's bulk answer), if the body has one.
        response_id: Option<String>,
    },
    /// Worth retrying the same change later.
    Transient {
        /// The response status, if a response came at all.
        status: Option<u16>,
        /// What the server asked for in `Retry-After`, relative to the time of classification.
        retry_after: Option<Duration>,
        /// Metric label, from a fixed set: `connect_error`, `timeout`, `transport_error`,
        /// `rate_limited` (429), `server_error` (5xx), `http_status` (another listed status).
        reason: &'static str,
    },
    /// Will not succeed by retrying: dead-letter the change.
    Permanent {
        /// The response status; `None` when the request could not even be built.
        status: Option<u16>,
        /// The start of the response body, at most `response_excerpt_bytes` (a char boundary).
        /// The API's words, possibly about health data: for the dead letter, never for logs.
        excerpt: String,
    },
}

impl Classification {
    /// Whether this outcome says the API is failing (counts toward [`GlobalBreaker`]). A
    /// permanent 4xx is an answer: the API is up.
    pub fn is_api_failure(&self) -> bool {
        matches!(self, Classification::Transient { .. })
    }
}

/// Sorts request outcomes; built once from the config.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Statuses retried; exactly the configured list (no implicit 5xx range).
    transient_statuses: Vec<u16>,
    /// Longest response excerpt kept for a dead letter.
    excerpt_bytes: usize,
}

impl Classifier {
    /// From `[sink.retry] transient_statuses` and `sink.response_excerpt_bytes`.
    pub fn new(retry: &RetryConfig, excerpt_bytes: usize) -> Self {
        Classifier {
            transient_statuses: retry.transient_statuses.clone(),
            excerpt_bytes,
        }
    }

    /// Classifies a request's result, reading the body of a response. `now` is the wall
    /// clock, for a `Retry-After` given as an HTTP date.
    pub async fn classify(
        &self,
        result: Result<reqwest::Response, reqwest::Error>,
        now: DateTime<Utc>,
    ) -> Classification {
        let response = match result {
            Ok(response) => response,
            Err(error) => return self.classify_error(&error),
        };
        let status = response.status();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => self.classify_response(status, &headers, &body, now),
            // The status line came but the body did not: for a 2xx the effect may have
            // happened, which the Idempotency-Key makes safe to repeat.
            Err(error) => self.classify_error(&error),
        }
    }

    /// Classifies a complete response.
    pub fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Classification {
        let code = status.as_u16();
        if status.is_success() {
            return Classification::Delivered {
                status: code,
                response_id: response_id(body),
            };
        }
        if self.transient_statuses.contains(&code) {
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, now));
            let reason = match code {
                429 => "rate_limited",
                500..=599 => "server_error",
                _ => "http_status",
            };
            return Classification::Transient {
                status: Some(code),
                retry_after,
                reason,
            };
        }
        Classification::Permanent {
            status: Some(code),
            excerpt: excerpt(body, self.excerpt_bytes),
        }
    }

    /// Classifies a request that got no (complete) response. Everything on the way —
    /// connecting, timing out, a connection reset, a redirect loop — is transient: the change
    /// is fine, the path to the API is not. Only a request that could not be built is
    /// permanent (retrying the same request cannot help).
    pub fn classify_error(&self, error: &reqwest::Error) -> Classification {
        if error.is_builder() {
            return Classification::Permanent {
                status: None,
                excerpt: "request could not be built".into(),
            };
        }
        let reason = if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "connect_error"
        } else {
            "transport_error"
        };
        Classification::Transient {
            status: error.status().map(|s| s.as_u16()),
            retry_after: None,
            reason,
        }
    }
}

/// The `id` (or CommCare's `form_id`) of a JSON object body.
fn response_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ids {
        id: Option<serde_json::Value>,
        form_id: Option<serde_json::Value>,
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let ids: Ids = serde_json::from_slice(body).ok()?;
    [ids.id, ids.form_id]
        .into_iter()
        .flatten()
        .find_map(|value| match value {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// At most `max_bytes` of `body` as text, cut at a char boundary (invalid UTF-8 replaced).
pub fn excerpt(body: &[u8], max_bytes: usize) -> String {
    // Decode a little more than needed only: a replacement char can be wider than its byte.
    let window = &body[..body.len().min(max_bytes.saturating_add(4))];
    let mut text = String::from_utf8_lossy(window).into_owned();
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A `Retry-After` value — delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime,
/// RFC 9110 §10.2.3) — as a wait from `now`. A date in the past is zero; garbage is `None`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .map(|date| date.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
                .map(|naive| naive.and_utc())
        })?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

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
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let ceiling = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if ceiling.is_finite() && ceiling < self.max.as_secs_f64() {
            Duration::from_secs_f64(ceiling)
        } else {
            self.max
        }
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
    /// used up its budget (then it goes to `dead-letters` as [`REASON_RETRY_BUDGET_EXHAUSTED`]).
    pub fn is_exhausted(&self, attempts: u32, first_attempt_at: Instant, now: Instant) -> bool {
        let too_many = self.max_attempts.is_some_and(|max| attempts >= max);
        let too_old = self
            .max_age
            .is_some_and(|max| now.saturating_duration_since(first_attempt_at) >= max);
        too_many || too_old
    }
}

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
    /// Pause growth, as for [`Backoff`].
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

    /// Records a request's outcome (see [`Classification::is_api_failure`]); returns the end
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
        let exponent = (state.escalation - 1).min(i32::MAX as u32) as i32;
        let pause = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let pause = if pause.is_finite() && pause < self.max.as_secs_f64() {
            Duration::from_secs_f64(pause)
        } else {
            self.max
        };
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
    use reqwest::header::HeaderValue;
    use snapfeed_harness::stub_api::{Reply, StubApi};

    use super::*;

    fn classifier() -> Classifier {
        Classifier::new(&RetryConfig::default(), 1024)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn classify(status: u16, headers: &[(&str, &str)], body: &str) -> Classification {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        classifier().classify_response(
            StatusCode::from_u16(status).unwrap(),
            &map,
            body.as_bytes(),
            now(),
        )
    }

    #[test]
    fn a_2xx_is_delivered_with_the_id_the_api_returned() {
        assert_eq!(
            classify(200, &[], r#"{"id": "case-17", "other": [1, 2]}"#),
            Classification::Delivered {
                status: 200,
                response_id: Some("case-17".into())
            }
        );
        let numeric = classify(200, &[], r#"{"id": 42}"#);
        assert!(
            matches!(numeric, Classification::Delivered { response_id: Some(id), .. } if id == "42")
        );
        let commcare = classify(200, &[], r#"{"form_id": "f-1", "cases": []}"#);
        assert!(
            matches!(commcare, Classification::Delivered { response_id: Some(id), .. } if id == "f-1")
        );
        assert_eq!(
            classify(201, &[], ""),
            Classification::Delivered {
                status: 201,
                response_id: None
            }
        );
        let not_json = classify(204, &[], "<html>ok</html>");
        assert!(matches!(
            not_json,
            Classification::Delivered {
                response_id: None,
                ..
            }
        ));
    }

    #[test]
    fn listed_statuses_are_transient_with_retry_after() {
        assert_eq!(
            classify(429, &[("retry-after", "7")], ""),
            Classification::Transient {
                status: Some(429),
                retry_after: Some(Duration::from_secs(7)),
                reason: "rate_limited"
            }
        );
        let date = classify(429, &[("retry-after", "Wed, 01 May 2024 12:00:30 GMT")], "");
        assert!(
            matches!(date, Classification::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(30))
        );
        assert_eq!(
            classify(503, &[], "busy"),
            Classification::Transient {
                status: Some(503),
                retry_after: None,
                reason: "server_error"
            }
        );
        assert!(matches!(
            classify(408, &[], ""),
            Classification::Transient {
                reason: "http_status",
                ..
            }
        ));
        assert!(classify(503, &[], "").is_api_failure());
    }

    #[test]
    fn unlisted_statuses_are_permanent_with_a_char_safe_excerpt() {
        // 2-byte characters, so 1024 bytes would split one: the excerpt stops before it.
        let body = format!("x{}", "é".repeat(2000));
        let Classification::Permanent { status, excerpt } = classify(400, &[], &body) else {
            panic!("400 is permanent");
        };
        assert_eq!(status, Some(400));
        assert_eq!(excerpt.len(), 1023);
        assert!(body.starts_with(&excerpt));
        let short = classify(422, &[], r#"{"error":"bad"}"#);
        assert_eq!(
            short,
            Classification::Permanent {
                status: Some(422),
                excerpt: r#"{"error":"bad"}"#.into()
            }
        );
        assert!(
            matches!(classify(501, &[], ""), Classification::Permanent { .. }),
            "not listed"
        );
        assert!(!short.is_api_failure());
        assert_eq!(excerpt_of_invalid_utf8(), "ab\u{fffd}");
    }

    fn excerpt_of_invalid_utf8() -> String {
        excerpt(b"ab\xffcd", 5)
    }

    #[test]
    fn retry_after_parses_seconds_and_every_http_date_form() {
        let at = |value| parse_retry_after(value, now());
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            at("Wed, 01 May 2024 12:01:00 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            at("Wednesday, 01-May-24 12:00:10 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(at("Wed May  1 12:00:05 2024"), Some(Duration::from_secs(5)));
        assert_eq!(
            at("Tue, 30 Apr 2024 12:00:00 GMT"),
            Some(Duration::ZERO),
            "past"
        );
        assert_eq!(at("-5"), None);
        assert_eq!(at("soon"), None);
        assert_eq!(at(""), None);
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = reqwest::Client::new();
        let result = client.post(format!("http://{addr}/x")).send().await;
        let outcome = classifier().classify(result, Utc::now()).await;
        assert!(
            matches!(
                outcome,
                Classification::Transient {
                    status: None,
                    reason: "connect_error",
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_timeout_is_transient_and_a_response_is_read_to_its_id() {
        let api = StubApi::start().await;
        api.push_replies([Reply::ok().with_delay(Duration::from_secs(5)), Reply::ok()]);
        let client = reqwest::Client::new();
        let url = format!("{}/cases", api.url());
        let slow = client
            .post(&url)
            .timeout(Duration::from_millis(50))
            .send()
            .await;
        let outcome = classifier().classify(slow, Utc::now()).await;
        assert!(
            matches!(
                outcome,
                Classification::Transient {
                    reason: "timeout",
                    ..
                }
            ),
            "{outcome:?}"
        );
        let ok = client
            .post(&url)
            .header("Idempotency-Key", "k")
            .send()
            .await;
        let outcome = classifier().classify(ok, Utc::now()).await;
        assert!(
            matches!(&outcome, Classification::Delivered { status: 200, response_id: Some(id) } if id.len() == 36),
            "{outcome:?}"
        );
    }

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
