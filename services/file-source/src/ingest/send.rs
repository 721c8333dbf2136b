//! The send pass — where the source stage keeps its guarantee, through the runtime's
//! [`GuaranteedWriter`] (no transaction call of its own).
//!
//! The file goes out in chunks of `rows_per_transaction` data records: rows to `snapshots` (on
//! the partition of their key, counted per partition), rejected rows to `rejects`. A chunk ends
//! with `acknowledge` (at_least_once: every record sent so far acknowledged, so the checkpoint
//! never gets ahead of its rows; a no-op in exactly_once), then its `IN_PROGRESS` checkpoint to
//! `files`, then `commit_sent` (exactly_once: the chunk and its checkpoint in one transaction).
//! The last transaction holds the snapshot-end marker of every partition and the `COMPLETED`
//! entry, each after what it accounts for is acknowledged. Rows an earlier run committed (before
//! the ledger's checkpoint) are read and counted, not sent.
//!
//! On any error the writer aborts what this file sent since its last commit and the file stays
//! in `work/`, to resume from that checkpoint; a wedged producer is replaced by the writer, and a
//! fatal error (fenced, unrecoverable) comes back as one, for the service to stop.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use snapfeed_runtime::avro::LoadedSchema;
use snapfeed_runtime::kafka::{GuaranteedWriter, OutgoingRecord};
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::{
    now_millis, AvroRecord, FileLedgerEntry, FileStatus, RejectedRow, SnapshotEnd,
};

use super::records::{Counts, Provenance};
use super::report::{FailureReport, FileReport};
use super::row::RowOutcome;
use super::scan::{open_scan, Opened};
use super::spool::Spooled;
use super::validate::Validation;
use super::{IngestContext, IngestError};
use crate::ledger::Ledger;
use crate::reader::{self, SnapshotFile};

/// Sends a validated file from `resume_after` on; on error, aborts what was sent since the last
/// commit.
pub(super) fn send_file(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
    resume_after: u64,
    validation: Validation,
    ledger: &mut Ledger,
) -> Result<FileReport, IngestError> {
    send_chunks(ctx, file, resume_after, validation, ledger).map_err(|e| abandon(ctx.writer, e))
}

/// Records a failed file on the ledger (its own small transaction: no rows go with it).
pub(super) fn send_failed_entry(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
    report: &FailureReport,
    ledger: &mut Ledger,
) -> Result<(), IngestError> {
    let origin = Provenance::of(ctx.config, file, None);
    let entry = FileLedgerEntry {
        rows_total: Some(report.rows_read as i64),
        error: Some(format!("{}: {}", report.stage, report.error)),
        ..origin.ledger_entry(FileStatus::Failed, Counts::default(), None, now_millis())
    };
    let payload = ctx
        .schemas
        .current(FileLedgerEntry::SCHEMA)?
        .encode(&entry)?;
    ctx.writer
        .send(OutgoingRecord::new(
            &ctx.topics.files,
            file.hash.as_bytes(),
            &payload,
        ))
        .and_then(|()| ctx.writer.commit_sent())
        .map_err(|e| abandon(ctx.writer, e.into()))?;
    ledger.record(entry);
    Ok(())
}

/// Aborts what was sent since the last commit. An abort that fails fatally (fenced, a producer
/// that cannot be replaced) is the error to report; otherwise the original one is.
fn abandon(writer: &GuaranteedWriter, error: IngestError) -> IngestError {
    match writer.abort() {
        Ok(()) => error,
        Err(abort) if abort.is_fatal() => IngestError::Write(abort),
        Err(abort) => {
            tracing::warn!(message = "Could not abort after a failed send; the next attempt will.", error = %abort);
            error
        }
    }
}

/// One file on its way out: what has been sent, and the envelopes to send the rest with.
struct FileSender<'c> {
    ctx: &'c IngestContext<'c>,
    origin: Provenance<'c>,
    /// When the file was claimed (kept across a resume): the timestamp of every record of
    /// it, so the detector's `detected_at` and api-sink's end-to-end latency start there.
    started_at: i64,
    ledger_schema: std::sync::Arc<LoadedSchema>,
    reject_schema: std::sync::Arc<LoadedSchema>,
    counts: Counts,
    /// Accepted rows per `snapshots` partition, for the markers (skipped rows included).
    per_partition: Vec<i64>,
    /// Rows an earlier run committed: counted, not sent.
    resume_after: u64,
    /// Rows in the file, as the validation pass counted them.
    total: u64,
}

fn send_chunks(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
    resume_after: u64,
    mut validation: Validation,
    ledger: &mut Ledger,
) -> Result<FileReport, IngestError> {
    let changed = || IngestError::Io {
        path: file.path.display().to_string(),
        source: std::io::Error::other("the file changed between validation and sending"),
    };
    let mut sender = FileSender {
        ctx,
        origin: Provenance::of(ctx.config, file, validation.snapshot_time),
        // Claimed when first started: a resumed file keeps its claim time; a file that failed
        // before (and is dropped in again) or is new is claimed now.
        started_at: ledger
            .get(&file.hash)
            .filter(|e| e.status == FileStatus::InProgress)
            .map(|e| e.started_at)
            .unwrap_or_else(now_millis),
        ledger_schema: ctx.schemas.current(FileLedgerEntry::SCHEMA)?,
        reject_schema: ctx.schemas.current(RejectedRow::SCHEMA)?,
        counts: Counts::default(),
        per_partition: vec![0; ctx.snapshot_partitions.max(1) as usize],
        resume_after,
        total: validation.rows,
    };
    if resume_after > 0 {
        tracing::info!(
            message = "Resuming after the last committed chunk.",
            rows_committed = resume_after
        );
    }
    let mut progress = Progress::new(ctx.config.progress_interval_ms);
    let spool_bytes = validation.spool.as_ref().map(|s| s.held_bytes() as u64);
    if let Some(spool) = validation.spool.take() {
        // Sent as validated: the file is not read again.
        let mut rows = spool.into_rows();
        while let Some(row) = rows.next_row() {
            sender.next_row(row, ledger)?;
            let read = (u128::from(file.bytes) * u128::from(sender.counts.rows)
                / u128::from(validation.rows.max(1))) as u64;
            progress.report(sender.counts.rows, read, file.bytes);
        }
    } else {
        let Opened::Ready(mut scan) = open_scan(ctx.config, &ctx.dataset, file)? else {
            // The file passed validation a moment ago: it changed underneath us.
            return Err(changed());
        };
        // The first pass counted the rows: no rehashing of the duplicate-key set on the way.
        scan.expect_rows(validation.rows);
        loop {
            let next = scan.next().map_err(|(line, error)| IngestError::Io {
                path: file.path.display().to_string(),
                source: std::io::Error::other(format!("line {line}: {error}")),
            })?;
            let Some(row) = next else { break };
            let line = row.line;
            match row.outcome {
                RowOutcome::Accepted { key, payload } => {
                    let key = key.as_str().as_bytes();
                    sender.next_row(Spooled::Accepted { line, key, payload }, ledger)?
                }
                RowOutcome::Rejected(reject) => {
                    let config = ctx.config;
                    let raw_line =
                        reader::raw_record(row.raw, &config.csv, config.raw_line_max_bytes);
                    let rejected = Spooled::Rejected {
                        line,
                        reject,
                        raw_line,
                    };
                    sender.next_row(rejected, ledger)?
                }
            }
            let read = scan.raw_bytes_read.load(Ordering::Relaxed);
            progress.report(sender.counts.rows, read, file.bytes);
        }
    }
    let counts = sender.counts;
    if counts.rows != validation.rows || counts.rejected != validation.rejected {
        return Err(changed());
    }
    sender.complete(ledger)?;
    Ok(FileReport {
        file: file.name.clone(),
        hash: file.hash.clone(),
        stream: sender.origin.stream,
        snapshot_id: sender.origin.snapshot_id,
        bytes: file.bytes,
        rows_total: counts.rows,
        rows_sent: counts.sent,
        rows_rejected: counts.rejected,
        resumed_after: resume_after,
        extra_columns: validation.extra_columns,
        spool_bytes,
    })
}

impl FileSender<'_> {
    /// The file's next row as decided (from the spool, or decided again): sent unless an
    /// earlier run committed it, and the chunk ended when it is full.
    fn next_row(&mut self, row: Spooled<'_>, ledger: &mut Ledger) -> Result<(), IngestError> {
        if self.counts.rows % 1024 == 0 && self.ctx.stop.load(Ordering::Relaxed) {
            return Err(IngestError::Interrupted);
        }
        let skip = self.counts.rows < self.resume_after;
        self.row(row, skip)?;
        let rows = self.counts.rows;
        if !skip && rows % self.ctx.config.rows_per_transaction == 0 && rows < self.total {
            self.checkpoint(ledger)?;
        }
        Ok(())
    }

    /// Counts one row and, unless an earlier run committed it (`skip`), sends it.
    fn row(&mut self, row: Spooled<'_>, skip: bool) -> Result<(), IngestError> {
        let topics = self.ctx.topics;
        match row {
            Spooled::Accepted { line, key, payload } => {
                let partition = partition_for_key(key, self.partitions());
                if let Some(count) = self.per_partition.get_mut(partition as usize) {
                    *count += 1;
                }
                if !skip {
                    self.ctx.writer.send(
                        OutgoingRecord::new(&topics.snapshots, key, payload)
                            .partition(partition)
                            .headers(self.origin.headers(Some(line)))
                            .timestamp(self.started_at),
                    )?;
                }
                self.counts.sent += 1;
            }
            Spooled::Rejected {
                line,
                reject,
                raw_line,
            } => {
                if !skip {
                    let envelope = self.origin.rejected_row(line, reject, raw_line);
                    let payload = self.reject_schema.encode(&envelope)?;
                    let key = format!("{}:{}", self.origin.file.hash, line);
                    self.ctx.writer.send(
                        OutgoingRecord::new(&topics.rejects, key.as_bytes(), &payload)
                            .headers(self.origin.headers(Some(line)))
                            .timestamp(self.started_at),
                    )?;
                }
                self.counts.rejected += 1;
            }
        }
        self.counts.rows += 1;
        Ok(())
    }

    /// Ends a chunk: its records acknowledged, then its checkpoint, then the commit.
    fn checkpoint(&mut self, ledger: &mut Ledger) -> Result<(), IngestError> {
        self.ctx.writer.acknowledge()?;
        let entry = self.entry(FileStatus::InProgress, None);
        self.send_entry(&entry)?;
        self.ctx.writer.commit_sent()?;
        ledger.record(entry);
        Ok(())
    }

    /// The last transaction: a marker on every partition, then the `COMPLETED` entry — each
    /// after what it accounts for is acknowledged (at_least_once).
    fn complete(&mut self, ledger: &mut Ledger) -> Result<(), IngestError> {
        let writer = self.ctx.writer;
        writer.acknowledge()?;
        let completed_at = now_millis();
        let marker_schema = self.ctx.schemas.current(SnapshotEnd::SCHEMA)?;
        for (partition, rows_in_partition) in self.per_partition.iter().enumerate() {
            let partition = partition as i32;
            let marker = self.origin.marker(
                partition,
                *rows_in_partition,
                self.counts.sent,
                completed_at,
            );
            let payload = marker_schema.encode(&marker)?;
            writer.send(
                OutgoingRecord::new(
                    &self.ctx.topics.snapshots,
                    self.origin.snapshot_id.as_bytes(),
                    &payload,
                )
                .partition(partition)
                .headers(self.origin.marker_headers())
                .timestamp(self.started_at),
            )?;
        }
        writer.acknowledge()?;
        let done = self.entry(FileStatus::Completed, Some(self.counts.rows));
        self.send_entry(&done)?;
        writer.commit_sent()?;
        ledger.record(done);
        Ok(())
    }

    fn entry(&self, status: FileStatus, total: Option<u64>) -> FileLedgerEntry {
        self.origin
            .ledger_entry(status, self.counts, total, self.started_at)
    }

    fn send_entry(&self, entry: &FileLedgerEntry) -> Result<(), IngestError> {
        let payload = self.ledger_schema.encode(entry)?;
        let key = self.origin.file.hash.as_bytes();
        self.ctx
            .writer
            .send(OutgoingRecord::new(&self.ctx.topics.files, key, &payload))?;
        Ok(())
    }

    fn partitions(&self) -> i32 {
        self.per_partition.len() as i32
    }
}

/// Progress lines on long files, at most one per `progress_interval_ms`.
struct Progress {
    every: Duration,
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new(interval_ms: u64) -> Progress {
        let now = Instant::now();
        Progress {
            every: Duration::from_millis(interval_ms),
            last: now,
            started: now,
        }
    }

    /// `read` of the file's `bytes` are behind us.
    fn report(&mut self, rows: u64, read: u64, bytes: u64) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        tracing::info!(
            message = "Ingesting.",
            rows,
            rows_per_second = (rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3)) as u64,
            percent_of_bytes = (100 * read / bytes.max(1)).min(100)
        );
    }
}
