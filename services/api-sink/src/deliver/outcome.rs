//! Recording how a change ended — a receipt on `deliveries`, or a dead letter on
//! `dead-letters` — and only once that record is acknowledged by the broker, marking the
//! change's offset done ([`crate::offsets`]), so the committed offset never passes a change
//! whose outcome is not durable.
//!
//! Pipelined: the lane hands the record to the producer and goes on with its next change; a
//! task per record waits for the acknowledgement (re-sending the record after a failure, with
//! backoff) and then marks the offset done. Waiting in the lane cost a lane the producer's
//! linger and a broker round trip per change (~7 ms against a 0.3 ms request). What the wait
//! protected is kept: the offset still moves only past acknowledged records, as a contiguous
//! prefix, and a record never acknowledged (shutdown first) leaves its offset undone, so the
//! change is delivered again after a restart — with the same Idempotency-Key. Records still
//! waiting count as `busy`, so a revoke and the shutdown drain wait for them before their
//! final commit, and in the backlog the consumer bounds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use snapfeed_runtime::records::{now_millis, AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt};

use super::{lock, Attempts, Incoming, Outcome, Sink, REDRIVE_COUNT_HEADER};

/// First wait before re-sending a record whose acknowledgement failed (doubles up to 5 s).
const RESEND_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Wait while the producer's queue is full.
const QUEUE_FULL_DELAY: Duration = Duration::from_millis(5);

/// Which topic an outcome record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutcomeTopic {
    Deliveries,
    DeadLetters,
}

/// An outcome record, owned, so it can be sent again after a failed acknowledgement.
#[derive(Debug)]
struct OutcomeRecord {
    topic: OutcomeTopic,
    key: String,
    payload: Vec<u8>,
    /// Dead letters carry the redrive count as a header.
    redrive_count: Option<i32>,
    /// The change it records.
    partition: i32,
    offset: i64,
}

impl Sink {
    pub(super) async fn finish(
        self: &Arc<Self>,
        incoming: &Incoming,
        event: Option<&ChangeEvent>,
        outcome: Outcome,
        attempts: &Attempts,
    ) {
        self.finish_with_key(incoming, event, outcome, attempts, None)
            .await;
    }

    /// Records the outcome (receipt or dead letter); its offset is marked done once the
    /// record is acknowledged. Returns as soon as the producer has taken the record.
    pub(super) async fn finish_with_key(
        self: &Arc<Self>,
        incoming: &Incoming,
        event: Option<&ChangeEvent>,
        outcome: Outcome,
        attempts: &Attempts,
        idempotency_key: Option<String>,
    ) {
        let record = match outcome {
            Outcome::Abandoned => return,
            Outcome::Delivered {
                status,
                response_id,
            } => {
                let Some(event) = event else { return };
                let receipt = DeliveryReceipt {
                    key: event.key.clone(),
                    version: event.version,
                    op: event.op.as_str().to_string(),
                    status: i32::from(status),
                    attempts: attempts.history.len() as i32,
                    latency_ms: attempts
                        .first
                        .map_or(0, |first| first.elapsed().as_millis() as i64),
                    response_id,
                    idempotency_key: idempotency_key.unwrap_or_else(|| {
                        crate::request::idempotency_key(&self.pipeline, &event.key, event.version)
                    }),
                    source_partition: incoming.partition,
                    source_offset: incoming.offset,
                    delivered_at: now_millis(),
                };
                let payload = match self
                    .schemas
                    .current(DeliveryReceipt::SCHEMA)
                    .and_then(|s| s.encode(&receipt))
                {
                    Ok(payload) => payload,
                    Err(error) => {
                        tracing::error!(message = "Cannot encode a receipt.", %error);
                        Vec::new()
                    }
                };
                self.metrics.delivered.inc();
                self.metrics
                    .last_delivery
                    .set(receipt.delivered_at as f64 / 1000.0);
                OutcomeRecord {
                    topic: OutcomeTopic::Deliveries,
                    key: receipt.key,
                    payload,
                    redrive_count: None,
                    partition: incoming.partition,
                    offset: incoming.offset,
                }
            }
            Outcome::DeadLetter {
                reason,
                status,
                excerpt,
            } => {
                let letter = DeadLetter {
                    change: incoming.payload.clone(),
                    key: event.map(|e| e.key.clone()),
                    version: event.map(|e| e.version),
                    reason: reason.to_string(),
                    status: status.map(i32::from),
                    response_excerpt: excerpt,
                    attempts: attempts.history.len() as i32,
                    first_attempt_at: attempts.first_at,
                    last_attempt_at: attempts.last_at,
                    attempt_history: attempts.history.clone(),
                    source_topic: self.topics.changes.clone(),
                    source_partition: incoming.partition,
                    source_offset: incoming.offset,
                    dead_lettered_at: now_millis(),
                    redrive_count: incoming.redrive_count,
                };
                let payload = match self
                    .schemas
                    .current(DeadLetter::SCHEMA)
                    .and_then(|s| s.encode(&letter))
                {
                    Ok(payload) => payload,
                    Err(error) => {
                        tracing::error!(message = "Cannot encode a dead letter.", %error);
                        Vec::new()
                    }
                };
                self.metrics.dead_letters.with_label_values(&[reason]).inc();
                tracing::warn!(
                    message = "Change dead-lettered.",
                    reason,
                    status = status.map(i32::from),
                    partition = incoming.partition,
                    offset = incoming.offset,
                    version = event.map(|e| e.version)
                );
                OutcomeRecord {
                    topic: OutcomeTopic::DeadLetters,
                    key: letter
                        .key
                        .unwrap_or_else(|| format!("{}@{}", incoming.partition, incoming.offset)),
                    payload,
                    redrive_count: Some(incoming.redrive_count),
                    partition: incoming.partition,
                    offset: incoming.offset,
                }
            }
        };
        // Busy until acknowledged: a revoke or the shutdown drain waits for it.
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.pending_records.fetch_add(1, Ordering::Relaxed);
        let Some(ack) = self.enqueue(&record).await else {
            self.record_settled();
            return;
        };
        let sink = self.clone();
        self.runtime.spawn(async move {
            sink.await_ack(record, ack).await;
            sink.record_settled();
        });
    }

    fn record_settled(&self) {
        self.pending_records.fetch_sub(1, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hands the record to the producer, waiting while its queue is full (back-pressure on
    /// the lane). `None` when the sink stops first: the offset stays undone.
    async fn enqueue(&self, record: &OutcomeRecord) -> Option<DeliveryFuture> {
        let topic = match record.topic {
            OutcomeTopic::Deliveries => &self.topics.deliveries,
            OutcomeTopic::DeadLetters => &self.topics.dead_letters,
        };
        let mut delay = RESEND_INITIAL_DELAY;
        loop {
            let mut message = FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload);
            if let Some(count) = record.redrive_count {
                message = message.headers(OwnedHeaders::new().insert(Header {
                    key: REDRIVE_COUNT_HEADER,
                    value: Some(count.to_string().as_bytes()),
                }));
            }
            match self.producer.send_result(message) {
                Ok(ack) => return Some(ack),
                Err((error, _)) => {
                    if self.stopping() {
                        return None;
                    }
                    if matches!(
                        error,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        tokio::time::sleep(QUEUE_FULL_DELAY).await;
                    } else {
                        tracing::warn!(message = "Cannot record the outcome yet; retrying.", %error, topic = %topic);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Waits for the record's acknowledgement — re-sending it after a failure — and then
    /// marks its offset done. Gives up (offset left undone) only when the sink stops.
    async fn await_ack(&self, record: OutcomeRecord, mut ack: DeliveryFuture) {
        let mut delay = RESEND_INITIAL_DELAY;
        loop {
            let error = match ack.await {
                Ok(Ok(_)) => break,
                Ok(Err((error, _))) => error.to_string(),
                Err(_) => "the producer dropped the record".to_string(),
            };
            if self.stopping() {
                // Not recorded: leave the offset; the change is delivered again later.
                return;
            }
            tracing::warn!(
                message = "Cannot record the outcome yet; retrying.",
                %error,
                topic = ?record.topic,
                partition = record.partition,
                offset = record.offset
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            match self.enqueue(&record).await {
                Some(next) => ack = next,
                None => return,
            }
        }
        let mut tracker = lock(&self.tracker);
        tracker.done(record.partition, record.offset);
        self.metrics.in_flight.set(tracker.in_flight() as i64);
    }
}
