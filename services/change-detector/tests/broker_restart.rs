//! A broker outage must not leave a partition unprocessed. While the broker is down, the
//! detector's idle state reader queues transport errors (broker down, connection refused);
//! the restore that the next rebalance starts used to read those stale errors, give the
//! partition up "until a rebalance" that never came, and stall it silently (fault scenario 7).
//! Needs a broker process that keeps its data across a restart (Nisshi); skipped elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::*;
use snapfeed_harness::broker::{BrokerKind, StopSignal};
use snapfeed_harness::generator::{Snapshot, SnapshotDelta};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_after_a_broker_outage_restores_every_partition_and_skips_nothing() {
    let mut fixture = Fixture::new("cd-outage", 4).await;
    if fixture.broker.kind() != BrokerKind::Nisshi {
        println!(
            "skipped on {}: needs a broker process with persistent storage to stop and start \
             (SNAPFEED_TEST_BROKER=nisshi)",
            fixture.broker.kind()
        );
        return;
    }
    let a = fixture
        .start_detector(&DetectorOptions {
            instance_id: "a".into(),
            ..DetectorOptions::default()
        })
        .await;
    let s1 = Snapshot::initial(ROWS, 131);
    let r1 = fixture.publish_snapshot(&s1, "s1.csv");
    fixture.wait_caught_up(&[a.endpoint()], CATCH_UP).await;
    assert_delivered(&fixture, &fixture.changes_of(&r1), &all_created(&s1));

    // The outage: long enough for the idle reader to queue its transport errors.
    tokio::task::block_in_place(|| {
        fixture.broker.stop(StopSignal::Term);
        std::thread::sleep(Duration::from_secs(3));
        fixture.broker.start_again();
    });
    // A second instance joins: `a` restores the partitions it keeps from `state`.
    let b = fixture
        .start_detector(&DetectorOptions {
            instance_id: "b".into(),
            ..DetectorOptions::default()
        })
        .await;
    wait_state_split(
        &a,
        &b,
        ROWS,
        Duration::from_secs(90),
        "state not restored after the outage",
    )
    .await;

    // Every partition is processed again: the next snapshot's changes, nothing missing.
    let (s2, delta) = s1.next(
        SnapshotDelta {
            updated: 0.02,
            added: 0.01,
            removed: 0.0,
        },
        1311,
    );
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture
        .wait_caught_up(&[a.endpoint(), b.endpoint()], CATCH_UP)
        .await;
    assert_delivered(
        &fixture,
        &fixture.changes_of(&r2),
        &second_snapshot_changes(&delta, false),
    );
    a.stop().await;
    b.stop().await;
}
