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
//! What remains ambiguous — a change an earlier run may have sent without living to write its
//! receipt — is **confirmed before its first send** where the profile can ask the API
//! (CommCare's `bulk-fetch`, `confirm_before_resend`): only the cases the API does not already
//! hold as sent go out ([`MaybeSent`]). Which changes can be such: an earlier run consumed
//! `changes` in offset order, and held at most [`BACKLOG_LIMIT`] of them undone (every done one
//! has an acknowledged receipt), so they lie within the first `receipts + BACKLOG_LIMIT`
//! offsets past the committed one.
//!
//! Guarantee: a change is skipped only when a receipt for exactly its partition and offset
//! (and record key) was acknowledged by the broker, when the API accepted the same or a
//! newer version of its key in this process, or when the API's own answer shows it holding
//! what the change sets — its effect is there. Everything else goes out as before.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::{lock, Incoming, Sink};
use crate::consume::BACKLOG_LIMIT;

/// Polls the consume loop makes past a full backlog (one per minute, to stay in the group):
/// room for them in the range of [`MaybeSent`].
const POLLS_PAST_A_FULL_BACKLOG: i64 = 1_000;

/// Per assigned partition, the offsets an earlier run may have sent without a receipt —
/// `from` (the committed offset) up to `until` — and those already confirmed or sent since.
#[derive(Debug, Default)]
pub(super) struct MaybeSent {
    partitions: HashMap<i32, MaybeSentRange>,
}

#[derive(Debug)]
struct MaybeSentRange {
    from: i64,
    until: i64,
    settled: HashSet<i64>,
}

impl MaybeSent {
    /// `partition` was assigned at `committed`, with `receipts` found past it.
    pub(super) fn assigned(&mut self, partition: i32, committed: i64, receipts: usize) {
        let until = committed
            .saturating_add(receipts as i64)
            .saturating_add(BACKLOG_LIMIT as i64)
            .saturating_add(POLLS_PAST_A_FULL_BACKLOG);
        self.partitions.insert(
            partition,
            MaybeSentRange {
                from: committed,
                until,
                settled: HashSet::new(),
            },
        );
    }

    /// True when any of `offsets` (partition, offset) may have been sent by an earlier run and
    /// was not confirmed since; all of them count as settled from now on (asked once).
    pub(super) fn take_any(&mut self, offsets: &[(i32, i64)]) -> bool {
        let mut any = false;
        for &(partition, offset) in offsets {
            let Some(range) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if (range.from..range.until).contains(&offset) && range.settled.insert(offset) {
                any = true;
            }
        }
        any
    }

    fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

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
        if committed.is_empty() {
            return;
        }
        let mut receipts_found: HashMap<i32, usize> = HashMap::new();
        self.recall_receipts(committed, &mut receipts_found);
        if self.builder.confirms() {
            let mut maybe_sent = lock(&self.maybe_sent);
            for (&partition, &offset) in committed {
                let receipts = receipts_found.get(&partition).copied().unwrap_or(0);
                maybe_sent.assigned(partition, offset, receipts);
            }
        }
    }

    /// Reads the receipts back (noting how many per partition in `found_per_partition`).
    fn recall_receipts(
        &self,
        committed: &BTreeMap<i32, i64>,
        found_per_partition: &mut HashMap<i32, usize>,
    ) {
        let Some(receipts) = &self.receipts else {
            return;
        };
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
                    found_per_partition.insert(partition, offsets.len());
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
        let mut maybe_sent = lock(&self.maybe_sent);
        for partition in partitions {
            delivered.remove(partition);
            recent.partitions.remove(partition);
            maybe_sent.forget(*partition);
        }
    }

    /// True when a change at one of `offsets` may have been sent by an earlier run without a
    /// receipt, so the request is to be confirmed before it is sent (each offset asks once).
    pub(super) fn may_have_been_sent(&self, offsets: &[(i32, i64)]) -> bool {
        lock(&self.maybe_sent).take_any(offsets)
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
    fn changes_an_earlier_run_could_have_sent_are_asked_about_once() {
        let mut maybe = MaybeSent::default();
        maybe.assigned(0, 100, 5);
        let until = 100 + 5 + BACKLOG_LIMIT as i64 + POLLS_PAST_A_FULL_BACKLOG;
        assert!(!maybe.take_any(&[(0, 99)]), "committed before");
        assert!(maybe.take_any(&[(0, 99), (0, 100)]));
        assert!(!maybe.take_any(&[(0, 100)]), "asked once");
        assert!(maybe.take_any(&[(0, until - 1)]));
        assert!(!maybe.take_any(&[(0, until)]), "past what a run could hold");
        assert!(!maybe.take_any(&[(1, 100)]), "another partition");
        maybe.forget(0);
        assert!(!maybe.take_any(&[(0, 101)]));
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
