//! The assigned partitions and their state: restored from the compacted `state` topic before a
//! partition's first record is decided, rebuilt after an aborted batch, dropped on revoke.
//!
//! The guarantee kept here: **a partition is processed only with its state restored in full.**
//! Without it every key would be re-emitted as CREATE. A restore that fails (a broker
//! restarting, all brokers down) leaves the partition unprocessed and not ready, and is retried
//! with backoff until it succeeds or the partition is revoked — never given up on, since no
//! rebalance need ever come to rescue a partition dropped silently. Once restored late, the
//! partition is rewound to its committed offset, because the records that arrived meanwhile
//! were passed over. The same rewind follows an aborted batch, so versions stay what the
//! committed history says.
//!
//! A partition stopped on a corrupt record (`on_corrupt = "pause"`) is held but not processed.
//!
//! The second guarantee: **state is used only with the partition count it was written for**
//! ([`layout`](super::layout)): a restore that finds otherwise stops the detector.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::health::Readiness;
use snapfeed_runtime::kafka::TopicReader;
use snapfeed_runtime::records::{
    AvroRecord, DetectorState, StateLayout, StreamProgress, STALE_SNAPSHOT_KEY_PREFIX,
    STREAM_PROGRESS_KEY_PREFIX,
};

use super::layout::{Found, LayoutMismatch, LayoutSeen, STATE_LAYOUT_KEY};
use super::{NOT_PAUSED, RESTORED};
use crate::metrics::DetectorMetrics;
use crate::state::{PartitionState, Streams};

/// Wait before the first new attempt at a partition whose state could not be restored
/// (doubling up to [`RESTORE_RETRY_MAX`]).
const RESTORE_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between two attempts at restoring a partition.
const RESTORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// The assigned partitions: restored, waiting to be, or paused.
#[derive(Debug)]
pub struct Partitions {
    /// State of each restored partition.
    restored: HashMap<i32, PartitionState>,
    /// Stream names, interned once for every partition's state.
    streams: Streams,
    /// Assigned partitions whose state could not be restored yet: their records are passed
    /// over until it is.
    unrestored: BTreeSet<i32>,
    /// When the next restore attempt of `unrestored` is due, and the wait after it.
    retry: (Instant, Duration),
    /// Partitions stopped on a corrupt record.
    paused: HashSet<i32>,
    /// Restored partitions without a layout entry: the next batch consuming from one writes it.
    layout_due: BTreeSet<i32>,
    /// Reads `state`.
    reader: StateReader,
    metrics: DetectorMetrics,
    readiness: Readiness,
}

/// Reads the `state` topic back (group-less; committed data only in exactly_once).
#[derive(Debug)]
pub struct StateReader {
    /// Reads the asked partitions from the beginning to their end, all at once.
    pub reader: TopicReader,
    /// The `state` topic.
    pub topic: String,
    /// To decode state entries.
    pub schemas: Arc<SchemaStore>,
    /// Bound of one blocking call (the rewind's committed-offsets lookup).
    pub timeout: Duration,
    /// Partition count of `snapshots`, `state` and `changes` when the detector started.
    pub partitions: i32,
}

/// One partition as read from `state`.
#[derive(Debug, Default)]
struct ReadPartition {
    state: PartitionState,
    /// Messages read.
    entries: u64,
    layout: LayoutSeen,
}

/// Why a restore did not restore.
enum RestoreFailure {
    /// The read failed: retried with backoff.
    Read(rdkafka::error::KafkaError),
    /// State written for another partition count: the detector stops.
    Layout(LayoutMismatch),
}

impl From<rdkafka::error::KafkaError> for RestoreFailure {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        RestoreFailure::Read(error)
    }
}

impl From<LayoutMismatch> for RestoreFailure {
    fn from(mismatch: LayoutMismatch) -> Self {
        RestoreFailure::Layout(mismatch)
    }
}

impl Partitions {
    /// None assigned yet — and not ready until the first assignment is restored: a detector
    /// that has not joined its group yet has no state to decide with (an empty assignment
    /// counts as restored: there is nothing to restore).
    pub fn new(reader: StateReader, metrics: DetectorMetrics, readiness: Readiness) -> Partitions {
        readiness.set(RESTORED, false);
        readiness.set(NOT_PAUSED, true);
        Partitions {
            restored: HashMap::new(),
            streams: Streams::default(),
            unrestored: BTreeSet::new(),
            retry: (Instant::now(), RESTORE_RETRY_INITIAL),
            paused: HashSet::new(),
            layout_due: BTreeSet::new(),
            reader,
            metrics,
            readiness,
        }
    }

    /// The state of `partition`, if its records are processed now (restored, not paused).
    pub fn processed(&mut self, partition: i32) -> Option<&mut PartitionState> {
        if self.paused.contains(&partition) {
            return None;
        }
        self.restored.get_mut(&partition)
    }

    /// True (once) when `partition` has no layout entry yet: the caller holds one in its batch.
    pub fn take_layout_due(&mut self, partition: i32) -> bool {
        self.layout_due.remove(&partition)
    }

    /// The partition count the detector runs with.
    pub fn partition_count(&self) -> i32 {
        self.reader.partitions
    }

    /// The id of a stream name.
    pub fn stream_id(&mut self, name: &str) -> u32 {
        self.streams.id(name)
    }

    /// The `state` entry of `key` on `partition` as it stands now.
    pub fn entry_of(&self, partition: i32, key: &str, snapshot_id: &str) -> Option<DetectorState> {
        self.restored
            .get(&partition)?
            .to_record(key, &self.streams, snapshot_id)
    }

    /// Stops processing `partition` (its records are no longer decided until a replay).
    pub fn pause(&mut self, partition: i32) {
        self.paused.insert(partition);
        self.metrics.paused_partitions.set(self.paused.len() as i64);
        self.readiness.set(NOT_PAUSED, false);
    }

    /// Every assigned partition, restored or not.
    pub fn held(&self) -> Vec<i32> {
        self.restored
            .keys()
            .chain(&self.unrestored)
            .copied()
            .collect()
    }

    /// Drops the state of revoked partitions.
    pub fn release(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.restored.remove(partition);
            self.unrestored.remove(partition);
            self.layout_due.remove(partition);
            if self.paused.remove(partition) {
                self.metrics.paused_partitions.set(self.paused.len() as i64);
            }
        }
        self.readiness.set(NOT_PAUSED, self.paused.is_empty());
        self.readiness.set(RESTORED, self.unrestored.is_empty());
        self.count_keys();
    }

    /// Sets the held-keys gauge.
    pub fn count_keys(&self) {
        let keys = self.restored.values().map(|p| p.len() as i64).sum();
        self.metrics.state_keys.set(keys);
    }

    /// Restores the state of `partitions` from the `state` topic (replacing what is held), in
    /// one read of all of them: the fetch round trips are paid once per assignment, not once
    /// per partition. If the read fails, none of them is restored (each is retried). `Err` when
    /// the state was written for another partition count: nothing is restored, and the
    /// detector must stop.
    pub fn restore(&mut self, partitions: &[i32]) -> Result<(), LayoutMismatch> {
        if partitions.is_empty() {
            self.readiness.set(RESTORED, self.unrestored.is_empty());
            return Ok(());
        }
        self.readiness.set(RESTORED, false);
        let count = self.reader.partitions;
        if let Some(&grown) = partitions.iter().find(|&&p| p >= count) {
            return Err(LayoutMismatch {
                partition: grown,
                partitions: count,
                found: Found::Grown(count),
            });
        }
        let started = Instant::now();
        match self.reader.read_checked(partitions, &mut self.streams) {
            Err(RestoreFailure::Layout(mismatch)) => return Err(mismatch),
            Ok(read) => {
                let seconds = started.elapsed().as_secs_f64();
                self.metrics.restore_seconds.observe(seconds);
                // The partitions are read together: the time is the assignment's, logged once.
                tracing::info!(
                    message = "State restored.",
                    partitions = read.len(),
                    seconds
                );
                for (partition, read) in read {
                    self.metrics.restored_entries.inc_by(read.entries);
                    tracing::info!(
                        message = "Partition state restored.",
                        partition,
                        keys = read.state.len(),
                        entries = read.entries
                    );
                    if read.layout.recorded.is_none() {
                        self.layout_due.insert(partition);
                    }
                    self.restored.insert(partition, read.state);
                    self.unrestored.remove(&partition);
                }
            }
            Err(RestoreFailure::Read(error)) => {
                // Without its state a partition would re-emit everything as CREATE: never
                // process it. It stays unrestored (not ready) and `retry_restore` tries again.
                tracing::warn!(message = "Cannot restore state yet; partitions not processed until it is.", partitions = ?partitions, %error);
                for &partition in partitions {
                    self.restored.remove(&partition);
                    if self.unrestored.insert(partition) {
                        self.retry = (
                            Instant::now() + RESTORE_RETRY_INITIAL,
                            RESTORE_RETRY_INITIAL * 2,
                        );
                    }
                }
            }
        }
        self.count_keys();
        self.readiness.set(RESTORED, self.unrestored.is_empty());
        Ok(())
    }

    /// Retries the restore of partitions whose state could not be read (with backoff); once
    /// restored, rewinds them to their committed offsets. Called between polls. `Err` as for
    /// [`restore`](Self::restore).
    pub fn retry_restore<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), LayoutMismatch> {
        let (due, wait) = self.retry;
        if self.unrestored.is_empty() || Instant::now() < due {
            return Ok(());
        }
        let partitions: Vec<i32> = self.unrestored.iter().copied().collect();
        tracing::info!(message = "Retrying the state restore.", partitions = ?partitions);
        self.restore(&partitions)?;
        let restored: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.unrestored.contains(p))
            .collect();
        if !restored.is_empty() {
            if let Err(error) = self.rewind(consumer, Some(&restored)) {
                // Without the rewind, records passed over while unrestored would be skipped:
                // keep the partitions unprocessed and try again.
                tracing::warn!(message = "Cannot rewind restored partitions; retrying.", %error, partitions = ?restored);
                self.unrestore(&restored);
            }
        }
        let next = if self.unrestored.is_empty() {
            RESTORE_RETRY_INITIAL
        } else {
            (wait * 2).min(RESTORE_RETRY_MAX)
        };
        self.retry = (Instant::now() + wait, next);
        Ok(())
    }

    /// Takes `partitions` back to unrestored: nothing of theirs is decided until a later
    /// [`retry_restore`](Self::retry_restore) has restored their state and rewound them.
    pub fn unrestore(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.restored.remove(partition);
            self.unrestored.insert(*partition);
        }
        if !partitions.is_empty() {
            self.readiness.set(RESTORED, false);
        }
    }

    /// Seeks the consumer back to the committed offsets of `only` (every assigned partition
    /// when `None`), so the records since the last commit are decided again. An error for any
    /// one partition is an error: a partition left where it was would skip records.
    pub fn rewind<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        only: Option<&[i32]>,
    ) -> KafkaResult<()> {
        let timeout = self.reader.timeout;
        let committed = consumer.committed(timeout)?;
        let mut rewind = TopicPartitionList::new();
        for element in committed.elements() {
            if only.is_some_and(|only| !only.contains(&element.partition())) {
                continue;
            }
            let offset = match element.offset() {
                Offset::Invalid => Offset::Beginning,
                offset => offset,
            };
            rewind.add_partition_offset(element.topic(), element.partition(), offset)?;
        }
        let sought = consumer.seek_partitions(rewind, timeout)?;
        for element in sought.elements() {
            element.error()?;
        }
        Ok(())
    }

    /// Sums the consumer lag librdkafka reports in its statistics over the restored
    /// partitions of `topic`. Measured by librdkafka from its own fetch responses: asking the
    /// broker for watermarks here would block the loop behind the long-poll fetch.
    pub fn record_lag(&self, statistics: &rdkafka::Statistics, topic: &str) {
        let lag: i64 = statistics
            .topics
            .get(topic)
            .map(|topic| {
                topic
                    .partitions
                    .iter()
                    .filter(|(partition, _)| self.restored.contains_key(partition))
                    .map(|(_, p)| p.consumer_lag.max(0))
                    .sum()
            })
            .unwrap_or(0);
        self.metrics.consumer_lag.set(lag);
    }
}

impl StateReader {
    /// [`read`](Self::read), then the layout check of every partition read: state written for
    /// another partition count is a [`RestoreFailure::Layout`]. When every partition read is
    /// empty without a layout entry, the first informative partition outside them is checked
    /// too: an empty partition is what a partition added to a running pipeline looks like.
    fn read_checked(
        &self,
        partitions: &[i32],
        streams: &mut Streams,
    ) -> Result<HashMap<i32, ReadPartition>, RestoreFailure> {
        let read = self.read(partitions, streams)?;
        for (&partition, one) in &read {
            one.layout.check(partition, self.partitions)?;
        }
        if read.values().any(|one| one.layout.is_informative()) {
            return Ok(read);
        }
        for other in (0..self.partitions).filter(|p| !partitions.contains(p)) {
            let probed = self.read(&[other], streams)?;
            if let Some(one) = probed.get(&other).filter(|o| o.layout.is_informative()) {
                one.layout.check(other, self.partitions)?;
                break;
            }
        }
        Ok(read)
    }

    /// The partition count a layout entry records (`None`, logged, if it cannot be read).
    fn layout_entry(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> Option<i32> {
        let location = MessageLocation::of(message);
        let payload = message.payload()?;
        match self
            .schemas
            .decode::<StateLayout>(payload, StateLayout::SCHEMA, &location)
        {
            Ok(layout) => Some(layout.partition_count),
            Err(error) => {
                // The key check still runs on every entry of the partition.
                tracing::error!(message = "Skipping an unreadable state layout entry.", %location, %error);
                None
            }
        }
    }

    /// A stream-progress control entry: the newest snapshot applied for `stream`.
    fn restore_progress(
        &self,
        state: &mut PartitionState,
        stream: &str,
        message: &rdkafka::message::BorrowedMessage<'_>,
        streams: &mut Streams,
    ) {
        let location = MessageLocation::of(message);
        let Some(payload) = message.payload() else {
            return;
        };
        match self
            .schemas
            .decode::<StreamProgress>(payload, StreamProgress::SCHEMA, &location)
        {
            Ok(progress) => state.restore_newest(
                streams.id(stream),
                &progress.snapshot_id,
                progress.snapshot_time,
                progress.first_offset,
            ),
            // Without it an old snapshot could roll records back: say so loudly, but a bad
            // entry must not keep the partition from starting either.
            Err(error) => tracing::error!(
                message = "Skipping an unreadable stream-progress entry; the ordering guard of its stream starts over.",
                %location,
                %error
            ),
        }
    }

    /// Reads `partitions` of `state` from the beginning to their end: per partition, the
    /// state and how many entries it read. Unreadable entries are skipped with a warning
    /// (naming partition and offset): one bad entry must not keep a partition from starting.
    fn read(
        &self,
        partitions: &[i32],
        streams: &mut Streams,
    ) -> KafkaResult<HashMap<i32, ReadPartition>> {
        let mut read: HashMap<i32, ReadPartition> = partitions
            .iter()
            .map(|&partition| (partition, ReadPartition::default()))
            .collect();
        self.reader.read_to_end(&self.topic, partitions, |message| {
            let Some(ReadPartition {
                state,
                entries,
                layout,
            }) = read.get_mut(&message.partition())
            else {
                return;
            };
            *entries += 1;
            let Some(Ok(key)) = message.key().map(std::str::from_utf8) else {
                return;
            };
            if let Some(stream) = key.strip_prefix(STREAM_PROGRESS_KEY_PREFIX) {
                self.restore_progress(state, stream, message, streams);
                return;
            }
            if key == STATE_LAYOUT_KEY {
                layout.recorded = self.layout_entry(message).or(layout.recorded);
                return;
            }
            if key.starts_with(STALE_SNAPSHOT_KEY_PREFIX) {
                // For `reconcile`: nothing the detector decides with.
                return;
            }
            let Some(payload) = message.payload() else {
                state.restore_entry(key, None, streams);
                layout.tombstone(key);
                return;
            };
            layout.entry(key, message.partition(), self.partitions);
            let location = MessageLocation::of(message);
            match self
                .schemas
                .decode::<DetectorState>(payload, DetectorState::SCHEMA, &location)
            {
                Ok(entry) => {
                    if !state.restore_entry(key, Some(&entry), streams) {
                        tracing::warn!(message = "Skipping a state entry with an impossible hash or version.", %location);
                    }
                }
                Err(error) => {
                    tracing::warn!(message = "Skipping an unreadable state entry.", %error)
                }
            }
        })?;
        Ok(read)
    }
}
