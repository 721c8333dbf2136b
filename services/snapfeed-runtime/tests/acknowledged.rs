//! `kafka::await_acknowledged` on librdkafka's in-process mock broker: it returns once every
//! accepted message is acknowledged, and gives up (false) at its bound when no broker answers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use snapfeed_runtime::kafka::{await_acknowledged, DeliveryTracker};

fn producer(bootstrap: &str) -> ThreadedProducer<DeliveryTracker> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "5000")
        .create_with_context(DeliveryTracker::default())
        .unwrap()
}

#[test]
fn returns_once_every_message_is_acknowledged() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    mock.create_topic("acks", 2, 1).unwrap();
    let producer = producer(&mock.bootstrap_servers());
    for i in 0..500 {
        let key = format!("k{i}");
        producer
            .send(BaseRecord::to("acks").key(&key).payload("v"))
            .map_err(|(error, _)| error)
            .unwrap();
    }
    assert!(producer.in_flight_count() > 0, "sent, not yet acknowledged");
    assert!(await_acknowledged(&producer, Duration::from_secs(30)));
    assert_eq!(producer.in_flight_count(), 0);
    assert_eq!(producer.context().take_failures(), 0);
}

#[test]
fn gives_up_at_its_bound_when_nothing_answers() {
    // A port nothing listens on: messages stay queued until message.timeout.ms.
    let producer = producer("127.0.0.1:9");
    producer
        .send(BaseRecord::to("acks").key("k").payload("v"))
        .map_err(|(error, _)| error)
        .unwrap();
    assert!(!await_acknowledged(&producer, Duration::from_millis(200)));
    assert_eq!(producer.in_flight_count(), 1);
}
