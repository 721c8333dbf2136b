//! Kafka header names snapfeed writes and reads. Headers carry provenance (file, line,
//! snapshot, stream) so a record can be traced to its source without decoding it, and mark
//! control records (snapshot-end) that are not data.

/// Source file name.
pub const FILE_NAME: &str = "snapfeed-file-name";
/// SHA-256 hex of the source file.
pub const FILE_HASH: &str = "snapfeed-file-hash";
/// 1-based line where the CSV record starts (decimal).
pub const LINE: &str = "snapfeed-line";
/// Snapshot id.
pub const SNAPSHOT_ID: &str = "snapfeed-snapshot-id";
/// Snapshot stream (provider id): deletes are scoped to it.
pub const STREAM: &str = "snapfeed-stream";
/// Marks a control record; the value names the kind.
pub const CONTROL: &str = "snapfeed-control";
/// [`CONTROL`] value of the marker closing a snapshot on a partition.
pub const CONTROL_SNAPSHOT_END: &str = "snapshot-end";
/// When the snapshot was taken: milliseconds since the Unix epoch, decimal — from the file
/// name, its modification time, … (`source.snapshot_time`). The detector applies nothing of a
/// snapshot older than the newest it has applied for the stream.
pub const SNAPSHOT_TIME: &str = "snapfeed-snapshot-time";
