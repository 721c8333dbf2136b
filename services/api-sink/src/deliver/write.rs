//! Writing an outcome record (`outcome`) and waiting for the broker's acknowledgement before
//! its change's offset is marked done.
//!
//! Guarantee: the offset moves only past an acknowledged record. A failed write or
//! acknowledgement is retried — the same record re-sent, with backoff — until it is
//! acknowledged or the sink stops (then the offset stays undone and the change is delivered
//! again after a restart, with the same Idempotency-Key). An error the writer calls fatal (a
//! record the cluster will never take, a producer that cannot be replaced) is not retried:
//! the offset stays undone and the stage stops with it ([`Sink::take_fatal`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::kafka::{Acknowledgement, GuaranteedWriter, OutgoingRecord, WriteError};
use snapfeed_runtime::topics::TopicNames;

use super::outcome::{OutcomeRecord, OutcomeTopic};
use super::{lock, Sink, REDRIVE_COUNT_HEADER};

/// First wait before re-sending a record whose acknowledgement failed (doubling).
const RESEND_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between two re-sends.
const RESEND_MAX_DELAY: Duration = Duration::from_secs(5);

/// Where outcomes go.
pub(super) struct OutcomeWriter {
    /// The runtime's writer (at_least_once, acknowledged per record).
    writer: Arc<GuaranteedWriter>,
    /// To encode receipts and dead letters.
    pub(super) schemas: Arc<SchemaStore>,
    /// `deliveries`, `dead-letters`, and `changes` (named in a dead letter).
    pub(super) topics: TopicNames,
    /// Pipeline name (the Idempotency-Key of a receipt).
    pub(super) pipeline: String,
    /// `changes` and `deliveries` have the same partition count: a receipt goes to its
    /// change's partition, where the next owner reads it back (`resume`).
    co_partitioned: bool,
    /// A write error retrying cannot fix: the stage stops with it.
    fatal: Mutex<Option<WriteError>>,
}

impl std::fmt::Debug for OutcomeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeWriter")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl OutcomeWriter {
    pub(super) fn new(
        writer: Arc<GuaranteedWriter>,
        schemas: Arc<SchemaStore>,
        topics: TopicNames,
        pipeline: String,
        co_partitioned: bool,
    ) -> OutcomeWriter {
        OutcomeWriter {
            writer,
            schemas,
            topics,
            pipeline,
            co_partitioned,
            fatal: Mutex::new(None),
        }
    }

    pub(super) fn take_fatal(&self) -> Option<WriteError> {
        lock(&self.fatal).take()
    }

    pub(super) fn has_fatal(&self) -> bool {
        lock(&self.fatal).is_some()
    }
}

impl Sink {
    /// Hands the record to the writer and leaves a task waiting for its acknowledgement.
    pub(super) async fn record(self: &Arc<Self>, record: OutcomeRecord) {
        // Busy until acknowledged: a revoke or the shutdown drain waits for it.
        let progress = &self.progress;
        progress.busy.fetch_add(1, Ordering::Relaxed);
        progress.pending_records.fetch_add(1, Ordering::Relaxed);
        let Some(ack) = self.enqueue(&record).await else {
            self.record_settled();
            return;
        };
        let sink = self.clone();
        self.lanes.runtime.spawn(async move {
            sink.await_ack(record, ack).await;
            sink.record_settled();
        });
    }

    fn record_settled(&self) {
        self.progress
            .pending_records
            .fetch_sub(1, Ordering::Relaxed);
        self.progress.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hands the record to the writer, which waits while the producer's queue is full
    /// (back-pressure on the lane); re-sends after a failure, with backoff. `None` when the sink
    /// stops while the queue is full or before a re-send (the offset stays undone), or the
    /// error is fatal.
    async fn enqueue(&self, record: &OutcomeRecord) -> Option<Acknowledgement> {
        let mut delay = RESEND_INITIAL_DELAY;
        loop {
            // No stop check before the first send: a change delivered while the sink drains
            // still gets its receipt (and its offset committed), or it would be sent again
            // after the restart. The stop is watched only while the queue is full, and before
            // a re-send (`retry_after`).
            let outgoing = record.outgoing(&self.outcomes.topics, self.outcomes.co_partitioned);
            // `biased`: the writer takes the record at once unless its queue is full; only then
            // is the stop watched (see `admission` on why not always).
            let sent = tokio::select! {
                biased;
                sent = self.outcomes.writer.send_acknowledged(outgoing) => sent,
                _ = self.lanes.until_stopped() => return None,
            };
            match sent {
                Ok(ack) => return Some(ack),
                Err(error) => {
                    if !self.retry_after(error, record, &mut delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits for the record's acknowledgement — re-sending it after a failure — and then
    /// marks its offset done. Gives up (offset left undone) only when the sink stops or the
    /// error is fatal.
    async fn await_ack(&self, record: OutcomeRecord, mut ack: Acknowledgement) {
        let mut delay = RESEND_INITIAL_DELAY;
        loop {
            let error = match ack.wait().await {
                Ok(()) => break,
                Err(error) => error,
            };
            if !self.retry_after(error, &record, &mut delay).await {
                return;
            }
            match self.enqueue(&record).await {
                Some(next) => ack = next,
                None => return,
            }
        }
        self.done(record.partition, record.offset);
    }

    /// After a failed write: waits `delay` (doubling it, up to 5 s) and returns true to send
    /// again — or false when the sink stops first (not recorded: the change is delivered again
    /// later) or the error is fatal (kept for the stage to stop with).
    async fn retry_after(
        &self,
        error: WriteError,
        record: &OutcomeRecord,
        delay: &mut Duration,
    ) -> bool {
        if self.lanes.stopping() {
            return false;
        }
        if error.is_fatal() {
            tracing::error!(
                message = "Outcomes cannot be written and retrying cannot help; stopping.",
                %error,
                partition = record.partition,
                offset = record.offset
            );
            lock(&self.outcomes.fatal).get_or_insert(error);
            return false;
        }
        tracing::warn!(
            message = "Cannot record the outcome yet; retrying.",
            %error,
            partition = record.partition,
            offset = record.offset
        );
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = self.lanes.until_stopped() => return false,
        }
        *delay = (*delay * 2).min(RESEND_MAX_DELAY);
        true
    }
}

impl OutcomeRecord {
    /// The record for the writer (the redrive count as a header on dead letters). A receipt
    /// goes to its change's partition when the topics are co-partitioned.
    fn outgoing<'a>(&'a self, topics: &'a TopicNames, co_partitioned: bool) -> OutgoingRecord<'a> {
        let topic = match self.topic {
            OutcomeTopic::Deliveries => &topics.deliveries,
            OutcomeTopic::DeadLetters => &topics.dead_letters,
        };
        let mut record = OutgoingRecord::new(topic, self.key.as_bytes(), &self.payload);
        if co_partitioned && self.topic == OutcomeTopic::Deliveries {
            record = record.partition(self.partition);
        }
        match self.redrive_count {
            Some(count) => record.headers(OwnedHeaders::new().insert(Header {
                key: REDRIVE_COUNT_HEADER,
                value: Some(count.to_string().as_bytes()),
            })),
            None => record,
        }
    }
}
