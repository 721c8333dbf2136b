//! A snapshot-end marker: with deletes enabled, the keys of its stream that its complete
//! snapshot left out are emitted as DELETE — unless the snapshot was not seen whole on this
//! partition, or the guard refuses (more than `max_share` of the stream's keys on the
//! partition would go). The verdict itself is `state::snapshots`; this is its I/O shell.
//!
//! Guarantee: the safe side — an incomplete snapshot or a tripped guard deletes nothing.

use snapfeed_runtime::records::SnapshotEnd;

use super::emit::RecordMeta;
use super::{decide, BatchError, Detector};
use crate::state::DeleteVerdict;

impl Detector {
    /// A snapshot-end marker: with deletes enabled, DELETE the keys its complete snapshot left
    /// out — unless the guard refuses.
    pub(super) fn on_snapshot_end(
        &mut self,
        partition: i32,
        marker: &SnapshotEnd,
        meta: &RecordMeta<'_>,
        at: i64,
    ) -> Result<(), BatchError> {
        if !self.config.deletes.enabled {
            return Ok(());
        }
        let stream = self.partitions.stream_id(&marker.stream);
        let max_share = self.config.deletes.max_share;
        let Some(state) = self.partitions.processed(partition) else {
            return Ok(());
        };
        let rows = marker.rows_in_partition.max(0) as u64;
        let verdict = state.complete_snapshot(stream, &marker.snapshot_id, rows, max_share);
        let label = match verdict {
            DeleteVerdict::Incomplete { .. } => "incomplete",
            _ => "complete",
        };
        self.metrics.snapshots.with_label_values(&[label]).inc();
        match verdict {
            DeleteVerdict::Incomplete { seen, expected } => tracing::info!(
                message = "Snapshot not seen whole on this partition; no deletes for it.",
                snapshot_id = %marker.snapshot_id,
                stream = %marker.stream,
                partition,
                seen,
                expected
            ),
            DeleteVerdict::GuardTripped { would_delete, of } => {
                // One truncated file trips on every partition: count the snapshot once.
                if self.tripped_snapshots.first(&marker.snapshot_id) {
                    self.metrics.delete_guard_tripped.inc();
                }
                tracing::error!(
                    message = "Delete guard tripped: the snapshot would delete too many records; none deleted.",
                    snapshot_id = %marker.snapshot_id,
                    file = %marker.file_name,
                    stream = %marker.stream,
                    partition,
                    would_delete,
                    of,
                    max_share
                );
            }
            DeleteVerdict::Delete(absent) => {
                let source = RecordMeta {
                    line: None,
                    ..*meta
                };
                for change in decide::deletes(state, absent, at) {
                    self.emit(partition, &change, &source)?;
                }
            }
        }
        Ok(())
    }
}
