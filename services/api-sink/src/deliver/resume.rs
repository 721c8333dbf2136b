//! Resuming a partition without re-submitting: which changes past its committed offset an
//! earlier run (or the previous owner) already delivered, read from the receipts
//! ([`crate::receipts`]) when the partition is assigned, and skipped when consumed — their
//! offset marked done as if delivered now, nothing sent, no second receipt.
//!
//! The same holds for a *repeat* of a (key, version) on `changes` — what an `at_least_once`
//! detector writes again after a crash, at a later offset: a lane that finds a version at or
//! below the one this process last delivered for the key marks it done without sending it.
//! The memory of delivered versions is per assigned partition and bounded
//! ([`RECENT_KEYS_PER_PARTITION`], the most recent kept): repeats come right after their
//! original, from the batch a detector re-decides.
//!
//! Guarantee: a change is skipped only when a receipt for exactly its partition and offset
//! (and record key) was acknowledged by the broker, or when the API accepted the same or a
//! newer version of its key in this process — its effect is there. Everything else goes out
//! as before.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use super::{lock, Incoming, Sink};

/// Keys whose last delivered version each partition remembers (for repeats).
pub(super) const RECENT_KEYS_PER_PARTITION: usize = 100_000;

/// The last version delivered of recently delivered keys, per partition.
#[derive(Debug, Default)]
pub(super) struct RecentDeliveries {
    partitions: HashMap<i32, RecentVersions>,
}

#[derive(Debug, Default)]
struct RecentVersions {
    versions: HashMap<String, i64>,
    /// Insertion order, for eviction.
    order: VecDeque<String>,
}

impl RecentDeliveries {
    /// `key` was delivered at `version` on `partition`.
    fn delivered(&mut self, partition: i32, key: &str, version: i64) {
        let recent = self.partitions.entry(partition).or_default();
        match recent.versions.get_mut(key) {
            Some(last) => *last = (*last).max(version),
            None => {
                recent.versions.insert(key.to_string(), version);
                recent.order.push_back(key.to_string());
                if recent.order.len() > RECENT_KEYS_PER_PARTITION {
                    if let Some(oldest) = recent.order.pop_front() {
                        recent.versions.remove(&oldest);
                    }
                }
            }
        }
    }

    /// Whether `version` of `key` (or a newer one) was delivered on `partition`.
    fn covers(&self, partition: i32, key: &str, version: i64) -> bool {
        self.partitions
            .get(&partition)
            .and_then(|recent| recent.versions.get(key))
            .is_some_and(|last| *last >= version)
    }
}

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

    /// The API accepted `version` of `key` (a repeat of it is not sent again).
    pub(super) fn remember_delivered(&self, partition: i32, key: &str, version: i64) {
        lock(&self.recent_deliveries).delivered(partition, key, version);
    }

    /// A repeat of a (key, version) this process delivered: its offset is done, nothing is
    /// sent. True when it was skipped.
    pub(super) fn skip_repeat(&self, incoming: &Incoming, key: &str, version: i64) -> bool {
        if !lock(&self.recent_deliveries).covers(incoming.partition, key, version) {
            return false;
        }
        self.done(incoming.partition, incoming.offset);
        self.metrics.already_delivered.inc();
        true
    }

    /// A second copy of a (key, version) in one run: the first copy's outcome stands for
    /// both, so this one is done with no request and no record of its own.
    pub(super) fn skip_repeat_in_run(&self, incoming: &Incoming) {
        self.done(incoming.partition, incoming.offset);
        self.metrics.already_delivered.inc();
    }

    /// Forgets what was read back, and what was delivered, for revoked partitions.
    pub(super) fn forget_deliveries(&self, partitions: &[i32]) {
        let mut delivered = lock(&self.delivered_before);
        let mut recent = lock(&self.recent_deliveries);
        for partition in partitions {
            delivered.remove(partition);
            recent.partitions.remove(partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_at_or_below_the_last_delivered_is_covered_per_partition() {
        let mut recent = RecentDeliveries::default();
        recent.delivered(0, "K", 3);
        recent.delivered(0, "K", 2);
        assert!(recent.covers(0, "K", 3));
        assert!(recent.covers(0, "K", 1));
        assert!(!recent.covers(0, "K", 4));
        assert!(!recent.covers(1, "K", 3), "another partition");
        assert!(!recent.covers(0, "L", 1));
    }

    #[test]
    fn the_memory_keeps_the_most_recent_keys() {
        let mut recent = RecentDeliveries::default();
        for n in 0..=RECENT_KEYS_PER_PARTITION {
            recent.delivered(0, &format!("K{n}"), 1);
        }
        assert!(!recent.covers(0, "K0", 1), "the oldest is forgotten");
        assert!(recent.covers(0, &format!("K{RECENT_KEYS_PER_PARTITION}"), 1));
        assert_eq!(
            recent.partitions[&0].versions.len(),
            RECENT_KEYS_PER_PARTITION
        );
    }
}
