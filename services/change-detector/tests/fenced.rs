//! A detector whose transactional producer is fenced — another instance with the same
//! transactional id took over — stops, and the service ends with that error, instead of
//! replacing its producer and fencing the other instance in turn. `exactly_once` only: without
//! transactions there is nothing to fence.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use change_detector::ChangeDetectorError;
use common::*;
use rdkafka::types::RDKafkaRespErr;
use snapfeed_harness::broker::BrokerKind;
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::generator::Snapshot;
use snapfeed_runtime::kafka::{GuaranteedWriter, ProcessingGuarantee, WriteError};
use snapfeed_runtime::shutdown;
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_detector_stops_with_the_error_instead_of_taking_over() {
    let fixture = Fixture::new("cd-fenced", 2).await;
    if fixture.guarantee != ProcessingGuarantee::ExactlyOnce {
        eprintln!("skipped: fencing needs transactions");
        return;
    }
    let options = DetectorOptions::default();
    let transactional_id = format!(
        "{}.change-detector.{}",
        fixture.pipeline.name, options.instance_id
    );
    let snapshot = Snapshot::initial(200, 701);
    let mock = fixture.broker.kind() == BrokerKind::Mock;
    if mock {
        // Input first, so that the detector's own sends are the next produce requests.
        block_in_place(|| fixture.publish_snapshot(&snapshot, "s1.csv"));
    }
    let http = free_addr();
    let (trigger, shutdown) = shutdown::channel();
    let detector = tokio::spawn(change_detector::run(
        fixture.detector_config(&options, http),
        shutdown,
    ));
    // The instance that takes over, held until the end.
    let _successor = if mock {
        // Gap (mock cluster): no fencing by a second producer; an INVALID_PRODUCER_EPOCH answer
        // to its produce request is how a fenced transactional producer learns it.
        assert!(fixture
            .broker
            .fail_produce_requests(RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH, 1));
        None
    } else {
        // A successor with the same transactional id, once the detector has set up its own;
        // then the input, so that the detector's next transaction meets the fence.
        wait_for_readyz(http).await;
        let successor = block_in_place(|| {
            GuaranteedWriter::connect(
                &fixture.broker.kafka_config(),
                "change-detector",
                ProcessingGuarantee::ExactlyOnce,
                &transactional_id,
            )
            .unwrap()
        });
        block_in_place(|| fixture.publish_snapshot(&snapshot, "s1.csv"));
        Some(successor)
    };

    // No shutdown signal: the detector ends on its own.
    let result = tokio::time::timeout(Duration::from_secs(90), detector)
        .await
        .expect("the fenced detector stopped by itself")
        .expect("no panic");
    drop(trigger);
    match result {
        Err(ChangeDetectorError::Write(error)) => {
            assert!(matches!(error, WriteError::Fenced { .. }), "{error}");
            assert!(error.is_fatal());
            assert!(
                error.to_string().contains(&transactional_id),
                "names the contested id: {error}"
            );
        }
        other => panic!("expected the detector to stop fenced, got {other:?}"),
    }
}

/// Waits until the detector at `http` reports ready.
async fn wait_for_readyz(http: std::net::SocketAddr) {
    snapfeed_harness::wait::until(
        "the detector reports ready",
        Duration::from_secs(60),
        || {
            matches!(
                block_in_place(|| snapfeed_harness::endpoint::http_get(http, "/readyz")),
                Some((200, _))
            )
        },
    )
    .await;
}
