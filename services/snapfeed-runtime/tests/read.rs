//! `kafka::TopicReader` reads partitions back to their end: every message once, in offset order
//! per partition, only the partitions asked for, and an empty topic ends at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;

use rdkafka::Message;
use snapfeed_harness::broker::TestBroker;
use snapfeed_runtime::kafka::{GuaranteedWriter, OutgoingRecord, TopicReader};
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_each_partition_to_its_end_in_order() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("reader", 3).await;
    let (topic, empty) = (&pipeline.topics.deliveries, &pipeline.topics.rejects);
    let kafka = broker.kafka_config();
    block_in_place(|| {
        let id = format!("reader-{}", std::process::id());
        let writer =
            GuaranteedWriter::connect(&kafka, "reader-test", broker.guarantee(), &id).unwrap();
        for partition in 0..3 {
            for i in 0..(10 * (partition + 1)) {
                let key = format!("p{partition}-{i:03}");
                writer
                    .send(OutgoingRecord::new(topic, key.as_bytes(), b"v").partition(partition))
                    .unwrap();
            }
        }
        writer.commit_sent().unwrap();

        let reader = TopicReader::new(&kafka, "reader-test", broker.guarantee()).unwrap();
        assert_eq!(reader.partitions(topic).unwrap(), 3);
        let mut keys: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        let read = reader
            .read_all(topic, |m| {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                keys.entry(m.partition()).or_default().push(key);
            })
            .unwrap();
        assert_eq!(read, 60);
        for (partition, keys) in &keys {
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, &sorted, "partition {partition} in offset order");
            assert_eq!(keys.len(), 10 * (*partition as usize + 1));
        }

        // Only the partitions asked for; a second read of the same reader starts over.
        let mut seen = Vec::new();
        let read = reader
            .read_to_end(topic, &[1], |m| seen.push(m.partition()))
            .unwrap();
        assert_eq!(read, 20);
        assert!(seen.iter().all(|&p| p == 1));

        assert_eq!(reader.read_all(empty, |_| {}).unwrap(), 0);
    });
}
