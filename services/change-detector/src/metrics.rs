//! change-detector metrics (`snapfeed_change_detector_…`). Labels come from small fixed sets.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use snapfeed_runtime::metrics::MetricsBuilder;

/// The metrics of one change-detector instance.
#[derive(Debug, Clone)]
pub struct DetectorMetrics {
    /// Snapshot records by outcome: `unchanged`, `created`, `updated`, `deleted`, `corrupt`,
    /// `stale` (of a snapshot older than the newest applied for its stream, read after it:
    /// passed over), `replayed` (of an older snapshot read again — an offset reset, or a
    /// restart in at_least_once — decided already when first read: passed over).
    pub records: IntCounterVec,
    /// Keys held in memory over the assigned partitions.
    pub state_keys: IntGauge,
    /// Time to restore the state of the partitions assigned at once.
    pub restore_seconds: Histogram,
    /// State entries restored.
    pub restored_entries: IntCounter,
    /// Time from batch start to commit.
    pub transaction_seconds: Histogram,
    /// Batches by outcome: `committed`, `aborted`.
    pub transactions: IntCounterVec,
    /// Snapshots whose deletes were refused by the guard.
    pub delete_guard_tripped: IntCounter,
    /// Snapshot-end markers by verdict: `complete`, `incomplete`, `stale` (older than the
    /// newest snapshot applied for its stream: deletes nothing), `replayed` (an older marker
    /// read again: decided already).
    pub snapshots: IntCounterVec,
    /// Records not yet processed on the assigned partitions (sum).
    pub consumer_lag: IntGauge,
    /// Partitions paused on a corrupt record (`on_corrupt = "pause"`).
    pub paused_partitions: IntGauge,
    /// The `records` counters by outcome, resolved once.
    pub outcome: RecordOutcomes,
}

/// [`DetectorMetrics::records`] per outcome, resolved at registration: a labelled lookup per
/// record costs more than the rest of an unchanged record's handling.
#[derive(Debug, Clone)]
pub struct RecordOutcomes {
    /// Same content as the key's last version.
    pub unchanged: IntCounter,
    /// CREATE emitted.
    pub created: IntCounter,
    /// UPDATE emitted.
    pub updated: IntCounter,
    /// DELETE emitted.
    pub deleted: IntCounter,
    /// Did not decode.
    pub corrupt: IntCounter,
    /// Of a snapshot older than the newest applied: passed over.
    pub stale: IntCounter,
    /// Of an older snapshot read again, decided when first read: passed over.
    pub replayed: IntCounter,
}

impl DetectorMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<DetectorMetrics> {
        let metrics = MetricsBuilder::new(registry, crate::SERVICE);
        let records = metrics.counters(
            "records_total",
            "Snapshot records, by outcome.",
            "outcome",
            &[
                "unchanged",
                "created",
                "updated",
                "deleted",
                "corrupt",
                "stale",
                "replayed",
            ],
        )?;
        let counter = |outcome: &str| records.with_label_values(&[outcome]);
        let outcome = RecordOutcomes {
            unchanged: counter("unchanged"),
            created: counter("created"),
            updated: counter("updated"),
            deleted: counter("deleted"),
            corrupt: counter("corrupt"),
            stale: counter("stale"),
            replayed: counter("replayed"),
        };
        Ok(DetectorMetrics {
            state_keys: metrics
                .gauge("state_keys", "Keys in memory over the assigned partitions.")?,
            restore_seconds: metrics.histogram(
                "restore_seconds",
                "Time to restore the state of the partitions assigned at once.",
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            restored_entries: metrics
                .counter("restored_entries_total", "State entries restored.")?,
            transaction_seconds: metrics.histogram(
                "transaction_seconds",
                "Time from batch start to commit.",
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
            transactions: metrics.counters(
                "transactions_total",
                "Batches, by outcome.",
                "outcome",
                &["committed", "aborted"],
            )?,
            delete_guard_tripped: metrics.counter(
                "delete_guard_tripped_total",
                "Snapshots whose deletes were refused because too many keys would go.",
            )?,
            snapshots: metrics.counters(
                "snapshots_total",
                "Snapshot-end markers, by verdict.",
                "verdict",
                &["complete", "incomplete", "stale", "replayed"],
            )?,
            consumer_lag: metrics.gauge(
                "consumer_lag",
                "Unprocessed snapshot records on the assigned partitions.",
            )?,
            paused_partitions: metrics.gauge(
                "paused_partitions",
                "Partitions stopped on a corrupt record.",
            )?,
            records,
            outcome,
        })
    }
}
