//! Topics against the cluster: partition counts from one metadata snapshot, the start-up check
//! that required topics exist and that `snapshots`, `state` and `changes` are co-partitioned,
//! and creation of the missing ones with the admin API. The check runs when a service starts and
//! in `init-topics`, not afterwards: partitions added to one of the trio while the services run
//! are caught at their next start.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;

use super::names::{TopicNames, TopicSpec};

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
         {state_partitions}, {changes:?} has {changes_partitions}; they must be equal, or the detector would split a key's history: add partitions \
         to the smaller ones (and to deliveries), then run `change-detector repartition` before the detector \
         starts again (README § Changing the partition count)"
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
    use crate::topics::TopicNameOverrides;

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
