//! The harness's brokers behave as the services need: topics per test, the Java partitioner,
//! reading to partition EOF, transactions where the broker has them, persistence across a
//! restart where it has that. Runs on whichever broker the environment selects.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_harness::broker::{BrokerKind, StopSignal, TestBroker};
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::partition::partition_for_key;

fn producer(broker: &TestBroker, transactional_id: Option<&str>) -> BaseProducer {
    let kafka = broker.kafka_config();
    let guarantee = if transactional_id.is_some() {
        ProcessingGuarantee::ExactlyOnce
    } else {
        ProcessingGuarantee::AtLeastOnce
    };
    kafka
        .producer_config("harness-test", guarantee, transactional_id)
        .create()
        .unwrap()
}

fn send_keys(producer: &BaseProducer, topic: &str, keys: &[String]) {
    for key in keys {
        producer
            .send(
                BaseRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(b"v".as_slice()),
            )
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_land_where_the_java_partitioner_says_and_read_back_to_eof() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("partitioner", 6).await;
    let keys: Vec<String> = (0..300)
        .map(|i| format!("05D22225{i:02}|ACC{i}|94500-6"))
        .collect();
    let topic = pipeline.topics.snapshots.clone();
    let messages = tokio::task::spawn_blocking({
        let keys = keys.clone();
        move || {
            let producer = producer(&broker, None);
            send_keys(&producer, &topic, &keys);
            producer.flush(Duration::from_secs(30)).unwrap();
            broker.read_to_end(&topic, false)
        }
    })
    .await
    .unwrap();
    assert_eq!(messages.len(), keys.len());
    for message in &messages {
        let key = message.key().unwrap();
        assert_eq!(
            message.partition(),
            partition_for_key(key, 6),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_where_the_broker_has_them() {
    let broker = TestBroker::from_env();
    if broker.guarantee() != ProcessingGuarantee::ExactlyOnce {
        // Gap (Nisshi): init_transactions is refused; services run at_least_once there.
        eprintln!("skipped on {}: no transactions", broker.kind());
        return;
    }
    let pipeline = broker.pipeline("txn", 3).await;
    let hides_aborted = broker.hides_aborted_records();
    let topic = pipeline.topics.changes.clone();
    let (committed, everything) = tokio::task::spawn_blocking(move || {
        let producer = producer(&broker, Some(&format!("{}-tx", pipeline.name)));
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        producer.begin_transaction().unwrap();
        send_keys(&producer, &topic, &["a".into(), "b".into()]);
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
        producer.begin_transaction().unwrap();
        send_keys(&producer, &topic, &["aborted".into()]);
        producer.flush(Duration::from_secs(30)).unwrap();
        producer.abort_transaction(Duration::from_secs(30)).unwrap();
        (
            broker.read_to_end(&topic, true),
            broker.read_to_end(&topic, false),
        )
    })
    .await
    .unwrap();
    let keys = |messages: &[rdkafka::message::OwnedMessage]| -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = messages.iter().map(|m| m.key().unwrap().to_vec()).collect();
        keys.sort();
        keys
    };
    assert!(keys(&committed).contains(&b"a".to_vec()));
    assert!(keys(&committed).contains(&b"b".to_vec()));
    assert!(keys(&everything).contains(&b"a".to_vec()));
    // Gap (mock cluster, Tansu): aborted records stay visible to read_committed readers, so the
    // "aborted is invisible" half of the check runs only on a cluster that hides them.
    if hides_aborted {
        assert_eq!(keys(&committed), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_committed_offsets_survive_a_broker_crash() {
    let mut broker = TestBroker::from_env();
    if broker.kind() != BrokerKind::Nisshi {
        eprintln!(
            "skipped on {}: only Nisshi runs with persistent storage here",
            broker.kind()
        );
        return;
    }
    let pipeline = broker.pipeline("restart", 2).await;
    let topic = pipeline.topics.snapshots.clone();
    let group = format!("{}.reader", pipeline.name);
    tokio::task::spawn_blocking(move || {
        let producer = producer(&broker, None);
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        send_keys(&producer, &topic, &keys);
        producer.flush(Duration::from_secs(30)).unwrap();
        drop(producer);

        let consumer = |broker: &TestBroker| -> BaseConsumer {
            broker
                .kafka_config()
                .consumer_config("harness-test", &group, ProcessingGuarantee::AtLeastOnce)
                .create()
                .unwrap()
        };
        let first = consumer(&broker);
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&topic, 0, Offset::Offset(7))
            .unwrap();
        first.commit(&offsets, CommitMode::Sync).unwrap();
        drop(first);

        broker.restart(StopSignal::Kill);

        assert_eq!(broker.read_to_end(&topic, false).len(), 50);
        let second = consumer(&broker);
        let mut query = TopicPartitionList::new();
        query.add_partition(&topic, 0);
        let committed = second
            .committed_offsets(query, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            committed.find_partition(&topic, 0).unwrap().offset(),
            Offset::Offset(7)
        );
    })
    .await
    .unwrap();
}
