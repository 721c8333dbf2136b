//! The `[topics]` section: how many partitions and replicas created topics get, how long each
//! kind of topic keeps its records, whether a service may create missing topics at start, and
//! per-topic name overrides. Range checks run at start-up, naming the key.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `[topics]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partition count for every topic `init-topics` creates (the `files` ledger excepted: 1).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for created topics.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Create missing topics at start-up (as `init-topics` does). Off by default: production
    /// topics are usually created by a deliberate step.
    #[serde(default)]
    pub create_missing: bool,
    /// Retention of `snapshots` (every row of every file: days, not months).
    #[serde(default = "default_snapshots_retention_ms")]
    pub snapshots_retention_ms: i64,
    /// Retention of `changes`, `dead-letters` (long: they are the replayable history); -1 = forever.
    #[serde(default = "default_long_retention_ms")]
    pub changes_retention_ms: i64,
    /// Retention of `rejects` and `deliveries`.
    #[serde(default = "default_audit_retention_ms")]
    pub audit_retention_ms: i64,
    /// Per-topic name overrides; a missing entry means `<pipeline>.<topic>`.
    #[serde(default)]
    pub names: TopicNameOverrides,
}

/// Explicit topic names, for clusters with naming conventions of their own.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicNameOverrides {
    /// Every row of every file.
    pub snapshots: Option<String>,
    /// Compacted ledger of ingested files.
    pub files: Option<String>,
    /// Rejected rows.
    pub rejects: Option<String>,
    /// Compacted detector state.
    pub state: Option<String>,
    /// New and changed records.
    pub changes: Option<String>,
    /// Delivery receipts.
    pub deliveries: Option<String>,
    /// Changes that could not be delivered.
    pub dead_letters: Option<String>,
}

fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    3
}
fn default_snapshots_retention_ms() -> i64 {
    3 * 24 * 3600 * 1000
}
fn default_long_retention_ms() -> i64 {
    365 * 24 * 3600 * 1000
}
fn default_audit_retention_ms() -> i64 {
    30 * 24 * 3600 * 1000
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            create_missing: false,
            snapshots_retention_ms: default_snapshots_retention_ms(),
            changes_retention_ms: default_long_retention_ms(),
            audit_retention_ms: default_audit_retention_ms(),
            names: TopicNameOverrides::default(),
        }
    }
}

impl TopicsConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.partitions < 1 {
            return Err(ConfigError::invalid(
                "topics.partitions",
                self.partitions,
                "at least 1",
            ));
        }
        if self.replication_factor < 1 {
            return Err(ConfigError::invalid(
                "topics.replication_factor",
                self.replication_factor,
                "at least 1",
            ));
        }
        for (key, value) in [
            ("topics.snapshots_retention_ms", self.snapshots_retention_ms),
            ("topics.changes_retention_ms", self.changes_retention_ms),
            ("topics.audit_retention_ms", self.audit_retention_ms),
        ] {
            if value != -1 && value < 60_000 {
                return Err(ConfigError::invalid(
                    key,
                    value,
                    "-1 (forever) or at least 60000",
                ));
            }
        }
        Ok(())
    }
}
