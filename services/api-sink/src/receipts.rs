//! What an earlier run already delivered: on assignment the sink reads its own receipts on
//! `deliveries` and skips every change past the committed offset whose receipt is there — so a
//! sink killed between delivering and committing does not submit those changes again after the
//! restart (an API without idempotency keys, like CommCare, would record each re-send as
//! another form in the case's history).
//!
//! How: receipts go to the `deliveries` partition of their change's `changes` partition when
//! the two topics have the same partition count (what `init-topics` creates), so assigning
//! partition P means reading `deliveries` partition P from its beginning to its end — records
//! in the order they were written. A receipt for (P, offset ≥ the committed offset) marks that
//! change delivered. `api-sink replay` writes a **replay marker** (a receipt with op `REPLAY`,
//! key [`REPLAY_MARKER_KEY`], `source_offset` = where the group was set back to) before the sink
//! starts again: receipts written before the marker are void for offsets at or past it, so a
//! replay re-sends its range as it always did, and a crash during the replayed run is again
//! covered by the receipts written after it.
//!
//! Guarantee and its limit: this only ever *removes* a re-send whose first send is known to
//! have succeeded (its receipt was acknowledged); a change sent whose receipt was not written
//! (killed between the API's answer and the receipt) is sent again — at least once, as before.
//! When the topics are not co-partitioned, or the read fails, nothing is skipped (logged). The
//! read costs one pass over the assigned partitions of `deliveries` (bounded by its retention).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::kafka::TopicReader;
use snapfeed_runtime::records::{now_millis, AvroRecord, DeliveryReceipt};

/// Record key of a replay marker on `deliveries`.
pub const REPLAY_MARKER_KEY: &str = "snapfeed-replay";
/// `op` of a replay marker.
pub const REPLAY_OP: &str = "REPLAY";

/// Per assigned partition: offsets (at or past the committed one) already delivered, with the
/// record key the receipt names.
pub type DeliveredChanges = HashMap<i32, HashMap<i64, String>>;

/// Reads receipts back from `deliveries`.
pub struct ReceiptReader {
    /// Group-less reader of `deliveries`.
    reader: TopicReader,
    /// `deliveries`.
    topic: String,
    /// To decode receipts.
    schemas: Arc<SchemaStore>,
}

impl std::fmt::Debug for ReceiptReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptReader")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ReceiptReader {
    /// A reader of `topic` (`deliveries`, co-partitioned with `changes`).
    pub fn new(reader: TopicReader, topic: String, schemas: Arc<SchemaStore>) -> ReceiptReader {
        ReceiptReader {
            reader,
            topic,
            schemas,
        }
    }

    /// For each of `committed` (partition → committed offset), the changes at or past it that
    /// have a receipt. Blocking.
    pub fn delivered(&self, committed: &BTreeMap<i32, i64>) -> KafkaResult<DeliveredChanges> {
        let partitions: Vec<i32> = committed.keys().copied().collect();
        let mut log = ReceiptLog::new(committed);
        self.reader
            .read_to_end(&self.topic, &partitions, |message| {
                if let Some(receipt) = self.decode(message) {
                    log.apply(&receipt);
                }
            })?;
        Ok(log.delivered)
    }

    fn decode(&self, message: &BorrowedMessage<'_>) -> Option<DeliveryReceipt> {
        let location = MessageLocation::of(message);
        let payload = message.payload()?;
        match self
            .schemas
            .decode::<DeliveryReceipt>(payload, DeliveryReceipt::SCHEMA, &location)
        {
            Ok(receipt) => Some(receipt),
            Err(error) => {
                // Skipping it can only mean sending its change again: the old behaviour.
                tracing::warn!(message = "Skipping an unreadable receipt.", %error);
                None
            }
        }
    }
}

/// The receipts of the assigned partitions, applied in the order they were written.
#[derive(Debug)]
struct ReceiptLog<'c> {
    committed: &'c BTreeMap<i32, i64>,
    delivered: DeliveredChanges,
}

impl<'c> ReceiptLog<'c> {
    fn new(committed: &'c BTreeMap<i32, i64>) -> ReceiptLog<'c> {
        ReceiptLog {
            committed,
            delivered: HashMap::new(),
        }
    }

    fn apply(&mut self, receipt: &DeliveryReceipt) {
        let partition = receipt.source_partition;
        let Some(&committed) = self.committed.get(&partition) else {
            return;
        };
        if receipt.op == REPLAY_OP {
            // Receipts so far are void from the replay's start on: that range is sent again.
            if let Some(offsets) = self.delivered.get_mut(&partition) {
                offsets.retain(|offset, _| *offset < receipt.source_offset);
            }
            return;
        }
        if receipt.source_offset >= committed {
            self.delivered
                .entry(partition)
                .or_default()
                .insert(receipt.source_offset, receipt.key.clone());
        }
    }
}

/// The replay marker of `partition`, set back to `offset`: a receipt-shaped record any Avro
/// reader of `deliveries` can read (op `REPLAY`, status 0, no Idempotency-Key).
pub fn replay_marker(partition: i32, offset: i64) -> DeliveryReceipt {
    DeliveryReceipt {
        key: REPLAY_MARKER_KEY.into(),
        version: 0,
        op: REPLAY_OP.into(),
        status: 0,
        attempts: 0,
        latency_ms: 0,
        response_id: None,
        idempotency_key: String::new(),
        source_partition: partition,
        source_offset: offset,
        delivered_at: now_millis(),
    }
}

/// After `api-sink replay`: a replay marker on `deliveries` for every partition set back, so
/// the receipts written before it do not keep the replayed range from being sent (blocking).
/// Acknowledged before it returns: a sink started after `replay` exits sees the markers.
pub fn write_replay_markers(
    config: &crate::ApiSinkConfig,
    report: &snapfeed_runtime::replay::ReplayReport,
) -> Result<(), String> {
    use snapfeed_runtime::kafka::{GuaranteedWriter, OutgoingRecord, ProcessingGuarantee};
    use snapfeed_runtime::service::HasCommonSections;

    let failed = |step: &str| {
        let step = step.to_string();
        move |error: &dyn std::fmt::Display| {
            format!("the replay moved the offsets but could not write its markers on deliveries ({step}: {error}); run the same replay again before starting the sink, or receipts written before it keep the range from being re-sent")
        }
    };
    let topics = config.common().topic_names();
    let schemas = config
        .common()
        .load_schemas_for_command()
        .map_err(|e| failed("schemas")(&e))?;
    // With registry framing, the markers are framed like every receipt.
    snapfeed_runtime::avro::registry::register_kinds(&schemas, &topics, &[DeliveryReceipt::SCHEMA])
        .map_err(|e| failed("schema registry")(&e))?;
    let schema = schemas
        .current(DeliveryReceipt::SCHEMA)
        .map_err(|e| failed("schemas")(&e))?;
    let reader = TopicReader::new(
        &config.kafka,
        crate::SERVICE,
        ProcessingGuarantee::AtLeastOnce,
    )
    .map_err(|e| failed("reader")(&e))?;
    let partitions = reader
        .partitions(&topics.deliveries)
        .map_err(|e| failed("metadata")(&e))?;
    let writer = GuaranteedWriter::connect(
        &config.kafka,
        crate::SERVICE,
        ProcessingGuarantee::AtLeastOnce,
        &format!("{}.{}.replay", config.pipeline.name, crate::SERVICE),
    )
    .map_err(|e| failed("producer")(&e))?;
    for moved in &report.moves {
        if moved.partition >= partitions {
            // Not co-partitioned: the sink does not consult receipts at all.
            continue;
        }
        let payload = schema
            .encode(&replay_marker(moved.partition, moved.to))
            .map_err(|e| failed("encode")(&e))?;
        writer
            .send(
                OutgoingRecord::new(&topics.deliveries, REPLAY_MARKER_KEY.as_bytes(), &payload)
                    .partition(moved.partition),
            )
            .map_err(|e| failed("send")(&e))?;
    }
    writer
        .commit_sent()
        .map_err(|e| failed("acknowledge")(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(partition: i32, offset: i64) -> DeliveryReceipt {
        DeliveryReceipt {
            key: format!("K{offset}"),
            op: "UPDATE".into(),
            status: 200,
            idempotency_key: "ik".into(),
            ..replay_marker(partition, offset)
        }
    }

    fn delivered(receipts: &[DeliveryReceipt], committed: &[(i32, i64)]) -> Vec<(i32, i64)> {
        let committed: BTreeMap<i32, i64> = committed.iter().copied().collect();
        let mut log = ReceiptLog::new(&committed);
        for receipt in receipts {
            log.apply(receipt);
        }
        let mut found: Vec<(i32, i64)> = log
            .delivered
            .iter()
            .flat_map(|(p, offsets)| offsets.keys().map(move |o| (*p, *o)))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn receipts_at_or_past_the_committed_offset_of_assigned_partitions_count() {
        let receipts = [receipt(0, 3), receipt(0, 5), receipt(0, 6), receipt(1, 9)];
        assert_eq!(delivered(&receipts, &[(0, 5)]), [(0, 5), (0, 6)]);
        assert_eq!(
            delivered(&receipts, &[(0, 0), (1, 9)]),
            [(0, 3), (0, 5), (0, 6), (1, 9)]
        );
    }

    #[test]
    fn a_replay_marker_voids_the_receipts_before_it_from_its_offset_on() {
        let receipts = [
            receipt(0, 4),
            receipt(0, 5),
            receipt(0, 6),
            // `replay --to` offset 5: the range from 5 is to be sent again …
            replay_marker(0, 5),
            // … and the replayed run's own receipts count again.
            receipt(0, 5),
        ];
        assert_eq!(delivered(&receipts, &[(0, 5)]), [(0, 5)]);
        assert_eq!(delivered(&receipts[..4], &[(0, 5)]), []);
        assert_eq!(delivered(&receipts[..4], &[(0, 0)]), [(0, 4)]);
    }
}
