//! `[sink.throttle]`: how the in-flight limit adapts to what the API can take. The behaviour
//! lives in [`crate::throttle`]; the pause after a 429/503 needs no settings (it follows
//! `Retry-After`, else `[sink.retry]`'s backoff) and is always on.

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;

use crate::throttle::concurrency::ConcurrencySettings;

/// `[sink.throttle]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Lower the in-flight limit on back-pressure and grow it back on success (AIMD), between 1
    /// and `max_in_flight`; false keeps it at `max_in_flight`.
    #[serde(default = "default_adaptive_concurrency")]
    pub adaptive_concurrency: bool,
    /// The limit is multiplied by this on back-pressure (429, 5xx, timeout, slow answer).
    #[serde(default = "default_decrease_factor")]
    pub decrease_factor: f64,
    /// A delivered answer slower than this many times the usual latency counts as
    /// back-pressure; 0 turns latency off as a signal.
    #[serde(default = "default_latency_threshold")]
    pub latency_threshold: f64,
}

fn default_adaptive_concurrency() -> bool {
    true
}
fn default_decrease_factor() -> f64 {
    0.5
}
fn default_latency_threshold() -> f64 {
    3.0
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            adaptive_concurrency: default_adaptive_concurrency(),
            decrease_factor: default_decrease_factor(),
            latency_threshold: default_latency_threshold(),
        }
    }
}

impl ThrottleConfig {
    /// The limit's settings, with `max_in_flight` as its ceiling.
    pub fn concurrency(&self, max_in_flight: usize) -> ConcurrencySettings {
        ConcurrencySettings {
            max: max_in_flight,
            adaptive: self.adaptive_concurrency,
            decrease_factor: self.decrease_factor,
            latency_threshold: (self.latency_threshold > 0.0).then_some(self.latency_threshold),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let factor = self.decrease_factor;
        if !(factor > 0.0 && factor < 1.0) {
            return Err(ConfigError::invalid(
                "sink.throttle.decrease_factor",
                factor,
                "a number above 0 and below 1",
            ));
        }
        let threshold = self.latency_threshold;
        if !(threshold == 0.0 || (threshold.is_finite() && threshold > 1.0)) {
            return Err(ConfigError::invalid(
                "sink.throttle.latency_threshold",
                threshold,
                "a finite number above 1, or 0 to ignore latency",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{error_of, load_text, JSON};

    #[test]
    fn throttle_rule_violations_name_their_keys() {
        let cases = [
            ("decrease_factor = 1.0", "decrease_factor"),
            ("decrease_factor = 0.0", "decrease_factor"),
            ("latency_threshold = 0.5", "latency_threshold"),
            ("latency_threshold = -1.0", "latency_threshold"),
        ];
        for (line, key) in cases {
            let error = error_of(&format!("{JSON}[sink.throttle]\n{line}\n"));
            assert!(
                error.starts_with(&format!("config key `sink.throttle.{key}`")),
                "{line}: {error}"
            );
        }
    }

    #[test]
    fn defaults_adapt_and_latency_can_be_turned_off() {
        let config = load_text(JSON).unwrap();
        let settings = config.sink.throttle.concurrency(16);
        assert!(settings.adaptive);
        assert_eq!(
            (
                settings.max,
                settings.decrease_factor,
                settings.latency_threshold
            ),
            (16, 0.5, Some(3.0))
        );
        let off = load_text(&format!(
            "{JSON}[sink.throttle]\nadaptive_concurrency = false\nlatency_threshold = 0\n"
        ))
        .unwrap();
        let settings = off.sink.throttle.concurrency(4);
        assert!(!settings.adaptive);
        assert_eq!(settings.latency_threshold, None);
    }
}
