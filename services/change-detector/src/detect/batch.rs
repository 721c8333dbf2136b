//! The open batch and how it becomes durable — the filter stage's delivery guarantee, kept
//! through the runtime's [`GuaranteedWriter`] (which owns every transaction call).
//!
//! A batch closes by size or time (`batch_max_records`, `batch_max_ms`). Its change events (and
//! rejects) are sent as they are decided; its state updates are held; at the commit the held
//! state updates follow the acknowledged changes, and the consumer offsets come last:
//!
//! **`exactly_once`.** One Kafka transaction per batch, begun by its first send: the change
//! events, the state updates and the consumer offsets (added to the transaction with the
//! consumer's group metadata, KIP-447) commit together. A crash or rebalance therefore never
//! loses a change and never shows one twice to `read_committed` readers. On revoke the open
//! batch is committed (or aborted) before the partitions are released.
//!
//! **`at_least_once`.** Changes are sent and acknowledged, then state, acknowledged, then the
//! offsets are committed. A crash between the steps repeats the batch: the same records against
//! the same state give the same changes — same key, version and payload (see
//! [`super::decide`]) — so the sink's Idempotency-Key absorbs the repeat. State never runs
//! ahead of `changes`: a state entry is written only once its change is acknowledged.
//!
//! **Failures.** A retryable error aborts the batch ([`Batch::abort`]); the detector then
//! rebuilds its state from `state` and rewinds to the committed offsets, so versions stay what
//! the committed history says. A fatal one (fenced by another instance with the same
//! transactional id, a producer that cannot be replaced) stops the stage: going on would fence
//! the other instance in turn.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use snapfeed_runtime::kafka::{Consumed, GuaranteedWriter, OutgoingRecord, WriteError};
use snapfeed_runtime::topics::TopicNames;

use crate::config::DetectorConfig;

/// Longest wait for the next record while no batch is open.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The batch being filled, and the writer that commits it.
#[derive(Debug)]
pub struct Batch {
    writer: Arc<GuaranteedWriter>,
    topics: TopicNames,
    /// `batch_max_records`.
    max_records: usize,
    /// `batch_max_ms`.
    max_age: Duration,
    open: OpenBatch,
}

/// What the open batch has done since the last commit.
#[derive(Debug, Default)]
struct OpenBatch {
    /// When its first record arrived.
    started: Option<Instant>,
    /// Snapshot records decided.
    records: usize,
    /// Records sent (changes, rejects): they need a commit even if no offset moved.
    sent: usize,
    /// Next offset to consume, per partition.
    offsets: BTreeMap<i32, i64>,
    /// State updates, written at the commit once the changes are acknowledged.
    held_state: Vec<HeldState>,
}

/// One key's new `state` entry, held until the commit.
#[derive(Debug)]
struct HeldState {
    partition: i32,
    key: String,
    entry: Vec<u8>,
}

impl Batch {
    /// An empty batch writing through `writer`.
    pub fn new(
        writer: Arc<GuaranteedWriter>,
        topics: TopicNames,
        config: &DetectorConfig,
    ) -> Batch {
        Batch {
            writer,
            topics,
            max_records: config.batch_max_records,
            max_age: Duration::from_millis(config.batch_max_ms),
            open: OpenBatch::default(),
        }
    }

    /// How long the loop may wait for the next record before the open batch is due.
    pub fn poll_timeout(&self) -> Duration {
        match self.open.started {
            None => IDLE_POLL,
            Some(started) => self
                .max_age
                .saturating_sub(started.elapsed())
                .min(IDLE_POLL),
        }
    }

    /// True when the open batch must be committed now.
    pub fn is_due(&self) -> bool {
        self.open.started.is_some_and(|started| {
            self.open.records >= self.max_records || started.elapsed() >= self.max_age
        })
    }

    /// A record arrived: the batch is open from now on, if it was not.
    pub fn start(&mut self) {
        self.open.started.get_or_insert_with(Instant::now);
    }

    /// Time since the batch opened.
    pub fn age(&self) -> Duration {
        self.open.started.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// The record at `offset` of `partition` is decided: the commit moves past it.
    pub fn consumed(&mut self, partition: i32, offset: i64) {
        self.open.offsets.insert(partition, offset + 1);
        self.open.records += 1;
    }

    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.open.offsets.is_empty() && self.open.sent == 0
    }

    /// Forgets an open batch with nothing in it.
    pub fn clear(&mut self) {
        self.open = OpenBatch::default();
    }

    /// Sends a change event, to the partition its snapshot record came from (same key, same
    /// partition count). Blocks while the producer queue is full.
    pub fn send_change(
        &mut self,
        partition: i32,
        key: &str,
        event: &[u8],
    ) -> Result<(), WriteError> {
        self.writer.send(
            OutgoingRecord::new(&self.topics.changes, key.as_bytes(), event).partition(partition),
        )?;
        self.open.sent += 1;
        Ok(())
    }

    /// Holds a key's new state entry until the commit.
    pub fn hold_state(&mut self, partition: i32, key: &str, entry: Vec<u8>) {
        self.open.held_state.push(HeldState {
            partition,
            key: key.to_string(),
            entry,
        });
    }

    /// Sends the reject of a corrupt snapshot record (keyed by its location).
    pub fn send_reject(&mut self, key: &str, reject: &[u8]) -> Result<(), WriteError> {
        self.writer.send(OutgoingRecord::new(
            &self.topics.rejects,
            key.as_bytes(),
            reject,
        ))?;
        self.open.sent += 1;
        Ok(())
    }

    /// Makes the batch durable: changes acknowledged (`at_least_once`), then the held state,
    /// then the consumer offsets — one transaction in `exactly_once`. On `Err` call
    /// [`Batch::abort`] (or stop, if the error is fatal).
    pub fn commit<C: ConsumerContext + 'static>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WriteError> {
        // No state before its change is acknowledged (a no-op inside a transaction).
        self.writer.acknowledge()?;
        for held in &self.open.held_state {
            self.writer.send(
                OutgoingRecord::new(&self.topics.state, held.key.as_bytes(), &held.entry)
                    .partition(held.partition),
            )?;
        }
        let offsets = self.offsets()?;
        self.writer.commit(Some(Consumed {
            consumer,
            offsets: &offsets,
        }))?;
        self.open = OpenBatch::default();
        Ok(())
    }

    /// Throws the open batch away: the transaction aborted, or the failed acknowledgements
    /// forgotten. The caller rebuilds state and rewinds. `Err` only when the writer cannot
    /// go on (fatal) or could not abort yet (retryable: the next batch tries again).
    pub fn abort(&mut self) -> Result<(), WriteError> {
        self.open = OpenBatch::default();
        self.writer.abort()
    }

    /// Partitions revoked: their offsets are no longer ours to commit.
    pub fn release(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.open.offsets.remove(partition);
        }
    }

    /// The topic whose offsets the batch commits.
    pub fn consumed_topic(&self) -> &str {
        &self.topics.snapshots
    }

    /// At shutdown, after the last commit: aborts what is still open and flushes, within
    /// `bound`.
    pub fn close(&self, bound: Duration) -> Result<(), WriteError> {
        self.writer.close(bound)
    }

    fn offsets(&self) -> Result<TopicPartitionList, WriteError> {
        let mut offsets = TopicPartitionList::new();
        for (&partition, &offset) in &self.open.offsets {
            offsets
                .add_partition_offset(&self.topics.snapshots, partition, Offset::Offset(offset))
                .map_err(|source| WriteError::Offsets {
                    offsets: format!("{}[{partition}]@{offset}", self.topics.snapshots),
                    source,
                })?;
        }
        Ok(offsets)
    }
}
