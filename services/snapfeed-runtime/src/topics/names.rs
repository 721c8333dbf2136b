//! Each topic's name (`<pipeline>.<topic>` unless overridden) and how `init-topics` creates it:
//! partitions, `cleanup.policy`, `retention.ms`. Pure values, no cluster access.

use super::config::{TopicNameOverrides, TopicsConfig};

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
}
