//! What the send pass writes besides the rows' own payloads, built from one file's identity:
//! the provenance headers on every record (file name and hash, snapshot id and time, stream,
//! line), the `rejects` envelope of a rejected row, the snapshot-end marker of a partition, and
//! the ledger entries (`IN_PROGRESS` checkpoints, `COMPLETED`, `FAILED`). Building only — which
//! transaction each goes into, and so the guarantee, is the send pass's business.

use rdkafka::message::{Header, OwnedHeaders};
use snapfeed_runtime::headers;
use snapfeed_runtime::records::{
    now_millis, FileLedgerEntry, FileStatus, RejectedRow, SnapshotEnd,
};

use crate::config::{SnapshotIdSource, SourceConfig};
use crate::convert::RowReject;
use crate::reader::SnapshotFile;

/// Rows of a file accounted for so far, in file order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Data records read (sent, rejected, or skipped as committed by an earlier run).
    pub(super) rows: u64,
    /// Of which accepted (to `snapshots`).
    pub(super) sent: u64,
    /// Of which rejected (to `rejects`).
    pub(super) rejected: u64,
}

/// Where a file's records come from: stamped on each of them.
#[derive(Debug)]
pub(super) struct Provenance<'f> {
    /// The file.
    pub(super) file: &'f SnapshotFile,
    /// Its snapshot stream (provider).
    pub(super) stream: String,
    /// Its snapshot id.
    pub(super) snapshot_id: String,
    /// When its snapshot was taken, decimal ms (the header value), if known.
    pub(super) snapshot_time: Option<String>,
}

/// The stream (provider) a file name belongs to: the first matching rule's, else the default.
pub fn stream_of(config: &SourceConfig, name: &str) -> String {
    config
        .streams
        .iter()
        .find(|rule| crate::inbox::glob_match(&rule.pattern, name))
        .map(|rule| rule.stream.clone())
        .unwrap_or_else(|| config.default_stream.clone())
}

impl<'f> Provenance<'f> {
    /// The provenance of `file` under `config`, its snapshot taken at `snapshot_time`.
    pub(super) fn of(
        config: &SourceConfig,
        file: &'f SnapshotFile,
        snapshot_time: Option<i64>,
    ) -> Provenance<'f> {
        Provenance {
            file,
            stream: stream_of(config, &file.name),
            snapshot_id: match config.snapshot_id {
                SnapshotIdSource::FileHash => file.hash.clone(),
                SnapshotIdSource::FileName => file.name.clone(),
            },
            snapshot_time: snapshot_time.map(|ms| ms.to_string()),
        }
    }

    /// Provenance headers, with the line of a data record.
    pub(super) fn headers(&self, line: Option<u64>) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: headers::FILE_NAME,
                value: Some(self.file.name.as_bytes()),
            })
            .insert(Header {
                key: headers::FILE_HASH,
                value: Some(self.file.hash.as_bytes()),
            })
            .insert(Header {
                key: headers::SNAPSHOT_ID,
                value: Some(self.snapshot_id.as_bytes()),
            })
            .insert(Header {
                key: headers::STREAM,
                value: Some(self.stream.as_bytes()),
            });
        if let Some(time) = &self.snapshot_time {
            headers = headers.insert(Header {
                key: headers::SNAPSHOT_TIME,
                value: Some(time.as_bytes()),
            });
        }
        if let Some(line) = line {
            let mut digits = [0u8; 20];
            headers = headers.insert(Header {
                key: headers::LINE,
                value: Some(decimal(line, &mut digits)),
            });
        }
        headers
    }

    /// The ledger entry of this file: `counts` committed so far, `total` once known.
    pub(super) fn ledger_entry(
        &self,
        status: FileStatus,
        counts: Counts,
        total: Option<u64>,
        started_at: i64,
    ) -> FileLedgerEntry {
        FileLedgerEntry {
            file_hash: self.file.hash.clone(),
            file_name: self.file.name.clone(),
            stream: self.stream.clone(),
            snapshot_id: self.snapshot_id.clone(),
            status,
            rows_committed: counts.rows as i64,
            rows_sent: counts.sent as i64,
            rows_rejected: counts.rejected as i64,
            rows_total: total.map(|t| t as i64),
            bytes: self.file.bytes as i64,
            started_at,
            updated_at: now_millis(),
            error: None,
        }
    }

    /// The `rejects` envelope of a rejected row: why, and its raw text (`raw_line`: the text
    /// cut to the configured length by [`crate::reader::raw_record`], and whether it was cut; the
    /// rejects topic is access-restricted, logs never see it).
    pub(super) fn rejected_row(
        &self,
        line: u64,
        reject: RowReject,
        (raw_line, raw_truncated): (String, bool),
    ) -> RejectedRow {
        RejectedRow {
            file_name: self.file.name.clone(),
            file_hash: self.file.hash.clone(),
            snapshot_id: self.snapshot_id.clone(),
            stream: self.stream.clone(),
            line: line as i64,
            column: reject.column,
            reason: reject.reason.to_string(),
            detail: reject.detail,
            raw_line,
            raw_truncated,
            rejected_at: now_millis(),
        }
    }

    /// The snapshot-end marker of one partition: the snapshot is complete, with these counts.
    pub(super) fn marker(
        &self,
        partition: i32,
        rows_in_partition: i64,
        rows_total: u64,
        completed_at: i64,
    ) -> SnapshotEnd {
        SnapshotEnd {
            snapshot_id: self.snapshot_id.clone(),
            stream: self.stream.clone(),
            file_hash: self.file.hash.clone(),
            file_name: self.file.name.clone(),
            partition,
            rows_in_partition,
            rows_total: rows_total as i64,
            completed_at,
        }
    }

    /// Headers of a snapshot-end marker: provenance plus the control header readers look for.
    pub(super) fn marker_headers(&self) -> OwnedHeaders {
        self.headers(None).insert(Header {
            key: headers::CONTROL,
            value: Some(headers::CONTROL_SNAPSHOT_END.as_bytes()),
        })
    }
}

/// `value` in decimal, written into `digits` (no allocation per row).
fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_are_written_in_decimal() {
        for value in [0, 7, 10, 99, 100, 1_234_567_890, u64::MAX] {
            let mut digits = [0u8; 20];
            assert_eq!(decimal(value, &mut digits), value.to_string().as_bytes());
        }
    }
}
