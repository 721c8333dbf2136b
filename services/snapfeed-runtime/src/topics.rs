//! Topic names, specs, creation and verification.
//!
//! Names derive from the pipeline name (`lab-results.snapshots`, …), each overridable.
//! `snapshots`, `state` and `changes` must have the same partition count: the detector restores
//! partition N of `state` to process partition N of `snapshots`, and writes key K to the same
//! partition of `changes` — a mismatch would silently split one key's history, so every service
//! refuses to start on it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
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

/// The resolved name of every topic of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// Every row of every file (file-source → change-detector).
    pub snapshots: String,
    /// Compacted ledger of ingested files.
    pub files: String,
    /// Rejected rows.
    pub rejects: String,
    /// Compacted detector state.
    pub state: String,
    /// New and changed records (change-detector → api-sink).
    pub changes: String,
    /// Delivery receipts.
    pub deliveries: String,
    /// Undeliverable changes.
    pub dead_letters: String,
}

impl TopicNames {
    /// `<pipeline>.<topic>` unless overridden.
    pub fn resolve(pipeline: &str, overrides: &TopicNameOverrides) -> TopicNames {
        let name = |explicit: &Option<String>, suffix: &str| {
            explicit
                .clone()
                .unwrap_or_else(|| format!("{pipeline}.{suffix}"))
        };
        TopicNames {
            snapshots: name(&overrides.snapshots, "snapshots"),
            files: name(&overrides.files, "files"),
            rejects: name(&overrides.rejects, "rejects"),
            state: name(&overrides.state, "state"),
            changes: name(&overrides.changes, "changes"),
            deliveries: name(&overrides.deliveries, "deliveries"),
            dead_letters: name(&overrides.dead_letters, "dead-letters"),
        }
    }

    /// The co-partitioned trio, in the order errors list them.
    pub fn copartitioned(&self) -> [&str; 3] {
        [&self.snapshots, &self.state, &self.changes]
    }

    /// What `init-topics` creates: every topic with partitions, cleanup policy and retention.
    pub fn specs(&self, config: &TopicsConfig) -> Vec<TopicSpec> {
        let p = config.partitions;
        let delete = |name: &str, partitions: i32, retention_ms: i64| TopicSpec {
            name: name.to_string(),
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: Some(retention_ms),
        };
        let compact = |name: &str, partitions: i32| TopicSpec {
            name: name.to_string(),
            partitions,
            cleanup_policy: CleanupPolicy::Compact,
            retention_ms: None,
        };
        vec![
            delete(&self.snapshots, p, config.snapshots_retention_ms),
            // One partition: the ledger is small and every file-source instance reads all of it.
            compact(&self.files, 1),
            delete(&self.rejects, p, config.audit_retention_ms),
            compact(&self.state, p),
            delete(&self.changes, p, config.changes_retention_ms),
            delete(&self.deliveries, p, config.audit_retention_ms),
            delete(&self.dead_letters, p, config.changes_retention_ms),
        ]
    }
}

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Time-based retention.
    Delete,
    /// Latest value per key, kept forever.
    Compact,
}

impl CleanupPolicy {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// One topic as `init-topics` creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `retention.ms` for delete topics.
    pub retention_ms: Option<i64>,
}

/// Topic problems found at start-up or by `init-topics`.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The cluster could not be reached or did not answer in time.
    #[error("cannot read cluster metadata from {bootstrap}: {source}")]
    Metadata {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// A required topic is missing and creation is off.
    #[error(
        "topic {topic:?} does not exist: run `init-topics`, or set topics.create_missing = true"
    )]
    Missing {
        /// The missing topic.
        topic: String,
    },
    /// The co-partitioned topics differ in partition count.
    #[error(
        "topics are not co-partitioned: {snapshots:?} has {snapshots_partitions} partitions, {state:?} has \
         {state_partitions}, {changes:?} has {changes_partitions}; they must be equal (add partitions to the \
         smaller ones, or recreate them), or the detector would split a key's history"
    )]
    CopartitionMismatch {
        /// snapshots topic.
        snapshots: String,
        /// Its partitions.
        snapshots_partitions: i32,
        /// state topic.
        state: String,
        /// Its partitions.
        state_partitions: i32,
        /// changes topic.
        changes: String,
        /// Its partitions.
        changes_partitions: i32,
    },
    /// Creating a topic failed.
    #[error("cannot create topic {topic:?}: {reason}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
}

impl TopicError {
    /// True when waiting and trying again may help (the cluster is unreachable or slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TopicError::Metadata { .. })
    }
}

/// Partition counts of the named topics (0 = absent) from one metadata snapshot.
pub fn partition_counts(metadata: &Metadata, topics: &[&str]) -> BTreeMap<String, i32> {
    topics
        .iter()
        .map(|topic| {
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == *topic)
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .unwrap_or(0);
            (topic.to_string(), count)
        })
        .collect()
}

/// Checks that every topic in `required` exists and that snapshots/state/changes agree in
/// partition count. `counts` comes from [`partition_counts`].
pub fn verify(
    names: &TopicNames,
    required: &[&str],
    counts: &BTreeMap<String, i32>,
) -> Result<(), TopicError> {
    for topic in required {
        if counts.get(*topic).copied().unwrap_or(0) == 0 {
            return Err(TopicError::Missing {
                topic: topic.to_string(),
            });
        }
    }
    let count = |topic: &str| counts.get(topic).copied().unwrap_or(0);
    let [snapshots, state, changes] = names.copartitioned();
    let (a, b, c) = (count(snapshots), count(state), count(changes));
    // Only topics that exist are compared; a missing one is reported above if this service needs it.
    let present: Vec<i32> = [a, b, c].into_iter().filter(|n| *n > 0).collect();
    if present.windows(2).any(|w| w[0] != w[1]) {
        return Err(TopicError::CopartitionMismatch {
            snapshots: snapshots.to_string(),
            snapshots_partitions: a,
            state: state.to_string(),
            state_partitions: b,
            changes: changes.to_string(),
            changes_partitions: c,
        });
    }
    Ok(())
}

/// Creates the topics of `specs` that are missing (per `counts`) with the admin API.
/// Returns the names created. Topics that already exist are left alone (verified by the caller).
pub async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    specs: &[TopicSpec],
    counts: &BTreeMap<String, i32>,
    replication_factor: i32,
    timeout: Duration,
) -> Result<Vec<String>, TopicError> {
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|spec| counts.get(&spec.name).copied().unwrap_or(0) == 0)
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let retention: Vec<Option<String>> = missing
        .iter()
        .map(|s| s.retention_ms.map(|ms| ms.to_string()))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&retention)
        .map(|(spec, retention)| {
            let mut topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(replication_factor),
            )
            .set("cleanup.policy", spec.cleanup_policy.as_str());
            if let Some(ms) = retention {
                topic = topic.set("retention.ms", ms);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|error| TopicError::Create {
            topic: missing
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason: error.to_string(),
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            // Another instance created it between our metadata read and now: fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicError::Create {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> TopicNames {
        TopicNames::resolve(
            "lab-results",
            &TopicNameOverrides {
                changes: Some("custom.changes".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn names_derive_from_pipeline_and_can_be_overridden() {
        let names = names();
        assert_eq!(names.snapshots, "lab-results.snapshots");
        assert_eq!(names.dead_letters, "lab-results.dead-letters");
        assert_eq!(names.changes, "custom.changes");
    }

    #[test]
    fn specs_compact_state_and_files() {
        let specs = names().specs(&TopicsConfig::default());
        let policy = |name: &str| {
            specs
                .iter()
                .find(|s| s.name == name)
                .unwrap()
                .cleanup_policy
        };
        assert_eq!(policy("lab-results.state"), CleanupPolicy::Compact);
        assert_eq!(policy("lab-results.files"), CleanupPolicy::Compact);
        assert_eq!(policy("lab-results.snapshots"), CleanupPolicy::Delete);
        assert_eq!(specs.len(), 7);
    }

    #[test]
    fn copartition_mismatch_names_every_topic_and_count() {
        let names = names();
        let counts: BTreeMap<String, i32> = [
            ("lab-results.snapshots".to_string(), 6),
            ("lab-results.state".to_string(), 6),
            ("custom.changes".to_string(), 3),
        ]
        .into();
        let error = verify(&names, &[], &counts).unwrap_err().to_string();
        assert!(error.contains("\"custom.changes\" has 3"), "{error}");
        assert!(error.contains("\"lab-results.snapshots\" has 6"), "{error}");
    }

    #[test]
    fn missing_required_topic_is_named() {
        let names = names();
        let counts: BTreeMap<String, i32> = [("lab-results.snapshots".to_string(), 6)].into();
        let error = verify(
            &names,
            &["lab-results.snapshots", "lab-results.state"],
            &counts,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("\"lab-results.state\" does not exist"),
            "{error}"
        );
    }
}
