//! `service_config!` declares a service's configuration once: the six shared sections plus the
//! stage's own, unknown keys refused by name, and every section validated at load.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::{load, ConfigError};
use snapfeed_runtime::service::{HasCommonSections, StageSection};

/// A stage section with one rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleSection {
    /// Must be at least 1.
    batch_rows: u64,
}

impl StageSection for ExampleSection {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_rows == 0 {
            return Err(ConfigError::invalid("example.batch_rows", 0, "at least 1"));
        }
        Ok(())
    }
}

snapfeed_runtime::service_config! {
    /// A service with the shared sections and `[example]`.
    pub struct ExampleConfig {
        /// The stage's own section.
        example: ExampleSection,
    }
}

fn load_text(text: &str) -> Result<ExampleConfig, ConfigError> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    load(Some(file.path()), Vec::new())
}

const VALID: &str = "[kafka]\nbootstrap_servers = \"k:9092\"\n[example]\nbatch_rows = 5\n";

#[test]
fn shared_sections_default_and_the_stage_section_is_read() {
    let config = load_text(VALID).unwrap();
    assert_eq!(config.example.batch_rows, 5);
    assert_eq!(config.common().pipeline.name, "lab-results");
    assert_eq!(config.common().kafka.bootstrap_servers, "k:9092");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let error = load_text(&format!("{VALID}[exampel]\nbatch_rows = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("exampel"), "{error}");
}

#[test]
fn the_stage_section_and_the_shared_sections_are_validated() {
    let error = load_text("[kafka]\nbootstrap_servers = \"k:9092\"\n[example]\nbatch_rows = 0\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("example.batch_rows"), "{error}");
    let error = load_text(&format!("{VALID}[shutdown]\ndrain_timeout_ms = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("shutdown.drain_timeout_ms"), "{error}");
}
