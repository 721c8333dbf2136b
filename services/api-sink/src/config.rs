//! api-sink configuration: the shared sections plus `[sink]` — where changes go (`api_url`, a
//! request `profile`), how the sink authenticates (`[sink.auth]`), how hard it pushes
//! (`max_in_flight`, `rate_limit_per_second`, `lanes_per_partition`) and how it retries
//! (`[sink.retry]`).
//!
//! Everything is checked at start by [`SinkConfig::validate`], with errors naming the key.
//! Secrets are only ever references (`{ env = "VAR" }` or `{ file = "/path" }`), resolved by
//! [`crate::auth::Authenticator::new`] at start; a plain string where a secret reference
//! belongs is refused without echoing it. No delivery guarantee of its own.

mod auth;
mod profile;
mod retry;
mod throttle;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;
use snapfeed_runtime::service::StageSection;

pub use auth::AuthConfig;
pub use profile::{
    CommCareProfileConfig, JsonProfileConfig, Profile, TemplateProfileConfig,
    COMMCARE_MAX_CASES_PER_REQUEST,
};
pub use retry::RetryConfig;
pub use throttle::ThrottleConfig;

snapfeed_runtime::service_config! {
    /// Everything api-sink reads from its config file and environment: the six shared
    /// sections and `[sink]`.
    pub struct ApiSinkConfig {
        /// The stage's own settings (required: there is no sensible default API).
        sink: SinkConfig,
    }
}

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Base URL of the API, e.g. `https://www.commcarehq.org`; profile paths are appended.
    pub api_url: String,
    /// Dataset mapping, to decode the `record` of each change (the same file the other stages use).
    pub dataset_mapping: PathBuf,
    /// How a change becomes a request; its settings live in the section of the same name.
    pub profile: Profile,
    /// `[sink.json]`: settings of the `json` profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonProfileConfig>,
    /// `[sink.commcare_case_v2]`: settings of the `commcare_case_v2` profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commcare_case_v2: Option<CommCareProfileConfig>,
    /// `[sink.template]`: settings of the `template` profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateProfileConfig>,
    /// `[sink.auth]`: how requests authenticate (default: no `Authorization` header).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Per-request bound, connect to last body byte; a timeout is a transient failure.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests in flight across all partitions and lanes.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Requests started per second across the service; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<f64>,
    /// Requests that may start at once after a quiet spell, under `rate_limit_per_second`.
    #[serde(default = "default_rate_limit_burst")]
    pub rate_limit_burst: u32,
    /// Key-affinity lanes per partition: more parallelism, per-key order kept.
    #[serde(default = "default_lanes_per_partition")]
    pub lanes_per_partition: usize,
    /// `[sink.retry]`: backoff, retry budget, transient statuses, global backoff.
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[sink.throttle]`: how the in-flight limit adapts to back-pressure.
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Response body kept in a dead letter, at most this many bytes (cut at a char boundary).
    #[serde(default = "default_response_excerpt_bytes")]
    pub response_excerpt_bytes: usize,
    /// `/readyz` turns false once the API has been unreachable (only transient failures, no
    /// answer of any kind) for this long.
    #[serde(default = "default_unreachable_not_ready_after_ms")]
    pub unreachable_not_ready_after_ms: u64,
    /// How often librdkafka reports the consumer lag per partition of `changes` (the
    /// `consumer_lag` gauge: changes consumed-or-not but not yet delivered and committed).
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
}

fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_max_in_flight() -> usize {
    16
}
fn default_rate_limit_burst() -> u32 {
    1
}
fn default_lanes_per_partition() -> usize {
    1
}
fn default_response_excerpt_bytes() -> usize {
    1024
}
fn default_unreachable_not_ready_after_ms() -> u64 {
    60_000
}
fn default_lag_interval_ms() -> u64 {
    15_000
}

impl SinkConfig {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `unreachable_not_ready_after_ms` as a duration.
    pub fn unreachable_not_ready_after(&self) -> Duration {
        Duration::from_millis(self.unreachable_not_ready_after_ms)
    }

    /// `api_url` without a trailing `/`, so profile paths (which start with `/`) append cleanly.
    pub fn api_base(&self) -> &str {
        self.api_url.trim_end_matches('/')
    }

    /// Cross-field and range rules, each error naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_http_url("sink.api_url", &self.api_url)?;
        if self.dataset_mapping.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "sink.dataset_mapping",
                "\"\"",
                "a mapping file path",
            ));
        }
        self.validate_profile()?;
        self.auth.validate()?;
        if self.lag_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "sink.lag_interval_ms",
                "0",
                "a positive number of milliseconds",
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "sink.request_timeout_ms",
                0,
                "at least 1",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid("sink.max_in_flight", 0, "at least 1"));
        }
        if let Some(rate) = self.rate_limit_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::invalid(
                    "sink.rate_limit_per_second",
                    rate,
                    "a positive number, or absent for no limit",
                ));
            }
        }
        if self.rate_limit_burst == 0 {
            return Err(ConfigError::invalid(
                "sink.rate_limit_burst",
                0,
                "at least 1",
            ));
        }
        if !(1..=MAX_LANES_PER_PARTITION).contains(&self.lanes_per_partition) {
            return Err(ConfigError::invalid(
                "sink.lanes_per_partition",
                self.lanes_per_partition,
                format!("from 1 to {MAX_LANES_PER_PARTITION}"),
            ));
        }
        if self.unreachable_not_ready_after_ms == 0 {
            return Err(ConfigError::invalid(
                "sink.unreachable_not_ready_after_ms",
                0,
                "at least 1",
            ));
        }
        self.retry.validate()?;
        self.throttle.validate()
    }

    fn validate_profile(&self) -> Result<(), ConfigError> {
        // The selected profile's section must be there, and no other: a section that would be
        // silently ignored is almost always a mistake (a profile switched in one place only).
        let sections = [
            (Profile::Json, self.json.is_some()),
            (Profile::CommcareCaseV2, self.commcare_case_v2.is_some()),
            (Profile::Template, self.template.is_some()),
        ];
        for (profile, present) in sections {
            let selected = profile == self.profile;
            if selected && !present {
                return Err(ConfigError::invalid(
                    format!("sink.{}", profile.as_str()),
                    "(missing)",
                    format!(
                        "a [sink.{0}] section, as sink.profile = \"{0}\"",
                        profile.as_str()
                    ),
                ));
            }
            if !selected && present {
                return Err(ConfigError::invalid(
                    format!("sink.{}", profile.as_str()),
                    "(present)",
                    format!(
                        "no such section while sink.profile = \"{}\"",
                        self.profile.as_str()
                    ),
                ));
            }
        }
        if let Some(json) = &self.json {
            if !json.path.starts_with('/') {
                return Err(ConfigError::invalid(
                    "sink.json.path",
                    format!("{:?}", json.path),
                    "a path starting with `/`",
                ));
            }
        }
        if let Some(commcare) = &self.commcare_case_v2 {
            commcare.validate()?;
        }
        if let Some(template) = &self.template {
            if template.template_file.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "sink.template.template_file",
                    "\"\"",
                    "a template file path",
                ));
            }
        }
        Ok(())
    }
}

impl StageSection for SinkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        SinkConfig::validate(self)
    }
}

/// More lanes than this per partition buys nothing but memory.
pub const MAX_LANES_PER_PARTITION: usize = 64;

pub(crate) fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{url:?}"),
                    "a URL without query or fragment",
                ));
            }
            Ok(())
        }
        Ok(_) => Err(ConfigError::invalid(
            key,
            format!("{url:?}"),
            "an http:// or https:// URL with a host",
        )),
        Err(error) => Err(ConfigError::invalid(
            key,
            format!("{url:?}"),
            format!("a URL ({error})"),
        )),
    }
}

/// Non-empty, printable ASCII (a header value), and without `:` when it is a Basic user name.
pub(crate) fn check_header_text(key: &str, value: &str, no_colon: bool) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !(no_colon && value.contains(':'));
    if ok {
        Ok(())
    } else {
        let expected = if no_colon {
            "non-empty printable ASCII without `:`"
        } else {
            "non-empty printable ASCII"
        };
        Err(ConfigError::invalid(key, format!("{value:?}"), expected))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use snapfeed_runtime::config::{load, redacted_toml};

    use super::*;

    const BASE: &str = "[kafka]\nbootstrap_servers = \"k:9092\"\n";

    /// A config of the shared minimum plus `sink` (TOML text from `[sink]` on).
    pub(crate) fn load_text(sink: &str) -> Result<ApiSinkConfig, ConfigError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{BASE}{sink}")).unwrap();
        load(Some(file.path()), Vec::new())
    }

    pub(crate) fn error_of(sink: &str) -> String {
        load_text(sink).unwrap_err().to_string()
    }

    /// A minimal valid `[sink]` with the json profile; `[sink.json]` comes last.
    pub(crate) const JSON: &str = "[sink]\napi_url = \"https://api.example.org/\"\n\
        dataset_mapping = \"deploy/config/lab_results.mapping.toml\"\nprofile = \"json\"\n\
        [sink.json]\npath = \"/changes\"\n";

    /// The json profile with `extra` among the `[sink]` keys.
    fn json_with(extra: &str) -> String {
        JSON.replace(
            "profile = \"json\"\n",
            &format!("profile = \"json\"\n{extra}\n"),
        )
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = load_text(JSON).unwrap();
        let sink = &config.sink;
        assert_eq!(sink.profile, Profile::Json);
        assert_eq!(sink.api_base(), "https://api.example.org");
        assert!(matches!(sink.auth, AuthConfig::None));
        assert_eq!(sink.request_timeout(), Duration::from_secs(10));
        assert_eq!(sink.max_in_flight, 16);
        assert_eq!(sink.rate_limit_per_second, None);
        assert_eq!(sink.lanes_per_partition, 1);
        assert_eq!(sink.response_excerpt_bytes, 1024);
        assert_eq!(sink.unreachable_not_ready_after(), Duration::from_secs(60));
        let retry = &sink.retry;
        assert_eq!(retry.initial_backoff(), Duration::from_millis(500));
        assert_eq!(retry.max_backoff(), Duration::from_secs(60));
        assert_eq!(retry.multiplier, 2.0);
        assert_eq!((retry.max_attempts, retry.max_retry_age()), (None, None));
        assert_eq!(retry.transient_statuses, [408, 429, 500, 502, 503, 504]);
        assert_eq!(retry.global_backoff_failure_ratio, 0.8);
        assert_eq!(retry.global_backoff_window, 20);
    }

    #[test]
    fn the_example_config_is_valid() {
        // Validation never resolves secrets, so the example passes without them set.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/config/api-sink.toml"
        );
        let loaded = load::<ApiSinkConfig>(Some(std::path::Path::new(path)), Vec::new());
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }

    #[test]
    fn the_sink_section_is_required() {
        let error = load_text("").unwrap_err().to_string();
        assert!(error.starts_with("config key `sink`"), "{error}");
    }

    #[test]
    fn the_selected_profile_needs_its_section_and_no_other() {
        let missing = error_of(&JSON.replace("[sink.json]\npath = \"/changes\"\n", ""));
        assert!(missing.starts_with("config key `sink.json`"), "{missing}");
        let stray = error_of(&format!(
            "{JSON}[sink.template]\ntemplate_file = \"t.j2\"\n"
        ));
        assert!(stray.starts_with("config key `sink.template`"), "{stray}");
        assert!(stray.contains("sink.profile = \"json\""), "{stray}");
    }

    #[test]
    fn sink_rule_violations_name_their_keys() {
        let cases = [
            (
                JSON.replace("https://api.example.org/", "ftp://x"),
                "sink.api_url",
            ),
            (
                JSON.replace("https://api.example.org/", "not a url"),
                "sink.api_url",
            ),
            (
                JSON.replace("https://api.example.org/", "https://a.org/?q=1"),
                "sink.api_url",
            ),
            (JSON.replace("/changes", "changes"), "sink.json.path"),
            (
                json_with("request_timeout_ms = 0"),
                "sink.request_timeout_ms",
            ),
            (json_with("max_in_flight = 0"), "sink.max_in_flight"),
            (json_with("rate_limit_burst = 0"), "sink.rate_limit_burst"),
            (
                json_with("lanes_per_partition = 65"),
                "sink.lanes_per_partition",
            ),
            (
                json_with("rate_limit_per_second = -1.0"),
                "sink.rate_limit_per_second",
            ),
            (
                json_with("unreachable_not_ready_after_ms = 0"),
                "sink.unreachable_not_ready_after_ms",
            ),
        ];
        for (text, key) in cases {
            let error = error_of(&text);
            assert!(
                error.starts_with(&format!("config key `{key}`")),
                "{key}: {error}"
            );
        }
    }

    #[test]
    fn the_effective_config_prints_secret_references_only() {
        let config = load_text(&format!(
            "{JSON}[sink.auth]\ntype = \"api_key\"\nuser = \"u\"\n\
             key = {{ env = \"SNAPFEED_TEST_API_SINK_KEY\" }}\n"
        ))
        .unwrap();
        let text = redacted_toml(&config).unwrap();
        assert!(text.contains("SNAPFEED_TEST_API_SINK_KEY"), "{text}");
        assert!(text.contains("profile = \"json\""), "{text}");
        assert!(
            !text.contains("template"),
            "absent sections are not printed: {text}"
        );
    }
}
