//! A small service configuration and helpers, shared by the config unit tests.

use serde::{Deserialize, Serialize};

use super::{ConfigError, ServiceConfig};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sample {
    pub(super) kafka: SampleKafka,
    #[serde(default)]
    pub(super) limits: Limits,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Limits {
    #[serde(default = "default_batch")]
    pub(super) batch_rows: u32,
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
pub(super) struct SampleKafka {
    pub(super) bootstrap_servers: String,
    #[serde(default)]
    pub(super) librdkafka_options: std::collections::BTreeMap<String, String>,
}

impl ServiceConfig for Sample {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.batch_rows == 0 {
            return Err(ConfigError::invalid("limits.batch_rows", 0, "at least 1"));
        }
        Ok(())
    }
}

pub(super) fn write(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
