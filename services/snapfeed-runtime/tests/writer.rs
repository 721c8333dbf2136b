//! The one writer of the delivery guarantee (`kafka::GuaranteedWriter`): what it commits is
//! written once and readable, a commit carries the consumed offsets, unacknowledged records are
//! reported rather than passed over (and no consumed offset is committed past them), per-record acknowledgements resolve, a fatal producer is
//! replaced and writing goes on, and a fenced one is never replaced. The broker is the harness's
//! (the mock by default, Nisshi at_least_once and Tansu exactly_once in CI); the failures are
//! staged on the mock, which can inject produce errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_harness::broker::{BrokerKind, TestBroker};
use snapfeed_runtime::kafka::{
    Consumed, GuaranteedWriter, KafkaConfig, OutgoingRecord, ProcessingGuarantee, WriteError,
};
use tokio::task::block_in_place;

fn connect(broker: &TestBroker, guarantee: ProcessingGuarantee, id: &str) -> GuaranteedWriter {
    block_in_place(|| {
        GuaranteedWriter::connect(&broker.kafka_config(), "writer-test", guarantee, id).unwrap()
    })
}

fn unique(label: &str) -> String {
    format!("{label}-{}-{:?}", std::process::id(), Instant::now())
}

/// Every message of `topic` (committed only), as key → times seen.
fn keys_on(broker: &TestBroker, topic: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for message in block_in_place(|| broker.read_to_end(topic, true)) {
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// A `[kafka]` section pointing at a port nothing listens on, with short bounds.
fn unreachable_kafka() -> KafkaConfig {
    toml::from_str(
        "bootstrap_servers = \"127.0.0.1:9\"\nmessage_timeout_ms = 500\nrequest_timeout_ms = 3000\n",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_are_written_once_and_readable() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("writer-commit", 2).await;
    let topic = &pipeline.topics.changes;
    let writer = connect(&broker, broker.guarantee(), &unique("commit"));
    block_in_place(|| {
        for round in 0..2 {
            for i in 0..150 {
                let key = format!("k{round}-{i}");
                writer
                    .send(OutgoingRecord::new(topic, key.as_bytes(), b"v"))
                    .unwrap();
            }
            // Two commits: the second begins a new transaction on the first send after it.
            writer.commit_sent().unwrap();
        }
        writer.close(Duration::from_secs(5)).unwrap();
    });
    let seen = keys_on(&broker, topic);
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1), "each record once: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_carries_the_consumed_offsets() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("writer-offsets", 1).await;
    let (input, output) = (&pipeline.topics.snapshots, &pipeline.topics.changes);
    let group = unique("writer-offsets-group");
    let guarantee = broker.guarantee();
    let writer = connect(&broker, guarantee, &unique("offsets"));
    block_in_place(|| {
        for i in 0..10 {
            let key = format!("in{i}");
            writer
                .send(OutgoingRecord::new(input, key.as_bytes(), b"v"))
                .unwrap();
        }
        writer.commit_sent().unwrap();

        let consumer: BaseConsumer = broker
            .kafka_config()
            .consumer_config("writer-test", &group, guarantee)
            .create()
            .unwrap();
        consumer.subscribe(&[input]).unwrap();
        let (mut read, deadline) = (0, Instant::now() + Duration::from_secs(60));
        let mut next = TopicPartitionList::new();
        while read < 10 {
            assert!(Instant::now() < deadline, "read {read} of 10 input records");
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                read += 1;
                let key = format!("out-{}", message.offset());
                writer
                    .send(OutgoingRecord::new(output, key.as_bytes(), b"v"))
                    .unwrap();
                next = TopicPartitionList::new();
                next.add_partition_offset(input, 0, Offset::Offset(message.offset() + 1))
                    .unwrap();
            }
        }
        writer
            .commit(Some(Consumed {
                consumer: &consumer,
                offsets: &next,
            }))
            .unwrap();
        let committed = consumer.committed(Duration::from_secs(10)).unwrap();
        let offset = committed.find_partition(input, 0).unwrap().offset();
        if broker.kind() == BrokerKind::Mock && guarantee.is_transactional() {
            // Gap (mock cluster): it acknowledges TxnOffsetCommit without storing it
            // (rdkafka_mock_handlers.c). Checked on Tansu and Nisshi.
            eprintln!("offsets not checked: the mock does not store transactional offsets");
        } else {
            assert_eq!(
                offset,
                Offset::Offset(10),
                "the group's offset moved with the commit"
            );
        }
    });
    assert_eq!(keys_on(&broker, output).len(), 10);
}

#[test]
fn unacknowledged_records_are_reported_not_passed_over() {
    let writer = GuaranteedWriter::connect(
        &unreachable_kafka(),
        "writer-test",
        ProcessingGuarantee::AtLeastOnce,
        "unused",
    )
    .unwrap();
    for i in 0..3 {
        let key = format!("k{i}");
        writer
            .send(OutgoingRecord::new("nowhere", key.as_bytes(), b"v"))
            .unwrap();
    }
    match writer.acknowledge() {
        Err(WriteError::Unacknowledged { failed: 3 }) => {}
        other => panic!("expected 3 unacknowledged records, got {other:?}"),
    }
    // Abandoning the step forgets its failures; nothing else is pending.
    writer.abort().unwrap();
    writer.acknowledge().unwrap();
}

/// The committed offset of partition 0 of `topic` for the group `consumer` belongs to.
fn committed_offset(consumer: &BaseConsumer, topic: &str) -> Offset {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed.find_partition(topic, 0).unwrap().offset()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_commits_no_offsets_past_an_unacknowledged_record() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("writer-unacked-offsets", 1).await;
    let input = pipeline.topics.snapshots.clone();
    let group = unique("writer-unacked-group");
    block_in_place(|| {
        let consumer: BaseConsumer = broker
            .kafka_config()
            .consumer_config("writer-test", &group, ProcessingGuarantee::AtLeastOnce)
            .create()
            .unwrap();
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&input, 0, Offset::Offset(5))
            .unwrap();
        // The output record is never acknowledged (no broker behind this writer).
        let nowhere = GuaranteedWriter::connect(
            &unreachable_kafka(),
            "writer-test",
            ProcessingGuarantee::AtLeastOnce,
            "unused",
        )
        .unwrap();
        nowhere
            .send(OutgoingRecord::new("lost", b"k", b"v"))
            .unwrap();
        match nowhere.commit(Some(Consumed {
            consumer: &consumer,
            offsets: &offsets,
        })) {
            Err(WriteError::Unacknowledged { failed: 1 }) => {}
            other => panic!("expected the unacknowledged record to fail the commit, got {other:?}"),
        }
        assert_eq!(
            committed_offset(&consumer, &input),
            Offset::Invalid,
            "the consumed offsets were committed although their output was not acknowledged"
        );
        if broker.kind() == BrokerKind::Mock {
            // Control: the same offsets do commit once the output is acknowledged. Only on the
            // mock, which takes offset commits from a consumer that never joined the group.
            let writer = connect(
                &broker,
                ProcessingGuarantee::AtLeastOnce,
                &unique("unacked"),
            );
            writer
                .send(OutgoingRecord::new(&pipeline.topics.changes, b"k", b"v"))
                .unwrap();
            writer
                .commit(Some(Consumed {
                    consumer: &consumer,
                    offsets: &offsets,
                }))
                .unwrap();
            assert_eq!(committed_offset(&consumer, &input), Offset::Offset(5));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_record_acknowledgements_resolve_or_fail() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("writer-ack", 1).await;
    let writer = Arc::new(connect(
        &broker,
        ProcessingGuarantee::AtLeastOnce,
        &unique("ack"),
    ));
    let topic = pipeline.topics.deliveries.clone();
    let acknowledgement = writer
        .send_acknowledged(OutgoingRecord::new(&topic, b"k", b"v").partition(0))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), acknowledgement.wait())
        .await
        .expect("acknowledged in time")
        .unwrap();

    let nowhere = Arc::new(
        block_in_place(|| {
            GuaranteedWriter::connect(
                &unreachable_kafka(),
                "writer-test",
                ProcessingGuarantee::AtLeastOnce,
                "unused",
            )
        })
        .unwrap(),
    );
    let acknowledgement = nowhere
        .send_acknowledged(OutgoingRecord::new("lost", b"k", b"v").partition(2))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(30), acknowledgement.wait())
        .await
        .expect("failed in time")
    {
        Err(WriteError::Send {
            topic,
            partition: Some(2),
            ..
        }) => assert_eq!(topic, "lost"),
        other => panic!("expected a failed send naming lost[2], got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_is_replaced_and_writing_goes_on() {
    let broker = TestBroker::from_env();
    if broker.kind() != BrokerKind::Mock {
        eprintln!("skipped: only the mock cluster can fail produce requests on demand");
        return;
    }
    let pipeline = broker.pipeline("writer-fatal", 1).await;
    let topic = &pipeline.topics.changes;
    let writer = connect(&broker, ProcessingGuarantee::AtLeastOnce, &unique("fatal"));
    // The head-of-line request refused with OUT_OF_ORDER_SEQUENCE_NUMBER: the idempotent
    // producer can no longer reason about its sequence and librdkafka declares it fatal.
    assert!(broker.fail_produce_requests(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        1
    ));
    block_in_place(|| {
        writer
            .send(OutgoingRecord::new(topic, b"lost", b"v"))
            .unwrap();
        assert!(
            writer.acknowledge().is_err(),
            "the refused record is reported"
        );
        writer.abort().unwrap();
        assert_eq!(writer.replacements(), 1, "the fatal producer was replaced");
        writer
            .send(OutgoingRecord::new(topic, b"after", b"v"))
            .unwrap();
        writer.acknowledge().unwrap();
    });
    assert!(keys_on(&broker, topic).contains_key("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_never_replaced() {
    let broker = TestBroker::from_env();
    if broker.guarantee() != ProcessingGuarantee::ExactlyOnce {
        eprintln!("skipped: fencing needs transactions");
        return;
    }
    let pipeline = broker.pipeline("writer-fenced", 1).await;
    let topic = &pipeline.topics.changes;
    let id = unique("fenced");
    let zombie = connect(&broker, ProcessingGuarantee::ExactlyOnce, &id);
    let _successor = if broker.kind() == BrokerKind::Mock {
        // Gap (mock cluster): no fencing by a second producer; an INVALID_PRODUCER_EPOCH
        // answer is how a fenced transactional producer learns it, so stage that instead.
        assert!(broker
            .fail_produce_requests(RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH, 1));
        None
    } else {
        // A successor with the same transactional id fences the zombie.
        Some(connect(&broker, ProcessingGuarantee::ExactlyOnce, &id))
    };
    block_in_place(|| {
        zombie
            .send(OutgoingRecord::new(topic, b"zombie", b"v"))
            .unwrap();
        let error = zombie
            .commit_sent()
            .expect_err("a fenced producer cannot commit");
        let error = match error {
            WriteError::Fenced { .. } => error,
            // The commit may fail for the fencing before the producer knows it is fenced:
            // the abort that follows must find out.
            _ => zombie
                .abort()
                .expect_err("a fenced producer cannot abort either"),
        };
        assert!(matches!(error, WriteError::Fenced { .. }), "{error}");
        assert!(error.is_fatal());
        assert!(error.to_string().contains(&id), "names the id: {error}");
        assert_eq!(
            zombie.replacements(),
            0,
            "never taken back from the successor"
        );
    });
}
