//! The filter stage: consume `snapshots`, decide per record, emit changes and state, commit
//! each batch. This file is the thin I/O shell — a message in, the decision called, its outputs
//! handed to the batch; the parts, in the order a record meets them:
//!
//! - [`decide`]: the per-record decision, pure (unseen / changed / unchanged / corrupt).
//! - `order`: the ordering guard — a snapshot older than the newest applied for its stream
//!   changes nothing.
//! - `deletes`: a snapshot-end marker — the keys its complete snapshot left out, and the guard.
//! - [`emit`]: a decision's records — change event, state entry, reject — encoded.
//! - [`batch`]: the open batch and its commit through the writer — **the delivery guarantee**.
//! - [`restore`]: partitions' state from the `state` topic; rebuild and rewind after an abort.
//! - [`layout`]: state is used only with the partition count it was written for.
//! - [`rebalance`]: the consumer context — commit before revoke, restore on assign.
//! - [`stage`]: the detector in the runtime's consume loop; a fatal error ends the loop.
//!
//! Failures: a retryable one (an unacknowledged record, a commit that failed, a record that
//! cannot be encoded) aborts the batch, rebuilds state and rewinds to the committed offsets —
//! the batch is decided again. A fatal write error stops the stage, and the service with it; so
//! does state written for another partition count ([`layout::LayoutMismatch`]).
//!
//! Threading: everything here runs on the stage's dedicated thread; every librdkafka call
//! blocks that thread only, never an async worker.

pub mod batch;
pub mod decide;
mod deletes;
pub mod emit;
pub mod layout;
mod order;
pub mod rebalance;
pub mod restore;
pub mod stage;

use std::collections::HashSet;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, TopicPartitionList};
use snapfeed_runtime::avro::AvroError;
use snapfeed_runtime::kafka::WriteError;
use snapfeed_runtime::records::ChangeOp;

use crate::config::{CorruptPolicy, DetectorConfig};
use crate::metrics::DetectorMetrics;
use batch::Batch;
use decide::{Change, Decider, SnapshotRecord, Verdict};
use emit::{location_of, Envelopes, RecordMeta};
use layout::{LayoutMismatch, STATE_LAYOUT_KEY};
use restore::Partitions;

pub use decide::{recognise_unchanged, Recognised};
pub use rebalance::DetectorContext;
pub use stage::DetectorStage;

/// Readiness condition: every assigned partition's state is restored.
pub const RESTORED: &str = "restored";
/// Readiness condition: no partition is stopped on a corrupt record.
pub const NOT_PAUSED: &str = "no_paused_partitions";

/// Why the open batch cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Writing failed: retryable (abort and redo) or fatal (stop), see [`WriteError::is_fatal`].
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A record could not be encoded.
    #[error(transparent)]
    Encode(#[from] AvroError),
    /// A partition could not be paused at a corrupt record.
    #[error("cannot pause partition {partition}: {source}")]
    Pause {
        /// The partition.
        partition: i32,
        /// The client error.
        source: KafkaError,
    },
}

/// Why the stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Writing failed fatally (fenced, or a producer that cannot be replaced).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// State written for another partition count than the topics have.
    #[error(transparent)]
    Layout(#[from] LayoutMismatch),
}

/// Snapshots already reported (logged, counted): a snapshot's end marker and its records reach
/// every partition, and it is reported once, not once per partition. Bounded: forgets
/// everything past 1,000 (a snapshot reported again then is harmless).
#[derive(Debug, Default)]
struct OncePerSnapshot(HashSet<String>);

impl OncePerSnapshot {
    /// True the first time `snapshot_id` is seen. Called per passed-over record: a snapshot
    /// already seen costs a lookup, not an allocation.
    fn first(&mut self, snapshot_id: &str) -> bool {
        if self.0.contains(snapshot_id) {
            return false;
        }
        if self.0.len() >= 1_000 {
            self.0.clear();
        }
        self.0.insert(snapshot_id.to_string())
    }
}

/// The filter stage's state between polls.
#[derive(Debug)]
pub struct Detector {
    /// What each record means: decode, content hash, compare with the key's state.
    decider: Decider,
    /// The assigned partitions and their state.
    partitions: Partitions,
    /// The open batch, and the writer that makes it durable.
    batch: Batch,
    /// Encodes change events, state entries and rejects.
    envelopes: Envelopes,
    /// `[detector]`: deletes and their guard, the corrupt-record policy.
    config: DetectorConfig,
    /// Snapshots whose deletes the guard refused (its metric counts a snapshot once).
    tripped_snapshots: OncePerSnapshot,
    /// Stale snapshots already logged (each is logged once, not once per partition).
    stale_snapshots: OncePerSnapshot,
    /// Replayed older snapshots already logged.
    replayed_snapshots: OncePerSnapshot,
    /// Records by outcome, batches, snapshots, the delete guard.
    metrics: DetectorMetrics,
    /// Set by a fatal error: nothing more is done, and the stage stops with it.
    failed: Option<StageError>,
}

impl Detector {
    /// A detector with nothing assigned yet.
    pub fn new(
        decider: Decider,
        partitions: Partitions,
        batch: Batch,
        envelopes: Envelopes,
        config: DetectorConfig,
        metrics: DetectorMetrics,
    ) -> Detector {
        Detector {
            decider,
            partitions,
            batch,
            envelopes,
            config,
            tripped_snapshots: OncePerSnapshot::default(),
            stale_snapshots: OncePerSnapshot::default(),
            replayed_snapshots: OncePerSnapshot::default(),
            metrics,
            failed: None,
        }
    }

    /// One `snapshots` message: decided into the open batch; a failure aborts the batch.
    pub fn on_message<C: ConsumerContext + 'static>(
        &mut self,
        consumer: &BaseConsumer<C>,
        message: &BorrowedMessage<'_>,
    ) {
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.handle(consumer, message) {
            tracing::warn!(message = "Record handling failed; recovering.", %error);
            self.recover(consumer, error);
        }
    }

    /// Decides one message: unchanged (counted), a change (sent, its state held), a
    /// snapshot-end marker (deletes), or corrupt (the policy). The offset moves past it unless
    /// its partition is paused at it.
    fn handle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), BatchError> {
        let partition = message.partition();
        if self.partitions.processed(partition).is_none() {
            return Ok(());
        }
        self.batch.start();
        if self.partitions.take_layout_due(partition) {
            // State knows its partition count from its first commit on (an abort takes this
            // back with the batch, and the restore after it finds the entry missing again).
            let layout = self
                .envelopes
                .state_layout(partition, self.partitions.partition_count())?;
            self.batch.hold_state(partition, STATE_LAYOUT_KEY, layout);
        }
        let meta = RecordMeta::from_message(message);
        // Interned once per record: the guard and the decision both need it.
        let stream = self.partitions.stream_id(meta.stream);
        if self.passes_over(partition, stream, &meta, message)? {
            self.batch.consumed(partition, message.offset());
            return Ok(());
        }
        let at = message.timestamp().to_millis().unwrap_or(0);
        let payload = message.payload().unwrap_or_default();
        let corrupt = if meta.is_snapshot_end() {
            match self.decider.read_marker(payload, &location_of(message)) {
                Ok(marker) => {
                    self.on_snapshot_end(partition, &marker, &meta, at)?;
                    None
                }
                Err(detail) => Some(detail),
            }
        } else {
            let record = SnapshotRecord {
                key: message.key().and_then(|k| std::str::from_utf8(k).ok()),
                payload,
                stream,
                snapshot_id: meta.snapshot_id,
                at,
            };
            let Some(state) = self.partitions.processed(partition) else {
                return Ok(());
            };
            match self.decider.decide(state, &record, || location_of(message)) {
                Verdict::Unchanged => {
                    self.metrics.outcome.unchanged.inc();
                    None
                }
                Verdict::Changed(change) => {
                    self.emit(partition, &change, &meta)?;
                    None
                }
                Verdict::Corrupt(detail) => Some(detail),
            }
        };
        if let Some(detail) = corrupt {
            if !self.on_corrupt(consumer, message, &meta, &detail)? {
                return Ok(());
            }
        }
        self.batch.consumed(partition, message.offset());
        Ok(())
    }

    /// Counts and sends one change, and holds the key's new state entry for the commit.
    fn emit(
        &mut self,
        partition: i32,
        change: &Change<'_>,
        source: &RecordMeta<'_>,
    ) -> Result<(), BatchError> {
        let outcome = &self.metrics.outcome;
        match change.op {
            ChangeOp::Create => outcome.created.inc(),
            ChangeOp::Update => outcome.updated.inc(),
            ChangeOp::Delete => outcome.deleted.inc(),
        }
        let event = self.envelopes.change_event(change, source)?;
        self.batch.send_change(partition, &change.key, event)?;
        if let Some(entry) = self
            .partitions
            .entry_of(partition, &change.key, source.snapshot_id)
        {
            let entry = self.envelopes.state_entry(&entry)?;
            self.batch.hold_state(partition, &change.key, entry);
        }
        Ok(())
    }

    /// A record that does not decode: `Ok(true)` when the policy moves past it.
    fn on_corrupt<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        message: &BorrowedMessage<'_>,
        meta: &RecordMeta<'_>,
        error: &str,
    ) -> Result<bool, BatchError> {
        self.metrics.outcome.corrupt.inc();
        let location = location_of(message);
        match self.config.on_corrupt {
            CorruptPolicy::Skip => {
                tracing::warn!(message = "Skipping a snapshot record that does not decode.", %location, %error);
                let reject = self.envelopes.reject(meta, error)?;
                self.batch.send_reject(&location.to_string(), &reject)?;
                Ok(true)
            }
            CorruptPolicy::Pause => {
                tracing::error!(
                    message = "Stopping the partition at a snapshot record that does not decode (on_corrupt = pause); replay past it once resolved.",
                    %location,
                    %error
                );
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&location.topic, location.partition);
                consumer.pause(&tpl).map_err(|source| BatchError::Pause {
                    partition: location.partition,
                    source,
                })?;
                self.partitions.pause(location.partition);
                Ok(false)
            }
        }
    }

    /// Commits the open batch (changes, state, offsets). A retryable failure aborts it and
    /// recovers; a fatal one stops the stage.
    pub fn commit_batch<C: ConsumerContext + 'static>(&mut self, consumer: &BaseConsumer<C>) {
        if self.failed.is_some() {
            return;
        }
        if self.batch.is_empty() {
            self.batch.clear();
            return;
        }
        let age = self.batch.age();
        match self.batch.commit(consumer) {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics.transaction_seconds.observe(age.as_secs_f64());
            }
            Err(error) => {
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(message = "Batch failed; aborting and rebuilding from committed state.", %error);
                self.recover(consumer, error.into());
            }
        }
        self.partitions.count_keys();
    }

    /// After a failed step: abort, rebuild every held partition from `state`, rewind to the
    /// committed offsets — or, if the failure is fatal, stop.
    fn recover<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, error: BatchError) {
        if let BatchError::Write(error) = error {
            if error.is_fatal() {
                return self.fail(error.into());
            }
        }
        if let Err(error) = self.batch.abort() {
            if error.is_fatal() {
                return self.fail(error.into());
            }
            // The writer keeps its transaction open and the next abort tries again.
            tracing::warn!(message = "Could not abort the batch yet.", %error);
        }
        let held = self.partitions.held();
        if let Err(mismatch) = self.partitions.restore(&held) {
            return self.fail(mismatch.into());
        }
        if let Err(error) = self.partitions.rewind(consumer, None) {
            // Deciding on from where the consumer stands would skip the aborted records (the
            // next commit would pass them): hold every partition until restore and rewind
            // succeed again.
            tracing::error!(message = "Cannot rewind to the committed offsets; holding the partitions until a retry succeeds.", %error);
            self.partitions.unrestore(&held);
        }
    }

    fn fail(&mut self, error: StageError) {
        match &error {
            StageError::Write(error) => {
                tracing::error!(message = "Writing failed fatally; the detector stops.", %error)
            }
            StageError::Layout(error) => tracing::error!(
                message = "State was written for another partition count; the detector stops before deciding anything with it.",
                %error
            ),
        }
        self.failed = Some(error);
    }

    /// Partitions revoked: their state and offsets are dropped.
    pub fn release(&mut self, partitions: &[i32]) {
        self.batch.release(partitions);
        self.partitions.release(partitions);
    }

    /// Partitions assigned: their state is restored.
    pub fn restore(&mut self, partitions: &[i32]) {
        if self.failed.is_none() {
            if let Err(mismatch) = self.partitions.restore(partitions) {
                self.fail(mismatch.into());
            }
        }
    }

    /// Retries failed restores (between polls).
    pub fn retry_restore<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.failed.is_none() {
            if let Err(mismatch) = self.partitions.retry_restore(consumer) {
                self.fail(mismatch.into());
            }
        }
    }

    /// Records the consumer lag reported in librdkafka's statistics.
    pub fn record_lag(&self, statistics: &rdkafka::Statistics) {
        self.partitions
            .record_lag(statistics, self.batch.consumed_topic());
    }
}

#[cfg(test)]
mod tests {
    use super::OncePerSnapshot;

    #[test]
    fn a_snapshot_is_reported_once_until_a_thousand_others_were() {
        let mut once = OncePerSnapshot::default();
        assert!(once.first("s1"));
        assert!(!once.first("s1"));
        for i in 0..999 {
            assert!(once.first(&format!("x{i}")));
        }
        assert!(!once.first("s1"), "still remembered at 1,000");
        assert!(once.first("y"), "the 1,001st forgets the rest");
        assert!(once.first("s1"));
    }
}
