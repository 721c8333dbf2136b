//! Sending: [`GuaranteedWriter::send`] for records whose fate the next acknowledgement point or
//! commit accounts for, [`GuaranteedWriter::send_acknowledged`] for a record its sender awaits
//! on its own, and [`GuaranteedWriter::acknowledge`], the at_least_once acknowledgement point.
//! A full producer queue makes a send wait, at most `message_timeout_ms`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use tokio::sync::oneshot;

use super::delivery::{await_acknowledged, Acknowledgement, Tickets, UNTRACKED};
use super::error::step;
use super::{GuaranteedWriter, OutgoingRecord, WriteError};

/// How long a send waits between attempts while the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

impl GuaranteedWriter {
    /// Sends a record, waiting while the producer's queue is full; in `exactly_once` the first
    /// send after a commit begins the next transaction. Blocking.
    pub fn send(&self, mut record: OutgoingRecord<'_>) -> Result<(), WriteError> {
        self.begin()?;
        let producer = self.current();
        // Set at the first full queue only: no clock read per record.
        let mut deadline = None;
        // Moved, not cloned: a copy of the headers per record is a heap allocation per record,
        // and a record that comes back (queue full) brings its headers with it.
        let headers = record.headers.take();
        let mut attempt = record.base(headers, UNTRACKED);
        loop {
            match producer.send(attempt) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now()
                        < *deadline
                            .get_or_insert_with(|| Instant::now() + self.queue_full_bound) =>
                {
                    attempt = back;
                    std::thread::sleep(QUEUE_FULL_WAIT);
                }
                Err((source, _)) => return Err(self.send_failed(&record, source)),
            }
        }
    }

    /// Sends a record whose acknowledgement the caller awaits on its own; waits (asynchronously)
    /// while the queue is full. Not part of any transaction step: meant for `at_least_once`.
    pub async fn send_acknowledged(
        self: &Arc<Self>,
        mut record: OutgoingRecord<'_>,
    ) -> Result<Acknowledgement, WriteError> {
        let (sender, receiver) = oneshot::channel();
        // Withdrawn if this future is dropped before the producer took the record (shutdown
        // while the queue is full), so no ticket outlives its waiter.
        let pending = PendingTicket::issue(&self.tickets, sender);
        let ticket = pending.ticket;
        let deadline = tokio::time::Instant::now() + self.queue_full_bound;
        let mut headers = record.headers.take();
        loop {
            let sent = self.current().send(record.base(headers.take(), ticket));
            match sent {
                Ok(()) => {
                    pending.taken();
                    return Ok(Acknowledgement {
                        receiver,
                        topic: record.topic.to_string(),
                        partition: record.partition,
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), mut back))
                    if tokio::time::Instant::now() < deadline =>
                {
                    headers = back.headers.take();
                    drop(back);
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((source, _)) => {
                    drop(pending);
                    let writer = Arc::clone(self);
                    // A fatal producer is replaced off the async workers (creating one
                    // blocks); one that cannot be replaced is the error to report, fatal.
                    match tokio::task::spawn_blocking(move || writer.replace_if_fatal()).await {
                        Ok(Err(replacement)) if replacement.is_fatal() => return Err(replacement),
                        Err(_) => {
                            return Err(WriteError::Unrecoverable {
                                source: KafkaError::Canceled,
                            })
                        }
                        _ => {}
                    }
                    return Err(self.send_failed(&record, source));
                }
            }
        }
    }

    /// at_least_once: waits until every record sent so far is acknowledged; `Unacknowledged`
    /// if any failed. A no-op in `exactly_once`, where only the commit makes records visible.
    /// Blocking.
    pub fn acknowledge(&self) -> Result<(), WriteError> {
        if self.guarantee.is_transactional() {
            return Ok(());
        }
        let producer = self.current();
        await_acknowledged(&producer, self.timeout);
        producer.flush(self.timeout).map_err(step("flush"))?;
        match self.failures.swap(0, Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(WriteError::Unacknowledged { failed }),
        }
    }

    pub(super) fn send_failed(
        &self,
        record: &OutgoingRecord<'_>,
        source: KafkaError,
    ) -> WriteError {
        if self.is_fenced(&source) {
            return self.fenced(source);
        }
        WriteError::Send {
            topic: record.topic.to_string(),
            partition: record.partition,
            source,
        }
    }
}

/// A ticket issued for a tracked record, withdrawn on drop unless the producer took the record.
struct PendingTicket<'t> {
    tickets: &'t Tickets,
    ticket: usize,
}

impl<'t> PendingTicket<'t> {
    fn issue(
        tickets: &'t Tickets,
        sender: oneshot::Sender<Result<(), KafkaError>>,
    ) -> PendingTicket<'t> {
        PendingTicket {
            ticket: tickets.issue(sender),
            tickets,
        }
    }

    /// The producer has the record: its delivery report will answer the ticket.
    fn taken(self) {
        std::mem::forget(self);
    }
}

impl Drop for PendingTicket<'_> {
    fn drop(&mut self) {
        self.tickets.take(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_withdrawn_unless_the_producer_took_its_record() {
        let tickets = Tickets::default();
        let (sender, _receiver) = oneshot::channel();
        let dropped = PendingTicket::issue(&tickets, sender).ticket;
        assert!(tickets.take(dropped).is_none(), "withdrawn when dropped");
        let (sender, _receiver) = oneshot::channel();
        let pending = PendingTicket::issue(&tickets, sender);
        let taken = pending.ticket;
        pending.taken();
        assert!(
            tickets.take(taken).is_some(),
            "kept for the delivery report"
        );
    }
}
