//! Reading topics back to their end: the compacted topics a stage restores from at start
//! (`files`, `state`), and the topics an operator command reads (`dead-letters`, `deliveries`,
//! `changes`).
//!
//! A [`TopicReader`] is a group-less consumer: it assigns partitions itself and never commits,
//! and in `exactly_once` it reads committed data only. [`TopicReader::read_to_end`] reads the
//! given partitions from the beginning until each reports partition EOF — the end as the fetch
//! high-watermark shows it, which every broker here reports correctly (Tansu's ListOffsets
//! "latest" does not) — all partitions at once, so a restore of many partitions pays the fetch
//! round trips once, not once per partition.
//!
//! Transport errors (a broker restarting, all brokers down for a moment) arrive as events,
//! possibly queued while the reader sat idle; librdkafka reconnects and fetches on by itself.
//! So they are ridden out: only a read that makes no progress for the whole bound fails, with
//! the last error seen.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{KafkaConfig, ProcessingGuarantee};
use crate::client_log::ClientLog;

/// Where a group stands on each of the first `partitions` partitions of `topic`: its committed
/// offset, or the beginning where it has none — where what it has not processed starts (read it
/// with [`TopicReader::read_from`]). `consumer` is in the group and never subscribes. Blocking.
pub fn committed_or_beginning<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> KafkaResult<Vec<(i32, Offset)>> {
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(query, timeout)?;
    Ok((0..partitions)
        .map(|partition| {
            let offset = match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            (partition, offset)
        })
        .collect())
}

/// [`committed_or_beginning`] of `group` on `topic`, through a short-lived member of the
/// group that never joins it (`client` names it). Blocking.
pub fn group_positions(
    kafka: &KafkaConfig,
    client: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> KafkaResult<Vec<(i32, Offset)>> {
    let consumer: BaseConsumer = kafka
        .consumer_config(client, group, ProcessingGuarantee::AtLeastOnce)
        .create()?;
    committed_or_beginning(&consumer, topic, partitions, kafka.request_timeout())
}

/// How long one poll waits for the next message.
const POLL: Duration = Duration::from_millis(100);

/// A group-less consumer that reads partitions from the beginning to their end.
pub struct TopicReader {
    consumer: BaseConsumer<ClientLog>,
    /// Bound of one metadata call, and of a read that makes no progress.
    timeout: Duration,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// A reader for `service` (its client id), reading committed data only in `exactly_once`.
    pub fn new(
        kafka: &KafkaConfig,
        service: &str,
        guarantee: ProcessingGuarantee,
    ) -> KafkaResult<TopicReader> {
        Ok(TopicReader {
            consumer: kafka
                .reader_config(service, guarantee)
                .create_with_context(ClientLog::new("reader"))?,
            timeout: kafka.request_timeout(),
        })
    }

    /// The partition count of `topic` (blocking metadata call).
    pub fn partitions(&self, topic: &str) -> KafkaResult<i32> {
        let metadata = self.consumer.fetch_metadata(Some(topic), self.timeout)?;
        Ok(metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32))
    }

    /// Per partition of `topic`, the first offset whose timestamp is at or after `millis`, or
    /// the end where none is (Kafka's ListOffsets by timestamp). Blocking.
    pub fn offsets_for_time(&self, topic: &str, millis: i64) -> KafkaResult<Vec<(i32, Offset)>> {
        let mut query = TopicPartitionList::new();
        for partition in 0..self.partitions(topic)? {
            query.add_partition_offset(topic, partition, Offset::Offset(millis))?;
        }
        let found = self.consumer.offsets_for_times(query, self.timeout)?;
        Ok(found
            .elements_for_topic(topic)
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect())
    }

    /// Reads every partition of `topic` from the beginning to its end, calling `each` per
    /// message (in offset order within a partition). Returns the messages read. Blocking.
    pub fn read_all(
        &self,
        topic: &str,
        each: impl FnMut(&BorrowedMessage<'_>),
    ) -> KafkaResult<u64> {
        let partitions: Vec<i32> = (0..self.partitions(topic)?).collect();
        self.read_to_end(topic, &partitions, each)
    }

    /// Reads `partitions` of `topic` from the beginning to their end, calling `each` per
    /// message (in offset order within a partition). Returns the messages read. Blocking.
    pub fn read_to_end(
        &self,
        topic: &str,
        partitions: &[i32],
        each: impl FnMut(&BorrowedMessage<'_>),
    ) -> KafkaResult<u64> {
        let from: Vec<(i32, Offset)> = partitions
            .iter()
            .map(|&partition| (partition, Offset::Beginning))
            .collect();
        self.read_from(topic, &from, each)
    }

    /// Reads each listed partition of `topic` from its offset to its end, calling `each` per
    /// message (in offset order within a partition). Returns the messages read. Blocking.
    pub fn read_from(
        &self,
        topic: &str,
        from: &[(i32, Offset)],
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> KafkaResult<u64> {
        self.read_until(topic, from, |message| {
            each(message);
            ControlFlow::Continue(())
        })
    }

    /// [`TopicReader::read_from`], stopping early when `each` breaks. Blocking.
    pub fn read_until(
        &self,
        topic: &str,
        from: &[(i32, Offset)],
        mut each: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> KafkaResult<u64> {
        if from.is_empty() {
            return Ok(0);
        }
        let mut assignment = TopicPartitionList::new();
        for &(partition, offset) in from {
            assignment.add_partition_offset(topic, partition, offset)?;
        }
        let partitions: Vec<i32> = from.iter().map(|(partition, _)| *partition).collect();
        self.consumer.assign(&assignment)?;
        let result = self.drain(topic, &partitions, &mut each);
        // A failed unassign leaves nothing behind that the next assign does not replace.
        let _ = self.consumer.unassign();
        result
    }

    fn drain(
        &self,
        topic: &str,
        partitions: &[i32],
        each: &mut impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> KafkaResult<u64> {
        let mut open: BTreeSet<i32> = partitions.iter().copied().collect();
        let (mut read, mut last_progress, mut last_error) = (0u64, Instant::now(), None);
        while !open.is_empty() {
            match self.consumer.poll(POLL) {
                // Only what this read assigned: a message left over from an earlier read of
                // other partitions is not ours.
                Some(Ok(message))
                    if message.topic() == topic && open.contains(&message.partition()) =>
                {
                    last_progress = Instant::now();
                    read += 1;
                    if each(&message).is_break() {
                        return Ok(read);
                    }
                }
                Some(Ok(_)) | None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if open.remove(&partition) {
                        last_progress = Instant::now();
                    }
                }
                Some(Err(error)) => last_error = Some(error),
            }
            if last_progress.elapsed() > self.timeout {
                return Err(last_error.unwrap_or(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OperationTimedOut,
                )));
            }
        }
        Ok(read)
    }
}
