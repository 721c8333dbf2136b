//! A `snapshots` message that does not decode (produced straight to a partition, with no
//! headers): with `on_corrupt = "skip"` it is counted, recorded on `rejects` naming its
//! topic/partition/offset, and skipped — the detector keeps running and later records flow;
//! with `on_corrupt = "pause"` its partition stops there while the others flow.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use snapfeed_harness::generator::{Snapshot, SnapshotDelta};

const CORRUPT: &str = "snapfeed_change_detector_records_total{outcome=\"corrupt\"}";

fn some_changes() -> SnapshotDelta {
    SnapshotDelta {
        updated: 0.01,
        added: 0.005,
        removed: 0.0,
    }
}

/// Not Avro single-object encoding at all.
const NO_HEADER: &[u8] = b"\x00\x01 this is not a lab result";

/// The lab-result schema's single-object header followed by a body that is not a valid datum.
fn lab_result_header_with_garbage(fixture: &Fixture) -> Vec<u8> {
    let fingerprint = fixture
        .store
        .current("snapfeed.lab.LabResult")
        .unwrap()
        .fingerprint;
    let mut payload = vec![0xC3, 0x01];
    payload.extend_from_slice(&fingerprint);
    payload.extend_from_slice(&[0xFF; 7]);
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_record_is_counted_rejected_with_its_location_and_skipped() {
    let fixture = Fixture::new("cd-corrupt", 3).await;
    let detector = fixture.start_detector(&DetectorOptions::default()).await;
    let s1 = Snapshot::initial(ROWS, 301);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let bad_body = lab_result_header_with_garbage(&fixture);
    let corrupt = [
        (
            1,
            fixture.produce_raw_snapshot_record(1, b"garbage-1", NO_HEADER),
        ),
        (
            2,
            fixture.produce_raw_snapshot_record(2, b"garbage-2", &bad_body),
        ),
    ];
    // Good records after the corrupt ones still flow.
    let (s2, delta) = s1.next(some_changes(), 3011);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    assert!(detector.is_running(), "the detector keeps running");
    assert_eq!(detector.get("/readyz").map(|r| r.0), Some(200));
    assert_eq!(detector.metric(CORRUPT), 2.0);
    assert_exactly_once(
        &fixture.changes_of(&r2),
        &second_snapshot_changes(&delta, false),
    );
    let rejects = fixture.rejects();
    for (partition, offset) in corrupt {
        let location = format!("{}/{partition}@{offset}", fixture.pipeline.topics.snapshots);
        let found: Vec<_> = rejects
            .iter()
            .filter(|(_, r)| r.reason == "corrupt_payload" && r.detail.contains(&location))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one corrupt_payload reject naming {location}; rejects: {:?}",
            rejects
                .iter()
                .map(|(k, r)| (k, &r.reason, &r.detail))
                .collect::<Vec<_>>()
        );
        assert_eq!(found[0].0, location, "keyed by the location");
    }
    detector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_corrupt_pause_stops_only_that_partition() {
    let fixture = Fixture::new("cd-pause", 3).await;
    let detector = fixture
        .start_detector(&DetectorOptions {
            on_corrupt: "pause",
            ..DetectorOptions::default()
        })
        .await;
    let s1 = Snapshot::initial(ROWS, 302);
    fixture.publish_snapshot(&s1, "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;

    let paused = 0;
    let corrupt_at = fixture.produce_raw_snapshot_record(paused, b"garbage", NO_HEADER);
    let (s2, delta) = s1.next(some_changes(), 3021);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");

    // The other partitions get to their end; the paused one up to the corrupt record.
    let mut targets: BTreeMap<i32, i64> = fixture.snapshot_ends();
    targets.insert(paused, corrupt_at);
    fixture
        .wait_caught_up_to(&[detector.endpoint()], &targets, CATCH_UP)
        .await;
    detector
        .wait_metric(
            "snapfeed_change_detector_paused_partitions",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(detector.is_running());
    assert_ne!(
        detector.get("/readyz").map(|r| r.0),
        Some(200),
        "not ready while a partition is stopped"
    );
    if fixture.offsets_are_stored() {
        let committed = fixture.committed()[&paused];
        assert!(
            committed <= corrupt_at,
            "the paused partition is committed up to the corrupt record ({corrupt_at}), not past it: {committed}"
        );
    }

    let expected: BTreeSet<ChangeId> = second_snapshot_changes(&delta, false)
        .into_iter()
        .filter(|(key, _, _)| fixture.partition_of(key) != paused)
        .collect();
    assert!(!expected.is_empty());
    let second = fixture.changes_of(&r2);
    assert_exactly_once(&second, &expected);
    assert!(second.iter().all(|c| c.partition != paused));
    assert!(fixture
        .rejects()
        .iter()
        .all(|(_, r)| r.reason != "corrupt_payload"));
    detector.stop().await;
}
