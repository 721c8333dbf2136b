//! Resuming a partition without re-submitting: which changes past its committed offset an
//! earlier run (or the previous owner) already delivered, read from the receipts
//! ([`crate::receipts`]) when the partition is assigned, and skipped when consumed — their
//! offset marked done as if delivered now, nothing sent, no second receipt.
//!
//! Guarantee: a change is skipped only when a receipt for exactly its partition and offset
//! (and record key) was acknowledged by the broker — its delivery happened. Everything else
//! goes out as before.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{lock, Incoming, Sink};

impl Sink {
    /// Reads which changes of newly assigned partitions (partition → committed offset) an
    /// earlier run delivered. Consumer thread, blocking: it runs in the assignment callback,
    /// before any change of these partitions is consumed. A failed read skips nothing.
    pub(crate) fn recall_deliveries(&self, committed: &BTreeMap<i32, i64>) {
        let Some(receipts) = &self.receipts else {
            return;
        };
        if committed.is_empty() {
            return;
        }
        let started = Instant::now();
        match receipts.delivered(committed) {
            Ok(found) => {
                let count: usize = found.values().map(|offsets| offsets.len()).sum();
                tracing::info!(
                    message = "Receipts read back: changes past the committed offsets already delivered are not sent again.",
                    partitions = ?committed.keys().collect::<Vec<_>>(),
                    already_delivered = count,
                    seconds = started.elapsed().as_secs_f64()
                );
                let mut delivered = lock(&self.delivered_before);
                for (partition, offsets) in found {
                    delivered.insert(partition, offsets);
                }
            }
            Err(error) => tracing::warn!(
                message = "Cannot read the receipts back; changes delivered just before the last stop may be sent again.",
                %error
            ),
        }
    }

    /// A consumed change an earlier run delivered: its offset is done, nothing is sent. True
    /// when it was skipped.
    pub(super) fn skip_delivered(&self, incoming: &Incoming, key: Option<&[u8]>) -> bool {
        let mut delivered = lock(&self.delivered_before);
        let Some(offsets) = delivered.get_mut(&incoming.partition) else {
            return false;
        };
        let Some(receipt_key) = offsets.remove(&incoming.offset) else {
            return false;
        };
        if offsets.is_empty() {
            delivered.remove(&incoming.partition);
        }
        drop(delivered);
        if key != Some(receipt_key.as_bytes()) {
            // Not the change the receipt names (a topic recreated under the same name?): send.
            tracing::warn!(
                message = "A receipt names another key at this offset; delivering the change.",
                partition = incoming.partition,
                offset = incoming.offset
            );
            return false;
        }
        let mut tracker = lock(&self.progress.tracker);
        tracker.started(incoming.partition, incoming.offset);
        tracker.done(incoming.partition, incoming.offset);
        self.metrics.in_flight.set(tracker.in_flight() as i64);
        self.metrics.already_delivered.inc();
        true
    }

    /// Forgets what was read back for revoked partitions.
    pub(super) fn forget_deliveries(&self, partitions: &[i32]) {
        let mut delivered = lock(&self.delivered_before);
        for partition in partitions {
            delivered.remove(partition);
        }
    }
}
