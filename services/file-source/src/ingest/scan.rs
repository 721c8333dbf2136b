//! Reading a file's data rows, for both passes: opens the file (decompressed, decoded, split in
//! the configured dialect), matches its header, and hands each row to a fresh [`RowDecider`]
//! with the line it starts on. An empty file, an unusable header or an unreadable file is a
//! file-level failure ([`FailureReport`]) that names the line and what went wrong, never a row
//! value. No Kafka here, so no guarantee of its own: this is the I/O shell around the decision.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use snapfeed_runtime::dataset::Dataset;

use super::report::FailureReport;
use super::row::{RowDecider, RowOutcome};
use super::IngestError;
use crate::config::SourceConfig;
use crate::convert::{HeaderError, HeaderMap};
use crate::reader::{self, SnapshotFile};

/// A file open at its first data row.
pub(super) struct RowScan {
    csv: reader::RecordReader,
    decider: RowDecider,
    /// The current row's raw cells, reused across rows.
    buffer: reader::Record,
    /// Raw (on-disk) bytes read so far, for progress lines.
    pub(super) raw_bytes_read: Arc<AtomicU64>,
    /// Columns of the file the mapping does not know (ignored).
    pub(super) extra_columns: Vec<String>,
}

/// Opening a file: ready to scan, or failed as a whole before its first row.
pub(super) enum Opened {
    Ready(Box<RowScan>),
    Failed(FailureReport),
}

/// One data row: the line it starts on, its fate, and its raw cells (for `rejects`).
pub(super) struct ScannedRow<'s> {
    pub(super) line: u64,
    pub(super) outcome: RowOutcome<'s>,
    pub(super) raw: &'s reader::Record,
}

/// Opens `file` and reads its header. `Err` only when the file cannot be opened at all (it
/// stays in `work/` and is tried again).
pub(super) fn open_scan(
    config: &SourceConfig,
    dataset: &Arc<Dataset>,
    file: &SnapshotFile,
) -> Result<Opened, IngestError> {
    let fail = |stage: &'static str, error: String, columns: Vec<String>| {
        Opened::Failed(FailureReport {
            file: file.name.clone(),
            hash: file.hash.clone(),
            stage,
            error,
            line: Some(1),
            columns,
            rows_read: 0,
            rows_rejected: 0,
            first_rejects: Vec::new(),
        })
    };
    let text =
        reader::open_text(&file.path, config.encoding).map_err(|source| IngestError::Io {
            path: file.path.display().to_string(),
            source,
        })?;
    let raw_bytes_read = text.raw_bytes_read.clone();
    let mut csv = reader::csv_reader(text.reader, &config.csv);
    let mut header = reader::Record::new();
    let header = match csv.read_record(&mut header) {
        Ok(true) => match header.text() {
            Some(header) => header,
            None => {
                return Ok(fail(
                    "read",
                    "cannot read the header line: invalid UTF-8".into(),
                    Vec::new(),
                ))
            }
        },
        Ok(false) => {
            return Ok(fail(
                "empty",
                "the file is empty: no header line".into(),
                Vec::new(),
            ))
        }
        Err(error) => {
            return Ok(fail(
                "read",
                format!("cannot read the header line: {}", read_error_class(&error)),
                Vec::new(),
            ))
        }
    };
    let header_map = match HeaderMap::match_header(header, dataset) {
        Ok(map) => map,
        Err(HeaderError::MissingColumns(columns)) => {
            return Ok(fail(
                "header",
                "the header lacks required columns".into(),
                columns,
            ))
        }
        Err(error) => return Ok(fail("header", error.to_string(), Vec::new())),
    };
    let extra_columns = header_map.extra_columns().to_vec();
    Ok(Opened::Ready(Box::new(RowScan {
        csv,
        decider: RowDecider::new(dataset.clone(), header_map),
        buffer: reader::Record::new(),
        raw_bytes_read,
        extra_columns,
    })))
}

/// A read error's class, without any data from the file.
fn read_error_class(error: &std::io::Error) -> String {
    format!(
        "I/O error ({}) — truncated or corrupt compressed data?",
        error.kind()
    )
}

impl RowScan {
    /// The next data row; `Ok(None)` at the end of the file; `Err((line, what))` when the file
    /// cannot be read on (a file-level failure: stage `read`).
    pub(super) fn next(&mut self) -> Result<Option<ScannedRow<'_>>, (u64, String)> {
        match self.csv.read_record(&mut self.buffer) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(error) => return Err((self.csv.position().line(), read_error_class(&error))),
        }
        let line = self.buffer.line();
        let outcome = self.decider.decide(&self.buffer);
        Ok(Some(ScannedRow {
            line,
            outcome,
            raw: &self.buffer,
        }))
    }

    /// Makes room for the keys of `rows` rows (the validation pass counted them).
    pub(super) fn expect_rows(&mut self, rows: u64) {
        self.decider.expect_rows(rows);
    }
}
