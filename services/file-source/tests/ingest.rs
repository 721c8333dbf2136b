//! file-source ingesting generated snapshot files (`ingest_paths`, the `ingest` subcommand's
//! library call) against the test broker: exact key sets on `snapshots` read committed, values
//! as generated, rejects by line/column/reason, the first of duplicate keys, snapshot-end markers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use file_source::ingest::FileOutcome;
use snapfeed_harness::generator::{ColumnOrder, Dirt, DirtKind, Snapshot, WriteOptions, COLUMNS};
use snapfeed_harness::messages::{decode, header};
use snapfeed_runtime::dataset::FieldValue;
use snapfeed_runtime::headers;
use snapfeed_runtime::records::{AvroRecord, FileStatus, RejectedRow, SnapshotEnd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_file_sends_exactly_its_keys_once_with_the_row_values() {
    let fx = Fixture::new("fs-clean", 3).await;
    let snapshot = Snapshot::initial(400, 11);
    let written = fx.write_incoming(&snapshot, "elr-clean.csv", &WriteOptions::default());
    let hash = file_hash(&written.path);

    let outcomes = ingest(fx.config(""), vec![written.path.clone()])
        .await
        .unwrap();
    let report = single_report(&outcomes);
    assert_eq!(
        (
            report.hash.as_str(),
            report.rows_total,
            report.rows_sent,
            report.rows_rejected
        ),
        (hash.as_str(), 400, 400, 0)
    );

    let records = fx.data_records(true);
    assert_exactly_once(&records, &canonical_keys(&written.accepted_keys));
    let rows = rows_by_key(&snapshot);
    for record in &records {
        let (index, row) = &rows[&record.key];
        assert_record_matches_row(&record.record, row);
        // Provenance: file, content hash, the line the row is on, snapshot id and stream.
        assert_eq!(record.line, *index as u64 + 2, "{}", record.key);
        assert_eq!(
            (
                record.file_name.as_str(),
                record.file_hash.as_str(),
                record.snapshot_id.as_str(),
                record.stream.as_str()
            ),
            ("elr-clean.csv", hash.as_str(), hash.as_str(), "default")
        );
    }
    assert!(fx.rejects(false).is_empty());
    assert!(fx.processed().join("elr-clean.csv").is_file());
    assert!(!written.path.exists());
    let entry = fx.latest_entry(&hash).unwrap();
    assert_eq!(
        (
            entry.status,
            entry.rows_total,
            entry.rows_sent,
            entry.rows_rejected
        ),
        (FileStatus::Completed, Some(400), 400, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_columns_give_the_same_keys_and_encoded_values() {
    let fx = Fixture::new("fs-reorder", 3).await;
    let snapshot = Snapshot::initial(300, 12);
    let canonical = fx.write_incoming(&snapshot, "canonical.csv", &WriteOptions::default());
    let shuffled = fx.write_incoming(
        &snapshot,
        "shuffled.csv",
        &WriteOptions {
            column_order: ColumnOrder::Shuffled(7),
            ..WriteOptions::default()
        },
    );
    assert_ne!(
        shuffled.columns, COLUMNS,
        "the shuffle reordered the header"
    );
    let hashes = [file_hash(&canonical.path), file_hash(&shuffled.path)];

    let outcomes = ingest(
        fx.config(""),
        vec![canonical.path.clone(), shuffled.path.clone()],
    )
    .await
    .unwrap();
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, FileOutcome::Ingested(r) if r.rows_sent == 300)));

    let expected = canonical_keys(&canonical.accepted_keys);
    let by_file: Vec<BTreeMap<String, Vec<u8>>> = hashes
        .iter()
        .map(|hash| {
            let records = fx.data_records_of(hash, true);
            assert_exactly_once(&records, &expected);
            payloads_by_key(&records)
        })
        .collect();
    assert!(
        by_file[0] == by_file[1],
        "column order changed some encoded values"
    );
}

/// Dirt that rejects rows and dirt that must not, under the reject threshold.
fn mixed_dirt() -> Dirt {
    Dirt {
        bad_dates: 6,
        missing_required: 6,
        duplicate_keys: 6,
        quoted_newlines: 6,
        trailing_blank_lines: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_rows_go_to_rejects_with_line_column_and_reason_and_the_rest_is_sent() {
    let fx = Fixture::new("fs-dirt", 3).await;
    let snapshot = Snapshot::initial(600, 13);
    let written = fx.write_incoming(
        &snapshot,
        "dirty.csv",
        &WriteOptions {
            dirt: mixed_dirt(),
            ..WriteOptions::default()
        },
    );
    let hash = file_hash(&written.path);
    let outcomes = ingest(fx.config(""), vec![written.path.clone()])
        .await
        .unwrap();
    let report = single_report(&outcomes);
    assert_eq!(
        (report.rows_total, report.rows_sent, report.rows_rejected),
        (606, 588, 18)
    );

    // Accepted: every row but the bad-date and missing-value ones, duplicates' first occurrence.
    let records = fx.data_records(true);
    assert_exactly_once(&records, &canonical_keys(&written.accepted_keys));

    // Rejected: exactly the dirty rows, each at its physical line, with column and reason.
    let rejects = fx.rejects(true);
    assert_eq!(reject_summary(&rejects, &hash), expected_rejects(&written));
    for (key, reject) in &rejects {
        assert_eq!(key, &format!("{hash}:{}", reject.line));
        assert_eq!(
            (reject.file_name.as_str(), reject.snapshot_id.as_str()),
            ("dirty.csv", hash.as_str())
        );
        assert!(!reject.raw_line.is_empty() && !reject.raw_truncated);
        assert!(!reject.detail.is_empty());
    }

    let by_key: BTreeMap<&str, &DataRecord> = records.iter().map(|r| (r.key.as_str(), r)).collect();
    let rows = rows_by_key(&snapshot);
    for dirty in &written.dirty {
        let key = canonical_key(&dirty.key);
        match dirty.kind {
            // A quoted line break is data: the row is accepted with it, at the line it starts on.
            DirtKind::QuotedNewline => {
                let record = by_key[key.as_str()];
                assert_eq!(record.line, dirty.line);
                let street = rows[&key].1.get("Patient_Street").unwrap().to_string();
                assert_eq!(
                    record.record.get("patient_street"),
                    Some(&FieldValue::String(format!("{street}\nBldg 2")))
                );
            }
            // The first occurrence wins: the value sent is the original row's, from an earlier line.
            DirtKind::DuplicateKey => {
                let record = by_key[key.as_str()];
                assert!(record.line < dirty.line);
                assert_record_matches_row(&record.record, &rows[&key].1);
            }
            DirtKind::BadDate | DirtKind::MissingRequired => {
                assert!(!by_key.contains_key(key.as_str()))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_in_a_file_keep_the_first_occurrence() {
    let fx = Fixture::new("fs-dupkeys", 3).await;
    let snapshot = Snapshot::initial(300, 14);
    let written = fx.write_incoming(
        &snapshot,
        "dups.csv",
        &WriteOptions {
            dirt: Dirt {
                duplicate_keys: 10,
                ..Dirt::default()
            },
            ..WriteOptions::default()
        },
    );
    let hash = file_hash(&written.path);
    let report = single_report(
        &ingest(fx.config(""), vec![written.path.clone()])
            .await
            .unwrap(),
    );
    assert_eq!((report.rows_total, report.rows_rejected), (310, 10));
    let records = fx.data_records(true);
    assert_exactly_once(&records, &canonical_keys(&written.accepted_keys));
    let rows = rows_by_key(&snapshot);
    for record in &records {
        let (index, row) = &rows[&record.key];
        assert_record_matches_row(&record.record, row);
        let earlier_duplicates = written
            .dirty
            .iter()
            .filter(|d| d.line < record.line)
            .count() as u64;
        assert_eq!(record.line, *index as u64 + 2 + earlier_duplicates);
    }
    let duplicates: BTreeSet<_> = written
        .dirty
        .iter()
        .map(|d| (d.line as i64, "duplicate_key".to_string(), None))
        .collect();
    assert_eq!(reject_summary(&fx.rejects(true), &hash), duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_end_markers_close_every_partition_with_its_row_count() {
    let partitions = 4;
    let fx = Fixture::new("fs-markers", partitions).await;
    let written = fx.write_incoming(
        &Snapshot::initial(500, 20),
        "elr.csv",
        &WriteOptions {
            dirt: Dirt {
                bad_dates: 5,
                ..Dirt::default()
            },
            ..WriteOptions::default()
        },
    );
    let hash = file_hash(&written.path);
    let report = single_report(
        &ingest(fx.config(""), vec![written.path.clone()])
            .await
            .unwrap(),
    );
    assert_eq!(report.rows_sent, 495);

    let records = fx.data_records(true);
    assert_exactly_once(&records, &canonical_keys(&written.accepted_keys));
    let markers = fx.markers();
    assert_eq!(
        markers.iter().map(|m| m.partition).collect::<Vec<_>>(),
        (0..partitions).collect::<Vec<_>>(),
        "one marker on every partition"
    );
    for marker in &markers {
        let on_partition: Vec<&DataRecord> = records
            .iter()
            .filter(|r| r.partition == marker.partition)
            .collect();
        let end = &marker.end;
        assert_eq!(end.partition, marker.partition);
        assert_eq!(end.rows_in_partition, on_partition.len() as i64);
        assert_eq!(end.rows_total, 495);
        assert_eq!(
            (
                end.snapshot_id.as_str(),
                end.file_hash.as_str(),
                end.file_name.as_str(),
                end.stream.as_str()
            ),
            (hash.as_str(), hash.as_str(), "elr.csv", "default")
        );
        assert_eq!(marker.key, hash);
        assert_eq!(marker.snapshot_id_header.as_deref(), Some(hash.as_str()));
        assert_eq!(marker.stream_header.as_deref(), Some("default"));
        assert!(
            on_partition.iter().all(|r| r.offset < marker.offset),
            "the marker closes the partition after the snapshot's rows"
        );
    }
}

/// What a file put on `snapshots` and `rejects`, without the times that differ per run: per
/// record its topic, partition, key, a hash of its value (`rejects`: the decoded row with
/// `rejected_at` cleared; markers: decoded with `completed_at` cleared) and headers, in offset
/// order.
fn written_by(fx: &Fixture) -> Vec<String> {
    use rdkafka::message::{Headers, Message};
    let headers = |m: &rdkafka::message::OwnedMessage| -> Vec<String> {
        m.headers()
            .map(|h| {
                h.iter()
                    .map(|h| format!("{}={:?}", h.key, h.value.map(String::from_utf8_lossy)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let snapshots = fx
        .read(&fx.pipeline.topics.snapshots, true)
        .into_iter()
        .map(|m| {
            let value = match header(&m, headers::CONTROL) {
                Some(_) => {
                    let mut marker: SnapshotEnd = decode(&fx.schemas, &m, SnapshotEnd::SCHEMA);
                    marker.completed_at = 0;
                    format!("{marker:?}")
                }
                None => format!(
                    "{:x}",
                    xxhash_rust::xxh3::xxh3_128(m.payload().unwrap_or_default())
                ),
            };
            format!(
                "snapshots/{} {:?} {value} {:?}",
                m.partition(),
                m.key().map(String::from_utf8_lossy),
                headers(&m)
            )
        });
    let rejects = fx
        .read(&fx.pipeline.topics.rejects, true)
        .into_iter()
        .map(|m| {
            let mut row: RejectedRow = decode(&fx.schemas, &m, RejectedRow::SCHEMA);
            row.rejected_at = 0;
            format!(
                "rejects {:?} {:x} {:?}",
                m.key().map(String::from_utf8_lossy),
                xxhash_rust::xxh3::xxh3_128(format!("{row:?}").as_bytes()),
                headers(&m)
            )
        });
    snapshots.chain(rejects).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_from_the_spool_writes_what_a_file_read_twice_writes() {
    let snapshot = Snapshot::initial(600, 31);
    let options = WriteOptions {
        dirt: mixed_dirt(),
        ..WriteOptions::default()
    };
    // All rows kept; none kept (read twice); kept until the bound is passed mid-file (then
    // read twice).
    let budgets = ["", "spool_max_bytes = 0", "spool_max_bytes = 100000"];
    let spooled = [true, false, false];
    let mut written = Vec::new();
    for (i, budget) in budgets.iter().enumerate() {
        let fx = Fixture::new(&format!("fs-spool-{i}"), 3).await;
        // The snapshot time comes from the name, not from the file's modification time.
        let file = fx.write_incoming(&snapshot, "elr_20261203_103000.csv", &options);
        if i == 2 {
            let bytes = std::fs::metadata(&file.path).unwrap().len();
            assert!(
                bytes > 200_000,
                "the file ({bytes} B) must overflow the bound"
            );
        }
        let report = single_report(
            &ingest(
                fx.config(&format!("{budget}\nrows_per_transaction = 70")),
                vec![file.path.clone()],
            )
            .await
            .unwrap(),
        );
        assert_eq!(
            (report.rows_total, report.rows_sent, report.rows_rejected),
            (606, 588, 18),
            "{budget}"
        );
        assert_eq!(report.spool_bytes.is_some(), spooled[i], "{budget}");
        assert_exactly_once(&fx.data_records(true), &canonical_keys(&file.accepted_keys));
        written.push(written_by(&fx));
    }
    // 588 rows and a marker per partition on `snapshots`, 18 rejects.
    assert_eq!(written[0].len(), 588 + 3 + 18);
    for (other, what) in [(1, "read twice"), (2, "overflowed")] {
        let first = written[0]
            .iter()
            .zip(&written[other])
            .position(|(a, b)| a != b);
        assert!(
            first.is_none() && written[0].len() == written[other].len(),
            "spooled and {what} differ at record {first:?}: {:?}",
            first.map(|i| (&written[0][i], &written[other][i]))
        );
    }
}
