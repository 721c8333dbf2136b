//! `[sink.retry]`: backoff, the optional retry budget, which statuses are transient, and when
//! every partition backs off together. The behaviour lives in [`crate::retry`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;

/// `[sink.retry]`.
///
/// A failure is **transient** — retried, the partition (or lane) paused meanwhile — when it is
/// a connection error, a timeout or another transport error, or a response whose status is in
/// `transient_statuses`. Any other non-2xx status (another 4xx, a 501, …) is **permanent**: the
/// change goes to `dead-letters`. Retries are unlimited unless `max_attempts` or
/// `max_retry_age_ms` is set (then the change is dead-lettered as `retry_budget_exhausted`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Backoff ceiling after the first failure.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Largest backoff ceiling (a `Retry-After` is honoured even when longer).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Ceiling growth per failed attempt.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Attempts per change before it is dead-lettered; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Time since a change's first attempt after which it is dead-lettered; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_age_ms: Option<u64>,
    /// Response statuses retried (exactly these; no implicit 5xx range).
    #[serde(default = "default_transient_statuses")]
    pub transient_statuses: Vec<u16>,
    /// Share of transient failures among the last `global_backoff_window` requests at which
    /// every partition pauses together.
    #[serde(default = "default_global_backoff_failure_ratio")]
    pub global_backoff_failure_ratio: f64,
    /// Requests (across partitions) the failure ratio is measured over.
    #[serde(default = "default_global_backoff_window")]
    pub global_backoff_window: usize,
}

fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_transient_statuses() -> Vec<u16> {
    vec![408, 429, 500, 502, 503, 504]
}
fn default_global_backoff_failure_ratio() -> f64 {
    0.8
}
fn default_global_backoff_window() -> usize {
    20
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            multiplier: default_multiplier(),
            max_attempts: None,
            max_retry_age_ms: None,
            transient_statuses: default_transient_statuses(),
            global_backoff_failure_ratio: default_global_backoff_failure_ratio(),
            global_backoff_window: default_global_backoff_window(),
        }
    }
}

impl RetryConfig {
    /// `initial_backoff_ms` as a duration.
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    /// `max_backoff_ms` as a duration.
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    /// `max_retry_age_ms` as a duration.
    pub fn max_retry_age(&self) -> Option<Duration> {
        self.max_retry_age_ms.map(Duration::from_millis)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let key = |name: &str| format!("sink.retry.{name}");
        if self.initial_backoff_ms == 0 {
            return Err(ConfigError::invalid(
                key("initial_backoff_ms"),
                0,
                "at least 1",
            ));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err(ConfigError::invalid(
                key("max_backoff_ms"),
                self.max_backoff_ms,
                format!("at least initial_backoff_ms ({})", self.initial_backoff_ms),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::invalid(
                key("multiplier"),
                self.multiplier,
                "a finite number of at least 1.0",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(ConfigError::invalid(
                key("max_attempts"),
                0,
                "at least 1, or absent for unlimited",
            ));
        }
        if self.max_retry_age_ms == Some(0) {
            return Err(ConfigError::invalid(
                key("max_retry_age_ms"),
                0,
                "at least 1, or absent for unlimited",
            ));
        }
        for status in &self.transient_statuses {
            if !(300..=599).contains(status) {
                return Err(ConfigError::invalid(
                    key("transient_statuses"),
                    status,
                    "HTTP statuses from 300 to 599 (2xx is always a delivery)",
                ));
            }
        }
        let ratio = self.global_backoff_failure_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(ConfigError::invalid(
                key("global_backoff_failure_ratio"),
                ratio,
                "a share above 0 and at most 1",
            ));
        }
        if self.global_backoff_window == 0 {
            return Err(ConfigError::invalid(
                key("global_backoff_window"),
                0,
                "at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{error_of, JSON};

    fn retry_error(line: &str) -> String {
        error_of(&format!("{JSON}[sink.retry]\n{line}\n"))
    }

    #[test]
    fn retry_rule_violations_name_their_keys() {
        let cases = [
            ("initial_backoff_ms = 0", "initial_backoff_ms"),
            ("max_backoff_ms = 100", "max_backoff_ms"),
            ("multiplier = 0.5", "multiplier"),
            ("max_attempts = 0", "max_attempts"),
            ("max_retry_age_ms = 0", "max_retry_age_ms"),
            ("transient_statuses = [200]", "transient_statuses"),
            (
                "global_backoff_failure_ratio = 0.0",
                "global_backoff_failure_ratio",
            ),
            (
                "global_backoff_failure_ratio = 1.5",
                "global_backoff_failure_ratio",
            ),
            ("global_backoff_window = 0", "global_backoff_window"),
        ];
        for (line, key) in cases {
            let error = retry_error(line);
            assert!(
                error.starts_with(&format!("config key `sink.retry.{key}`")),
                "{line}: {error}"
            );
        }
    }

    #[test]
    fn a_budget_and_statuses_can_be_set() {
        let config = crate::config::tests::load_text(&format!(
            "{JSON}[sink.retry]\nmax_attempts = 5\nmax_retry_age_ms = 3600000\n\
             transient_statuses = [429, 503]\n"
        ))
        .unwrap();
        let retry = config.sink.retry;
        assert_eq!(retry.max_attempts, Some(5));
        assert_eq!(retry.max_retry_age(), Some(Duration::from_secs(3600)));
        assert_eq!(retry.transient_statuses, [429, 503]);
    }
}
