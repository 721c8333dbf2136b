//! Replay: reset a consumer group's committed offsets so a stage processes a range again —
//! to the earliest retained record, to the first record at or after a time, or to explicit
//! offsets. Refused while the group has live members: moving offsets under a running consumer
//! would be overwritten by its next commit, or worse, half-applied.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaConfig, ProcessingGuarantee};

/// Where to move the offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// The earliest retained record of every partition.
    Earliest,
    /// The end of every partition: everything not yet processed is skipped (`latest`, `end`).
    Latest,
    /// The first record at or after this time, per partition (end if none).
    Time(DateTime<Utc>),
    /// Explicit offsets for the listed partitions (others unchanged).
    Offsets(Vec<(i32, i64)>),
}

impl FromStr for ReplayTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("earliest") {
            return Ok(ReplayTarget::Earliest);
        }
        if text.eq_ignore_ascii_case("latest") || text.eq_ignore_ascii_case("end") {
            return Ok(ReplayTarget::Latest);
        }
        if let Ok(time) = DateTime::parse_from_rfc3339(text) {
            return Ok(ReplayTarget::Time(time.with_timezone(&Utc)));
        }
        let mut offsets = Vec::new();
        for part in text.split(',') {
            let (partition, offset) = part.split_once(':').ok_or_else(|| {
                format!(
                    "{text:?}: expected earliest, latest, an RFC 3339 time, or partition:offset,…"
                )
            })?;
            let partition = partition
                .trim()
                .parse::<i32>()
                .map_err(|_| format!("{part:?}: partition is not a number"))?;
            let offset = offset
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{part:?}: offset is not a number"))?;
            if partition < 0 || offset < 0 {
                return Err(format!(
                    "{part:?}: partition and offset must not be negative"
                ));
            }
            offsets.push((partition, offset));
        }
        Ok(ReplayTarget::Offsets(offsets))
    }
}

/// Why a replay was not done.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The group has running consumers.
    #[error("consumer group {group:?} has {members} live member(s): stop every instance first")]
    LiveMembers {
        /// Group.
        group: String,
        /// How many.
        members: usize,
    },
    /// An explicit offset names a partition the topic does not have.
    #[error("topic {topic:?} has no partition {partition}")]
    NoSuchPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
}

fn failed(context: &'static str) -> impl FnOnce(KafkaError) -> ReplayError {
    move |source| ReplayError::Kafka { context, source }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMove {
    /// Partition.
    pub partition: i32,
    /// Committed offset before (None: nothing committed).
    pub from: Option<i64>,
    /// Committed offset after.
    pub to: i64,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Moves, by partition.
    pub moves: Vec<PartitionMove>,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "group {} on {}:", self.group, self.topic)?;
        for m in &self.moves {
            let from = m.from.map(|o| o.to_string()).unwrap_or_else(|| "-".into());
            writeln!(f, "  partition {:>3}: {from:>12} -> {}", m.partition, m.to)?;
        }
        Ok(())
    }
}

/// Refuses (`LiveMembers`) while `group` has live members: a command that moves a stage's
/// offsets or rewrites its state must not run under a running instance. Blocking.
pub fn ensure_stopped<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    timeout: std::time::Duration,
) -> Result<(), ReplayError> {
    let groups = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(failed("describe group"))?;
    if let Some(found) = groups.groups().iter().find(|g| g.name() == group) {
        if !found.members().is_empty() {
            return Err(ReplayError::LiveMembers {
                group: group.to_string(),
                members: found.members().len(),
            });
        }
    }
    Ok(())
}

/// Resets `group`'s offsets on `topic` to `target` (blocking: call from a blocking thread).
pub fn replay(
    kafka: &KafkaConfig,
    service: &str,
    group: &str,
    topic: &str,
    target: &ReplayTarget,
) -> Result<ReplayReport, ReplayError> {
    let timeout = kafka.request_timeout();
    // The group's own consumer config, never subscribed: it only reads and commits offsets.
    let consumer: BaseConsumer = kafka
        .consumer_config(service, group, ProcessingGuarantee::AtLeastOnce)
        .create()
        .map_err(failed("create consumer"))?;
    ensure_stopped(&consumer, group, timeout)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(failed("metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();

    let mut query = TopicPartitionList::new();
    for partition in &partitions {
        query.add_partition(topic, *partition);
    }
    let before = consumer
        .committed_offsets(query, timeout)
        .map_err(failed("committed offsets"))?;
    let committed =
        |partition: i32| match before.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        };

    let targets: Vec<(i32, i64)> = match target {
        ReplayTarget::Earliest | ReplayTarget::Latest => partitions
            .iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, *p, timeout)
                    .map(|(low, high)| {
                        (
                            *p,
                            if *target == ReplayTarget::Latest {
                                high
                            } else {
                                low
                            },
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map_err(failed("watermarks"))?,
        ReplayTarget::Time(time) => {
            let mut tpl = TopicPartitionList::new();
            for partition in &partitions {
                tpl.add_partition_offset(
                    topic,
                    *partition,
                    Offset::Offset(time.timestamp_millis()),
                )
                .map_err(failed("offsets for time"))?;
            }
            let found = consumer
                .offsets_for_times(tpl, timeout)
                .map_err(failed("offsets for time"))?;
            let mut targets = Vec::new();
            for partition in &partitions {
                let offset = match found.find_partition(topic, *partition).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) if offset >= 0 => offset,
                    // No record at or after the time: the end of the partition.
                    _ => {
                        consumer
                            .fetch_watermarks(topic, *partition, timeout)
                            .map_err(failed("watermarks"))?
                            .1
                    }
                };
                targets.push((*partition, offset));
            }
            targets
        }
        ReplayTarget::Offsets(offsets) => {
            for (partition, _) in offsets {
                if !partitions.contains(partition) {
                    return Err(ReplayError::NoSuchPartition {
                        topic: topic.to_string(),
                        partition: *partition,
                    });
                }
            }
            offsets.clone()
        }
    };

    let mut commit = TopicPartitionList::new();
    for (partition, offset) in &targets {
        commit
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(failed("offsets"))?;
    }
    consumer
        .commit(&commit, CommitMode::Sync)
        .map_err(failed("commit"))?;
    Ok(ReplayReport {
        group: group.to_string(),
        topic: topic.to_string(),
        moves: targets
            .into_iter()
            .map(|(partition, to)| PartitionMove {
                partition,
                from: committed(partition),
                to,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            "earliest".parse::<ReplayTarget>(),
            Ok(ReplayTarget::Earliest)
        );
        assert_eq!("latest".parse::<ReplayTarget>(), Ok(ReplayTarget::Latest));
        assert_eq!("END".parse::<ReplayTarget>(), Ok(ReplayTarget::Latest));
        assert!(matches!(
            "2026-11-26T10:00:00Z".parse::<ReplayTarget>(),
            Ok(ReplayTarget::Time(_))
        ));
        assert_eq!(
            "0:10, 2:5".parse::<ReplayTarget>(),
            Ok(ReplayTarget::Offsets(vec![(0, 10), (2, 5)]))
        );
        assert!("yesterday"
            .parse::<ReplayTarget>()
            .unwrap_err()
            .contains("expected earliest"));
        assert!("0:x"
            .parse::<ReplayTarget>()
            .unwrap_err()
            .contains("offset is not a number"));
        assert!("0:-1".parse::<ReplayTarget>().is_err());
    }
}
