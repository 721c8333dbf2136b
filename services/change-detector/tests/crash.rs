//! The change-detector binary killed (SIGKILL) while it processes, then restarted: nothing is
//! lost, and nothing is emitted twice to read_committed readers where the broker hides aborted
//! records. Where it does not (mock cluster, Tansu) or transactions are off (`at_least_once`,
//! Nisshi), the check is weakened to what the guarantee still promises: every expected change
//! at least once, and all copies of one (key, version) byte-identical — so the sink's
//! Idempotency-Key makes a repeat harmless.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use snapfeed_harness::generator::{Snapshot, SnapshotDelta};
use snapfeed_harness::service_process::{LogOnPanic, ServiceProcess};
use snapfeed_runtime::kafka::ProcessingGuarantee;

/// Small batches: many transactions (or acknowledged steps) per snapshot, so a kill lands
/// inside one.
fn small_batches(guarantee: Option<ProcessingGuarantee>) -> DetectorOptions {
    DetectorOptions {
        batch_max_records: 10,
        guarantee,
        ..DetectorOptions::default()
    }
}

fn some_changes() -> SnapshotDelta {
    SnapshotDelta {
        updated: 0.01,
        added: 0.005,
        removed: 0.0,
    }
}

fn kill(process: &mut ServiceProcess) {
    tokio::task::block_in_place(|| process.kill());
}

fn terminate(process: &mut ServiceProcess) {
    let (status, _) = tokio::task::block_in_place(|| process.terminate(Duration::from_secs(20)));
    assert!(status.success(), "exit status {status} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_restart_emits_the_expected_set_once_where_aborts_are_hidden_else_identical_repeats(
) {
    let fixture = Fixture::new("cd-crash", 3).await;
    let s1 = Snapshot::initial(3000, 401);
    let r1 = fixture.publish_snapshot(&s1, "s1.csv");
    let config = fixture.write_detector_config(&small_batches(None), "detector");

    let mut first = fixture.spawn_detector_process(&config, fixture.guarantee, "run-1");
    let _log1 = LogOnPanic(fixture.root.path().join("run-1.log"));
    // Kill as soon as the first change is written, committed or not: mid-batch.
    let seen = wait_for_uncommitted_changes(&fixture, 1, Duration::from_secs(60));
    kill(&mut first);
    assert!(seen >= 1, "the detector started emitting");
    if fixture.offsets_are_stored() {
        let committed: i64 = fixture.committed().values().sum();
        let ends: i64 = fixture.snapshot_ends().values().sum();
        assert!(
            committed < ends,
            "killed before the snapshot was committed ({committed} of {ends})"
        );
    }

    let mut second = fixture.spawn_detector_process(&config, fixture.guarantee, "run-2");
    let _log2 = LogOnPanic(fixture.root.path().join("run-2.log"));
    fixture.wait_caught_up(&[second.endpoint()], CATCH_UP).await;
    assert_delivered(&fixture, &fixture.changes_of(&r1), &all_created(&s1));

    // Versions continue from the state the crash left: the next snapshot is exact too.
    let (s2, delta) = s1.next(some_changes(), 4011);
    let r2 = fixture.publish_snapshot(&s2, "s2.csv");
    fixture.wait_caught_up(&[second.endpoint()], CATCH_UP).await;
    assert_delivered(
        &fixture,
        &fixture.changes_of(&r2),
        &second_snapshot_changes(&delta, false),
    );
    terminate(&mut second);
}

/// With `at_least_once` forced (works on every broker), kills at random points — during
/// start-up and restore, between producing changes, writing state and committing offsets —
/// may repeat changes, but never with another payload for the same (key, version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_repeats_after_random_kills_carry_identical_payloads_per_key_and_version() {
    let mut fixture = Fixture::new("cd-alo-kills", 3).await;
    fixture.guarantee = ProcessingGuarantee::AtLeastOnce;
    let (mut rng, seed) = FaultRng::from_env();
    eprintln!("fault points from SNAPFEED_TEST_SEED={seed}");
    let options = small_batches(Some(ProcessingGuarantee::AtLeastOnce));
    let config = fixture.write_detector_config(&options, "detector");

    let s1 = Snapshot::initial(ROWS, 402);
    fixture.publish_snapshot(&s1, "s1.csv");
    let (s2, delta) = s1.next(some_changes(), 4021);
    let mut expected = all_created(&s1);
    expected.extend(second_snapshot_changes(&delta, false));

    let mut logs = Vec::new();
    for round in 0..4 {
        if round == 2 {
            fixture.publish_snapshot(&s2, "s2.csv");
        }
        let name = format!("run-{round}");
        let mut process = fixture.spawn_detector_process(&config, fixture.guarantee, &name);
        logs.push(LogOnPanic(fixture.root.path().join(format!("{name}.log"))));
        // The kill point: after a random number of further change events (bounded wait, so a
        // run that has nothing left to do is killed too).
        let already = fixture.changes().len();
        let more = rng.between(1, if round < 2 { 600 } else { 20 }) as usize;
        let seen = wait_for_uncommitted_changes(&fixture, already + more, Duration::from_secs(20));
        eprintln!(
            "round {round}: killed after {seen} change events (aimed at {})",
            already + more
        );
        kill(&mut process);
    }

    let mut last = fixture.spawn_detector_process(&config, fixture.guarantee, "run-last");
    logs.push(LogOnPanic(fixture.root.path().join("run-last.log")));
    fixture.wait_caught_up(&[last.endpoint()], CATCH_UP).await;
    let changes = fixture.changes();
    let repeats = assert_at_least_once_identical(&changes, &expected);
    let keys: BTreeSet<&str> = changes.iter().map(|c| c.event.key.as_str()).collect();
    let mut repeated_ops = std::collections::BTreeMap::new();
    for (id, count) in id_counts(&changes) {
        if count > 1 {
            *repeated_ops.entry(id.1).or_insert(0) += count - 1;
        }
    }
    eprintln!("repeats by op: {repeated_ops:?}");
    eprintln!(
        "{} events for {} changes of {} keys: {repeats} repeats, all identical",
        changes.len(),
        expected.len(),
        keys.len()
    );
    terminate(&mut last);
}
