//! The record kinds snapfeed itself defines (everything but the dataset record), as Rust types
//! that mirror `schemas/*.avsc` field for field. Each type knows its schema's full name, so
//! encoding and decoding go through [`crate::avro::SchemaStore`] by name.
//!
//! Reader-side defaults: a field added to a schema later must carry `#[serde(default)]` here
//! with the same default as the `.avsc`, so data written before the addition still decodes.

use serde::{Deserialize, Serialize};

/// A record type with an Avro schema in `schemas/`.
pub trait AvroRecord {
    /// Full name of its schema, e.g. `snapfeed.ChangeEvent`.
    const SCHEMA: &'static str;
}

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type TimestampMillis = i64;

/// Now, as [`TimestampMillis`].
pub fn now_millis() -> TimestampMillis {
    chrono::Utc::now().timestamp_millis()
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeOp {
    /// A key never seen before.
    Create,
    /// A key whose content hash changed.
    Update,
    /// A key absent from a complete snapshot of its stream.
    Delete,
}

impl ChangeOp {
    /// The Avro symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Create => "CREATE",
            ChangeOp::Update => "UPDATE",
            ChangeOp::Delete => "DELETE",
        }
    }
}

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Source file name (no directory).
    pub file_name: String,
    /// SHA-256 hex of the file as delivered.
    pub file_hash: String,
    /// 1-based line where the CSV record starts; `None` for DELETE.
    pub line: Option<i64>,
    /// Snapshot id (the file hash unless configured otherwise).
    pub snapshot_id: String,
    /// Snapshot stream (provider id).
    pub stream: String,
}

/// A new, changed or deleted dataset record (`<p>.changes`), without the record itself.
///
/// The schema nests the dataset record (`record`, typed by the dataset schema; single-object
/// bytes in events written before v2), so it is written and read with the dataset at hand:
/// `Dataset::change_writer` and `Dataset::decode_change`. Decoding into this type alone skips
/// the record, whichever shape wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// CREATE, UPDATE or DELETE.
    pub op: ChangeOp,
    /// Canonical record key (also the Kafka key).
    pub key: String,
    /// 1 for CREATE, +1 per UPDATE/DELETE; deterministic from state.
    pub version: i64,
    /// Hex content hash of the new record (last known for DELETE).
    pub content_hash: String,
    /// Hex content hash of the previous version.
    pub previous_hash: Option<String>,
    /// Full name of the dataset schema.
    pub record_schema: String,
    /// Provenance.
    pub source: Provenance,
    /// Its snapshot record's timestamp: when file-source claimed the file (see the schema).
    pub detected_at: TimestampMillis,
}

impl AvroRecord for ChangeEvent {
    const SCHEMA: &'static str = "snapfeed.ChangeEvent";
}

/// Detector state per key (`<p>.state`, compacted). A deleted key keeps its entry with
/// `deleted = true`, so a key that comes back continues its version sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorState {
    /// Hex content hash of the last version.
    pub content_hash: String,
    /// Last emitted version.
    pub version: i64,
    /// Snapshot stream the key belongs to.
    pub stream: String,
    /// When the key was first seen.
    pub first_seen_at: TimestampMillis,
    /// When its content last changed.
    pub last_changed_at: TimestampMillis,
    /// The snapshot that last wrote this entry.
    pub last_snapshot_id: String,
    /// Emitted as DELETE; a later CREATE continues the version sequence.
    #[serde(default)]
    pub deleted: bool,
    /// Hex hash of the last record's tracked Avro bytes, when known: lets a restarted
    /// detector recognise an unchanged record without reading its fields.
    #[serde(default)]
    pub tracked_hash: Option<String>,
}

impl AvroRecord for DetectorState {
    const SCHEMA: &'static str = "snapfeed.DetectorState";
}

/// The newest snapshot the detector has applied for one stream on one partition: a control
/// entry of `<p>.state` under [`stream_progress_key`]. An older snapshot changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    /// Snapshot stream.
    pub stream: String,
    /// The newest snapshot applied.
    pub snapshot_id: String,
    /// When it was taken.
    pub snapshot_time: TimestampMillis,
    /// The file it came from.
    pub file_name: String,
    /// Offset on `snapshots` (this partition) of the first record that applied it; `-1` when
    /// unknown. An older snapshot's record below it was decided before: a replay, not late.
    #[serde(default = "unknown_offset")]
    pub first_offset: i64,
}

fn unknown_offset() -> i64 {
    -1
}

impl AvroRecord for StreamProgress {
    const SCHEMA: &'static str = "snapfeed.StreamProgress";
}

/// The first bytes of a [`StreamProgress`] key on `<p>.state`. No record key starts with NUL
/// (the detector refuses one as corrupt), so these never collide with a record's entry.
pub const STREAM_PROGRESS_KEY_PREFIX: &str = "\u{0}stream-progress\u{0}";

/// The `<p>.state` key of `stream`'s progress.
pub fn stream_progress_key(stream: &str) -> String {
    format!("{STREAM_PROGRESS_KEY_PREFIX}{stream}")
}

/// A snapshot the detector passed over on one partition because a newer one of its stream was
/// already applied there: a control entry of `<p>.state` under [`stale_snapshot_key`], written
/// when its end marker is read, so `reconcile` can say where its rows went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleSnapshot {
    /// Snapshot stream.
    pub stream: String,
    /// The snapshot passed over.
    pub snapshot_id: String,
    /// The file it came from.
    pub file_name: String,
    /// When it was taken.
    pub snapshot_time: TimestampMillis,
    /// The newer snapshot already applied.
    pub newest_snapshot_id: String,
    /// When that one was taken.
    pub newest_snapshot_time: TimestampMillis,
    /// Its data rows on this partition (the end marker's count).
    pub rows_in_partition: i64,
    /// Of those, the rows passed over as late (fewer when part of it was applied before the
    /// newer snapshot began here, or after a restart in the middle of it).
    pub rows_passed_over: i64,
    /// The end marker's timestamp (a repeated batch writes the same entry).
    pub decided_at: TimestampMillis,
}

impl AvroRecord for StaleSnapshot {
    const SCHEMA: &'static str = "snapfeed.StaleSnapshot";
}

/// The first bytes of a [`StaleSnapshot`] key on `<p>.state` (never a record key: see
/// [`STREAM_PROGRESS_KEY_PREFIX`]).
pub const STALE_SNAPSHOT_KEY_PREFIX: &str = "\u{0}stale-snapshot\u{0}";

/// The `<p>.state` key of a passed-over snapshot.
pub fn stale_snapshot_key(snapshot_id: &str) -> String {
    format!("{STALE_SNAPSHOT_KEY_PREFIX}{snapshot_id}")
}

/// The partition count one partition of `<p>.state` was written for: a control entry under
/// [`STATE_LAYOUT_KEY`], one per partition. State written for another count than the topics
/// have now holds most keys on the wrong partition (`change-detector repartition` re-keys it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateLayout {
    /// Partition count of `snapshots`, `state` and `changes` when written.
    pub partition_count: i32,
    /// The partition it describes.
    pub partition: i32,
    /// When written.
    pub written_at: TimestampMillis,
    /// What wrote it.
    pub written_by: String,
}

impl AvroRecord for StateLayout {
    const SCHEMA: &'static str = "snapfeed.StateLayout";
}

/// The `<p>.state` key of a partition's [`StateLayout`] (NUL-prefixed like
/// [`STREAM_PROGRESS_KEY_PREFIX`]: never a record key).
pub const STATE_LAYOUT_KEY: &str = "\u{0}layout\u{0}";

/// Ingestion status of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileStatus {
    /// Chunks are being committed; `rows_committed` is the resume point.
    InProgress,
    /// Every row is committed.
    Completed,
    /// Failed as a whole; nothing of it is visible.
    Failed,
}

/// One entry of the ingestion ledger (`<p>.files`, compacted, key = file hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLedgerEntry {
    /// SHA-256 hex of the file as delivered.
    pub file_hash: String,
    /// File name.
    pub file_name: String,
    /// Snapshot stream.
    pub stream: String,
    /// Snapshot id.
    pub snapshot_id: String,
    /// Status.
    pub status: FileStatus,
    /// Data records whose outcome is committed (the resume point).
    pub rows_committed: i64,
    /// Rows sent to `snapshots`.
    pub rows_sent: i64,
    /// Rows sent to `rejects`.
    pub rows_rejected: i64,
    /// Total data records, once known.
    pub rows_total: Option<i64>,
    /// File size in bytes.
    pub bytes: i64,
    /// When ingestion started.
    pub started_at: TimestampMillis,
    /// When this entry was written.
    pub updated_at: TimestampMillis,
    /// Failure summary (never row contents).
    pub error: Option<String>,
}

impl AvroRecord for FileLedgerEntry {
    const SCHEMA: &'static str = "snapfeed.FileLedgerEntry";
}

/// A rejected CSV row (`<p>.rejects`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// File name.
    pub file_name: String,
    /// File hash.
    pub file_hash: String,
    /// Snapshot id.
    pub snapshot_id: String,
    /// Snapshot stream.
    pub stream: String,
    /// 1-based line where the record starts.
    pub line: i64,
    /// Offending column's header, if one.
    pub column: Option<String>,
    /// Stable machine-readable reason (`bad_date`, `duplicate_key`, …).
    pub reason: String,
    /// Human-readable explanation, never containing the value.
    pub detail: String,
    /// The raw record, truncated.
    pub raw_line: String,
    /// Whether `raw_line` was truncated.
    pub raw_truncated: bool,
    /// When.
    pub rejected_at: TimestampMillis,
}

impl AvroRecord for RejectedRow {
    const SCHEMA: &'static str = "snapfeed.RejectedRow";
}

/// The control record closing a snapshot on one partition of `snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Snapshot stream.
    pub stream: String,
    /// File hash.
    pub file_hash: String,
    /// File name.
    pub file_name: String,
    /// The partition this marker was written to.
    pub partition: i32,
    /// Records of this snapshot sent to this partition.
    pub rows_in_partition: i64,
    /// Records of this snapshot sent in all.
    pub rows_total: i64,
    /// When the file completed.
    pub completed_at: TimestampMillis,
}

impl AvroRecord for SnapshotEnd {
    const SCHEMA: &'static str = "snapfeed.SnapshotEnd";
}

/// Proof of one delivery (`<p>.deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReceipt {
    /// Record key.
    pub key: String,
    /// Version delivered.
    pub version: i64,
    /// CREATE / UPDATE / DELETE.
    pub op: String,
    /// HTTP status of the successful response.
    pub status: i32,
    /// Attempts it took.
    pub attempts: i32,
    /// First attempt to success.
    pub latency_ms: i64,
    /// The API's id for the effect, if it returned one.
    pub response_id: Option<String>,
    /// The Idempotency-Key sent.
    pub idempotency_key: String,
    /// Partition of the change.
    pub source_partition: i32,
    /// Offset of the change.
    pub source_offset: i64,
    /// When.
    pub delivered_at: TimestampMillis,
}

impl AvroRecord for DeliveryReceipt {
    const SCHEMA: &'static str = "snapfeed.DeliveryReceipt";
}

/// One delivery attempt, in a dead letter's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When.
    pub at: TimestampMillis,
    /// HTTP status, if a response came.
    pub status: Option<i32>,
    /// Error class, never record data.
    pub error: Option<String>,
}

/// A change that could not be delivered (`<p>.dead-letters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original `changes` message value, as received.
    #[serde(with = "serde_bytes")]
    pub change: Vec<u8>,
    /// Record key, if decodable.
    pub key: Option<String>,
    /// Version, if decodable.
    pub version: Option<i64>,
    /// `http_4xx`, `retry_budget_exhausted`, `undecodable`, `request_build_failed`.
    pub reason: String,
    /// Last HTTP status.
    pub status: Option<i32>,
    /// Truncated response body.
    pub response_excerpt: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// First attempt.
    pub first_attempt_at: Option<TimestampMillis>,
    /// Last attempt.
    pub last_attempt_at: Option<TimestampMillis>,
    /// Every attempt.
    pub attempt_history: Vec<Attempt>,
    /// Topic of the change.
    pub source_topic: String,
    /// Partition of the change.
    pub source_partition: i32,
    /// Offset of the change.
    pub source_offset: i64,
    /// When.
    pub dead_lettered_at: TimestampMillis,
    /// Times it was redriven.
    #[serde(default)]
    pub redrive_count: i32,
}

impl AvroRecord for DeadLetter {
    const SCHEMA: &'static str = "snapfeed.DeadLetter";
}
