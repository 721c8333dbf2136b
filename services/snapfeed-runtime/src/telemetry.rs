//! Logging through `tracing`, human-readable or JSON (one object per line, for log shippers).
//! Human lines are coloured only when stderr is a terminal.
//!
//! What may be logged: keys (or their hashes), file names, topics/partitions/offsets, counts and
//! error classes. What may never be logged: record contents — names, dates of birth, phone
//! numbers, results. These are health records.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people at a terminal.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The `[log]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `info,rdkafka=warn`. `RUST_LOG` wins if set.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl LogConfig {
    /// Checks the filter directive parses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|error| {
                ConfigError::invalid(
                    "log.level",
                    format!("{:?}", self.level),
                    format!("a tracing filter such as \"info\" ({error})"),
                )
            })
    }
}

/// Installs the global subscriber (once per process; later calls are no-ops, so in-process tests
/// and the demo can start several services).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_wanted())
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Colour only for a person at a terminal: log files, `docker logs` and pipes get plain text,
/// and `NO_COLOR` (no-color.org) turns it off everywhere.
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
