//! `at_least_once` under a partial outage, on librdkafka's mock cluster (its own, for fault
//! injection; this file holds one test because it points the harness at that cluster through
//! `SNAPFEED_TEST_BOOTSTRAP`). The `snapshots` partition is led by a broker that goes down while
//! the `files` ledger's broker stays up: a checkpoint must not become durable before the rows it
//! accounts for are acknowledged, or the restart resumes past rows that never arrived.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use snapfeed_harness::broker::{TestBroker, TestPipeline};
use snapfeed_harness::generator::{Snapshot, WriteOptions, WrittenFile};
use snapfeed_harness::wait;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::topics::{TopicNameOverrides, TopicNames, TopicsConfig};

/// Drops a generated file into the inbox, then its marker; returns it with its hash.
fn deliver(inbox: &Path, name: &str, rows: usize, seed: u64) -> (WrittenFile, String) {
    let written = Snapshot::initial(rows, seed)
        .write(&inbox.join(name), &WriteOptions::default())
        .unwrap();
    // Hashed before its marker appears: from then on file-source may move it away.
    let hash = file_hash(&written.path);
    std::fs::write(inbox.join(format!("{name}.ok")), "").unwrap();
    (written, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_rows_unacknowledged_before_a_restart_are_sent_after_it() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(3).unwrap();
    // Before any client exists: the harness reads this to use that cluster as is.
    std::env::set_var("SNAPFEED_TEST_BOOTSTRAP", mock.bootstrap_servers());
    let name = format!("t-fs-alo-outage-{}", std::process::id());
    let topics = TopicNames::resolve(&name, &TopicNameOverrides::default());
    let layout = TopicsConfig {
        partitions: 1,
        replication_factor: 1,
        ..TopicsConfig::default()
    };
    for spec in topics.specs(&layout) {
        mock.create_topic(&spec.name, spec.partitions, 1).unwrap();
    }
    mock.partition_leader(&topics.snapshots, 0, Some(2))
        .unwrap();
    mock.partition_leader(&topics.files, 0, Some(1)).unwrap();
    mock.partition_leader(&topics.rejects, 0, Some(1)).unwrap();
    let mut fx = Fixture::with_pipeline(TestBroker::from_env(), TestPipeline { name, topics });
    fx.guarantee = ProcessingGuarantee::AtLeastOnce;
    let mut config = fx.config("marker_suffix = \".ok\"\nrows_per_transaction = 50");
    // A record the down broker cannot take fails after 2 s; flushes give up after 5 s.
    config.kafka.message_timeout_ms = 2_000;
    config.kafka.request_timeout_ms = 5_000;

    let first = start_source(config.clone());
    first.wait_ready(Duration::from_secs(60)).await;
    // A first file goes through while every broker is up (the producer is fully set up).
    deliver(&fx.inbox(), "warm-up.csv", 20, 61);
    wait::until(
        "the warm-up file is processed",
        Duration::from_secs(60),
        || fx.processed().join("warm-up.csv").is_file(),
    )
    .await;

    // The `snapshots` broker is down for 4 s — twice the message timeout — and file-source is
    // restarted before it is back.
    mock.broker_down(2).unwrap();
    let (written, hash) = deliver(&fx.inbox(), "elr.csv", 200, 60);
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.stop().await;
    let checkpoints: Vec<(String, i64)> = fx
        .ledger(false)
        .iter()
        .filter(|e| e.file_hash == hash)
        .map(|e| (format!("{:?}", e.status), e.rows_committed))
        .collect();
    mock.broker_up(2).unwrap();

    let second = start_source(config);
    wait::until("the file is processed", Duration::from_secs(60), || {
        fx.processed().join("elr.csv").is_file()
    })
    .await;
    second.stop().await;
    let found = key_counts(&fx.data_records_of(&hash, false))
        .into_keys()
        .collect();
    let expected = canonical_keys(&written.accepted_keys);
    let missing = expected.difference(&found).count();
    assert_eq!(
        missing, 0,
        "{missing} rows lost: during the outage the ledger got {checkpoints:?} although no row \
         of the file reached `snapshots`; the restart resumed after them"
    );
}
