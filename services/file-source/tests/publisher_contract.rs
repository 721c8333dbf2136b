//! The contract that lets change-detector's tests speak for the real pipeline. Those tests
//! publish generated snapshots with the harness's `SnapshotPublisher` instead of running
//! file-source (no service depends on another); here file-source ingests a generated file
//! into one pipeline, the publisher publishes the same snapshot as the same file into a
//! second one, and both `snapshots` topics (read committed) must hold the same thing: the
//! same data records — key, partition, payload bytes and provenance headers, in the same order
//! on each partition — and the same snapshot-end markers (key, partition, headers, ids and
//! per-partition counts; only their completion time may differ). The reports agree too.
//!
//! Covered: the canonical layout the detector tests publish (a first snapshot and the next
//! one, whose corrected dates and new rows come from `Snapshot::next`); a messy file (shuffled,
//! extra and missing optional columns, BOM, CRLF, gzip, dirty rows file-source rejects, quoted
//! line breaks, a stream rule, snapshot id from the file name); and a file read under an
//! evolved schema whose new nullable field has no column in the file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;

use common::*;
use file_source::FileSourceConfig;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use snapfeed_harness::broker::TestPipeline;
use snapfeed_harness::generator::{
    ColumnOrder, Compression, Dirt, Encoding, Snapshot, SnapshotDelta, WriteOptions,
};
use snapfeed_harness::messages::{decode, header, headers, key_text};
use snapfeed_harness::schemas::{
    lab_result_v3_with_an_absent_column, lab_results_mapping, load_dataset, schemas_dir,
};
use snapfeed_harness::snapshot_publisher::{
    PublishOptions, PublishReport, SnapshotIdFrom, SnapshotPublisher,
};
use snapfeed_runtime::headers::CONTROL;
use snapfeed_runtime::records::{AvroRecord, SnapshotEnd};
use tokio::task::block_in_place;

const PARTITIONS: i32 = 3;

/// A data record on `snapshots`, without its offset.
#[derive(PartialEq, Eq)]
struct DataRecord {
    partition: i32,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A snapshot-end marker on `snapshots`, without its offset and completion time.
#[derive(PartialEq, Eq)]
struct MarkerRecord {
    partition: i32,
    key: String,
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// `(snapshot id, stream, file hash, file name, partition, rows in partition, rows total)`.
    end: (String, String, String, String, i32, i64, i64),
}

/// Headers as text, for failure messages (their values are text; bytes are compared).
fn headers_text(headers: &[(String, Option<Vec<u8>>)]) -> Vec<(&str, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = value.as_deref().map(|v| v.escape_ascii().to_string());
            (name.as_str(), value.unwrap_or_else(|| "(none)".into()))
        })
        .collect()
}

impl std::fmt::Debug for DataRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataRecord")
            .field("partition", &self.partition)
            .field("key", &self.key)
            .field("headers", &headers_text(&self.headers))
            .field("payload", &self.payload.escape_ascii().to_string())
            .finish()
    }
}

impl std::fmt::Debug for MarkerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkerRecord")
            .field("partition", &self.partition)
            .field("key", &self.key)
            .field("headers", &headers_text(&self.headers))
            .field("end", &self.end)
            .finish()
    }
}

/// What a pipeline's `snapshots` holds, read committed, partition by partition in offset order.
fn snapshots(fx: &Fixture, pipeline: &TestPipeline) -> (Vec<DataRecord>, Vec<MarkerRecord>) {
    let mut messages: Vec<OwnedMessage> =
        block_in_place(|| fx.broker.read_to_end(&pipeline.topics.snapshots, true));
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    let (markers, data): (Vec<_>, Vec<_>) = messages
        .into_iter()
        .partition(|m| header(m, CONTROL).is_some());
    let data = data
        .iter()
        .map(|m| DataRecord {
            partition: m.partition(),
            key: key_text(m),
            payload: m.payload().expect("a data record has a value").to_vec(),
            headers: headers(m),
        })
        .collect();
    let markers = markers
        .iter()
        .map(|m| {
            let end: SnapshotEnd = decode(&fx.schemas, m, SnapshotEnd::SCHEMA);
            MarkerRecord {
                partition: m.partition(),
                key: key_text(m),
                headers: headers(m),
                end: (
                    end.snapshot_id,
                    end.stream,
                    end.file_hash,
                    end.file_name,
                    end.partition,
                    end.rows_in_partition,
                    end.rows_total,
                ),
            }
        })
        .collect();
    (data, markers)
}

/// Asserts two sequences are equal, showing the first difference rather than both.
fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, ingested: &[T], published: &[T]) {
    if let Some(at) =
        (0..ingested.len().min(published.len())).find(|&i| ingested[i] != published[i])
    {
        panic!(
            "{what} differ first at #{at}:\nfile-source: {:?}\npublisher:   {:?}",
            ingested[at], published[at]
        );
    }
    assert_eq!(
        ingested.len(),
        published.len(),
        "{what}: file-source wrote {}, the publisher {}",
        ingested.len(),
        published.len()
    );
}

/// The file's modification time, as file-source reads it.
fn modified_ms(path: &Path) -> i64 {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// file-source ingests each `(snapshot, options)` file with `config` into the fixture's
/// pipeline, the publisher (with the dataset of `schemas` and `mapping`) publishes each into a
/// second pipeline; both must agree, report and records.
async fn assert_publisher_writes_what_file_source_writes(
    fx: &Fixture,
    config: FileSourceConfig,
    schemas: &Path,
    mapping: &Path,
    files: &[(&Snapshot, PublishOptions)],
) {
    let published_pipeline = fx.broker.pipeline("contract-published", PARTITIONS).await;
    let (store, dataset) = load_dataset(schemas, mapping);
    let publisher = SnapshotPublisher::new(
        &fx.broker,
        &published_pipeline,
        PARTITIONS,
        fx.guarantee,
        store,
        dataset,
    );
    for (snapshot, options) in files {
        let written = fx.write_incoming(snapshot, &options.file_name, &options.write);
        // file-source's default (`auto`): a date-time in the name, else the file's mtime.
        let options = &match options.snapshot_time {
            Some(_) => options.clone(),
            None => options.clone().taken_at(modified_ms(&written.path)),
        };
        let ingested = single_report(
            &ingest(config.clone(), vec![written.path.clone()])
                .await
                .unwrap(),
        );
        let published: PublishReport = block_in_place(|| publisher.publish(snapshot, options));
        assert_eq!(
            (
                &published.file,
                &published.hash,
                &published.snapshot_id,
                &published.stream,
                published.rows_total,
                published.rows_sent,
                published.rows_rejected,
            ),
            (
                &ingested.file,
                &ingested.hash,
                &ingested.snapshot_id,
                &ingested.stream,
                ingested.rows_total,
                ingested.rows_sent,
                ingested.rows_rejected,
            ),
            "the publisher's report against file-source's for {}",
            options.file_name
        );
        assert_eq!(published.columns, written.columns);
    }

    let (ingested_data, ingested_markers) = snapshots(fx, &fx.pipeline);
    let (published_data, published_markers) = snapshots(fx, &published_pipeline);
    let expected_rows: u64 = files
        .iter()
        .map(|(snapshot, options)| {
            let rejected = options.write.dirt.bad_dates + options.write.dirt.missing_required;
            (snapshot.rows().len() - rejected) as u64
        })
        .sum();
    assert_eq!(
        ingested_data.len() as u64,
        expected_rows,
        "rows file-source sent"
    );
    assert_same("data records", &ingested_data, &published_data);
    assert_eq!(ingested_markers.len(), files.len() * PARTITIONS as usize);
    assert_same(
        "snapshot-end markers",
        &ingested_markers,
        &published_markers,
    );
    for marker in &published_markers {
        let on_partition = published_data
            .iter()
            .filter(|r| {
                r.partition == marker.partition
                    && r.headers.iter().any(|(name, value)| {
                        name == snapfeed_runtime::headers::SNAPSHOT_ID
                            && value.as_deref() == Some(marker.end.0.as_bytes())
                    })
            })
            .count();
        assert_eq!(marker.end.5, on_partition as i64, "{marker:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_writes_what_file_source_writes_for_canonical_files() {
    let fx = Fixture::new("contract-canonical", PARTITIONS).await;
    let s1 = Snapshot::initial(1_000, 901);
    let (s2, changes) = s1.next(
        SnapshotDelta {
            updated: 0.2,
            added: 0.05,
            removed: 0.05,
        },
        902,
    );
    assert!(!changes.updated.is_empty() && !changes.created.is_empty());
    assert_publisher_writes_what_file_source_writes(
        &fx,
        fx.config(""),
        &schemas_dir(),
        &lab_results_mapping(),
        &[
            (&s1, PublishOptions::file("s1.csv")),
            (&s2, PublishOptions::file("s2.csv")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_writes_what_file_source_writes_for_a_messy_file() {
    let fx = Fixture::new("contract-messy", PARTITIONS).await;
    let snapshot = Snapshot::initial(600, 903);
    let write = WriteOptions {
        compression: Compression::Gzip,
        encoding: Encoding::Utf8Bom,
        crlf: true,
        column_order: ColumnOrder::Shuffled(5),
        dirt: Dirt {
            bad_dates: 6,
            missing_required: 6,
            duplicate_keys: 6,
            quoted_newlines: 6,
            trailing_blank_lines: 2,
        },
        extra_columns: vec!["Lab_Comment".into()],
        omit_columns: vec!["Device_ID".into()],
    };
    let mut options = PublishOptions::file("lab-a-messy.csv.gz")
        .stream("lab-a")
        .written(write);
    options.snapshot_id = SnapshotIdFrom::FileName;
    // The stream rule last: `[[source.streams]]` closes `[source]` (the quick-polling defaults
    // are named, so none is appended after it).
    let config = fx.config(
        "snapshot_id = \"file_name\"\nstable_for_ms = 200\npoll_interval_ms = 50\n\
         [[source.streams]]\nstream = \"lab-a\"\npattern = \"lab-a-*\"\n",
    );
    assert_publisher_writes_what_file_source_writes(
        &fx,
        config,
        &schemas_dir(),
        &lab_results_mapping(),
        &[(&snapshot, options)],
    )
    .await;
}

/// What change-detector's schema-evolution test publishes: schema v3 with a nullable field
/// mapped from a column the file does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_writes_what_file_source_writes_under_an_evolved_schema() {
    let fx = Fixture::new("contract-evolved", PARTITIONS).await;
    let (schemas, mapping) = lab_result_v3_with_an_absent_column(fx.root.path());
    let mut config = fx.config("");
    config.pipeline.schemas_dir = schemas.clone();
    config.source.dataset_mapping = mapping.clone();
    let snapshot = Snapshot::initial(500, 904).prefix(400);
    assert_publisher_writes_what_file_source_writes(
        &fx,
        config,
        &schemas,
        &mapping,
        &[(&snapshot, PublishOptions::file("s1-truncated.csv"))],
    )
    .await;
}
