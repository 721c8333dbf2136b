//! Safe repartitioning: after `snapshots`, `state` and `changes` grew from 4 to 8 partitions,
//! the detector refuses the state written for 4 (naming `repartition`); `repartition` refuses
//! while changes of moving keys are undelivered, then re-keys the state; and the next snapshot
//! emits only its real changes — no key re-created at version 1, no stale entry driving a
//! delete. Runs on every broker (`SNAPFEED_TEST_BROKER`); the growth itself is built by the
//! harness ([`TestBroker::grown`](snapfeed_harness::broker::TestBroker::grown): no broker here
//! implements CreatePartitions).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use change_detector::detect::layout::Found;
use change_detector::detect::restore::{Partitions, StateReader};
use change_detector::metrics::DetectorMetrics;
use change_detector::repartition::{
    repartition, RepartitionError, RepartitionOptions, RepartitionReport,
};
use change_detector::ChangeDetectorError;
use common::*;
use snapfeed_harness::broker::BrokerKind;
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::generator::{Snapshot, SnapshotDelta};
use snapfeed_harness::offsets::GroupOffsets;
use snapfeed_harness::wait;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::health::Readiness;
use snapfeed_runtime::kafka::TopicReader;
use snapfeed_runtime::partition::partition_for_key;
use tokio::task::block_in_place;

fn with_deletes() -> DetectorOptions {
    DetectorOptions {
        deletes: Some(0.10),
        ..DetectorOptions::default()
    }
}

/// Commits, for `service`'s group of the fixture's pipeline, the end of every partition of
/// `topic`: the stage had processed everything there (as it had on the pipeline before the
/// growth, whose offsets the copy renumbered).
fn commit_end(fixture: &Fixture, service: &str, topic: &str) {
    let ends: BTreeMap<i32, i64> =
        block_in_place(|| fixture.broker.read_to_end(topic, fixture.committed_only()))
            .iter()
            .fold(BTreeMap::new(), |mut ends, m| {
                use rdkafka::Message;
                ends.insert(m.partition(), m.offset() + 1);
                ends
            });
    let group = format!("{}.{service}", fixture.pipeline.name);
    block_in_place(|| {
        GroupOffsets::commit_as_member(fixture.broker.bootstrap(), &group, topic, &ends)
            .expect("commit offsets")
    });
}

/// The restore half of a detector that started when the topics had `partitions`.
fn partitions_of(fixture: &Fixture, partitions: i32) -> Partitions {
    let reader = StateReader {
        reader: TopicReader::new(
            &fixture.broker.kafka_config(),
            change_detector::SERVICE,
            fixture.guarantee,
        )
        .unwrap(),
        topic: fixture.pipeline.topics.state.clone(),
        schemas: Arc::new(SchemaStore::load_dir(&fixture.schemas_dir).unwrap()),
        timeout: Duration::from_secs(10),
        partitions,
    };
    let metrics = DetectorMetrics::register(&prometheus::Registry::new()).unwrap();
    Partitions::new(reader, metrics, Readiness::default())
}

fn run_repartition(
    fixture: &Fixture,
    dry_run: bool,
) -> Result<RepartitionReport, RepartitionError> {
    let config = fixture.detector_config(&with_deletes(), free_addr());
    block_in_place(|| repartition(&config, RepartitionOptions { dry_run }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_from_4_to_8_partitions_recreates_no_key_once_the_state_is_rekeyed() {
    let mut fixture = Fixture::new("cd-repartition", 4).await;
    let detector = fixture.start_detector(&with_deletes()).await;
    let s1 = Snapshot::initial(ROWS, 301);
    let r1 = fixture.publish_snapshot(&s1, "elr_20261201_100000.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_exactly_once(&fixture.changes_of(&r1), &all_created(&s1));
    detector.stop().await;

    // The topics grow to 8 partitions (old records stay where they were).
    let grown = fixture
        .broker
        .grown(&fixture.pipeline, 8, fixture.committed_only())
        .await;
    fixture.pipeline = grown;
    fixture.partitions = 8;
    let snapshots = fixture.pipeline.topics.snapshots.clone();
    commit_end(&fixture, change_detector::SERVICE, &snapshots);
    let moving = s1
        .rows()
        .iter()
        .map(|row| canonical_key(&row.key()))
        .filter(|k| partition_for_key(k.as_bytes(), 4) != partition_for_key(k.as_bytes(), 8))
        .count();
    assert!(moving > ROWS / 3, "about half the keys move: {moving}");

    // An instance assigned only new (empty) partitions finds the old count on the others; one
    // assigned a partition past the count it started with stops too.
    let mut partitions = partitions_of(&fixture, 8);
    let mismatch = block_in_place(|| partitions.restore(&[5, 6])).unwrap_err();
    assert_eq!(mismatch.found, Found::Recorded(4), "{mismatch}");
    assert!(mismatch.partition < 4, "{mismatch}");
    let mut started_with_4 = partitions_of(&fixture, 4);
    let grown = block_in_place(|| started_with_4.restore(&[1, 5])).unwrap_err();
    assert_eq!(
        (grown.partition, grown.found),
        (5, Found::Grown(4)),
        "{grown}"
    );

    // The detector refuses the state written for 4 partitions, and decides nothing with it.
    let http = free_addr();
    let refused = Detector::start(fixture.detector_config(&with_deletes(), http), http);
    wait::until(
        "the detector stops by itself",
        Duration::from_secs(90),
        || !refused.is_running(),
    )
    .await;
    match refused.service.stop_result().await {
        Err(ChangeDetectorError::Layout(mismatch)) => {
            assert_eq!(mismatch.partitions, 8);
            assert_eq!(mismatch.found, Found::Recorded(4), "{mismatch}");
            assert!(mismatch.to_string().contains("repartition"), "{mismatch}");
        }
        other => panic!("expected a layout mismatch, got {other:?}"),
    }
    assert_eq!(
        fixture.changes().len(),
        ROWS,
        "nothing decided on the grown topics"
    );

    if fixture.broker.kind() == BrokerKind::Mock {
        // Gap (mock cluster): no ListGroups/DescribeGroups, so "is the detector stopped?"
        // cannot be asked, and the command (rightly) refuses to guess. The re-keying is
        // covered on Nisshi and Tansu.
        match run_repartition(&fixture, false) {
            Err(RepartitionError::Running(error)) => {
                eprintln!("repartition refused on the mock cluster: {error}")
            }
            other => panic!("expected a refusal without group listing, got {other:?}"),
        }
        return;
    }

    // No api-sink has delivered the changes of moving keys yet: refused, naming its group.
    match run_repartition(&fixture, false) {
        Err(RepartitionError::Unprocessed {
            topic,
            group,
            records,
            ..
        }) => {
            assert_eq!(topic, fixture.pipeline.topics.changes);
            assert!(group.ends_with(".api-sink"), "{group}");
            assert_eq!(records as usize, moving);
        }
        other => panic!("expected a refusal over undelivered changes, got {other:?}"),
    }
    let changes = fixture.pipeline.topics.changes.clone();
    commit_end(&fixture, "api-sink", &changes);

    let planned = run_repartition(&fixture, true).expect("dry run");
    let done = run_repartition(&fixture, false).expect("repartition");
    assert_eq!(planned.moved, done.moved, "the dry run plans what is done");
    assert_eq!(done.moved as usize, moving, "{done}");
    assert_eq!(done.tombstones as usize, moving);
    assert_eq!(done.keys as usize, ROWS);
    assert_eq!(done.previous.iter().copied().collect::<Vec<_>>(), vec![4]);
    assert_eq!(done.layouts, 8);
    let again = run_repartition(&fixture, false).expect("repartition again");
    assert_eq!((again.moved, again.tombstones), (0, 0), "{again}");
    assert_eq!(again.previous.iter().copied().collect::<Vec<_>>(), vec![8]);

    // The next snapshot (written for 8 partitions) emits exactly its real changes: versions
    // continue, and no key is deleted for being absent from its old partition.
    let detector = fixture.start_detector(&with_deletes()).await;
    let (s2, delta) = s1.next(
        SnapshotDelta {
            updated: 0.01,
            added: 0.005,
            removed: 0.01,
        },
        3011,
    );
    let r2 = fixture.publish_snapshot(&s2, "elr_20261201_103000.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    assert_exactly_once(
        &fixture.changes_of(&r2),
        &second_snapshot_changes(&delta, true),
    );
    assert_eq!(
        detector.metric("snapfeed_change_detector_state_keys") as usize,
        ROWS + delta.created.len()
    );
    detector.stop().await;
}
