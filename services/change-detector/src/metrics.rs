//! change-detector metrics (`snapfeed_change_detector_…`). Labels come from small fixed sets.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The metrics of one change-detector instance.
#[derive(Debug, Clone)]
pub struct DetectorMetrics {
    /// Snapshot records by outcome: `unchanged`, `created`, `updated`, `deleted`, `corrupt`.
    pub records: IntCounterVec,
    /// Keys held in memory over the assigned partitions.
    pub state_keys: IntGauge,
    /// Time to restore a partition's state.
    pub restore_seconds: Histogram,
    /// State entries restored.
    pub restored_entries: IntCounter,
    /// Time from batch start to commit.
    pub transaction_seconds: Histogram,
    /// Batches by outcome: `committed`, `aborted`.
    pub transactions: IntCounterVec,
    /// Snapshots whose deletes were refused by the guard.
    pub delete_guard_tripped: IntCounter,
    /// Snapshot-end markers by verdict: `complete`, `incomplete`.
    pub snapshots: IntCounterVec,
    /// Records not yet processed on the assigned partitions (sum).
    pub consumer_lag: IntGauge,
    /// Partitions paused on a corrupt record (`on_corrupt = "pause"`).
    pub paused_partitions: IntGauge,
}

impl DetectorMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<DetectorMetrics> {
        let m = DetectorMetrics {
            records: IntCounterVec::new(
                Opts::new(
                    "snapfeed_change_detector_records_total",
                    "Snapshot records, by outcome.",
                ),
                &["outcome"],
            )?,
            state_keys: IntGauge::new(
                "snapfeed_change_detector_state_keys",
                "Keys in memory over the assigned partitions.",
            )?,
            restore_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "snapfeed_change_detector_restore_seconds",
                    "Time to restore one partition's state.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )?,
            restored_entries: IntCounter::new(
                "snapfeed_change_detector_restored_entries_total",
                "State entries restored.",
            )?,
            transaction_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "snapfeed_change_detector_transaction_seconds",
                    "Time from batch start to commit.",
                )
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            transactions: IntCounterVec::new(
                Opts::new(
                    "snapfeed_change_detector_transactions_total",
                    "Batches, by outcome.",
                ),
                &["outcome"],
            )?,
            delete_guard_tripped: IntCounter::new(
                "snapfeed_change_detector_delete_guard_tripped_total",
                "Snapshots whose deletes were refused because too many keys would go.",
            )?,
            snapshots: IntCounterVec::new(
                Opts::new(
                    "snapfeed_change_detector_snapshots_total",
                    "Snapshot-end markers, by verdict.",
                ),
                &["verdict"],
            )?,
            consumer_lag: IntGauge::new(
                "snapfeed_change_detector_consumer_lag",
                "Unprocessed snapshot records on the assigned partitions.",
            )?,
            paused_partitions: IntGauge::new(
                "snapfeed_change_detector_paused_partitions",
                "Partitions stopped on a corrupt record.",
            )?,
        };
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.state_keys.clone()))?;
        registry.register(Box::new(m.restore_seconds.clone()))?;
        registry.register(Box::new(m.restored_entries.clone()))?;
        registry.register(Box::new(m.transaction_seconds.clone()))?;
        registry.register(Box::new(m.transactions.clone()))?;
        registry.register(Box::new(m.delete_guard_tripped.clone()))?;
        registry.register(Box::new(m.snapshots.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.paused_partitions.clone()))?;
        for outcome in ["unchanged", "created", "updated", "deleted", "corrupt"] {
            m.records.with_label_values(&[outcome]);
        }
        for outcome in ["committed", "aborted"] {
            m.transactions.with_label_values(&[outcome]);
        }
        for verdict in ["complete", "incomplete"] {
            m.snapshots.with_label_values(&[verdict]);
        }
        Ok(m)
    }
}
