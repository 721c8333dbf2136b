//! The ordering guard: a snapshot older than the newest one applied for its stream changes
//! nothing and deletes nothing — a file re-sent from a backup, two files arriving out of order,
//! or a replay of an old range of `snapshots` cannot roll records back (or delete keys added
//! since). Snapshot times come from file-source (header `snapfeed-snapshot-time`); a record
//! without one (a producer that knows no time) is decided as before.
//!
//! Guarantee: the newest snapshot per (partition, stream) is recorded on `state` in the same
//! batch as the first record that applies it, so it is exactly as durable as what it guards —
//! an aborted batch takes both back, and a restart restores both.

use snapfeed_runtime::records::{stream_progress_key, StreamProgress};

use super::emit::RecordMeta;
use super::{BatchError, Detector};
use crate::state::SnapshotOrder;

impl Detector {
    /// The ordering guard: a record of a snapshot older than the newest applied for its stream
    /// on this partition is passed over — counted, its snapshot logged once by file name, its
    /// end marker deleting nothing. The first record of a newer snapshot records it on `state`,
    /// in the batch that applies it (an aborted batch takes it back with the rest).
    pub(super) fn is_stale(
        &mut self,
        partition: i32,
        stream: u32,
        meta: &RecordMeta<'_>,
    ) -> Result<bool, BatchError> {
        let Some(time) = meta.snapshot_time else {
            return Ok(false);
        };
        let Some(state) = self.partitions.processed(partition) else {
            return Ok(false);
        };
        match state.order_snapshot(stream, meta.snapshot_id, time) {
            SnapshotOrder::Current => Ok(false),
            SnapshotOrder::Newer => {
                let progress = StreamProgress {
                    stream: meta.stream.to_string(),
                    snapshot_id: meta.snapshot_id.to_string(),
                    snapshot_time: time,
                    file_name: meta.file_name.to_string(),
                };
                let entry = self.envelopes.stream_progress(&progress)?;
                self.batch
                    .hold_state(partition, &stream_progress_key(meta.stream), entry);
                Ok(false)
            }
            SnapshotOrder::Stale {
                newest_time,
                newest_id,
            } => {
                if meta.is_snapshot_end() {
                    self.metrics.snapshots.with_label_values(&["stale"]).inc();
                } else {
                    self.metrics.outcome.stale.inc();
                }
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
}
