//! Reading back what a service wrote to a topic: a message's location, its headers as text,
//! its value decoded with the schema store (either framing, by magic byte), and a consumer
//! that follows a topic as it is written (to see a service mid-transaction) — and
//! [`send_waiting`], for tests that write many records themselves.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};

/// A consumer of the first `partitions` partitions of `topic` from their beginning, reading
/// uncommitted records too (open transactions included), in no group (it never commits) —
/// where reading to partition EOF will not do: a topic being written to, on Tansu, never
/// reaches EOF. Blocking: poll it from `block_in_place` or a blocking thread.
pub fn follow_uncommitted(bootstrap: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // librdkafka wants a group id even for assign(); nothing is ever committed.
        .set("group.id", "snapfeed-test-follower")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("topic follower");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Where `message` is: topic, partition, offset (what decode errors name).
pub fn location(message: &impl Message) -> MessageLocation {
    MessageLocation {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

/// The value of header `name` as text, if the message has it.
pub fn header(message: &impl Message, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every header, in the order written, as `(name, value bytes)`.
pub fn headers(message: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// The message key as text (empty when it has none).
pub fn key_text(message: &impl Message) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}

/// The value decoded as record `schema` (panics, naming the location, if it does not decode).
pub fn decode<T: serde::de::DeserializeOwned>(
    store: &SchemaStore,
    message: &impl Message,
    schema: &str,
) -> T {
    let location = location(message);
    store
        .decode(message.payload().unwrap_or_default(), schema, &location)
        .unwrap_or_else(|e| panic!("{location}: {e}"))
}

/// Sends `record`, serving delivery reports while librdkafka's queue is full (a test writing
/// more records than the queue holds). Blocking.
pub fn send_waiting<K, P>(producer: &BaseProducer, mut record: BaseRecord<'_, K, P>)
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                producer.poll(std::time::Duration::from_millis(10));
                record = back;
            }
        }
    }
}
