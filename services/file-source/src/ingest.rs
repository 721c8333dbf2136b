//! Ingesting one snapshot file — the source stage's guarantee lives here.
//!
//! **Decide before sending.** A validating pass reads the whole file (header, every row's
//! conversion, duplicate keys, reject ratio) before anything is sent, so a failing file sends
//! nothing in either mode and no huge transaction is ever aborted. Only 16 bytes per row are
//! held between passes (a hash of each key, for duplicate detection), so files far larger than
//! memory are fine. The sending pass reads the file again and converts each row again —
//! deterministically, so both passes agree on every row's fate.
//!
//! **Exactly once (`exactly_once`).** Rows go to `snapshots`, rejected rows to `rejects`, in
//! transactions of `rows_per_transaction` data records; each transaction also carries the
//! ledger checkpoint (`IN_PROGRESS`, `rows_committed`) on `files`, and the last one the
//! snapshot-end marker for every partition and the `COMPLETED` entry. A crash at any point
//! leaves the last committed checkpoint: the restart skips exactly the committed records and
//! sends the rest — none lost, none committed twice. The restarted producer's
//! `init_transactions` aborts whatever the crashed one left open.
//!
//! **At least once.** The same chunks and checkpoints without transactions: each chunk is
//! flushed and acknowledged before its checkpoint is written. A crash may re-send the rows
//! after the last checkpoint; they carry the same keys and content, so the detector sees them
//! as unchanged.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use snapfeed_runtime::avro::{AvroError, SchemaStore};
use snapfeed_runtime::dataset::{Dataset, FieldRef};
use snapfeed_runtime::headers;
use snapfeed_runtime::kafka::{await_acknowledged, DeliveryTracker, ProcessingGuarantee};
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::record_key::RecordKey;
use snapfeed_runtime::records::{
    now_millis, AvroRecord, FileLedgerEntry, FileStatus, RejectedRow, SnapshotEnd,
};
use snapfeed_runtime::topics::TopicNames;

use crate::config::{SnapshotIdSource, SourceConfig};
use crate::convert::{HeaderError, HeaderMap, RowConverter, RowReject};
use crate::ledger::{Ledger, LedgerVerdict};
use crate::reader::{self, SnapshotFile};

/// Reason of a row whose bytes are not valid text in the configured encoding.
pub const BAD_ENCODING: &str = "bad_encoding";
/// Reason of a row repeating an earlier row's key (the first occurrence wins).
pub const DUPLICATE_KEY: &str = "duplicate_key";

/// The producer file-source sends with.
pub type SourceProducer = ThreadedProducer<DeliveryTracker>;

/// Everything the ingest of one file needs.
pub struct IngestContext<'a> {
    /// `[source]`.
    pub config: &'a SourceConfig,
    /// Transactions or not.
    pub guarantee: ProcessingGuarantee,
    /// Topic names.
    pub topics: &'a TopicNames,
    /// Partition count of `snapshots`.
    pub snapshot_partitions: i32,
    /// The dataset.
    pub dataset: Arc<Dataset>,
    /// Schemas (envelopes).
    pub schemas: &'a SchemaStore,
    /// The producer (transactions initialised when `exactly_once`).
    pub producer: &'a SourceProducer,
    /// Bound of one blocking Kafka call.
    pub kafka_timeout: Duration,
    /// Set when the service is shutting down: the ingest stops at the next row.
    pub stop: &'a AtomicBool,
}

impl std::fmt::Debug for IngestContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestContext")
            .field("guarantee", &self.guarantee)
            .field("topics", &self.topics)
            .field("snapshot_partitions", &self.snapshot_partitions)
            .finish_non_exhaustive()
    }
}

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

/// An ingest that stopped before an outcome: the file stays in the work directory and is
/// resumed from its last checkpoint.
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
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// Records were not acknowledged (at_least_once).
    #[error("{0} records were not acknowledged by the broker")]
    Unacknowledged(u64),
    /// An envelope could not be encoded.
    #[error(transparent)]
    Encode(#[from] AvroError),
    /// Shutdown interrupted the file.
    #[error("interrupted by shutdown")]
    Interrupted,
    /// An open transaction could neither commit nor abort: only a new producer (a restart,
    /// whose init_transactions aborts it) gets out of that.
    #[error("the producer's transaction is stuck (neither commit nor abort succeeded)")]
    ProducerWedged,
}

impl IngestError {
    /// True when the producer must be replaced (fenced or in a fatal state).
    pub fn needs_new_producer(&self) -> bool {
        match self {
            IngestError::ProducerWedged => true,
            IngestError::Kafka { source, .. } => {
                matches!(
                    source.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::Fenced
                            | RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                    )
                ) || matches!(source, KafkaError::Transaction(e) if e.is_fatal())
            }
            _ => false,
        }
    }
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> IngestError {
    move |source| IngestError::Kafka { context, source }
}

/// One data record of a file, as both passes see it.
enum RowFate<'r> {
    Accepted {
        key: RecordKey,
        /// The record's single-object Avro encoding.
        payload: &'r [u8],
    },
    Rejected {
        reject: RowReject,
        raw: &'r csv::ByteRecord,
    },
}

/// Reads a file's records and decides each one's fate; both passes use it.
struct RowScan {
    dataset: Arc<Dataset>,
    csv: csv::Reader<Box<dyn std::io::Read + Send>>,
    converter: RowConverter,
    /// Keys seen so far in this file, by a fingerprint seeded per scan (see [`KeyFingerprints`]).
    seen_keys: HashSet<u128, KeyFingerprints>,
    fingerprint_seed: u64,
    buffer: csv::ByteRecord,
    /// The accepted row's encoding, reused across rows.
    payload: Vec<u8>,
    /// Always empty between rows: the allocation that holds a row's borrowed values.
    values: Vec<FieldRef<'static>>,
    raw_bytes_read: Arc<AtomicU64>,
    extra_columns: Vec<String>,
}

enum Opened {
    Ready(Box<RowScan>),
    Failed(FailureReport),
}

fn open_scan(ctx: &IngestContext<'_>, file: &SnapshotFile) -> Result<Opened, IngestError> {
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
        reader::open_text(&file.path, ctx.config.encoding).map_err(|source| IngestError::Io {
            path: file.path.display().to_string(),
            source,
        })?;
    let raw_bytes_read = text.raw_bytes_read.clone();
    let mut csv = reader::csv_reader(text.reader, &ctx.config.csv);
    let mut header = csv::StringRecord::new();
    match csv.read_record(&mut header) {
        Ok(true) => {}
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
                format!("cannot read the header line: {}", csv_error_class(&error)),
                Vec::new(),
            ))
        }
    }
    let header_map = match HeaderMap::match_header(header.iter(), &ctx.dataset) {
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
        dataset: ctx.dataset.clone(),
        csv,
        converter: RowConverter::new(ctx.dataset.clone(), header_map),
        seen_keys: HashSet::default(),
        fingerprint_seed: KeyFingerprints::seed(),
        buffer: csv::ByteRecord::new(),
        payload: Vec::with_capacity(1024),
        values: Vec::with_capacity(ctx.dataset.fields().len()),
        raw_bytes_read,
        extra_columns,
    })))
}

/// A csv error's class, without any data from the file.
fn csv_error_class(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Io(io) => format!(
            "I/O error ({}) — truncated or corrupt compressed data?",
            io.kind()
        ),
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".into(),
        csv::ErrorKind::UnequalLengths { .. } => "unequal record lengths".into(),
        _ => "malformed CSV".into(),
    }
}

impl RowScan {
    /// The next record's line and fate; `Ok(None)` at the end of the file; `Err` when the
    /// file cannot be read on (a file-level failure: stage `read`).
    fn next(&mut self) -> Result<Option<(u64, RowFate<'_>)>, (u64, String)> {
        match self.csv.read_byte_record(&mut self.buffer) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(error) => {
                let line = error
                    .position()
                    .map(|p| p.line())
                    .unwrap_or_else(|| self.csv.position().line());
                return Err((line, csv_error_class(&error)));
            }
        }
        let line = self.buffer.position().map(|p| p.line()).unwrap_or(0);
        let bytes = std::mem::take(&mut self.buffer);
        let record = match csv::StringRecord::from_byte_record(bytes) {
            Ok(record) => record,
            Err(error) => {
                self.buffer = error.into_byte_record();
                let reject = RowReject {
                    column: None,
                    reason: BAD_ENCODING,
                    detail:
                        "the row is not valid text in the configured encoding (source.encoding)"
                            .into(),
                };
                return Ok(Some((
                    line,
                    RowFate::Rejected {
                        reject,
                        raw: &self.buffer,
                    },
                )));
            }
        };
        // Cells are converted to values borrowed from the row and encoded straight to Avro:
        // no allocation per cell.
        // The previous row's (empty) vector, lent out again for this row's lifetime.
        let mut values: Vec<FieldRef<'_>> = std::mem::take(&mut self.values);
        let converted = self
            .converter
            .convert_refs(&self.dataset, &record, &mut values)
            .and_then(|()| {
                self.payload.clear();
                self.dataset
                    .encode_refs(&values, &mut self.payload)
                    .map_err(|error| RowReject {
                        column: None,
                        reason: crate::convert::reason::SCHEMA_MISMATCH,
                        detail: error.to_string(),
                    })?;
                self.dataset
                    .key_of_refs(&values)
                    .map_err(|error| RowReject {
                        column: None,
                        reason: crate::convert::reason::MISSING_REQUIRED,
                        detail: format!("cannot build the record key: {error}"),
                    })
            });
        self.values = recycle(values);
        self.buffer = record.into_byte_record();
        let fate = match converted {
            Ok(key) => {
                let fingerprint = xxhash_rust::xxh3::xxh3_128_with_seed(
                    key.as_str().as_bytes(),
                    self.fingerprint_seed,
                );
                if self.seen_keys.insert(fingerprint) {
                    RowFate::Accepted {
                        key,
                        payload: &self.payload,
                    }
                } else {
                    RowFate::Rejected {
                        reject: RowReject {
                            column: None,
                            reason: DUPLICATE_KEY,
                            detail: "an earlier row of this file has the same key; the first occurrence wins".into(),
                        },
                        raw: &self.buffer,
                    }
                }
            }
            Err(reject) => RowFate::Rejected {
                reject,
                raw: &self.buffer,
            },
        };
        Ok(Some((line, fate)))
    }
}

/// Hashing for the duplicate-key set, whose members are already 128-bit xxh3 fingerprints of
/// the keys: the table uses their low 64 bits as they are. The fingerprint is seeded at random
/// per scan, so a file cannot be crafted to make its keys collide in the table.
#[derive(Default, Clone)]
struct KeyFingerprints;

impl KeyFingerprints {
    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0);
        hasher.finish()
    }
}

impl std::hash::BuildHasher for KeyFingerprints {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

/// See [`KeyFingerprints`].
#[derive(Default)]
struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; anything else is folded in so the hasher stays correct.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u128(&mut self, fingerprint: u128) {
        self.0 = fingerprint as u64;
    }
}

/// Empties `values` and keeps its allocation for the next row (collecting in place from an
/// empty iterator reuses the buffer; no element is ever mapped).
fn recycle(mut values: Vec<FieldRef<'_>>) -> Vec<FieldRef<'static>> {
    values.clear();
    values.into_iter().map(|_| FieldRef::Null).collect()
}

/// Ingests one file (blocking: run it on a blocking thread).
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
    let validation = match validate(ctx, &file)? {
        Ok(validation) => validation,
        Err(report) => {
            write_failed_entry(ctx, &file, &report, ledger)?;
            return Ok(FileOutcome::Failed(report));
        }
    };
    if !validation.extra_columns.is_empty() {
        tracing::warn!(message = "Ignoring columns the mapping does not know.", columns = ?validation.extra_columns);
    }
    // Pass 2: send.
    let report = send(ctx, &file, resume_after, validation, ledger)?;
    Ok(FileOutcome::Ingested(report))
}

struct Validation {
    rows: u64,
    rejected: u64,
    extra_columns: Vec<String>,
}

fn validate(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
) -> Result<Result<Validation, FailureReport>, IngestError> {
    let mut scan = match open_scan(ctx, file)? {
        Opened::Ready(scan) => scan,
        Opened::Failed(report) => return Ok(Err(report)),
    };
    let (mut rows, mut rejected) = (0u64, 0u64);
    let mut first_rejects = Vec::new();
    loop {
        if rows % 4096 == 0 && ctx.stop.load(Ordering::Relaxed) {
            return Err(IngestError::Interrupted);
        }
        match scan.next() {
            Ok(None) => break,
            Ok(Some((_, RowFate::Accepted { .. }))) => rows += 1,
            Ok(Some((line, RowFate::Rejected { reject, .. }))) => {
                rows += 1;
                rejected += 1;
                if first_rejects.len() < 20 {
                    first_rejects.push(RejectSummary {
                        line,
                        column: reject.column,
                        reason: reject.reason.to_string(),
                    });
                }
            }
            Err((line, error)) => {
                return Ok(Err(FailureReport {
                    file: file.name.clone(),
                    hash: file.hash.clone(),
                    stage: "read",
                    error: format!("cannot read the file past line {line}: {error}"),
                    line: Some(line),
                    columns: Vec::new(),
                    rows_read: rows,
                    rows_rejected: rejected,
                    first_rejects,
                }))
            }
        }
    }
    let ratio = if rows == 0 {
        0.0
    } else {
        rejected as f64 / rows as f64
    };
    if ratio > ctx.config.max_reject_ratio {
        return Ok(Err(FailureReport {
            file: file.name.clone(),
            hash: file.hash.clone(),
            stage: "rejects",
            error: format!(
                "{rejected} of {rows} rows ({:.1}%) would be rejected, more than source.max_reject_ratio ({:.1}%)",
                ratio * 100.0,
                ctx.config.max_reject_ratio * 100.0
            ),
            line: None,
            columns: Vec::new(),
            rows_read: rows,
            rows_rejected: rejected,
            first_rejects,
        }));
    }
    Ok(Ok(Validation {
        rows,
        rejected,
        extra_columns: scan.extra_columns.clone(),
    }))
}

/// The stream (provider) a file name belongs to.
pub fn stream_of(config: &SourceConfig, name: &str) -> String {
    config
        .streams
        .iter()
        .find(|rule| crate::inbox::glob_match(&rule.pattern, name))
        .map(|rule| rule.stream.clone())
        .unwrap_or_else(|| config.default_stream.clone())
}

fn snapshot_id(config: &SourceConfig, file: &SnapshotFile) -> String {
    match config.snapshot_id {
        SnapshotIdSource::FileHash => file.hash.clone(),
        SnapshotIdSource::FileName => file.name.clone(),
    }
}

/// Sends records and commits chunks, through a transaction or acknowledged flushes.
struct ChunkWriter<'c> {
    ctx: &'c IngestContext<'c>,
    in_transaction: bool,
}

impl ChunkWriter<'_> {
    fn begin(&mut self) -> Result<(), IngestError> {
        if self.ctx.guarantee.is_transactional() && !self.in_transaction {
            self.ctx
                .producer
                .begin_transaction()
                .map_err(kafka("begin transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    fn send(&mut self, record: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), IngestError> {
        self.begin()?;
        let mut record = record;
        loop {
            match self.ctx.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(kafka("send")(error)),
            }
        }
    }

    /// Makes everything sent so far durable: commit, or flush and check acknowledgements.
    fn commit(&mut self) -> Result<(), IngestError> {
        if self.ctx.guarantee.is_transactional() {
            if self.in_transaction {
                let mut delay = Duration::from_millis(100);
                await_acknowledged(self.ctx.producer, self.ctx.kafka_timeout);
                for attempt in 1.. {
                    match self.ctx.producer.commit_transaction(self.ctx.kafka_timeout) {
                        Ok(()) => break,
                        // A timed-out commit may be retried until it resolves (librdkafka's rule).
                        Err(KafkaError::Transaction(error))
                            if error.is_retriable() && attempt < 5 =>
                        {
                            tracing::warn!(message = "Commit not confirmed yet; retrying.", error = %error);
                            std::thread::sleep(delay);
                            delay *= 2;
                        }
                        Err(error) => return Err(kafka("commit transaction")(error)),
                    }
                }
                self.in_transaction = false;
            }
            return Ok(());
        }
        self.settle()
    }

    /// at_least_once: everything sent so far is acknowledged (no-op with transactions, where
    /// the commit does it). Called before a checkpoint is sent, so a checkpoint never gets
    /// ahead of the rows it accounts for.
    fn settle(&mut self) -> Result<(), IngestError> {
        if self.ctx.guarantee.is_transactional() {
            return Ok(());
        }
        await_acknowledged(self.ctx.producer, self.ctx.kafka_timeout);
        self.ctx
            .producer
            .flush(self.ctx.kafka_timeout)
            .map_err(kafka("flush"))?;
        let failed = self.ctx.producer.context().take_failures();
        if failed > 0 {
            return Err(IngestError::Unacknowledged(failed));
        }
        Ok(())
    }

    /// Leaves nothing half-done: aborts an open transaction. `false` when the abort itself
    /// failed: the producer is then unusable until it is replaced.
    fn abandon(&mut self) -> bool {
        if !self.in_transaction {
            return true;
        }
        for _ in 0..3 {
            match self.ctx.producer.abort_transaction(self.ctx.kafka_timeout) {
                Ok(()) => {
                    self.in_transaction = false;
                    return true;
                }
                Err(error) => {
                    tracing::warn!(message = "Could not abort the open transaction.", %error)
                }
            }
        }
        false
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

fn provenance_headers(
    file: &SnapshotFile,
    snapshot_id: &str,
    stream: &str,
    line: Option<u64>,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: headers::FILE_NAME,
            value: Some(file.name.as_bytes()),
        })
        .insert(Header {
            key: headers::FILE_HASH,
            value: Some(file.hash.as_bytes()),
        })
        .insert(Header {
            key: headers::SNAPSHOT_ID,
            value: Some(snapshot_id.as_bytes()),
        })
        .insert(Header {
            key: headers::STREAM,
            value: Some(stream.as_bytes()),
        });
    if let Some(line) = line {
        let mut digits = [0u8; 20];
        headers = headers.insert(Header {
            key: headers::LINE,
            value: Some(decimal(line, &mut digits)),
        });
    }
    headers
}

fn send(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
    resume_after: u64,
    validation: Validation,
    ledger: &mut Ledger,
) -> Result<FileReport, IngestError> {
    let mut writer = ChunkWriter {
        ctx,
        in_transaction: false,
    };
    let result = send_chunks(ctx, &mut writer, file, resume_after, validation, ledger);
    if result.is_err() && !writer.abandon() {
        return Err(IngestError::ProducerWedged);
    }
    result
}

fn send_chunks(
    ctx: &IngestContext<'_>,
    writer: &mut ChunkWriter<'_>,
    file: &SnapshotFile,
    resume_after: u64,
    validation: Validation,
    ledger: &mut Ledger,
) -> Result<FileReport, IngestError> {
    let Opened::Ready(mut scan) = open_scan(ctx, file)? else {
        // The file passed validation a moment ago: it changed underneath us.
        return Err(IngestError::Io {
            path: file.path.display().to_string(),
            source: std::io::Error::other("the file changed between validation and sending"),
        });
    };
    // The first pass counted the rows: no rehashing of the duplicate-key set on the way.
    scan.seen_keys.reserve(validation.rows as usize);
    let stream = stream_of(ctx.config, &file.name);
    let snapshot_id = snapshot_id(ctx.config, file);
    let started_at = ledger
        .get(&file.hash)
        .map(|e| e.started_at)
        .unwrap_or_else(now_millis);
    let partitions = ctx.snapshot_partitions.max(1);
    let mut per_partition = vec![0i64; partitions as usize];
    let (mut index, mut sent, mut rejected) = (0u64, 0u64, 0u64);
    let mut progress_at = Instant::now();
    let started = Instant::now();
    let progress_every = Duration::from_millis(ctx.config.progress_interval_ms);
    if resume_after > 0 {
        tracing::info!(
            message = "Resuming after the last committed chunk.",
            rows_committed = resume_after
        );
    }

    let entry =
        |status: FileStatus, committed: u64, sent: u64, rejected: u64, total: Option<u64>| {
            FileLedgerEntry {
                file_hash: file.hash.clone(),
                file_name: file.name.clone(),
                stream: stream.clone(),
                snapshot_id: snapshot_id.clone(),
                status,
                rows_committed: committed as i64,
                rows_sent: sent as i64,
                rows_rejected: rejected as i64,
                rows_total: total.map(|t| t as i64),
                bytes: file.bytes as i64,
                started_at,
                updated_at: now_millis(),
                error: None,
            }
        };
    let ledger_schema = ctx.schemas.current(FileLedgerEntry::SCHEMA)?;
    let reject_schema = ctx.schemas.current(RejectedRow::SCHEMA)?;

    loop {
        if index % 1024 == 0 && ctx.stop.load(Ordering::Relaxed) {
            return Err(IngestError::Interrupted);
        }
        let next = scan.next().map_err(|(line, error)| IngestError::Io {
            path: file.path.display().to_string(),
            source: std::io::Error::other(format!("line {line}: {error}")),
        })?;
        let Some((line, fate)) = next else { break };
        let skip = index < resume_after;
        match fate {
            RowFate::Accepted { key, payload } => {
                let partition = partition_for_key(key.as_str().as_bytes(), partitions);
                per_partition[partition as usize] += 1;
                if !skip {
                    writer.send(
                        BaseRecord::to(&ctx.topics.snapshots)
                            .partition(partition)
                            .key(key.as_str().as_bytes())
                            .payload(payload)
                            .headers(provenance_headers(file, &snapshot_id, &stream, Some(line))),
                    )?;
                }
                sent += 1;
            }
            RowFate::Rejected { reject, raw } => {
                if !skip {
                    let (raw_line, raw_truncated) =
                        reader::raw_record(raw, &ctx.config.csv, ctx.config.raw_line_max_bytes);
                    let row = RejectedRow {
                        file_name: file.name.clone(),
                        file_hash: file.hash.clone(),
                        snapshot_id: snapshot_id.clone(),
                        stream: stream.clone(),
                        line: line as i64,
                        column: reject.column,
                        reason: reject.reason.to_string(),
                        detail: reject.detail,
                        raw_line,
                        raw_truncated,
                        rejected_at: now_millis(),
                    };
                    let payload = reject_schema.encode(&row)?;
                    let key = format!("{}:{line}", file.hash);
                    writer.send(
                        BaseRecord::to(&ctx.topics.rejects)
                            .key(key.as_bytes())
                            .payload(payload.as_slice())
                            .headers(provenance_headers(file, &snapshot_id, &stream, Some(line))),
                    )?;
                }
                rejected += 1;
            }
        }
        index += 1;
        if !skip && index % ctx.config.rows_per_transaction == 0 && index < validation.rows {
            writer.settle()?;
            let checkpoint = entry(FileStatus::InProgress, index, sent, rejected, None);
            let payload = ledger_schema.encode(&checkpoint)?;
            writer.send(
                BaseRecord::to(&ctx.topics.files)
                    .key(file.hash.as_bytes())
                    .payload(payload.as_slice()),
            )?;
            writer.commit()?;
            ledger.record(checkpoint);
        }
        if progress_at.elapsed() >= progress_every {
            progress_at = Instant::now();
            let read = scan.raw_bytes_read.load(Ordering::Relaxed);
            tracing::info!(
                message = "Ingesting.",
                rows = index,
                rows_per_second = (index as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64,
                percent_of_bytes = (100 * read / file.bytes.max(1)).min(100)
            );
        }
    }
    if index != validation.rows || rejected != validation.rejected {
        return Err(IngestError::Io {
            path: file.path.display().to_string(),
            source: std::io::Error::other("the file changed between validation and sending"),
        });
    }

    // The snapshot is complete: a marker on every partition, then the COMPLETED entry — each
    // after what it accounts for is acknowledged (at_least_once; one transaction otherwise).
    writer.settle()?;
    let completed_at = now_millis();
    let marker_schema = ctx.schemas.current(SnapshotEnd::SCHEMA)?;
    for (partition, rows_in_partition) in per_partition.iter().enumerate() {
        let marker = SnapshotEnd {
            snapshot_id: snapshot_id.clone(),
            stream: stream.clone(),
            file_hash: file.hash.clone(),
            file_name: file.name.clone(),
            partition: partition as i32,
            rows_in_partition: *rows_in_partition,
            rows_total: sent as i64,
            completed_at,
        };
        let payload = marker_schema.encode(&marker)?;
        let headers = provenance_headers(file, &snapshot_id, &stream, None).insert(Header {
            key: headers::CONTROL,
            value: Some(headers::CONTROL_SNAPSHOT_END.as_bytes()),
        });
        writer.send(
            BaseRecord::to(&ctx.topics.snapshots)
                .partition(partition as i32)
                .key(snapshot_id.as_bytes())
                .payload(payload.as_slice())
                .headers(headers),
        )?;
    }
    writer.settle()?;
    let done = entry(FileStatus::Completed, index, sent, rejected, Some(index));
    let payload = ledger_schema.encode(&done)?;
    writer.send(
        BaseRecord::to(&ctx.topics.files)
            .key(file.hash.as_bytes())
            .payload(payload.as_slice()),
    )?;
    writer.commit()?;
    ledger.record(done);
    Ok(FileReport {
        file: file.name.clone(),
        hash: file.hash.clone(),
        stream,
        snapshot_id,
        bytes: file.bytes,
        rows_total: index,
        rows_sent: sent,
        rows_rejected: rejected,
        resumed_after: resume_after,
        extra_columns: validation.extra_columns,
    })
}

/// Records a failed file on the ledger (its own small transaction: no rows go with it).
fn write_failed_entry(
    ctx: &IngestContext<'_>,
    file: &SnapshotFile,
    report: &FailureReport,
    ledger: &mut Ledger,
) -> Result<(), IngestError> {
    let entry = FileLedgerEntry {
        file_hash: file.hash.clone(),
        file_name: file.name.clone(),
        stream: stream_of(ctx.config, &file.name),
        snapshot_id: snapshot_id(ctx.config, file),
        status: FileStatus::Failed,
        rows_committed: 0,
        rows_sent: 0,
        rows_rejected: 0,
        rows_total: Some(report.rows_read as i64),
        bytes: file.bytes as i64,
        started_at: now_millis(),
        updated_at: now_millis(),
        error: Some(format!("{}: {}", report.stage, report.error)),
    };
    let payload = ctx
        .schemas
        .current(FileLedgerEntry::SCHEMA)?
        .encode(&entry)?;
    let mut writer = ChunkWriter {
        ctx,
        in_transaction: false,
    };
    let result = writer
        .send(
            BaseRecord::to(&ctx.topics.files)
                .key(file.hash.as_bytes())
                .payload(payload.as_slice()),
        )
        .and_then(|()| writer.commit());
    if result.is_err() && !writer.abandon() {
        return Err(IngestError::ProducerWedged);
    }
    result?;
    ledger.record(entry);
    Ok(())
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

    #[test]
    fn the_duplicate_key_set_tells_fingerprints_apart() {
        let seed = KeyFingerprints::seed();
        let mut seen: HashSet<u128, KeyFingerprints> = HashSet::default();
        for key in ["a|1", "a|2", "b|1"] {
            assert!(seen.insert(xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), seed)));
        }
        assert!(!seen.insert(xxhash_rust::xxh3::xxh3_128_with_seed(b"a|2", seed)));
    }

    #[test]
    fn recycling_keeps_the_allocation() {
        let text = b"x".to_vec();
        let mut values: Vec<FieldRef<'_>> = Vec::with_capacity(32);
        values.push(FieldRef::String(&text));
        let recycled = recycle(values);
        assert!(recycled.is_empty());
        assert!(recycled.capacity() >= 32);
    }
}
