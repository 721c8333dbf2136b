//! file-source configuration: the six shared sections (declared once by the runtime's
//! `service_config!`) plus `[source]` — the inbox, completeness rule, dialect, chunking and
//! thresholds. Validated at start with errors that name the key; no guarantee of its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;
use snapfeed_runtime::service::StageSection;

use crate::snapshot_time::SnapshotTimeConfig;

snapfeed_runtime::service_config! {
    /// Everything file-source reads from its config file and environment.
    pub struct FileSourceConfig {
        /// The inbox and the dataset.
        source: SourceConfig,
    }
}

/// The `[source]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Directory watched for snapshot files (only its top level; sub-directories are ignored).
    pub inbox: PathBuf,
    /// Where a claimed file is ingested from; default `<inbox>/work`. Must be on the inbox's
    /// filesystem: claiming is an atomic rename, so two instances never take the same file.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Where ingested (and skipped duplicate) files go; default `<inbox>/processed`.
    #[serde(default)]
    pub processed_dir: Option<PathBuf>,
    /// Where failed files go, each with `<name>.error.json`; default `<inbox>/failed`.
    #[serde(default)]
    pub failed_dir: Option<PathBuf>,
    /// Dataset mapping (CSV header → schema field, key fields, formats).
    pub dataset_mapping: PathBuf,
    /// File-name patterns taken from the inbox (`*` and `?` wildcards). Compression is
    /// recognised by content (gzip, zstd), not by name.
    #[serde(default = "default_patterns")]
    pub patterns: Vec<String>,
    /// Snapshot streams: the first rule whose pattern matches the file name names its stream
    /// (provider id). One lab's complete snapshot never deletes another lab's records.
    #[serde(default)]
    pub streams: Vec<StreamRule>,
    /// Stream of files no rule matches.
    #[serde(default = "default_stream")]
    pub default_stream: String,
    /// A file is complete when its size and mtime have not changed for this long …
    #[serde(default = "default_stable_for_ms")]
    pub stable_for_ms: u64,
    /// … or, when set, only once `<file><marker_suffix>` exists (e.g. `.ok`).
    #[serde(default)]
    pub marker_suffix: Option<String>,
    /// How often the inbox is scanned.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// This instance's shard of the inbox (by a hash of the file name), 0-based.
    #[serde(default)]
    pub instance_index: u32,
    /// How many instances share the inbox.
    #[serde(default = "default_instance_count")]
    pub instance_count: u32,
    /// Data rows per transaction (and per ledger checkpoint).
    #[serde(default = "default_rows_per_transaction")]
    pub rows_per_transaction: u64,
    /// The validation pass keeps every row as decided (key and Avro payload, or reject) in
    /// memory up to this many bytes, and the send pass sends them from there instead of reading
    /// and converting the file again. A file whose rows take more is read twice; 0 always
    /// reads twice. ~490 bytes per lab-results row: a 500k-row file holds 231 MiB.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// A file whose rejected rows exceed this share of its rows fails as a whole.
    #[serde(default = "default_max_reject_ratio")]
    pub max_reject_ratio: f64,
    /// Raw lines on `rejects` are cut to this many bytes.
    #[serde(default = "default_raw_line_max_bytes")]
    pub raw_line_max_bytes: usize,
    /// Text encoding of the files: `utf8` (a BOM is accepted) or `latin1`.
    #[serde(default)]
    pub encoding: TextEncoding,
    /// CSV dialect.
    #[serde(default)]
    pub csv: CsvDialect,
    /// What happens to an ingested file: `move` to `processed_dir`, or `delete`.
    #[serde(default)]
    pub on_success: AfterSuccess,
    /// Snapshot id of a file: its content hash (default) or its file name.
    #[serde(default)]
    pub snapshot_id: SnapshotIdSource,
    /// `[source.snapshot_time]`: when a file's snapshot was taken (file name, mtime), so an
    /// older snapshot arriving late changes nothing downstream.
    #[serde(default)]
    pub snapshot_time: SnapshotTimeConfig,
    /// Interval of progress log lines on long files.
    #[serde(default = "default_progress_interval_ms")]
    pub progress_interval_ms: u64,
    /// A file claimed this long ago and still in another instance's work directory counts as
    /// orphaned (the `orphaned_work_files` gauge; `file-source adopt` refuses younger ones
    /// without `--force`): that instance is probably gone for good.
    #[serde(default = "default_orphaned_after_ms")]
    pub orphaned_after_ms: u64,
}

/// A snapshot stream and the file names that belong to it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRule {
    /// Provider id, e.g. `lab-a`.
    pub stream: String,
    /// File-name pattern (`*`, `?`).
    pub pattern: String,
}

/// Text encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoding {
    /// UTF-8, with or without BOM.
    #[default]
    Utf8,
    /// ISO-8859-1.
    Latin1,
}

/// CSV dialect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvDialect {
    /// Field delimiter (one ASCII character).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Quote character (one ASCII character).
    #[serde(default = "default_quote")]
    pub quote: char,
    /// Escape character inside quotes; none means quotes are escaped by doubling (RFC 4180).
    #[serde(default)]
    pub escape: Option<char>,
}

impl Default for CsvDialect {
    fn default() -> Self {
        CsvDialect {
            delimiter: default_delimiter(),
            quote: default_quote(),
            escape: None,
        }
    }
}

/// After a successful ingest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterSuccess {
    /// Move to `processed_dir`.
    #[default]
    Move,
    /// Delete the file.
    Delete,
}

/// Where a snapshot id comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotIdSource {
    /// The file's SHA-256.
    #[default]
    FileHash,
    /// The file's name.
    FileName,
}

fn default_patterns() -> Vec<String> {
    vec!["*.csv".into(), "*.csv.gz".into(), "*.csv.zst".into()]
}
fn default_stream() -> String {
    "default".into()
}
fn default_stable_for_ms() -> u64 {
    5_000
}
fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_instance_count() -> u32 {
    1
}
fn default_rows_per_transaction() -> u64 {
    50_000
}
fn default_spool_max_bytes() -> u64 {
    512 << 20
}
fn default_max_reject_ratio() -> f64 {
    0.05
}
fn default_raw_line_max_bytes() -> usize {
    2_048
}
fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_progress_interval_ms() -> u64 {
    5_000
}
fn default_orphaned_after_ms() -> u64 {
    30 * 60 * 1000
}

impl SourceConfig {
    /// The work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| self.inbox.join("work"))
    }
    /// The processed directory.
    pub fn processed_dir(&self) -> PathBuf {
        self.processed_dir
            .clone()
            .unwrap_or_else(|| self.inbox.join("processed"))
    }
    /// The failed directory.
    pub fn failed_dir(&self) -> PathBuf {
        self.failed_dir
            .clone()
            .unwrap_or_else(|| self.inbox.join("failed"))
    }
}

impl StageSection for SourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.inbox.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "source.inbox",
                "\"\"",
                "a directory path",
            ));
        }
        if self.patterns.is_empty() {
            return Err(ConfigError::invalid(
                "source.patterns",
                "[]",
                "at least one file-name pattern",
            ));
        }
        self.snapshot_time.validate()?;
        if self.instance_count == 0 {
            return Err(ConfigError::invalid(
                "source.instance_count",
                0,
                "at least 1",
            ));
        }
        if self.instance_index >= self.instance_count {
            return Err(ConfigError::invalid(
                "source.instance_index",
                self.instance_index,
                format!("less than source.instance_count ({})", self.instance_count),
            ));
        }
        if self.rows_per_transaction == 0 {
            return Err(ConfigError::invalid(
                "source.rows_per_transaction",
                0,
                "at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_reject_ratio) {
            return Err(ConfigError::invalid(
                "source.max_reject_ratio",
                self.max_reject_ratio,
                "between 0 and 1",
            ));
        }
        if self.raw_line_max_bytes < 16 {
            return Err(ConfigError::invalid(
                "source.raw_line_max_bytes",
                self.raw_line_max_bytes,
                "at least 16",
            ));
        }
        for (key, c) in [
            ("source.csv.delimiter", Some(self.csv.delimiter)),
            ("source.csv.quote", Some(self.csv.quote)),
            ("source.csv.escape", self.csv.escape),
        ] {
            if let Some(c) = c {
                if !c.is_ascii() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{c:?}"),
                        "one ASCII character",
                    ));
                }
            }
        }
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "source.poll_interval_ms",
                0,
                "at least 1",
            ));
        }
        if self.default_stream.is_empty() || self.streams.iter().any(|s| s.stream.is_empty()) {
            return Err(ConfigError::invalid(
                "source.streams",
                "\"\"",
                "non-empty stream ids",
            ));
        }
        Ok(())
    }
}

impl snapfeed_runtime::preflight::ServiceChecks for FileSourceConfig {
    /// The mapping, and the inbox and its work, processed and failed directories.
    fn service_checks<'a>(
        &'a self,
        schemas: Option<&'a snapfeed_runtime::avro::SchemaStore>,
    ) -> impl std::future::Future<Output = Vec<snapfeed_runtime::preflight::Check>> + 'a {
        use snapfeed_runtime::preflight::{directory_check, mapping_check};
        let source = &self.source;
        let checks = vec![
            mapping_check("source.dataset_mapping", &source.dataset_mapping, schemas).0,
            directory_check("source.inbox", &source.inbox, false),
            directory_check("source.work_dir", &source.work_dir(), true),
            directory_check("source.processed_dir", &source.processed_dir(), true),
            directory_check("source.failed_dir", &source.failed_dir(), true),
        ];
        std::future::ready(checks)
    }
}
