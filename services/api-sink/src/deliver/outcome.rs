//! Recording how a change ended — a receipt on `deliveries`, or a dead letter on
//! `dead-letters` — and only once that record is acknowledged by the broker, marking the
//! change's offset done ([`crate::offsets`]), so the committed offset never passes a change
//! whose outcome is not durable.
//!
//! Written (see `write`) through the runtime's
//! [`GuaranteedWriter`](snapfeed_runtime::kafka::GuaranteedWriter) — at_least_once: an HTTP
//! call cannot join a Kafka transaction — which waits while the producer's queue is full and
//! replaces a producer librdkafka declares fatal. Pipelined: the lane hands the record to the
//! writer and goes on with its next change; a task per record waits for its acknowledgement
//! (re-sending the record after a failure, with backoff) and then marks the offset done.
//! Waiting in the lane cost a lane the producer's linger and a broker round trip per change
//! (~7 ms against a 0.3 ms request). What the wait protected is kept: the offset still moves
//! only past acknowledged records, as a contiguous prefix, and a record never acknowledged
//! (shutdown first) leaves its offset undone, so the change is delivered again after a
//! restart — with the same Idempotency-Key. Records still waiting count as `busy`, so a revoke
//! and the shutdown drain wait for them before their final commit, and in the backlog the
//! consumer bounds. A write error the writer calls fatal (the cluster will never take the
//! record, or no producer can be set up) is not retried: the offset stays undone and the
//! stage stops with the error.
//!
//! **An outcome that cannot be encoded** — a receipt or dead letter that does not fit the
//! deployed schema: a bug or a botched deploy, never the change's fault, and not cured by
//! waiting — is never written empty, skipped, or marked done. The change stays undelivered on
//! record: its offset stays in flight, so the partition's committed offset cannot pass it. The
//! lane stops there ([`Halt::Stalled`]): it sends nothing more to the API (whose outcomes it
//! could not record either) and waits until its partition is revoked or the sink stops; the
//! changes queued behind it count toward the backlog bound, so the consumer takes no more once
//! that is reached. And it is loud: an error log naming partition and offset (never contents),
//! `snapfeed_api_sink_unrecordable_outcomes_total{outcome}`, `snapfeed_api_sink_stalled_lanes`,
//! and `/readyz` not ready ([`OUTCOMES_RECORDED`](super::OUTCOMES_RECORDED)). Once the cause is
//! fixed, a restart delivers the change again from the committed offset, with the same
//! Idempotency-Key.

use std::sync::Arc;

use serde::Serialize;
use snapfeed_runtime::avro::AvroError;
use snapfeed_runtime::records::{now_millis, AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt};

use crate::request::DecodedChange;

use super::attempt::Attempts;
use super::{Halt, Incoming, Outcome, Sink, REASON_UNDECODABLE};

/// Which topic an outcome record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutcomeTopic {
    Deliveries,
    DeadLetters,
}

/// A receipt or dead letter that could not be encoded.
#[derive(Debug)]
struct Unencodable {
    /// `receipt` or `dead_letter` (the metric label).
    outcome: &'static str,
    error: AvroError,
}

/// An outcome record, owned, so it can be sent again after a failed acknowledgement.
#[derive(Debug)]
pub(super) struct OutcomeRecord {
    /// `deliveries` or `dead-letters`.
    pub(super) topic: OutcomeTopic,
    /// The record key (or `partition@offset` for an undecodable change).
    pub(super) key: String,
    /// The encoded receipt or dead letter.
    pub(super) payload: Vec<u8>,
    /// Dead letters carry the redrive count as a header.
    pub(super) redrive_count: Option<i32>,
    /// The change it records: the offset marked done once it is acknowledged.
    pub(super) partition: i32,
    pub(super) offset: i64,
}

impl Sink {
    /// Records how a decoded change ended; its offset is marked done once the record is
    /// acknowledged. Returns as soon as the writer has taken the record.
    pub(super) async fn finish(
        self: &Arc<Self>,
        incoming: &Incoming,
        change: &DecodedChange<'_>,
        outcome: Outcome,
        attempts: &Attempts,
        idempotency_key: Option<String>,
    ) -> Result<(), Halt> {
        let event = change.event;
        let record = match outcome {
            Outcome::Delivered {
                status,
                response_id,
            } => {
                self.remember_delivered(incoming.partition, &event.key, event.version);
                self.receipt(
                    incoming,
                    event,
                    status,
                    response_id,
                    attempts,
                    idempotency_key,
                )
            }
            Outcome::DeadLetter {
                reason,
                status,
                excerpt,
            } => self.dead_letter(incoming, Some(change), reason, status, excerpt, attempts),
        };
        let record = record.map_err(|unencodable| self.stall(incoming, unencodable))?;
        self.record(record).await;
        Ok(())
    }

    /// Dead-letters a change that does not decode.
    pub(super) async fn finish_undecodable(
        self: &Arc<Self>,
        incoming: &Incoming,
    ) -> Result<(), Halt> {
        let record = self.dead_letter(
            incoming,
            None,
            REASON_UNDECODABLE,
            None,
            None,
            &Attempts::default(),
        );
        let record = record.map_err(|unencodable| self.stall(incoming, unencodable))?;
        self.record(record).await;
        Ok(())
    }

    /// The lane stops at a change whose outcome cannot be encoded: its offset is not marked
    /// done, and the operator is told (see the module documentation).
    fn stall(&self, incoming: &Incoming, unencodable: Unencodable) -> Halt {
        self.change_stalled(true);
        self.metrics
            .unrecordable_outcomes
            .with_label_values(&[unencodable.outcome])
            .inc();
        tracing::error!(
            message = "Cannot encode the outcome of a change; its lane stops there and the \
                       partition's committed offset stays at it until the cause is fixed and \
                       the sink restarted.",
            outcome = unencodable.outcome,
            partition = incoming.partition,
            offset = incoming.offset,
            error = %unencodable.error
        );
        Halt::Stalled
    }

    fn receipt(
        &self,
        incoming: &Incoming,
        event: &ChangeEvent,
        status: u16,
        response_id: Option<String>,
        attempts: &Attempts,
        idempotency_key: Option<String>,
    ) -> Result<OutcomeRecord, Unencodable> {
        let outcomes = &self.outcomes;
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
                crate::request::idempotency_key(&outcomes.pipeline, &event.key, event.version)
            }),
            source_partition: incoming.partition,
            source_offset: incoming.offset,
            delivered_at: now_millis(),
        };
        let payload = self.encode(&receipt, "receipt")?;
        self.metrics.delivered.inc();
        self.metrics
            .last_delivery
            .set(receipt.delivered_at as f64 / 1000.0);
        if event.detected_at > 0 {
            let seconds = (receipt.delivered_at - event.detected_at).max(0) as f64 / 1000.0;
            self.metrics.end_to_end.observe(seconds);
        }
        Ok(OutcomeRecord {
            topic: OutcomeTopic::Deliveries,
            key: receipt.key,
            payload,
            redrive_count: None,
            partition: incoming.partition,
            offset: incoming.offset,
        })
    }

    /// The dead letter of `incoming`: its bytes as received, and the decoded change nested as
    /// a typed record when there is one.
    fn dead_letter(
        &self,
        incoming: &Incoming,
        change: Option<&DecodedChange<'_>>,
        reason: &'static str,
        status: Option<u16>,
        excerpt: Option<String>,
        attempts: &Attempts,
    ) -> Result<OutcomeRecord, Unencodable> {
        let outcomes = &self.outcomes;
        let event = change.map(|c| c.event);
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
            source_topic: outcomes.topics.changes.clone(),
            source_partition: incoming.partition,
            source_offset: incoming.offset,
            dead_lettered_at: now_millis(),
            redrive_count: incoming.redrive_count,
        };
        let payload = self
            .decoder
            .dataset
            .encode_dead_letter(
                &outcomes.schemas,
                &letter,
                change.map(|c| (c.event, c.record)),
            )
            .map_err(|error| Unencodable {
                outcome: "dead_letter",
                error,
            })?;
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        tracing::warn!(
            message = "Change dead-lettered.",
            reason,
            status = status.map(i32::from),
            partition = incoming.partition,
            offset = incoming.offset,
            version = event.map(|e| e.version)
        );
        Ok(OutcomeRecord {
            topic: OutcomeTopic::DeadLetters,
            key: letter
                .key
                .unwrap_or_else(|| format!("{}@{}", incoming.partition, incoming.offset)),
            payload,
            redrive_count: Some(incoming.redrive_count),
            partition: incoming.partition,
            offset: incoming.offset,
        })
    }

    /// The single-object encoding of a receipt with its current schema.
    fn encode<T: AvroRecord + Serialize>(
        &self,
        value: &T,
        outcome: &'static str,
    ) -> Result<Vec<u8>, Unencodable> {
        self.outcomes
            .schemas
            .current(T::SCHEMA)
            .and_then(|schema| schema.encode(value))
            .map_err(|error| Unencodable { outcome, error })
    }
}
