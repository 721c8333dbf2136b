//! Receipts are sent without the lane waiting for them, but the offset still waits: a change
//! whose receipt the broker has not acknowledged is never committed past, and once the broker
//! takes receipts again the offset moves on — without the change being sent to the API again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use rdkafka::types::RDKafkaRespErr;
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::stub_api::Reply;

use common::{ends, key, receipt_ids, run_sink, Fixture, SinkOptions, TestChange};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_the_broker_refuses_holds_the_offset_until_it_is_recorded() {
    const N: usize = 3;
    const ANSWER_DELAY: Duration = Duration::from_millis(500);
    let f = Fixture::new("receipt-ack", 1).await;
    // A short message timeout: a refused receipt fails (and is re-sent) within the test.
    let http = free_addr();
    let path = f.dir.path().join("sink.toml");
    let text = f
        .sink_toml(&SinkOptions::default(), &http.to_string())
        .replacen("[kafka]\n", "[kafka]\nmessage_timeout_ms = 1500\n", 1);
    std::fs::write(&path, text).unwrap();
    let config = snapfeed_runtime::config::load(Some(&path), Vec::new()).unwrap();
    let sink = run_sink(config, http);
    sink.wait_ready(LIMIT).await;
    // One change through first: commits happen at all.
    let first = f.produce(&[TestChange::new(key(0), 1)]).await;
    f.wait_committed(&ends(&first), LIMIT).await;

    // The API answers the next changes only after the broker has started refusing every
    // produce request, so their receipts are refused (retried by the producer, timed out,
    // re-sent by the sink) — while the requests themselves succeed.
    f.stub
        .push_replies((0..N).map(|_| Reply::ok().with_delay(ANSWER_DELAY)));
    let changes: Vec<TestChange> = (1..=N).map(|k| TestChange::new(key(k), 1)).collect();
    let produced = f.produce(&changes).await;
    if !f.broker.fail_produce_requests(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        100_000,
    ) {
        eprintln!("skipped: only the mock cluster can refuse produce requests");
        sink.stop().await;
        return;
    }
    assert!(f.stub.wait_for_requests(1 + N, LIMIT).await);
    // Every answer is in, and longer than the message timeout has passed since.
    tokio::time::sleep(ANSWER_DELAY + Duration::from_secs(3)).await;
    assert_eq!(
        f.committed().get(&produced[0].partition),
        Some(&produced[0].offset),
        "delivered, but no receipt acknowledged: the committed offset stays at the first"
    );

    f.broker
        .fail_produce_requests(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, 0);
    f.wait_committed(&ends(&produced), LIMIT).await;
    let receipts = f.wait_receipts(1 + N, LIMIT).await;
    sink.stop().await;

    let ids = receipt_ids(&receipts);
    for change in &produced {
        assert!(
            ids.contains(&(change.key.clone(), 1)),
            "receipt of {}",
            change.key
        );
    }
    let effects = f.stub.effects_by_idempotency_key();
    for change in &produced {
        assert_eq!(
            effects[&change.idempotency_key].len(),
            1,
            "{} sent to the API once: only its receipt is re-sent",
            change.key
        );
    }
}
