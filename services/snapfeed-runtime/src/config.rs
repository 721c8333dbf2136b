//! Configuration loading: a TOML file, then `SNAPFEED_…` environment overrides, then typed
//! validation — so a container can be configured by environment alone and a wrong value stops
//! the service at start with an error that names the key, the value and what was expected.
//!
//! Environment names: `SNAPFEED_` + the key path in upper case, levels joined by `__`:
//! `SNAPFEED_KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `kafka.bootstrap_servers`. Every key
//! lives in a section, so a variable without `__` (`SNAPFEED_CONFIG`, the config file path, or
//! the test harness's `SNAPFEED_TEST_BROKER`) is not a config key and is left alone. Inside a
//! `librdkafka_options` table a single `_` stands for the `.` of librdkafka property names:
//! `SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_MECHANISM=SCRAM-SHA-512` sets
//! `kafka.librdkafka_options."sasl.mechanism"`. Values are read as TOML literals when they parse
//! as one (`5000`, `true`, `["a", "b"]`) and as strings otherwise; quote a value (`'"123"'`) to
//! force a string.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "SNAPFEED_";

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

/// Dotted key paths set from the environment, with the variable that set each one.
type EnvKeys = Vec<(String, String)>;

fn apply_env_overrides(
    document: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<EnvKeys, ConfigError> {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name[ENV_PREFIX.len()..].contains("__"))
        .collect();
    // Deterministic order, so two variables addressing one key always resolve the same way.
    overrides.sort();
    let mut applied = Vec::new();
    for (name, raw) in overrides {
        let segments = env_key_path(&name);
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                name,
                problem: "empty key segment (use a single `__` between levels)".into(),
            });
        }
        insert_path(document, &segments, env_value(&raw)).map_err(|problem| ConfigError::Env {
            name: name.clone(),
            problem,
        })?;
        applied.push((segments.join("."), name));
    }
    Ok(applied)
}

/// `SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_MECHANISM` → `["kafka", "librdkafka_options", "sasl.mechanism"]`.
fn env_key_path(name: &str) -> Vec<String> {
    let mut segments: Vec<String> = Vec::new();
    for raw in name[ENV_PREFIX.len()..].split("__") {
        let lower = raw.to_ascii_lowercase();
        let segment = if segments.last().is_some_and(|s| s == "librdkafka_options") {
            lower.replace('_', ".")
        } else {
            lower
        };
        segments.push(segment);
    }
    segments
}

fn env_value(raw: &str) -> toml::Value {
    // Parse as a TOML literal when it is one; anything else is a string.
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn insert_path(
    table: &mut toml::Table,
    segments: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let Some((last, parents)) = segments.split_last() else {
        return Err("no key".into());
    };
    let mut current = table;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            other => {
                return Err(format!(
                    "`{}` is a {} in the file, not a table",
                    segments[..=depth].join("."),
                    other.type_str()
                ))
            }
        };
    }
    current.insert(last.clone(), value);
    Ok(())
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

/// Key names whose values are secrets: redacted by [`redacted_toml`] and never logged.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // Where a secret lives is not a secret (e.g. an OAuth2 `token_url`).
    if key.ends_with("_url") || key.ends_with(".url") || key.ends_with(".location") {
        return false;
    }
    [
        "password",
        "secret",
        "token",
        "jaas",
        "ssl.key.pem",
        "credentials",
    ]
    .iter()
    .any(|marker| key.contains(marker))
}

/// The effective configuration as TOML, with every secret value replaced by `"<redacted>"`.
/// This is what `check-config` prints.
pub fn redacted_toml<C: Serialize>(config: &C) -> Result<String, ConfigError> {
    let mut value = toml::Value::try_from(config).map_err(|error| ConfigError::Invalid {
        key: "(top level)".into(),
        value: "(effective config)".into(),
        expected: format!("a configuration that can be rendered as TOML ({error})"),
    })?;
    redact(&mut value);
    toml::to_string_pretty(&value).map_err(|error| ConfigError::Invalid {
        key: "(top level)".into(),
        value: "(effective config)".into(),
        expected: format!("a configuration that can be rendered as TOML ({error})"),
    })
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                if is_secret_key(key) && !matches!(inner, toml::Value::Table(_)) {
                    *inner = toml::Value::String("<redacted>".into());
                } else {
                    redact(inner);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
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

/// A secret given by reference — the name of an environment variable or a file path — never by
/// value in the TOML file, so config files and `check-config` output can be shared.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// Read from this environment variable at start.
    Env(String),
    /// Read from this file at start (e.g. a mounted Kubernetes Secret); surrounding whitespace trimmed.
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "SecretRef::Env({name})"),
            SecretRef::File(path) => write!(f, "SecretRef::File({})", path.display()),
        }
    }
}

/// A resolved secret: its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for building a request or a client config — never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretRef {
    /// Reads the secret; `key` names the config key in the error.
    pub fn resolve(&self, key: &str) -> Result<Secret, ConfigError> {
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Secret(value)),
                _ => Err(ConfigError::invalid(
                    key,
                    format!("env {name:?}"),
                    "an environment variable that is set and not empty",
                )),
            },
            SecretRef::File(path) => match std::fs::read_to_string(path) {
                Ok(value) if !value.trim().is_empty() => Ok(Secret(value.trim().to_string())),
                Ok(_) => Err(ConfigError::invalid(
                    key,
                    format!("file {}", path.display()),
                    "a non-empty file",
                )),
                Err(error) => Err(ConfigError::invalid(
                    key,
                    format!("file {}", path.display()),
                    format!("a readable file ({error})"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        kafka: SampleKafka,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        #[serde(default = "default_batch")]
        batch_rows: u32,
    }

    impl Default for Limits {
        fn default() -> Self {
            Limits {
                batch_rows: default_batch(),
            }
        }
    }

    fn default_batch() -> u32 {
        100
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct SampleKafka {
        bootstrap_servers: String,
        #[serde(default)]
        librdkafka_options: std::collections::BTreeMap<String, String>,
    }

    impl ServiceConfig for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.limits.batch_rows == 0 {
                return Err(ConfigError::invalid("limits.batch_rows", 0, "at least 1"));
            }
            Ok(())
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_overrides() {
        let file = write("[kafka]\nbootstrap_servers = \"file:9092\"\n");
        let config: Sample = load(
            Some(file.path()),
            env(&[
                ("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", "env:9092"),
                ("SNAPFEED_LIMITS__BATCH_ROWS", "7"),
                (
                    "SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_MECHANISM",
                    "SCRAM-SHA-512",
                ),
                ("OTHER_VAR", "ignored"),
                ("SNAPFEED_CONFIG", "/not/a/key.toml"),
                ("SNAPFEED_TEST_BROKER", "nisshi"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "env:9092");
        assert_eq!(config.limits.batch_rows, 7);
        assert_eq!(
            config.kafka.librdkafka_options["sasl.mechanism"],
            "SCRAM-SHA-512"
        );
    }

    #[test]
    fn env_alone_configures_a_container() {
        let config: Sample = load(
            None,
            env(&[("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", "k:9092")]),
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "k:9092");
        assert_eq!(config.limits.batch_rows, 100);
    }

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

    #[test]
    fn env_into_a_scalar_is_an_error() {
        let file = write("[limits]\nbatch_rows = 3\n[kafka]\nbootstrap_servers = \"a\"\n");
        let error = load::<Sample>(
            Some(file.path()),
            env(&[("SNAPFEED_LIMITS__BATCH_ROWS__X", "1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("SNAPFEED_LIMITS__BATCH_ROWS__X"), "{error}");
    }

    #[test]
    fn quoted_env_value_stays_a_string() {
        let config: Sample = load(
            None,
            env(&[("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", "\"123\"")]),
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "123");
    }

    #[test]
    fn redaction_hides_secrets_only() {
        let config: Sample = load(
            None,
            env(&[
                ("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", "k:9092"),
                (
                    "SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_PASSWORD",
                    "hunter2",
                ),
                ("SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_USERNAME", "svc"),
            ]),
        )
        .unwrap();
        let text = redacted_toml(&config).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(text.contains("svc"), "{text}");
        assert!(text.contains("k:9092"), "{text}");
    }

    #[test]
    fn secrets_resolve_from_file_and_never_debug_print() {
        let file = write("  s3cr3t\n");
        let secret = SecretRef::File(file.path().to_path_buf())
            .resolve("api.auth.key")
            .unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        let missing = SecretRef::Env("SNAPFEED_TEST_SURELY_UNSET_VAR".into())
            .resolve("api.auth.key")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("api.auth.key"), "{missing}");
    }
}
