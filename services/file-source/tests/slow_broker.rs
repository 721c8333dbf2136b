//! `exactly_once` against a broker that is slow for a while, on librdkafka's mock cluster (its
//! own, to inject the delay; this file holds one test because it points the harness at that
//! cluster through `SNAPFEED_TEST_BOOTSTRAP`). A transaction commit that outlasts
//! `kafka.request_timeout_ms` fails with a retriable error — librdkafka's contract is to call
//! `commit_transaction` again (or abort when told to) — so once the broker answers quickly
//! again, file-source must get on with the file rather than stay stuck.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use snapfeed_harness::broker::{TestBroker, TestPipeline};
use snapfeed_harness::generator::{Snapshot, WriteOptions};
use snapfeed_harness::wait;
use snapfeed_runtime::topics::{TopicNameOverrides, TopicNames, TopicsConfig};

/// On the mock cluster aborted records stay visible: every key at least once, copies identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_times_out_on_a_slow_broker_does_not_stop_ingestion_for_good() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    // Before any client exists: the harness reads this to use that cluster as is.
    std::env::set_var("SNAPFEED_TEST_BOOTSTRAP", mock.bootstrap_servers());
    let name = format!("t-fs-slow-{}", std::process::id());
    let topics = TopicNames::resolve(&name, &TopicNameOverrides::default());
    let layout = TopicsConfig {
        partitions: 3,
        replication_factor: 1,
        ..TopicsConfig::default()
    };
    for spec in topics.specs(&layout) {
        mock.create_topic(&spec.name, spec.partitions, 1).unwrap();
    }
    let fx = Fixture::with_pipeline(TestBroker::from_env(), TestPipeline { name, topics });
    let mut config = fx.config("marker_suffix = \".ok\"\nrows_per_transaction = 100");
    config.kafka.request_timeout_ms = 2_000;
    let running = start_source(config);
    running.wait_ready(Duration::from_secs(60)).await;

    // Every answer takes 4 s for a while: the first chunk's commit (bounded by 2 s) times out.
    mock.broker_round_trip_time(1, Duration::from_secs(4))
        .unwrap();
    let written = Snapshot::initial(1_000, 80)
        .write(&fx.inbox().join("elr.csv"), &WriteOptions::default())
        .unwrap();
    // Hashed before its marker appears: from then on file-source may move it away.
    let hash = file_hash(&written.path);
    std::fs::write(fx.inbox().join("elr.csv.ok"), "").unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();

    wait::until(
        "the file is processed once the broker is quick again",
        Duration::from_secs(60),
        || fx.processed().join("elr.csv").is_file(),
    )
    .await;
    running.stop().await;
    let records = fx.data_records_of(&hash, true);
    assert_same_keys(
        &key_counts(&records).into_keys().collect(),
        &canonical_keys(&written.accepted_keys),
    );
    let payloads = payloads_by_key(&records);
    assert!(records.iter().all(|r| payloads[&r.key] == r.payload));
}
