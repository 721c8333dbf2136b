//! Ingesting one snapshot file — the source stage's guarantee lives here.
//!
//! **Decide before sending.** A validating pass reads the whole file (header, every row's
//! conversion, duplicate keys, reject ratio) before anything is sent, so a failing file sends
//! nothing in either mode and no huge transaction is ever aborted. The rows as decided (key and
//! payload, or reject) are kept in a bounded spool (`source.spool_max_bytes`), and the sending
//! pass sends them from there. A file whose rows do not fit is read and converted again by the
//! sending pass — deterministically, so both passes agree on every row's fate — and each pass
//! holds only 16 bytes per row (a hash of each key, for duplicate detection), so files far
//! larger than memory are fine.
//!
//! **Exactly once (`exactly_once`).** Rows go to `snapshots`, rejected rows to `rejects`, in
//! transactions of `rows_per_transaction` data records; each transaction also carries the
//! ledger checkpoint (`IN_PROGRESS`, `rows_committed`) on `files`, and the last one the
//! snapshot-end marker for every partition and the `COMPLETED` entry. A crash at any point
//! leaves the last committed checkpoint: the restart skips exactly the committed records and
//! sends the rest — none lost, none committed twice. The restarted instance's writer, with the
//! same transactional id, aborts whatever the crashed one left open.
//!
//! **At least once.** The same chunks and checkpoints without transactions: each chunk is
//! acknowledged before its checkpoint is written. A crash may re-send the rows after the last
//! checkpoint; they carry the same keys and content, so the detector sees them as unchanged.
//!
//! Both modes are the runtime's [`GuaranteedWriter`]: this module says where a chunk ends
//! (`acknowledge`, `commit_sent`) and what to throw away (`abort`), the writer what that means
//! for the configured guarantee.
//!
//! One file, in the order a reader follows it:
//! - `scan`: the file's rows, each with its line, handed to the row decision;
//! - `row`: the decision itself — accepted with key and payload, or rejected with a reason;
//! - `validate`: the first pass, deciding the file as a whole;
//! - `spool`: the rows as the first pass decided them, kept for the second when they fit;
//! - `send`: the second pass — chunks, checkpoints, markers, the ledger;
//! - `records`: the envelopes and headers the send pass writes;
//! - `report`: how the file ended, for the caller.

mod records;
mod report;
mod row;
mod scan;
mod send;
mod spool;
mod validate;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use snapfeed_runtime::avro::{AvroError, SchemaStore};
use snapfeed_runtime::dataset::Dataset;
use snapfeed_runtime::kafka::{GuaranteedWriter, WriteError};
use snapfeed_runtime::topics::TopicNames;

use crate::config::SourceConfig;
use crate::ledger::{Ledger, LedgerVerdict};
use crate::reader::SnapshotFile;

pub use records::stream_of;
pub use report::{FailureReport, FileOutcome, FileReport, RejectSummary};
pub use row::{RowDecider, RowOutcome, BAD_ENCODING, DUPLICATE_KEY};

/// Everything the ingest of one file needs.
pub struct IngestContext<'a> {
    /// `[source]`.
    pub config: &'a SourceConfig,
    /// Topic names.
    pub topics: &'a TopicNames,
    /// Partition count of `snapshots`.
    pub snapshot_partitions: i32,
    /// The dataset.
    pub dataset: Arc<Dataset>,
    /// Schemas (envelopes).
    pub schemas: &'a SchemaStore,
    /// Keeps the guarantee: every record of the file goes through it.
    pub writer: &'a GuaranteedWriter,
    /// Set when the service is shutting down: the ingest stops at the next row.
    pub stop: &'a AtomicBool,
}

impl std::fmt::Debug for IngestContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestContext")
            .field("topics", &self.topics)
            .field("snapshot_partitions", &self.snapshot_partitions)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// An ingest that stopped before an outcome: the file stays in the work directory and is
/// resumed from its last checkpoint — unless the error [is fatal](IngestError::is_fatal).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A record did not become durable (what was sent since the last commit is aborted).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// An envelope could not be encoded.
    #[error(transparent)]
    Encode(#[from] AvroError),
    /// Shutdown interrupted the file.
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl IngestError {
    /// True when trying the file again cannot help and the service must stop: the producer was
    /// fenced by another instance, could not be replaced, or the cluster refuses the records.
    pub fn is_fatal(&self) -> bool {
        matches!(self, IngestError::Write(error) if error.is_fatal())
    }
}

/// Ingests one file (blocking: run it on the stage's thread).
pub fn ingest_file(
    ctx: &IngestContext<'_>,
    path: &Path,
    ledger: &mut Ledger,
) -> Result<FileOutcome, IngestError> {
    let file = SnapshotFile::identify(path).map_err(|source| IngestError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let resume_after = match ledger.verdict(&file.hash) {
        LedgerVerdict::Completed => {
            return Ok(FileOutcome::Duplicate {
                file: file.name,
                hash: file.hash,
            })
        }
        LedgerVerdict::Resume(rows) => rows,
        LedgerVerdict::New => 0,
    };
    let span = tracing::info_span!("file", file = %file.name, hash = %&file.hash[..12]);
    let _entered = span.enter();

    // Pass 1: decide.
    let validation = match validate::validate(ctx, &file)? {
        Ok(validation) => validation,
        Err(report) => {
            send::send_failed_entry(ctx, &file, &report, ledger)?;
            return Ok(FileOutcome::Failed(report));
        }
    };
    if !validation.extra_columns.is_empty() {
        tracing::warn!(message = "Ignoring columns the mapping does not know.", columns = ?validation.extra_columns);
    }
    match validation.snapshot_time {
        Some(ms) => tracing::info!(
            message = "Snapshot time.",
            snapshot_time = %chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339()
        ),
        None => tracing::info!(
            message =
                "No snapshot time: the detector's ordering guard does not apply to this file."
        ),
    }
    // Pass 2: send.
    let report = send::send_file(ctx, &file, resume_after, validation, ledger)?;
    Ok(FileOutcome::Ingested(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    #[test]
    fn only_a_fatal_write_error_stops_the_service() {
        let fenced = IngestError::Write(WriteError::Fenced {
            transactional_id: "lab-results.file-source.0.0".into(),
            source: KafkaError::Canceled,
        });
        assert!(fenced.is_fatal());
        let unrecoverable = IngestError::Write(WriteError::Unrecoverable {
            source: KafkaError::Canceled,
        });
        assert!(unrecoverable.is_fatal());
        // Retried from the checkpoint: the file stays in work/.
        for retryable in [
            IngestError::Write(WriteError::Unacknowledged { failed: 3 }),
            IngestError::Write(WriteError::Step {
                step: "commit the transaction",
                source: KafkaError::Canceled,
            }),
            IngestError::Io {
                path: "elr.csv".into(),
                source: std::io::Error::other("gone"),
            },
            IngestError::Interrupted,
        ] {
            assert!(!retryable.is_fatal(), "{retryable}");
        }
    }
}
