//! The ordering guard: a snapshot older than the newest one applied for its stream changes
//! nothing and deletes nothing — a file re-sent from a backup, two files arriving out of order,
//! or a replay of an old range of `snapshots` cannot roll records back (or delete keys added
//! since). Snapshot times come from file-source (header `snapfeed-snapshot-time`); a record
//! without one (a producer that knows no time) is decided as before.
//!
//! Two kinds of older record are told apart by where they sit on the partition, against the
//! first record of the newest snapshot (`StreamProgress.first_offset`):
//! - **stale** — read after the newest began: a late file. Counted, logged once by file name,
//!   alerted on, and its end marker records a `StaleSnapshot` entry on `state` (what
//!   `reconcile` reads to say where the file's rows went);
//! - **replayed** — read before the newest began: it was decided when first read, and is read
//!   again after an offset reset or an at_least_once crash. Counted apart; no alert, no entry
//!   (it would claim that a file which was applied had been passed over).
//!
//! Guarantee: the newest snapshot per (partition, stream) is recorded on `state` in the same
//! batch as the first record that applies it, so it is exactly as durable as what it guards —
//! an aborted batch takes both back, and a restart restores both. A stale snapshot's entry goes
//! in the batch of its end marker; a repeat overwrites it with the same value.

use prometheus::IntCounter;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use snapfeed_runtime::records::{
    stale_snapshot_key, stream_progress_key, StaleSnapshot, StreamProgress,
};

use super::emit::{location_of, RecordMeta};
use super::{BatchError, Detector};
use crate::state::SnapshotOrder;

impl Detector {
    /// The ordering guard: true when `message` (of `meta`'s snapshot) is passed over because
    /// a newer snapshot of its stream is applied on this partition. The first record of a
    /// newer snapshot records it on `state`, in the batch that applies it (an aborted batch
    /// takes it back with the rest).
    pub(super) fn passes_over(
        &mut self,
        partition: i32,
        stream: u32,
        meta: &RecordMeta<'_>,
        message: &BorrowedMessage<'_>,
    ) -> Result<bool, BatchError> {
        let Some(time) = meta.snapshot_time else {
            return Ok(false);
        };
        let Some(state) = self.partitions.processed(partition) else {
            return Ok(false);
        };
        let offset = message.offset();
        match state.order_snapshot(stream, meta.snapshot_id, time, offset) {
            SnapshotOrder::Current => Ok(false),
            SnapshotOrder::Newer => {
                let progress = StreamProgress {
                    stream: meta.stream.to_string(),
                    snapshot_id: meta.snapshot_id.to_string(),
                    snapshot_time: time,
                    file_name: meta.file_name.to_string(),
                    first_offset: offset,
                };
                let entry = self.envelopes.stream_progress(&progress)?;
                self.batch
                    .hold_state(partition, &stream_progress_key(meta.stream), entry);
                Ok(false)
            }
            SnapshotOrder::Replayed => {
                self.count_passed_over(meta, "replayed", &self.metrics.outcome.replayed);
                if self.replayed_snapshots.first(meta.snapshot_id) {
                    tracing::info!(
                        message = "Passing over records of an older snapshot read again (decided when first read).",
                        file = %meta.file_name,
                        snapshot_id = %meta.snapshot_id,
                        stream = %meta.stream,
                        partition,
                        offset
                    );
                }
                Ok(true)
            }
            SnapshotOrder::Stale {
                newest_time,
                newest_id,
            } => {
                if meta.is_snapshot_end() {
                    let passed_over = state.passed_over(stream, meta.snapshot_id);
                    let newest = (newest_id.as_str(), newest_time);
                    self.record_stale(partition, meta, message, time, newest, passed_over)?;
                } else {
                    state.count_passed_over(stream, meta.snapshot_id);
                }
                self.count_passed_over(meta, "stale", &self.metrics.outcome.stale);
                if self.stale_snapshots.first(meta.snapshot_id) {
                    tracing::warn!(
                        message = "Passing over a snapshot older than the newest applied for its stream; it changes and deletes nothing.",
                        file = %meta.file_name,
                        snapshot_id = %meta.snapshot_id,
                        stream = %meta.stream,
                        partition,
                        snapshot_time = time,
                        newest_snapshot_time = newest_time,
                        newest_snapshot_id = %newest_id
                    );
                }
                Ok(true)
            }
        }
    }

    /// Counts a passed-over end marker under `snapshots_total{verdict}`, or a record on
    /// `records` (its `records_total{outcome}`).
    fn count_passed_over(&self, meta: &RecordMeta<'_>, verdict: &str, records: &IntCounter) {
        if meta.is_snapshot_end() {
            self.metrics.snapshots.with_label_values(&[verdict]).inc();
        } else {
            records.inc();
        }
    }

    /// A stale snapshot's end marker: records on `state` that it was passed over here — its
    /// rows on this partition and how many of them were passed over (fewer when part of it was
    /// applied before the newer snapshot began here) — for `reconcile`. A marker that does not
    /// decode records nothing (said in the log): the snapshot is passed over all the same.
    fn record_stale(
        &mut self,
        partition: i32,
        meta: &RecordMeta<'_>,
        message: &BorrowedMessage<'_>,
        snapshot_time: i64,
        (newest_id, newest_time): (&str, i64),
        passed_over: u64,
    ) -> Result<(), BatchError> {
        let location = location_of(message);
        let marker = match self
            .decider
            .read_marker(message.payload().unwrap_or_default(), &location)
        {
            Ok(marker) => marker,
            Err(detail) => {
                tracing::warn!(
                    message = "A stale snapshot's end marker does not decode; reconcile will not show it as passed over.",
                    %location,
                    detail
                );
                return Ok(());
            }
        };
        let stale = StaleSnapshot {
            stream: meta.stream.to_string(),
            snapshot_id: meta.snapshot_id.to_string(),
            file_name: meta.file_name.to_string(),
            snapshot_time,
            newest_snapshot_id: newest_id.to_string(),
            newest_snapshot_time: newest_time,
            rows_in_partition: marker.rows_in_partition,
            rows_passed_over: passed_over as i64,
            // The marker's own time: a repeated batch writes the same entry.
            decided_at: message.timestamp().to_millis().unwrap_or(0),
        };
        let entry = self.envelopes.stale_snapshot(&stale)?;
        self.batch
            .hold_state(partition, &stale_snapshot_key(meta.snapshot_id), entry);
        Ok(())
    }
}
