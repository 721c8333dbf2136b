//! Configuration loading: a TOML file, then `SNAPFEED_…` environment overrides, then typed
//! validation — so a container can be configured by environment alone and a wrong value stops
//! the service at start with an error that names the key, the value and what was expected.
//!
//! Environment names: `SNAPFEED_` + the key path in upper case, levels joined by `__`:
//! `SNAPFEED_KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `kafka.bootstrap_servers`. Every key
//! lives in a section, so a variable without `__` (`SNAPFEED_CONFIG`, the config file path, or
//! the test harness's `SNAPFEED_TEST_BROKER`) is not a config key and is left alone. Inside a
//! `librdkafka_options` table (or `consumer_options`, `producer_options`) a single `_` stands
//! for the `.` of librdkafka property names:
//! `SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_MECHANISM=SCRAM-SHA-512` sets
//! `kafka.librdkafka_options."sasl.mechanism"`. Values are read as TOML literals when they parse
//! as one (`5000`, `true`, `["a", "b"]`) and as strings otherwise; quote a value (`'"123"'`) to
//! force a string.
//!
//! The parts: this file loads and reports (`load`, [`ConfigError`], [`check_unique`]); `env`
//! places the overrides into the document; `secret` keeps secrets out of files and output
//! ([`SecretRef`], [`Secret`], [`redacted_toml`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

mod env;
mod secret;

pub use env::ENV_PREFIX;
pub use secret::{basic_authorization, redacted_toml, secret_ref, Secret, SecretRef};

use env::{apply_env_overrides, EnvKeys};

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueOrigin {
    /// The TOML file at this path.
    File(PathBuf),
    /// The named environment variable.
    Env(String),
    /// A built-in default.
    Default,
}

impl fmt::Display for ValueOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueOrigin::File(path) => write!(f, "in {}", path.display()),
            ValueOrigin::Env(name) => write!(f, "from environment variable {name}"),
            ValueOrigin::Default => write!(f, "by default"),
        }
    }
}

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names line and column.
        message: String,
    },
    /// An environment override could not be placed (e.g. it addresses inside a scalar).
    #[error("environment variable {name}: {problem}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A key has a value of the wrong type or shape, or is unknown.
    #[error("config key `{key}` ({origin}): {problem}")]
    Value {
        /// Dotted key path, e.g. `kafka.bootstrap_servers`.
        key: String,
        /// Where the offending value came from.
        origin: ValueOrigin,
        /// The deserializer's message, which names the value and what was expected.
        problem: String,
    },
    /// A key is well-typed but breaks a rule (range, cross-field constraint).
    #[error("config key `{key}` = {value}: {expected}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// The offending value, rendered (never a secret).
        value: String,
        /// What was expected instead.
        expected: String,
    },
}

impl ConfigError {
    /// A rule violation on `key`.
    pub fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// A typed service configuration: deserialized from the merged document, then checked.
pub trait ServiceConfig: DeserializeOwned + Serialize {
    /// Cross-field and range rules that serde cannot express.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `path` (if any), applies `SNAPFEED_…` overrides from `env`, and deserializes and
/// validates the result.
pub fn load<C: ServiceConfig>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let mut document = match path {
        Some(path) => read_document(path)?,
        None => toml::Table::new(),
    };
    let env_keys = apply_env_overrides(&mut document, env)?;
    let config: C = deserialize(document, path, &env_keys)?;
    config.validate()?;
    Ok(config)
}

/// Loads with the process environment.
pub fn load_from_process<C: ServiceConfig>(path: Option<&Path>) -> Result<C, ConfigError> {
    load(path, std::env::vars())
}

fn read_document(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })
}

fn deserialize<C: DeserializeOwned>(
    document: toml::Table,
    path: Option<&Path>,
    env_keys: &EnvKeys,
) -> Result<C, ConfigError> {
    let deserializer = toml::Value::Table(document);
    serde_path_to_error::deserialize::<_, C>(deserializer).map_err(|error| {
        let mut key = error.path().to_string();
        let problem = error.inner().to_string().trim_end().to_string();
        // serde reports a missing field at its parent's path: name the field itself.
        if let Some(field) = problem
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            key = if key == "." {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
        }
        let origin = origin_of(&key, path, env_keys);
        ConfigError::Value {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            origin,
            problem,
        }
    })
}

fn origin_of(key: &str, path: Option<&Path>, env_keys: &EnvKeys) -> ValueOrigin {
    // The most specific override that covers the key (or that the key covers) set it.
    let from_env = env_keys
        .iter()
        .filter(|(set, _)| {
            key == set || key.starts_with(&format!("{set}.")) || set.starts_with(&format!("{key}."))
        })
        .max_by_key(|(set, _)| set.len());
    match (from_env, path) {
        (Some((_, name)), _) => ValueOrigin::Env(name.clone()),
        (None, Some(path)) => ValueOrigin::File(path.to_path_buf()),
        (None, None) => ValueOrigin::Default,
    }
}

/// Rejects duplicates in a list of names, naming the key and the duplicate.
pub fn check_unique<'a>(
    key: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(ConfigError::invalid(
                key,
                format!("{name:?}"),
                "each entry at most once",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::fixtures::{env, write, Sample};
    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let file = write("[kafka]\nbootstrap_servers = \"a\"\nbootstrap_server = \"typo\"\n");
        let error = load::<Sample>(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("bootstrap_server"), "{error}");
        assert!(error.contains("unknown field"), "{error}");
        assert!(
            error.contains(&file.path().display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_names_key_value_expectation_and_env_origin() {
        let file = write("[kafka]\nbootstrap_servers = \"a\"\n");
        let error = load::<Sample>(
            Some(file.path()),
            env(&[("SNAPFEED_LIMITS__BATCH_ROWS", "lots")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`limits.batch_rows`"), "{error}");
        assert!(error.contains("\"lots\""), "{error}");
        assert!(error.contains("u32"), "{error}");
        assert!(error.contains("SNAPFEED_LIMITS__BATCH_ROWS"), "{error}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let error = load::<Sample>(None, env(&[("SNAPFEED_LIMITS__BATCH_ROWS", "3")]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `kafka`"), "{error}");
        let file = write("[kafka]\n");
        let error = load::<Sample>(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("config key `kafka.bootstrap_servers`"),
            "{error}"
        );
        assert!(error.contains("missing field"), "{error}");
    }

    #[test]
    fn rule_violation_names_key_and_value() {
        let file = write("[limits]\nbatch_rows = 0\n[kafka]\nbootstrap_servers = \"a\"\n");
        let error = load::<Sample>(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "config key `limits.batch_rows` = 0: at least 1");
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let file = write("[kafka\n");
        let error = load::<Sample>(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1"), "{error}");
    }
}
