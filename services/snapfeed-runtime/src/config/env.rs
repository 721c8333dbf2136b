//! `SNAPFEED_…` environment overrides, placed into the TOML document before it is typed, so
//! a wrong override is reported by the same checks, and under the same key, as a wrong line in
//! the file. How a variable name becomes a key path is described in the [module docs](super).
//! Only variables whose name has a `__` after the prefix are read; any other is left alone.

use super::ConfigError;

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "SNAPFEED_";

/// Dotted key paths set from the environment, with the variable that set each one.
pub(super) type EnvKeys = Vec<(String, String)>;

pub(super) fn apply_env_overrides(
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

/// Tables of librdkafka properties, whose names have `.` where the variable has `_`.
const PASS_THROUGH_TABLES: [&str; 3] =
    ["librdkafka_options", "consumer_options", "producer_options"];

/// `SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_MECHANISM` → `["kafka", "librdkafka_options", "sasl.mechanism"]`
/// (the same in `consumer_options` and `producer_options`).
fn env_key_path(name: &str) -> Vec<String> {
    let mut segments: Vec<String> = Vec::new();
    for raw in name[ENV_PREFIX.len()..].split("__") {
        let lower = raw.to_ascii_lowercase();
        let segment = if segments
            .last()
            .is_some_and(|s| PASS_THROUGH_TABLES.contains(&s.as_str()))
        {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{env, write, Sample};
    use crate::config::load;

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
    fn per_kind_option_tables_take_librdkafka_names_from_the_environment() {
        assert_eq!(
            super::env_key_path("SNAPFEED_KAFKA__CONSUMER_OPTIONS__FETCH_WAIT_MAX_MS"),
            ["kafka", "consumer_options", "fetch.wait.max.ms"]
        );
        assert_eq!(
            super::env_key_path("SNAPFEED_KAFKA__PRODUCER_OPTIONS__BATCH_SIZE"),
            ["kafka", "producer_options", "batch.size"]
        );
        assert_eq!(
            super::env_key_path("SNAPFEED_KAFKA__REQUEST_TIMEOUT_MS"),
            ["kafka", "request_timeout_ms"]
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
}
