//! `/readyz` of the detector: not ready until the first assignment's state is restored — a
//! rollout or load balancer must not count an instance ready that has not joined its group and
//! read its state yet.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::generator::Snapshot;

const RESTORED_ENTRIES: &str = "snapfeed_change_detector_restored_entries_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_the_first_assignment_is_restored() {
    let fixture = Fixture::new("cd-ready", 3).await;
    // State to restore: a first snapshot through a first instance.
    let first = fixture.start_detector(&DetectorOptions::default()).await;
    fixture.publish_snapshot(&Snapshot::initial(ROWS, 331), "s1.csv");
    fixture.wait_caught_up(&[first.endpoint()], CATCH_UP).await;
    first.stop().await;

    // A new instance, watched from its first answer on.
    let http = free_addr();
    let detector = Detector::start(
        fixture.detector_config(&DetectorOptions::default(), http),
        http,
    );
    let started = Instant::now();
    let mut not_ready = Vec::new();
    let restored_when_ready = loop {
        assert!(
            started.elapsed() < CATCH_UP,
            "not ready after {CATCH_UP:?}: {:?}",
            not_ready.last()
        );
        match detector.get("/readyz") {
            // The metric is read after the 200: had readiness come first, the restore could
            // only have finished in between by chance, never every time.
            Some((200, _)) => break detector.metric(RESTORED_ENTRIES),
            Some((_, body)) => not_ready.push(body),
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        restored_when_ready >= ROWS as f64,
        "/readyz answered 200 with {restored_when_ready} of {ROWS} state entries restored \
         (answers before: {not_ready:?})"
    );
    if let Some(body) = not_ready.last() {
        assert!(
            body.contains("restored"),
            "the last not-ready answer names the unmet restore: {body}"
        );
    }
    detector.stop().await;
}
