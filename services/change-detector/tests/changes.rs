//! What change-detector emits for generated snapshots, compared with the generator's exact key
//! sets: every key once as CREATE v1 at first; nothing for a snapshot that differs only in the
//! volatile field, in column order, or by a new nullable schema field; exactly the updated and
//! new keys otherwise — also across a restart and with two instances sharing the partitions.
//! The detector runs in-process; the harness publishes the snapshots as file-source would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use rdkafka::Message;
use snapfeed_harness::generator::{ColumnOrder, Snapshot, SnapshotDelta, WriteOptions};
use snapfeed_harness::schemas::lab_result_v3_with_an_absent_column;
use snapfeed_harness::snapshot_publisher::PublishOptions;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::records::ChangeOp;

const STATE_KEYS: &str = "snapfeed_change_detector_state_keys";

fn no_change() -> SnapshotDelta {
    SnapshotDelta::default()
}

fn some_changes() -> SnapshotDelta {
    SnapshotDelta {
        updated: 0.01,
        added: 0.005,
        removed: 0.0,
    }
}

/// Content hash of each key's latest event.
fn hashes(changes: &[Change]) -> BTreeMap<String, String> {
    let mut by_key = BTreeMap::new();
    for change in changes {
        by_key.insert(change.event.key.clone(), change.event.content_hash.clone());
    }
    by_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_snapshot_creates_every_key_once_at_version_1() {
    let fixture = Fixture::new("cd-first", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 101);
    let report = fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let changes = fixture.changes();
    assert_exactly_once(&changes, &all_created(&s1));
    for change in &changes {
        let event = &change.event;
        assert_eq!(event.previous_hash, None);
        assert_eq!(event.content_hash.len(), 32, "128-bit hex hash");
        assert!(change.record.is_some(), "a CREATE carries its record");
        assert_eq!(event.record_schema, "snapfeed.lab.LabResult");
        assert_eq!(event.source.snapshot_id, report.snapshot_id);
        assert_eq!(event.source.file_name, "s1.csv");
        assert!(event.source.line.is_some_and(|l| l >= 2));
        assert_eq!(
            change.partition,
            fixture.partition_of(&event.key),
            "changes are co-partitioned with snapshots"
        );
    }
    assert_eq!(
        detector.metric("snapfeed_change_detector_records_total{outcome=\"created\"}"),
        ROWS as f64
    );
    detector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_differing_only_in_report_generated_at_emits_nothing() {
    let fixture = Fixture::new("cd-volatile", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 102);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let (s2, delta) = s1.next(no_change(), 1021);
    assert!(delta.created.is_empty() && delta.updated.is_empty() && delta.removed.is_empty());
    assert_ne!(s2.generated_at(), s1.generated_at());
    let report = fixture.publish_snapshot(&s2, "s2.csv");
    assert_eq!(report.rows_sent, ROWS as u64);
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let changes = fixture.changes();
    assert_exactly_once(&changes, &all_created(&s1));
    assert!(fixture.changes_of(&report).is_empty());
    assert_eq!(
        detector.metric("snapfeed_change_detector_records_total{outcome=\"unchanged\"}"),
        ROWS as f64
    );
    detector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_and_new_rows_emit_exactly_those_keys_with_versions_and_previous_hash() {
    let fixture = Fixture::new("cd-update", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 103);
    let r1 = fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let (s2, delta) = s1.next(some_changes(), 1031);
    assert_eq!((delta.updated.len(), delta.created.len()), (20, 10));
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let expected = second_snapshot_changes(&delta, false);
    let second = fixture.changes_of(&r2);
    assert_exactly_once(&second, &expected);
    let first_hashes = hashes(&fixture.changes_of(&r1));
    for change in &second {
        let event = &change.event;
        match event.op {
            ChangeOp::Update => {
                let before = &first_hashes[&event.key];
                assert_eq!(event.previous_hash.as_ref(), Some(before));
                assert_ne!(&event.content_hash, before);
                assert!(change.record.is_some());
            }
            ChangeOp::Create => assert_eq!(event.previous_hash, None),
            ChangeOp::Delete => panic!("deletes are off"),
        }
    }
    let mut everything = all_created(&s1);
    everything.extend(expected);
    assert_exactly_once(&fixture.changes(), &everything);
    detector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_csv_columns_emit_nothing() {
    let fixture = Fixture::new("cd-reorder", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 104);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    // The same rows, values and all, with the header shuffled: another file, same records.
    let options = WriteOptions {
        column_order: ColumnOrder::Shuffled(7),
        ..WriteOptions::default()
    };
    let report = fixture.publish(
        &s1,
        &PublishOptions::file("s1-shuffled.csv").written(options),
    );
    assert!(
        !report
            .columns
            .starts_with(&["Patient_ID".into(), "Patient_Last_Name".into()]),
        "the header is reordered"
    );
    assert_eq!(report.rows_sent, ROWS as u64);
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    assert!(fixture.changes_of(&report).is_empty());
    assert_exactly_once(&fixture.changes(), &all_created(&s1));
    detector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_nullable_schema_field_emits_nothing_and_later_changes_still_count() {
    let mut fixture = Fixture::new("cd-schema", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 105);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    detector.stop().await;

    // Schema v3: v2 moves to history/, the new schema appends a nullable field, the mapping
    // maps it from a column the CSV does not have (so every value is null).
    let (schemas_dir, mapping) = lab_result_v3_with_an_absent_column(fixture.root.path());
    let v3 = SchemaStore::load_dir(&schemas_dir)
        .expect("evolved schemas load (v2 in history is readable by v3)")
        .current("snapfeed.lab.LabResult")
        .unwrap()
        .fingerprint;
    fixture.schemas_dir = schemas_dir;
    fixture.mapping = mapping;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;

    let (s2, _) = s1.next(no_change(), 1051);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    let written_with_v3 = block_in_place_read(&fixture)
        .iter()
        .any(|payload| payload.get(2..10) == Some(&v3[..]));
    assert!(
        written_with_v3,
        "the second snapshot was written with schema v3"
    );
    assert!(
        fixture.changes_of(&r2).is_empty(),
        "a new nullable field changes no record's hash"
    );

    // A tracked value that changes still counts under the new schema.
    let (s3, delta) = s2.next(some_changes(), 1052);
    let r3 = fixture.publish_snapshot(&s3, "s3.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_exactly_once(
        &fixture.changes_of(&r3),
        &second_snapshot_changes(&delta, false),
    );
    detector.stop().await;
}

fn block_in_place_read(fixture: &Fixture) -> Vec<Vec<u8>> {
    tokio::task::block_in_place(|| {
        fixture
            .broker
            .read_to_end(&fixture.pipeline.topics.snapshots, fixture.committed_only())
            .iter()
            .filter_map(|m| m.payload().map(<[u8]>::to_vec))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_snapshots_restores_state_and_emits_nothing_spurious() {
    let fixture = Fixture::new("cd-restart", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 106);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_eq!(detector.metric(STATE_KEYS), ROWS as f64);
    detector.stop().await;

    // The next snapshot arrives while no detector runs.
    let (s2, _) = s1.next(no_change(), 1061);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert!(
        fixture.changes_of(&r2).is_empty(),
        "no spurious changes after a restart"
    );
    detector
        .wait_metric(STATE_KEYS, ROWS as f64, Duration::from_secs(10))
        .await;
    assert!(
        detector.metric("snapfeed_change_detector_restored_entries_total") >= ROWS as f64,
        "state restored from the state topic"
    );

    // Versions continue from the restored state.
    let (s3, delta) = s2.next(some_changes(), 1062);
    let r3 = fixture.publish_snapshot(&s3, "s3.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_exactly_once(
        &fixture.changes_of(&r3),
        &second_snapshot_changes(&delta, false),
    );
    detector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_together_emit_the_expected_set() {
    let fixture = Fixture::new("cd-two", 4).await;
    let a = fixture
        .start_detector(&DetectorOptions {
            instance_id: "a".into(),
            ..DetectorOptions::default()
        })
        .await;
    let b = fixture
        .start_detector(&DetectorOptions {
            instance_id: "b".into(),
            ..DetectorOptions::default()
        })
        .await;
    let s1 = Snapshot::initial(ROWS, 107);
    let r1 = fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[a.endpoint(), b.endpoint()], CATCH_UP)
        .await;
    // Exactly once where the broker hides aborted records (a rebalance may abort a batch);
    // elsewhere each key at least once with identical copies.
    assert_delivered(&fixture, &fixture.changes_of(&r1), &all_created(&s1));

    // Once the group is stable each instance holds only its own partitions' state: together
    // every key once, and both hold some.
    wait_state_split(
        &a,
        &b,
        ROWS,
        Duration::from_secs(60),
        "state not split between the instances",
    )
    .await;

    let (s2, delta) = s1.next(some_changes(), 1071);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture
        .wait_caught_up(&[a.endpoint(), b.endpoint()], CATCH_UP)
        .await;
    assert_delivered(
        &fixture,
        &fixture.changes_of(&r2),
        &second_snapshot_changes(&delta, false),
    );
    let updated = a.metric("snapfeed_change_detector_records_total{outcome=\"updated\"}")
        + b.metric("snapfeed_change_detector_records_total{outcome=\"updated\"}");
    assert!(updated >= delta.updated.len() as f64);
    let keys: BTreeSet<String> = fixture.changes().into_iter().map(|c| c.event.key).collect();
    assert_eq!(keys.len(), ROWS + delta.created.len());
    a.stop().await;
    b.stop().await;
}

/// A lag interval shorter than a few fetch round trips is a valid setting and must not slow
/// the detector down: measuring lag may cost a little, never the throughput. (2000 records take
/// about a second; the bound is 60 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lag_interval_does_not_starve_processing() {
    let fixture = Fixture::new("cd-lag", 3).await;
    let detector = fixture
        .start_detector(&DetectorOptions {
            lag_interval_ms: 200,
            ..DetectorOptions::default()
        })
        .await;
    let s1 = Snapshot::initial(ROWS, 108);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], Duration::from_secs(60))
        .await;
    assert_exactly_once(&fixture.changes(), &all_created(&s1));
    detector.stop().await;
}
