//! `[schema_registry]`: the section, its defaults and the checks that name a wrong key.
//! Secrets are references only, so the section can be printed.

use serde::{Deserialize, Serialize};

use crate::config::{secret_ref, ConfigError, SecretRef};

/// The `[schema_registry]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `https://registry.example.org:8081` (https uses the system's roots,
    /// like the API client).
    pub url: String,
    /// How to authenticate: `type = "none" | "basic" | "bearer"`.
    #[serde(default)]
    pub auth: RegistryAuth,
    /// `topic_name` (default: `<topic>-value`) or `topic_record_name`
    /// (`<topic>-<record full name>`). Topics that carry several record kinds (`snapshots`,
    /// `state`) always use `<topic>-<record full name>`: one subject cannot hold unrelated
    /// record types.
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// Register schemas at start (true, default) or only look them up (false: a subject
    /// without the schema stops the service).
    #[serde(default = "default_true")]
    pub auto_register: bool,
    /// `registry` (default): write values in the Confluent wire format. `single_object`:
    /// write single-object values but still read registry-framed ones.
    #[serde(default)]
    pub value_framing: ValueFraming,
    /// Bound of one registry request.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// `schema_registry.auth`, selected by `type`. Secrets by reference only.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryAuth {
    /// No `Authorization` header.
    #[default]
    None,
    /// HTTP Basic (Confluent Cloud: API key and secret).
    Basic {
        /// User (or API key).
        user: String,
        /// Password (or API secret).
        #[serde(deserialize_with = "secret_ref")]
        password: SecretRef,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        #[serde(deserialize_with = "secret_ref")]
        token: SecretRef,
    },
}

/// How subjects are named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's `TopicNameStrategy`).
    #[default]
    TopicName,
    /// `<topic>-<record full name>` (Confluent's `TopicRecordNameStrategy`).
    TopicRecordName,
}

/// How values are framed when a registry is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFraming {
    /// `00` + schema id + datum.
    #[default]
    Registry,
    /// `C3 01` + fingerprint + datum.
    SingleObject,
}

impl SchemaRegistryConfig {
    /// Checks the URL and the ranges; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let parsed = reqwest::Url::parse(&self.url).ok();
        if parsed
            .as_ref()
            .is_some_and(|u| !u.username().is_empty() || u.password().is_some())
        {
            // Not repeated: the URL holds a credential.
            return Err(ConfigError::invalid(
                "schema_registry.url",
                "(a URL with user:password@)",
                "a URL without credentials: give them in schema_registry.auth, by reference",
            ));
        }
        let url_ok =
            parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !url_ok {
            return Err(ConfigError::invalid(
                "schema_registry.url",
                format!("{:?}", self.url),
                "an http(s) URL with a host",
            ));
        }
        if !(100..=300_000).contains(&self.request_timeout_ms) {
            return Err(ConfigError::invalid(
                "schema_registry.request_timeout_ms",
                self.request_timeout_ms.to_string(),
                "100..=300000",
            ));
        }
        if let RegistryAuth::Basic { user, .. } = &self.auth {
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    "schema_registry.auth.user",
                    format!("{user:?}"),
                    "a non-empty user without ':' or control characters",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::registry::Registry;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        schema_registry: SchemaRegistryConfig,
    }

    impl crate::config::ServiceConfig for Section {
        fn validate(&self) -> Result<(), ConfigError> {
            self.schema_registry.validate()
        }
    }

    /// `text` as a `[schema_registry]` section, loaded the way services load their config.
    fn parse(text: &str) -> Result<SchemaRegistryConfig, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("[schema_registry]\n{text}\n")).unwrap();
        crate::config::load::<Section>(Some(file.path()), Vec::new())
            .map(|section| section.schema_registry)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_defaults_and_refusals_name_the_key() {
        let config = parse("url = \"http://127.0.0.1:8081\"").unwrap();
        assert!(config.auto_register);
        assert_eq!(config.value_framing, ValueFraming::Registry);
        assert_eq!(config.subject_strategy, SubjectStrategy::TopicName);
        assert!(matches!(config.auth, RegistryAuth::None));
        // Credentials in the URL are refused without being repeated.
        let error = parse("url = \"https://key:s3cr3t@registry.example.org\"").unwrap_err();
        assert!(
            error.contains("schema_registry.url") && !error.contains("s3cr3t"),
            "{error}"
        );
        let error = parse("url = \"registry:8081\"").unwrap_err();
        assert!(error.contains("schema_registry.url"), "{error}");
        let error = parse("url = \"http://r\"\nrequest_timeout_ms = 0").unwrap_err();
        assert!(
            error.contains("schema_registry.request_timeout_ms"),
            "{error}"
        );
        let error = parse(
            "url = \"http://r\"\nauth = { type = \"basic\", user = \"a:b\", password = { env = \"P\" } }",
        )
        .unwrap_err();
        assert!(error.contains("schema_registry.auth.user"), "{error}");
        // A secret given by value is refused without being repeated.
        let error = parse("url = \"http://r\"\nauth = { type = \"bearer\", token = \"hunter2\" }")
            .unwrap_err();
        assert!(
            error.contains("secret reference") && !error.contains("hunter2"),
            "{error}"
        );
        let error = parse("url = \"http://r\"\nsubject_strategy = \"record_name\"").unwrap_err();
        assert!(error.contains("record_name"), "{error}");
    }

    #[test]
    fn credentials_come_from_their_reference() {
        let config = parse(
            "url = \"http://r\"\nauth = { type = \"bearer\", token = { env = \"SNAPFEED_TEST_SURELY_UNSET_TOKEN\" } }",
        )
        .unwrap();
        let error = Registry::start(&config).unwrap_err().to_string();
        assert!(error.contains("schema_registry.auth.token"), "{error}");
    }
}
