//! The validation pass: reads the whole file and decides every row before anything is sent —
//! the header, each row's conversion, duplicate keys, the reject ratio. A file that fails here
//! sends nothing in either guarantee (no transaction to abort, nothing for `at_least_once` to
//! take back): it becomes a [`FailureReport`]. What passes is counted and, up to
//! `source.spool_max_bytes`, kept in a [`Spool`] for the send pass to send as decided; a file
//! too large for it is decided again by the send pass, the same way.

use std::sync::atomic::Ordering;

use super::report::{FailureReport, RejectSummary};
use super::row::RowOutcome;
use super::scan::{open_scan, Opened};
use super::spool::Spool;
use super::{IngestContext, IngestError};
use crate::reader::{self, SnapshotFile};

/// How many rejects a failure report lists, to find the problem fast.
const FIRST_REJECTS: usize = 20;

/// What the validation pass found in a file that may be sent.
#[derive(Debug)]
pub(super) struct Validation {
    /// Data records in the file.
    pub(super) rows: u64,
    /// Of which rejected.
    pub(super) rejected: u64,
    /// Columns of the file the mapping does not know (ignored).
    pub(super) extra_columns: Vec<String>,
    /// When the snapshot was taken (`source.snapshot_time`), if known.
    pub(super) snapshot_time: Option<i64>,
    /// Every row as decided, unless they did not fit in `source.spool_max_bytes`.
    pub(super) spool: Option<Spool>,
}

/// Reads `file` to its end: `Ok(Err(report))` when it fails as a whole, `Err` when it could not
/// be read at all or shutdown came first.
pub(super) fn validate(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
) -> Result<Result<Validation, FailureReport>, IngestError> {
    let snapshot_time = match ctx.config.snapshot_time.of(&file.name, file.modified_ms) {
        Ok(time) => time,
        Err(error) => {
            return Ok(Err(FailureReport {
                file: file.name.clone(),
                hash: file.hash.clone(),
                stage: "snapshot_time",
                error: error.to_string(),
                line: None,
                columns: Vec::new(),
                rows_read: 0,
                rows_rejected: 0,
                first_rejects: Vec::new(),
            }))
        }
    };
    let mut scan = match open_scan(ctx.config, &ctx.dataset, file)? {
        Opened::Ready(scan) => scan,
        Opened::Failed(report) => return Ok(Err(report)),
    };
    let failure = |stage, error, line, rows_read, rows_rejected, first_rejects| FailureReport {
        file: file.name.clone(),
        hash: file.hash.clone(),
        stage,
        error,
        line,
        columns: Vec::new(),
        rows_read,
        rows_rejected,
        first_rejects,
    };
    let (mut rows, mut rejected) = (0u64, 0u64);
    let mut first_rejects = Vec::new();
    // `spool_max_bytes = 0`: no spool, the send pass reads the file again.
    let mut spool =
        (ctx.config.spool_max_bytes > 0).then(|| Spool::new(ctx.config.spool_max_bytes));
    loop {
        if rows % 4096 == 0 && ctx.stop.load(Ordering::Relaxed) {
            return Err(IngestError::Interrupted);
        }
        match scan.next() {
            Ok(None) => break,
            Ok(Some(row)) => {
                rows += 1;
                let kept = match row.outcome {
                    RowOutcome::Accepted { key, payload } => spool
                        .as_mut()
                        .map(|s| s.accept(row.line, key.as_str().as_bytes(), payload)),
                    RowOutcome::Rejected(reject) => {
                        rejected += 1;
                        if first_rejects.len() < FIRST_REJECTS {
                            first_rejects.push(RejectSummary {
                                line: row.line,
                                column: reject.column.clone(),
                                reason: reject.reason.to_string(),
                            });
                        }
                        spool.as_mut().map(|s| {
                            let raw_line = reader::raw_record(
                                row.raw,
                                &ctx.config.csv,
                                ctx.config.raw_line_max_bytes,
                            );
                            s.reject(row.line, reject, raw_line)
                        })
                    }
                };
                if kept == Some(false) {
                    tracing::info!(
                        message = "The file's rows take more than source.spool_max_bytes: the send pass reads it again.",
                        rows_kept = spool.as_ref().map_or(0, Spool::len),
                        spool_max_bytes = ctx.config.spool_max_bytes
                    );
                    spool = None;
                }
            }
            Err((line, error)) => {
                return Ok(Err(failure(
                    "read",
                    format!("cannot read the file past line {line}: {error}"),
                    Some(line),
                    rows,
                    rejected,
                    first_rejects,
                )))
            }
        }
    }
    let ratio = if rows == 0 {
        0.0
    } else {
        rejected as f64 / rows as f64
    };
    if ratio > ctx.config.max_reject_ratio {
        return Ok(Err(failure(
            "rejects",
            format!(
                "{rejected} of {rows} rows ({:.1}%) would be rejected, more than source.max_reject_ratio ({:.1}%)",
                ratio * 100.0,
                ctx.config.max_reject_ratio * 100.0
            ),
            None,
            rows,
            rejected,
            first_rejects,
        )));
    }
    Ok(Ok(Validation {
        rows,
        rejected,
        extra_columns: std::mem::take(&mut scan.extra_columns),
        snapshot_time,
        spool,
    }))
}
