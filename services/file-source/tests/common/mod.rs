//! What file-source's integration tests share: a broker and a pipeline of its own per test, a
//! `FileSourceConfig` built from TOML text, generated snapshot files, file-source run in-process
//! (`ingest_paths` or `run`), and readers that decode what it wrote to `snapshots`, `rejects`
//! and `files`. Every wait is a bounded loop on a condition.
#![allow(dead_code)] // each test binary uses its own subset

mod expect;
mod run;

// Each test binary uses its own subset, some none of `expect`.
#[allow(unused_imports)]
pub use expect::*;
pub use run::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use file_source::FileSourceConfig;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use snapfeed_harness::broker::{TestBroker, TestPipeline};
use snapfeed_harness::generator::{Snapshot, WriteOptions, WrittenFile};
use snapfeed_harness::messages::{decode, follow_uncommitted, header, key_text, location};
use snapfeed_harness::schemas::{lab_results_mapping, load_dataset, schemas_dir};
use snapfeed_harness::service_process::guarantee_name;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::config::ServiceConfig;
use snapfeed_runtime::dataset::{Dataset, DatasetRecord};
use snapfeed_runtime::headers;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::records::{
    AvroRecord, FileLedgerEntry, FileStatus, RejectedRow, SnapshotEnd,
};

/// A broker, a pipeline (topics) and a directory of one test.
pub struct Fixture {
    pub broker: TestBroker,
    pub pipeline: TestPipeline,
    /// Holds `inbox/` (watched; `work/`, `processed/`, `failed/` inside) and `incoming/`
    /// (files handed to `ingest_paths`).
    pub root: tempfile::TempDir,
    pub schemas: SchemaStore,
    pub dataset: Dataset,
    /// `pipeline.processing_guarantee` of the configs: the broker's, unless a test overrides it.
    pub guarantee: ProcessingGuarantee,
}

impl Fixture {
    /// A fixture on the broker the environment selects, with `partitions` per topic.
    pub async fn new(label: &str, partitions: i32) -> Fixture {
        Fixture::on(TestBroker::from_env(), label, partitions).await
    }

    /// A fixture on `broker`.
    pub async fn on(broker: TestBroker, label: &str, partitions: i32) -> Fixture {
        let pipeline = broker.pipeline(label, partitions).await;
        Fixture::with_pipeline(broker, pipeline)
    }

    /// A fixture on `broker` for a pipeline whose topics the test created itself.
    pub fn with_pipeline(broker: TestBroker, pipeline: TestPipeline) -> Fixture {
        let root = tempfile::tempdir().expect("test dir");
        std::fs::create_dir_all(root.path().join("inbox")).expect("inbox");
        std::fs::create_dir_all(root.path().join("incoming")).expect("incoming");
        let (schemas, dataset) = load_dataset(&schemas_dir(), &lab_results_mapping());
        Fixture {
            guarantee: broker.guarantee(),
            broker,
            pipeline,
            root,
            schemas,
            dataset,
        }
    }

    pub fn inbox(&self) -> PathBuf {
        self.root.path().join("inbox")
    }

    pub fn incoming(&self) -> PathBuf {
        self.root.path().join("incoming")
    }

    /// This instance's work directory (`<inbox>/work/<instance id>`; the id defaults to
    /// `$HOSTNAME`, else `0`, and these tests run one instance per process environment).
    pub fn work(&self) -> PathBuf {
        let config: file_source::config::SourceConfig = toml::from_str(&format!(
            "inbox = {:?}\ndataset_mapping = \"m.toml\"\n",
            self.inbox().display().to_string()
        ))
        .unwrap();
        let pipeline = snapfeed_runtime::service::PipelineConfig::default();
        file_source::inbox::instance_work_dir(&config, &pipeline.instance_id())
    }

    pub fn processed(&self) -> PathBuf {
        self.inbox().join("processed")
    }

    pub fn failed(&self) -> PathBuf {
        self.inbox().join("failed")
    }

    /// The config text: this test's broker, pipeline and inbox, schemas and the lab-results
    /// mapping from the repository, endpoint on a free port, quick polling; `source_extra`
    /// lines are added to `[source]` (and win over the quick-polling defaults).
    pub fn config_text(&self, source_extra: &str) -> String {
        let guarantee = guarantee_name(self.guarantee);
        format!(
            r#"
[pipeline]
name = {name:?}
processing_guarantee = {guarantee:?}
schemas_dir = {schemas:?}

[kafka]
bootstrap_servers = {bootstrap:?}
request_timeout_ms = 10000

[http]
listen = "127.0.0.1:0"

[log]
level = "warn"

[shutdown]
drain_timeout_ms = 5000

[source]
inbox = {inbox:?}
dataset_mapping = {mapping:?}
{source_extra}
{defaults}
"#,
            name = self.pipeline.name,
            schemas = schemas_dir().display().to_string(),
            bootstrap = self.broker.bootstrap(),
            inbox = self.inbox().display().to_string(),
            mapping = lab_results_mapping().display().to_string(),
            defaults = [("stable_for_ms", "200"), ("poll_interval_ms", "50")]
                .iter()
                .filter(|(key, _)| !source_extra.contains(key))
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect::<String>(),
        )
    }

    /// [`Fixture::config_text`] parsed and validated as file-source does at start.
    pub fn config(&self, source_extra: &str) -> FileSourceConfig {
        let config: FileSourceConfig =
            toml::from_str(&self.config_text(source_extra)).expect("config parses");
        ServiceConfig::validate(&config).expect("config is valid");
        config
    }

    /// Every message of `topic`, partition by partition in offset order.
    pub fn read(&self, topic: &str, committed_only: bool) -> Vec<OwnedMessage> {
        tokio::task::block_in_place(|| self.broker.read_to_end(topic, committed_only))
    }

    /// Data records (not control records) on `snapshots`, decoded.
    pub fn data_records(&self, committed_only: bool) -> Vec<DataRecord> {
        let topic = &self.pipeline.topics.snapshots;
        self.read(topic, committed_only)
            .into_iter()
            .filter(|m| header(m, headers::CONTROL).is_none())
            .map(|m| {
                let location = location(&m);
                let payload = m.payload().expect("data record has a value").to_vec();
                let record = self
                    .dataset
                    .decode(&payload, &self.schemas, &location)
                    .expect("data record decodes as a lab result");
                DataRecord {
                    key: String::from_utf8(m.key().expect("key").to_vec()).expect("UTF-8 key"),
                    partition: m.partition(),
                    offset: m.offset(),
                    file_hash: header(&m, headers::FILE_HASH).expect("file hash header"),
                    file_name: header(&m, headers::FILE_NAME).expect("file name header"),
                    snapshot_id: header(&m, headers::SNAPSHOT_ID).expect("snapshot id header"),
                    stream: header(&m, headers::STREAM).expect("stream header"),
                    line: header(&m, headers::LINE)
                        .expect("line header")
                        .parse()
                        .expect("decimal line"),
                    payload,
                    record,
                }
            })
            .collect()
    }

    /// Data records of one file (by its hash header).
    pub fn data_records_of(&self, hash: &str, committed_only: bool) -> Vec<DataRecord> {
        self.data_records(committed_only)
            .into_iter()
            .filter(|r| r.file_hash == hash)
            .collect()
    }

    /// Snapshot-end markers on `snapshots` (read committed).
    pub fn markers(&self) -> Vec<Marker> {
        let topic = &self.pipeline.topics.snapshots;
        self.read(topic, true)
            .into_iter()
            .filter(|m| header(m, headers::CONTROL).is_some())
            .map(|m| {
                assert_eq!(
                    header(&m, headers::CONTROL).as_deref(),
                    Some(headers::CONTROL_SNAPSHOT_END),
                    "the only control record file-source writes"
                );
                Marker {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: key_text(&m),
                    snapshot_id_header: header(&m, headers::SNAPSHOT_ID),
                    stream_header: header(&m, headers::STREAM),
                    end: decode(&self.schemas, &m, SnapshotEnd::SCHEMA),
                }
            })
            .collect()
    }

    /// `(message key, row)` of every record on `rejects`.
    pub fn rejects(&self, committed_only: bool) -> Vec<(String, RejectedRow)> {
        self.read(&self.pipeline.topics.rejects, committed_only)
            .into_iter()
            .map(|m| (key_text(&m), decode(&self.schemas, &m, RejectedRow::SCHEMA)))
            .collect()
    }

    /// Every entry on the `files` ledger, in the order written.
    pub fn ledger(&self, committed_only: bool) -> Vec<FileLedgerEntry> {
        self.read(&self.pipeline.topics.files, committed_only)
            .into_iter()
            .filter(|m| m.payload().is_some())
            .map(|m| decode(&self.schemas, &m, FileLedgerEntry::SCHEMA))
            .collect()
    }

    /// The latest ledger entry of a file (read committed).
    pub fn latest_entry(&self, hash: &str) -> Option<FileLedgerEntry> {
        self.ledger(true).into_iter().rfind(|e| e.file_hash == hash)
    }

    /// `(partition, offset)` of every message on `snapshots`, `rejects` and `files`, committed
    /// or not: to prove that nothing at all was written.
    pub fn everything_written(&self) -> Vec<(String, i32, i64)> {
        let topics = &self.pipeline.topics;
        [&topics.snapshots, &topics.rejects, &topics.files]
            .into_iter()
            .flat_map(|topic| {
                self.read(topic, false)
                    .into_iter()
                    .map(|m| (topic.clone(), m.partition(), m.offset()))
            })
            .collect()
    }

    /// Generates a file into `incoming/`.
    pub fn write_incoming(
        &self,
        snapshot: &Snapshot,
        name: &str,
        options: &WriteOptions,
    ) -> WrittenFile {
        snapshot
            .write(&self.incoming().join(name), options)
            .expect("write snapshot")
    }

    /// Waits until the ledger shows an `IN_PROGRESS` checkpoint for `hash` at `min_rows` or
    /// more, following the `files` topic as it is written (read uncommitted): reading to
    /// partition EOF does not end on Tansu while a topic is being written to. A checkpoint is
    /// sent in the transaction it closes, so pass two chunks' worth to be sure that the first
    /// checkpoint is committed.
    pub fn wait_for_checkpoint(
        &self,
        hash: &str,
        min_rows: u64,
        limit: Duration,
    ) -> FileLedgerEntry {
        let topic = &self.pipeline.topics.files;
        tokio::task::block_in_place(|| {
            // `files` has one partition.
            let consumer = follow_uncommitted(self.broker.bootstrap(), topic, 1);
            let deadline = Instant::now() + limit;
            loop {
                assert!(
                    Instant::now() < deadline,
                    "no IN_PROGRESS checkpoint within {limit:?}"
                );
                let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let message = message.expect("ledger watcher poll");
                if message.payload().is_none() {
                    continue;
                }
                let entry: FileLedgerEntry =
                    decode(&self.schemas, &message, FileLedgerEntry::SCHEMA);
                if entry.file_hash != hash {
                    continue;
                }
                assert!(
                    entry.status != FileStatus::Completed,
                    "the file completed before a checkpoint was seen: make the test file longer"
                );
                if entry.status == FileStatus::InProgress && entry.rows_committed as u64 >= min_rows
                {
                    return entry;
                }
            }
        })
    }
}

/// A data record on `snapshots`, decoded, with its provenance headers.
#[derive(Debug, Clone)]
pub struct DataRecord {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub file_hash: String,
    pub file_name: String,
    pub snapshot_id: String,
    pub stream: String,
    pub line: u64,
    pub record: DatasetRecord,
}

/// A snapshot-end marker and where it was.
#[derive(Debug, Clone)]
pub struct Marker {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub snapshot_id_header: Option<String>,
    pub stream_header: Option<String>,
    pub end: SnapshotEnd,
}
