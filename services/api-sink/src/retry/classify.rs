//! Classifying one request's result: [`Classifier`] sorts it into delivered, transient (retry
//! the same change later), credentials refused, or permanent (dead-letter it) — a pure
//! function of the status, headers and body (the clock passed in for `Retry-After` dates).
//! What happens next is [`super::decide`]'s call, not this module's.
//!
//! Guarantee: a result is never lost in classification — every path through the network ends
//! in one of the four, and everything on the way to the API (connect errors, timeouts, resets)
//! is transient, never the change's fault. The response body is read only into a bounded
//! excerpt for a dead letter, never into a log.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::config::RetryConfig;

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
    /// The API refused our credentials (401 or 403, unless listed in `transient_statuses`):
    /// no change is at fault, so this is never a dead letter — see [`super::decide`].
    Unauthorized {
        /// 401 or 403.
        status: u16,
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
    /// Whether this outcome says the API is failing (counts toward [`super::GlobalBreaker`]). A
    /// permanent 4xx (or a refusal of our credentials) is an answer: the API is up.
    pub fn is_api_failure(&self) -> bool {
        matches!(self, Classification::Transient { .. })
    }

    /// Whether the API answered at all (any status); `false` only when no response came.
    pub fn is_answer(&self) -> bool {
        !matches!(self, Classification::Transient { status: None, .. })
    }

    /// The status of the response, if one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            Classification::Delivered { status, .. } | Classification::Unauthorized { status } => {
                Some(*status)
            }
            Classification::Transient { status, .. } | Classification::Permanent { status, .. } => {
                *status
            }
        }
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
        self.classify_with_body(result, now).await.0
    }

    /// [`Classifier::classify`], and the response body (empty when none came), for a caller
    /// that reads the answer (the confirmation lookup).
    pub async fn classify_with_body(
        &self,
        result: Result<reqwest::Response, reqwest::Error>,
        now: DateTime<Utc>,
    ) -> (Classification, bytes::Bytes) {
        let response = match result {
            Ok(response) => response,
            Err(error) => return (self.classify_error(&error), bytes::Bytes::new()),
        };
        let status = response.status();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => (self.classify_response(status, &headers, &body, now), body),
            // The status line came but the body did not: for a 2xx the effect may have
            // happened, which the Idempotency-Key makes safe to repeat.
            Err(error) => (self.classify_error(&error), bytes::Bytes::new()),
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
        if matches!(code, 401 | 403) {
            return Classification::Unauthorized { status: code };
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
    fn refused_credentials_are_their_own_class_and_no_api_failure() {
        for status in [401, 403] {
            let refused = classify(status, &[], r#"{"error":"invalid api key"}"#);
            assert_eq!(refused, Classification::Unauthorized { status });
            assert!(!refused.is_api_failure(), "the API answered");
            assert_eq!(refused.status(), Some(status));
        }
        // Listed as transient, a 401 is retried like any listed status.
        let listed = Classifier::new(
            &RetryConfig {
                transient_statuses: vec![401],
                ..RetryConfig::default()
            },
            1024,
        );
        assert!(matches!(
            listed.classify_response(StatusCode::UNAUTHORIZED, &HeaderMap::new(), b"", now()),
            Classification::Transient {
                reason: "http_status",
                ..
            }
        ));
    }
}
