//! file-source metrics (`snapfeed_file_source_…`). Labels come from small fixed sets — never
//! file names, keys or error strings.

use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use snapfeed_runtime::metrics::MetricsBuilder;

/// The metrics of one file-source instance.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    /// Files by outcome: `ingested`, `duplicate`, `failed`.
    pub files: IntCounterVec,
    /// Rows by outcome: `sent`, `rejected`.
    pub rows: IntCounterVec,
    /// Bytes of files ingested (as delivered).
    pub bytes: IntCounter,
    /// Seconds from claim to the last commit of a file.
    pub file_duration: Histogram,
    /// Unix time of the last successful ingest: alert when it stops moving (stale inbox).
    pub last_success: Gauge,
    /// Files waiting in another instance's work directory, claimed over
    /// `source.orphaned_after_ms` ago: that instance is gone (`file-source adopt INSTANCE`).
    pub orphaned_work_files: IntGauge,
}

impl SourceMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<SourceMetrics> {
        let metrics = MetricsBuilder::new(registry, crate::SERVICE);
        Ok(SourceMetrics {
            files: metrics.counters(
                "files_total",
                "Snapshot files handled, by outcome.",
                "outcome",
                &["ingested", "duplicate", "failed"],
            )?,
            rows: metrics.counters(
                "rows_total",
                "Data rows handled, by outcome.",
                "outcome",
                &["sent", "rejected"],
            )?,
            bytes: metrics.counter("bytes_total", "Bytes of ingested files, as delivered.")?,
            file_duration: metrics.histogram(
                "file_duration_seconds",
                "Time to ingest one file.",
                &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
            )?,
            last_success: metrics.float_gauge(
                "last_success_timestamp_seconds",
                "Unix time of the last successfully ingested file.",
            )?,
            orphaned_work_files: metrics.gauge(
                "orphaned_work_files",
                "Files claimed long ago by another instance and still in its work directory.",
            )?,
        })
    }
}
