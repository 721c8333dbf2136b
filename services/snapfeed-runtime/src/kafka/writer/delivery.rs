//! How the writer learns what became of each record: its producer context counts the failures
//! of records nobody waits for individually (the next `acknowledge` reports them) and answers
//! the waiter of a tracked record ([`Acknowledgement`]); and the wait for every in-flight record
//! to be acknowledged before a flush or a commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use super::WriteError;

/// Delivery opaque of a record nobody waits for individually.
pub(super) const UNTRACKED: usize = 0;

/// Resolves once the broker acknowledged one record ([`GuaranteedWriter::send_acknowledged`]).
#[derive(Debug)]
pub struct Acknowledgement {
    pub(super) receiver: oneshot::Receiver<Result<(), KafkaError>>,
    pub(super) topic: String,
    pub(super) partition: Option<i32>,
}

impl Acknowledgement {
    /// Waits for the acknowledgement; `Err` when the record failed (or its producer was
    /// dropped with it) — send it again.
    pub async fn wait(self) -> Result<(), WriteError> {
        let failed = match self.receiver.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(source)) => source,
            Err(_) => KafkaError::Canceled,
        };
        Err(WriteError::Send {
            topic: self.topic,
            partition: self.partition,
            source: failed,
        })
    }
}

/// Records whose sender waits for their own acknowledgement, by ticket.
#[derive(Debug, Default)]
pub(super) struct Tickets {
    next: AtomicUsize,
    waiting: Mutex<HashMap<usize, oneshot::Sender<Result<(), KafkaError>>>>,
}

impl Tickets {
    pub(super) fn issue(&self, sender: oneshot::Sender<Result<(), KafkaError>>) -> usize {
        // 0 is UNTRACKED; wrapping past usize::MAX is not a concern in practice.
        let ticket = self
            .next
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        self.lock().insert(ticket, sender);
        ticket
    }

    pub(super) fn take(&self, ticket: usize) -> Option<oneshot::Sender<Result<(), KafkaError>>> {
        self.lock().remove(&ticket)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<usize, oneshot::Sender<Result<(), KafkaError>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer's producer context: delivery reports go to the waiting sender of a tracked
/// record, or count as failures for the next [`GuaranteedWriter::acknowledge`]; librdkafka's own
/// log lines go into `tracing`.
#[derive(Debug)]
pub struct WriterContext {
    pub(super) failures: Arc<AtomicU64>,
    pub(super) tickets: Arc<Tickets>,
}

impl ClientContext for WriterContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        crate::client_log::forward_log("producer", level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::client_log::forward_error("producer", &error, reason);
    }
}

impl ProducerContext for WriterContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.clone()),
        };
        if ticket == UNTRACKED {
            if outcome.is_err() {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(sender) = self.tickets.take(ticket) {
            // The waiter may have given up (shutdown): nobody to tell.
            let _ = sender.send(outcome);
        }
    }
}

/// Waits, in 1 ms steps and at most `timeout`, until every message `producer` has accepted is
/// acknowledged or has failed; returns whether it got there.
///
/// Call it right before `flush` or `commit_transaction`. rust-rdkafka's `flush` (which its
/// `commit_transaction` starts with) serves delivery reports with a 100 ms `poll` that always
/// runs to its end, so every flush with a message still in flight takes at least 100 ms however
/// fast the broker answers — a transaction per detector batch or per file-source chunk then
/// costs 100 ms of idle time (measured: 100.4 ms → 6.8 ms per commit of 100 records). A
/// `ThreadedProducer`'s own thread serves the reports as they arrive, so this returns as soon
/// as the broker has acknowledged, and the flush that follows has nothing left to wait for. The
/// flush or commit stays the authority on errors and timeouts.
pub(super) fn await_acknowledged<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if producer.in_flight_count() == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::BaseRecord;
    use rdkafka::producer::DefaultProducerContext;

    fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "5000")
            .create()
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
}
