//! A consumer group's committed offsets, as a test reads them: through a consumer in the same
//! group that never subscribes (so it never joins, rebalances or commits anything itself).
//! Blocking: call from `block_in_place` or a blocking thread.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// Reads the committed offsets of one group.
pub struct GroupOffsets {
    consumer: BaseConsumer,
}

impl std::fmt::Debug for GroupOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupOffsets").finish_non_exhaustive()
    }
}

impl GroupOffsets {
    /// A reader of `group`'s offsets on the cluster at `bootstrap`.
    pub fn new(bootstrap: &str, group: &str) -> GroupOffsets {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets reader");
        GroupOffsets { consumer }
    }

    /// The committed offset of each of the first `partitions` partitions of `topic`;
    /// partitions without one are omitted.
    pub fn committed(&self, topic: &str, partitions: i32) -> KafkaResult<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partitions {
            tpl.add_partition(topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }

    /// Commits `offsets` (partition → next offset to read) for `group` on `topic`, as a member
    /// of the group — the way a stage that had processed up to there would have. (A commit
    /// from outside the group, generation -1, is refused by Tansu with UNKNOWN_MEMBER_ID.)
    /// Joins, waits (bounded) for the assignment, commits, leaves. Blocking.
    pub fn commit_as_member(
        bootstrap: &str,
        group: &str,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) -> KafkaResult<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("session.timeout.ms", "6000")
            .create()?;
        consumer.subscribe(&[topic])?;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while consumer.assignment()?.count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{group}: no assignment on {topic} within 90 s"
            );
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let mut tpl = TopicPartitionList::new();
        for (&partition, &offset) in offsets {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        consumer.unsubscribe();
        let _ = consumer.poll(Duration::from_millis(100));
        Ok(())
    }
}
