//! [`OutgoingRecord`]: one record as a stage hands it to the writer — topic, partition (or the
//! key's murmur2 partition), key, value or tombstone, headers — turned into librdkafka's record
//! only at the send, so the writer can name topic and partition in its errors.

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::BaseRecord;

/// One record to write. Keys are UTF-8 record keys (or file hashes); `payload: None` is a
/// tombstone.
#[derive(Debug)]
pub struct OutgoingRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Explicit partition (co-partitioned topics), or `None` for the murmur2 partitioner.
    pub partition: Option<i32>,
    /// Record key.
    pub key: &'a [u8],
    /// Value; `None` deletes the key from a compacted topic.
    pub payload: Option<&'a [u8]>,
    /// Provenance or control headers.
    pub headers: Option<OwnedHeaders>,
    /// Record timestamp (ms since the epoch); `None`: the producer's clock at the send.
    pub timestamp: Option<i64>,
}

impl<'a> OutgoingRecord<'a> {
    /// A record for `topic`, partitioned by key.
    pub fn new(topic: &'a str, key: &'a [u8], payload: &'a [u8]) -> OutgoingRecord<'a> {
        OutgoingRecord {
            topic,
            partition: None,
            key,
            payload: Some(payload),
            headers: None,
            timestamp: None,
        }
    }

    /// With this timestamp (ms since the epoch) instead of the time of the send.
    pub fn timestamp(mut self, millis: i64) -> OutgoingRecord<'a> {
        self.timestamp = Some(millis);
        self
    }

    /// To this partition.
    pub fn partition(mut self, partition: i32) -> OutgoingRecord<'a> {
        self.partition = Some(partition);
        self
    }

    /// With these headers.
    pub fn headers(mut self, headers: OwnedHeaders) -> OutgoingRecord<'a> {
        self.headers = Some(headers);
        self
    }

    pub(super) fn base(
        &self,
        headers: Option<OwnedHeaders>,
        ticket: usize,
    ) -> BaseRecord<'a, [u8], [u8], usize> {
        let mut record = BaseRecord::with_opaque_to(self.topic, ticket).key(self.key);
        if let Some(payload) = self.payload {
            record = record.payload(payload);
        }
        if let Some(partition) = self.partition {
            record = record.partition(partition);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        if let Some(timestamp) = self.timestamp {
            record = record.timestamp(timestamp);
        }
        record
    }
}
