//! Deletes (`[detector.deletes] enabled = true`): keys absent from a complete snapshot of their
//! stream are emitted once as DELETE at the next version; a truncated snapshot trips the guard
//! and deletes nothing; one stream's snapshot never deletes another stream's keys. The
//! detector runs in-process; its `/metrics` is read on the address it was given.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use snapfeed_harness::generator::{Snapshot, SnapshotDelta};
use snapfeed_harness::snapshot_publisher::{PublishOptions, PublishReport};
use snapfeed_runtime::records::ChangeOp;

const GUARD_TRIPPED: &str = "snapfeed_change_detector_delete_guard_tripped_total";

fn with_deletes(max_share: f64) -> DetectorOptions {
    DetectorOptions {
        deletes: Some(max_share),
        ..DetectorOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_missing_from_a_complete_snapshot_are_deleted_once_at_the_next_version() {
    let fixture = Fixture::new("cd-delete", 3).await;
    let detector = fixture.start_detector(&with_deletes(0.10)).await;
    let s1 = Snapshot::initial(ROWS, 201);
    let r1 = fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let (s2, delta) = s1.next(
        SnapshotDelta {
            updated: 0.01,
            added: 0.005,
            removed: 0.02,
        },
        2011,
    );
    assert_eq!(delta.removed.len(), 40);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let expected = second_snapshot_changes(&delta, true);
    let second = fixture.changes_of(&r2);
    assert_exactly_once(&second, &expected);
    let created: BTreeMap<String, String> = fixture
        .changes_of(&r1)
        .into_iter()
        .map(|c| (c.event.key, c.event.content_hash))
        .collect();
    for change in second.iter().filter(|c| c.event.op == ChangeOp::Delete) {
        let event = &change.event;
        assert_eq!(change.record, None, "a DELETE carries no record");
        assert_eq!(event.previous_hash.as_ref(), Some(&created[&event.key]));
        assert_eq!(event.source.line, None);
        assert_eq!(event.source.stream, "default");
    }
    assert_eq!(
        detector.metric("snapfeed_change_detector_records_total{outcome=\"deleted\"}"),
        40.0
    );

    // The next snapshot (without the removed keys) deletes nothing again.
    let (s3, _) = s2.next(SnapshotDelta::default(), 2012);
    let r3 = fixture.publish_snapshot(&s3, "s3.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert!(fixture.changes_of(&r3).is_empty());
    let mut everything = all_created(&s1);
    everything.extend(expected);
    assert_exactly_once(&fixture.changes(), &everything);
    assert_eq!(detector.metric(GUARD_TRIPPED), 0.0);
    detector.stop().await;
}

/// Publishes a first snapshot, then the next one cut to its first half (a truncated
/// transfer): returns the fixture, the running detector, the first snapshot and the truncated
/// report.
async fn truncated_second_snapshot(
    label: &str,
    seed: u64,
) -> (Fixture, Detector, Snapshot, PublishReport) {
    let fixture = Fixture::new(label, 3).await;
    let detector = fixture.start_detector(&with_deletes(0.10)).await;
    let s1 = Snapshot::initial(ROWS, seed);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let (s2, _) = s1.next(SnapshotDelta::default(), seed + 1);
    // The file keeps its header and the first half of its data lines.
    let kept = (s2.rows().len() as f64 * 0.5).round() as usize;
    let report = fixture.publish_snapshot(&s2.prefix(kept), "s2-truncated.csv");
    assert_eq!(report.rows_sent, kept as u64);
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    (fixture, detector, s1, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_snapshot_trips_the_guard_and_deletes_nothing() {
    let (fixture, detector, s1, truncated) = truncated_second_snapshot("cd-guard", 202).await;
    assert!(
        fixture.changes_of(&truncated).is_empty(),
        "no DELETE (and nothing else) for a snapshot with half the rows"
    );
    assert!(detector.metric(GUARD_TRIPPED) >= 1.0);
    assert_eq!(
        detector.metric("snapfeed_change_detector_records_total{outcome=\"deleted\"}"),
        0.0
    );

    // Every key is still alive: the full snapshot that follows is unchanged throughout.
    let (s3, _) = s1.next(SnapshotDelta::default(), 2023);
    let r3 = fixture.publish_snapshot(&s3, "s3.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert!(fixture.changes_of(&r3).is_empty());
    assert_exactly_once(&fixture.changes(), &all_created(&s1));
    detector.stop().await;
}

/// The metric counts snapshots whose deletes were refused ("Snapshots whose deletes were
/// refused because too many keys would go"): one truncated file is one, however many
/// partitions it spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_metric_counts_a_truncated_snapshot_once() {
    let (_fixture, detector, _, _) = truncated_second_snapshot("cd-guard-once", 203).await;
    assert_eq!(
        detector.metric(GUARD_TRIPPED),
        1.0,
        "one truncated snapshot (over 3 partitions)"
    );
    detector.stop().await;
}

/// Publishes `snapshot` as `name` in the stream file-source's two stream rules give it:
/// `lab-a` for `lab-a-*`, `lab-b` for `lab-b-*`.
fn publish_stream(fixture: &Fixture, snapshot: &Snapshot, name: &str) -> PublishReport {
    let stream = ["lab-a", "lab-b"]
        .into_iter()
        .find(|stream| name.starts_with(&format!("{stream}-")))
        .expect("a lab-a-* or lab-b-* file");
    fixture.publish(snapshot, &PublishOptions::file(name).stream(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_never_cross_snapshot_streams() {
    let fixture = Fixture::new("cd-streams", 3).await;
    // Guard off: a crossing bug would show as mass DELETEs, not as a tripped guard.
    let detector = fixture.start_detector(&with_deletes(1.0)).await;

    let a1 = Snapshot::initial(ROWS / 2, 204);
    // Lab B's keys: all new (the same generator lineage never reuses a key).
    let removed_all = SnapshotDelta {
        updated: 0.0,
        added: 1.0,
        removed: 1.0,
    };
    let (b1, b_keys) = a1.next(removed_all, 2041);
    assert!(b_keys.created.is_disjoint(&b_keys.removed));
    let ra1 = publish_stream(&fixture, &a1, "lab-a-1.csv");
    let rb1 = publish_stream(&fixture, &b1, "lab-b-1.csv");
    assert_eq!(
        (ra1.stream.as_str(), rb1.stream.as_str()),
        ("lab-a", "lab-b")
    );
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    // Lab A drops 3% of its keys; lab B resends everything unchanged. Each complete snapshot
    // lacks every key of the other lab.
    let (a2, a_delta) = a1.next(
        SnapshotDelta {
            removed: 0.03,
            ..SnapshotDelta::default()
        },
        2042,
    );
    let (b2, _) = b1.next(SnapshotDelta::default(), 2043);
    let ra2 = publish_stream(&fixture, &a2, "lab-a-2.csv");
    let rb2 = publish_stream(&fixture, &b2, "lab-b-2.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    assert!(
        fixture.changes_of(&rb2).is_empty(),
        "lab B's snapshot deletes none of lab A's keys"
    );
    let deletes = fixture.changes_of(&ra2);
    assert_exactly_once(&deletes, &ids(&a_delta.removed, ChangeOp::Delete, 2));
    assert!(deletes.iter().all(|c| c.event.source.stream == "lab-a"));
    let mut expected = all_created(&a1);
    expected.extend(all_created(&b1));
    expected.extend(ids(&a_delta.removed, ChangeOp::Delete, 2));
    assert_exactly_once(&fixture.changes(), &expected);
    detector.stop().await;
}

/// The ordering guard: a snapshot older than the newest applied for its stream — a file
/// re-sent from a backup, files out of order — changes nothing and deletes nothing, also after
/// a restart (the newest is on `state`); the next newer snapshot emits only its real changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_newest_applied_changes_and_deletes_nothing() {
    const STALE_RECORDS: &str = "snapfeed_change_detector_records_total{outcome=\"stale\"}";
    const STALE_MARKERS: &str = "snapfeed_change_detector_snapshots_total{verdict=\"stale\"}";
    const REPLAYED_RECORDS: &str = "snapfeed_change_detector_records_total{outcome=\"replayed\"}";
    const REPLAYED_MARKERS: &str = "snapfeed_change_detector_snapshots_total{verdict=\"replayed\"}";
    let taken = |hour: i64| 1_800_000_000_000 + hour * 3_600_000;
    let fixture = Fixture::new("cd-order", 3).await;
    let detector = fixture.start_detector(&with_deletes(0.5)).await;
    let s1 = Snapshot::initial(ROWS, 221);
    fixture.publish(&s1, &PublishOptions::file("elr_01.csv").taken_at(taken(1)));
    let (s2, delta) = s1.next(
        SnapshotDelta {
            updated: 0.01,
            added: 0.01,
            removed: 0.01,
        },
        2211,
    );
    let r2 = fixture.publish(&s2, &PublishOptions::file("elr_02.csv").taken_at(taken(2)));
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_exactly_once(
        &fixture.changes_of(&r2),
        &second_snapshot_changes(&delta, true),
    );
    let applied = fixture.changes().len();

    // The first snapshot again, restored from a backup: without the guard its rows would
    // roll the updated keys back, re-create the removed ones and delete the added ones.
    let rows = |s: &Snapshot| s.rows().len() as f64;
    let restored = fixture
        .publish(
            &s1,
            &PublishOptions::file("elr_01_restored.csv").taken_at(taken(1)),
        )
        .snapshot_id;
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_eq!(
        fixture.changes().len(),
        applied,
        "a stale snapshot emitted changes"
    );
    assert_eq!(detector.metric(STALE_RECORDS), rows(&s1));
    assert_eq!(
        detector.metric(STALE_MARKERS),
        3.0,
        "one marker per partition"
    );
    // What `reconcile` reads: the late file passed over, on every partition, with its rows.
    let passed_over = fixture.stale_snapshots();
    assert_eq!(passed_over.len(), 3, "{passed_over:?}");
    assert!(passed_over.values().all(|s| s.snapshot_id == restored
        && s.newest_snapshot_id == r2.snapshot_id
        && s.file_name == "elr_01_restored.csv"));
    assert_eq!(
        passed_over
            .values()
            .map(|s| s.rows_in_partition)
            .sum::<i64>() as f64,
        rows(&s1)
    );
    assert!(
        passed_over
            .values()
            .all(|s| s.rows_passed_over == s.rows_in_partition),
        "read whole after the newer one: every row passed over {passed_over:?}"
    );
    detector.stop().await;

    // A restarted detector still knows the newest snapshot (from `state`).
    let detector = fixture.start_detector(&with_deletes(0.5)).await;
    let (older, _) = s1.next(
        SnapshotDelta {
            updated: 0.05,
            ..SnapshotDelta::default()
        },
        2212,
    );
    let older_id = fixture
        .publish(
            &older,
            &PublishOptions::file("elr_01b.csv").taken_at(taken(1) + 60_000),
        )
        .snapshot_id;
    let (s3, delta) = s2.next(
        SnapshotDelta {
            added: 0.01,
            ..SnapshotDelta::default()
        },
        2213,
    );
    let r3 = fixture.publish(&s3, &PublishOptions::file("elr_03.csv").taken_at(taken(3)));
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    // At least the older file's rows; more where the broker lets the new instance start
    // before the last commit (the in-process one): the restored copy, read again after s2
    // began, is late again (its entry is rewritten the same); the first s1 was read before
    // s2 began, so it is replayed, not late.
    assert!(detector.metric(STALE_RECORDS) >= rows(&older));
    assert_eq!(
        fixture.changes().len(),
        applied + delta.created.len(),
        "only the newer snapshot's changes"
    );
    assert_exactly_once(
        &fixture.changes_of(&r3),
        &ids(&delta.created, ChangeOp::Create, 1),
    );
    let late: BTreeSet<String> = fixture
        .stale_snapshots()
        .into_keys()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        late,
        BTreeSet::from([restored.clone(), older_id]),
        "only the late files are recorded as passed over, never an applied one"
    );
    detector.stop().await;

    // An operator's replay of everything: each older record was read before the newest (s3)
    // began, so it is replayed — passed over, not late: no alert, no entry, no change.
    fixture.replay_from_earliest();
    let detector = fixture.start_detector(&with_deletes(0.5)).await;
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_eq!(detector.metric(STALE_RECORDS), 0.0, "a replay is not late");
    assert_eq!(detector.metric(STALE_MARKERS), 0.0);
    assert_eq!(
        detector.metric(REPLAYED_RECORDS),
        2.0 * rows(&s1) + rows(&s2) + rows(&older)
    );
    assert_eq!(
        detector.metric(REPLAYED_MARKERS),
        4.0 * 3.0,
        "four older snapshots, three partitions"
    );
    assert_eq!(
        fixture.changes().len(),
        applied + delta.created.len(),
        "a replay re-emits nothing"
    );
    assert_eq!(
        fixture.stale_snapshots().len(),
        6,
        "two late files, three partitions"
    );
    detector.stop().await;
}
