//! What an ingest tells its caller: how a file ended ([`FileOutcome`]) — ingested with its
//! counts, skipped as a duplicate, or failed as a whole with a readable [`FailureReport`]
//! (written next to the failed file). Reports carry file names, hashes, lines, columns,
//! reasons and counts — never row values.

use serde::Serialize;

/// How a file ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    /// Every row is committed (sent or rejected).
    Ingested(FileReport),
    /// Its content was ingested before: nothing sent.
    Duplicate {
        /// The file.
        file: String,
        /// Its hash.
        hash: String,
    },
    /// Failed as a whole: nothing of it is visible.
    Failed(FailureReport),
}

/// A successfully ingested file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReport {
    /// File name.
    pub file: String,
    /// SHA-256.
    pub hash: String,
    /// Snapshot stream.
    pub stream: String,
    /// Snapshot id.
    pub snapshot_id: String,
    /// Size as delivered.
    pub bytes: u64,
    /// Data records in the file.
    pub rows_total: u64,
    /// Rows sent to `snapshots`.
    pub rows_sent: u64,
    /// Rows sent to `rejects`.
    pub rows_rejected: u64,
    /// Records skipped because an earlier run committed them.
    pub resumed_after: u64,
    /// Columns of the file the mapping does not know (ignored).
    pub extra_columns: Vec<String>,
    /// Bytes the rows as validated held in memory to be sent from there (`source.spool_max_bytes`);
    /// `None` when the file was read a second time to send.
    pub spool_bytes: Option<u64>,
}

/// Why a file failed: written next to it as `<name>.error.json`. Never contains row values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureReport {
    /// File name.
    pub file: String,
    /// SHA-256.
    pub hash: String,
    /// `header`, `rejects`, `read` or `empty`.
    pub stage: &'static str,
    /// What failed.
    pub error: String,
    /// Line where it failed, when one line is to blame.
    pub line: Option<u64>,
    /// Columns involved (missing required columns).
    pub columns: Vec<String>,
    /// Data records read.
    pub rows_read: u64,
    /// Rows that would have been rejected.
    pub rows_rejected: u64,
    /// The first rejected rows (line, column, reason) — to find the problem fast.
    pub first_rejects: Vec<RejectSummary>,
}

/// One rejected row in a failure report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectSummary {
    /// Line.
    pub line: u64,
    /// Column, if one.
    pub column: Option<String>,
    /// Reason.
    pub reason: String,
}
