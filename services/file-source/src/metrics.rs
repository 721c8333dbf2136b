//! file-source metrics (`snapfeed_file_source_…`). Labels come from small fixed sets — never
//! file names, keys or error strings.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

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
}

impl SourceMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<SourceMetrics> {
        let metrics = SourceMetrics {
            files: IntCounterVec::new(
                Opts::new(
                    "snapfeed_file_source_files_total",
                    "Snapshot files handled, by outcome.",
                ),
                &["outcome"],
            )?,
            rows: IntCounterVec::new(
                Opts::new(
                    "snapfeed_file_source_rows_total",
                    "Data rows handled, by outcome.",
                ),
                &["outcome"],
            )?,
            bytes: IntCounter::new(
                "snapfeed_file_source_bytes_total",
                "Bytes of ingested files, as delivered.",
            )?,
            file_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "snapfeed_file_source_file_duration_seconds",
                    "Time to ingest one file.",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            )?,
            last_success: Gauge::new(
                "snapfeed_file_source_last_success_timestamp_seconds",
                "Unix time of the last successfully ingested file.",
            )?,
        };
        registry.register(Box::new(metrics.files.clone()))?;
        registry.register(Box::new(metrics.rows.clone()))?;
        registry.register(Box::new(metrics.bytes.clone()))?;
        registry.register(Box::new(metrics.file_duration.clone()))?;
        registry.register(Box::new(metrics.last_success.clone()))?;
        for outcome in ["ingested", "duplicate", "failed"] {
            metrics.files.with_label_values(&[outcome]);
        }
        for outcome in ["sent", "rejected"] {
            metrics.rows.with_label_values(&[outcome]);
        }
        Ok(metrics)
    }
}
