//! `/readyz` of the detector: not ready until the first assignment's state is restored — a
//! rollout or load balancer must not count an instance ready that has not joined its group and
//! read its state yet.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::generator::Snapshot;
use snapfeed_harness::stub_registry::StubRegistry;

const RESTORED_ENTRIES: &str = "snapfeed_change_detector_restored_entries_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_the_first_assignment_is_restored() {
    let fixture = Fixture::new("cd-ready", 3).await;
    // State to restore: a first snapshot through a first instance.
    let first = fixture.start_detector(&DetectorOptions::default()).await;
    fixture.publish_snapshot(&Snapshot::initial(ROWS, 331), "s1.csv");
    fixture.wait_caught_up(&[first.endpoint()], CATCH_UP).await;
    first.stop().await;

    // A new instance, watched from its first answer on. On the mock cluster every answer
    // comes 100 ms late, so the group join and the restore (several round trips) outlast many
    // polls and the not-ready answer naming the restore is seen every time; other brokers
    // cannot delay answers, and there it may be too short to see.
    let widened = fixture.broker.delay_answers(Duration::from_millis(100));
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
    fixture.broker.delay_answers(Duration::ZERO);
    // Every not-ready answer says why: "starting" until the stage has registered its
    // conditions, then the unmet restore.
    for body in &not_ready {
        assert!(
            body.contains("starting") || body.contains("restored"),
            "a not-ready answer names what is unmet (starting or the restore): {body}"
        );
    }
    if widened {
        assert!(
            not_ready.iter().any(|body| body.contains("restored")),
            "while the restore ran, /readyz named it: {not_ready:?}"
        );
    }
    detector.stop().await;
}

/// `[schema_registry]` (issue #14): a registry down at start keeps the detector not ready,
/// `/readyz` naming it; once it answers, the detector registers its schemas, becomes ready and
/// writes its changes in the Confluent wire format with the id of `<changes>-value`, reading
/// snapshots written single-object by the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_schema_registry_down_at_start_not_ready_until_it_answers() {
    let fixture = Fixture::new("cd-registry", 2).await;
    let mut registry = StubRegistry::start().await;
    registry.go_down().await;
    let http = free_addr();
    let mut config = fixture.detector_config(&DetectorOptions::default(), http);
    config.schema_registry = Some(
        toml::from_str(&format!(
            "url = {:?}\nrequest_timeout_ms = 1000",
            registry.url()
        ))
        .unwrap(),
    );
    let detector = Detector::start(config, http);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "/readyz never named the registry"
        );
        match detector.get("/readyz") {
            Some((200, body)) => panic!("ready while the registry is down: {body}"),
            Some((_, body)) if body.contains("schema_registry") => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !matches!(detector.get("/readyz"), Some((200, _))),
        "still not ready"
    );

    registry.come_up().await;
    detector.wait_ready(Duration::from_secs(60)).await;
    let changes_subject = format!("{}-value", fixture.pipeline.topics.changes);
    let id = registry.subject_ids(&changes_subject);
    assert_eq!(id.len(), 1, "{:?}", registry.subjects());
    fixture.publish_snapshot(&Snapshot::initial(50, 337), "s1.csv");
    fixture
        .wait_caught_up(&[detector.endpoint()], CATCH_UP)
        .await;
    let changes = tokio::task::block_in_place(|| {
        fixture
            .broker
            .read_to_end(&fixture.pipeline.topics.changes, fixture.committed_only())
    });
    assert_eq!(changes.len(), 50);
    for message in &changes {
        let value = rdkafka::Message::payload(message).unwrap();
        assert_eq!(value[0], 0, "Confluent magic byte");
        assert_eq!(u32::from_be_bytes(value[1..5].try_into().unwrap()), id[0]);
    }
    detector.stop().await;
}
