//! [`GuaranteedWriter`]: the producer side of `processing_guarantee`, written once for every
//! stage. A stage sends its records, marks the points where they must be durable, and hands
//! over the consumer offsets they account for; this module decides what that means for the
//! configured guarantee, so the edge cases cannot drift apart between stages.
//!
//! **`exactly_once`** (Kafka transactions, KIP-447). The first [`send`](GuaranteedWriter::send)
//! after a commit begins a transaction; [`commit`](GuaranteedWriter::commit) adds the consumed
//! offsets with the consumer's group metadata (`send_offsets_to_transaction`), waits for the
//! acknowledgements and commits — retrying a commit whose outcome is not known yet, as
//! librdkafka requires. Everything sent since the last commit becomes visible to
//! `read_committed` readers together with the offsets, or not at all:
//! [`abort`](GuaranteedWriter::abort) throws it away. [`acknowledge`](GuaranteedWriter::acknowledge)
//! is a no-op here: inside a transaction nothing is visible before the commit anyway.
//!
//! **`at_least_once`** (brokers without transactions). [`acknowledge`](GuaranteedWriter::acknowledge)
//! waits until every record sent so far is acknowledged and fails if any was not;
//! [`commit`](GuaranteedWriter::commit) does the same and only then commits the consumer
//! offsets. A crash between the two repeats the step: the stages make a repeat identical (same
//! key, version and payload), so it is harmless downstream. [`abort`](GuaranteedWriter::abort)
//! forgets the failures of the abandoned step; what was already acknowledged stays written.
//!
//! **Failures.** Every error is a [`WriteError`] naming the topic/partition or the step, and is
//! either retryable (abort, then redo the work from the last commit) or fatal for the stage
//! ([`WriteError::is_fatal`]). A producer that librdkafka declares fatal, or whose transaction
//! librdkafka says can be neither committed nor aborted, is replaced by a new one with the same
//! transactional id — whose `init_transactions` aborts whatever the old one left open. An abort
//! that only timed out is not a reason to replace (a successor may hold the id by now): it stays
//! pending, and the next send or commit finishes it first. A **fenced** producer is never
//! replaced: another instance with the same transactional id has taken over, and taking it back
//! would fence that one in turn; the stage stops instead.
//!
//! **Back-pressure.** A full producer queue makes `send` wait (at most `message_timeout_ms`, after
//! which queued messages expire anyway) rather than fail: the stage simply slows down to what the
//! broker takes.
//!
//! **Per-record acknowledgements** ([`send_acknowledged`](GuaranteedWriter::send_acknowledged))
//! serve a stage whose progress is per record rather than per batch (api-sink: an offset is done
//! once its receipt is acknowledged). They are meant for an `at_least_once` writer; inside a
//! transaction an acknowledgement means "written", not "committed".
//!
//! Threading: every method except `send_acknowledged` blocks its thread (librdkafka calls, the
//! back-pressure wait) — call them from a stage's dedicated thread or `spawn_blocking`, never on
//! an async worker. The methods take `&self`; the transaction steps assume one caller at a time.
//!
//! Files: [`record`] what a stage hands over; [`send`] sending and acknowledging;
//! [`transaction`] the commit points; [`producer`] creating and replacing the producer;
//! [`delivery`] how the writer learns each record's fate; [`error`] what went wrong, and where.

mod delivery;
mod error;
mod producer;
mod record;
mod send;
mod transaction;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::TopicPartitionList;

pub use delivery::{Acknowledgement, WriterContext};
pub(crate) use error::describe_offsets;
pub use error::WriteError;
pub use record::OutgoingRecord;

use delivery::Tickets;
use producer::{create_producer, WriterProducer};

use super::{KafkaConfig, ProcessingGuarantee};

/// The producer side of `processing_guarantee`; see the module documentation.
pub struct GuaranteedWriter {
    guarantee: ProcessingGuarantee,
    /// Set in `exactly_once`: fences earlier incarnations of this stage instance.
    transactional_id: Option<String>,
    /// To create a replacement producer.
    settings: ClientConfig,
    /// Bound of one blocking librdkafka call.
    timeout: Duration,
    /// Longest wait while the queue is full (the message timeout: queued records expire then).
    queue_full_bound: Duration,
    /// Replaced, never mutated, when librdkafka declares it fatal.
    producer: RwLock<Arc<WriterProducer>>,
    /// A transaction is open on the current producer.
    in_transaction: AtomicBool,
    /// An abort's outcome is not known yet: finished before anything else is sent or committed.
    abort_pending: AtomicBool,
    /// Held while a fatal producer is replaced, so lanes failing together replace it once.
    replacing: Mutex<()>,
    /// Untracked records that failed since the last acknowledgement point.
    failures: Arc<AtomicU64>,
    tickets: Arc<Tickets>,
    /// Producers replaced so far.
    replaced: AtomicU64,
}

impl std::fmt::Debug for GuaranteedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuaranteedWriter")
            .field("guarantee", &self.guarantee)
            .field("transactional_id", &self.transactional_id)
            .field("in_transaction", &self.in_transaction)
            .finish_non_exhaustive()
    }
}

impl GuaranteedWriter {
    /// A writer for `service` with the guarantee given; `transactional_id` must be stable across
    /// restarts of the same instance (it fences the previous incarnation) and is used only in
    /// `exactly_once`. Blocking: `init_transactions` waits for the transaction coordinator.
    pub fn connect(
        kafka: &KafkaConfig,
        service: &str,
        guarantee: ProcessingGuarantee,
        transactional_id: &str,
    ) -> Result<GuaranteedWriter, WriteError> {
        let settings = kafka.producer_config(service, guarantee, Some(transactional_id));
        let (failures, tickets) = (Arc::default(), Arc::default());
        let timeout = kafka.request_timeout();
        let producer = create_producer(&settings, guarantee, timeout, &failures, &tickets)?;
        Ok(GuaranteedWriter {
            guarantee,
            transactional_id: guarantee
                .is_transactional()
                .then(|| transactional_id.to_string()),
            settings,
            timeout,
            queue_full_bound: Duration::from_millis(kafka.message_timeout_ms),
            producer: RwLock::new(Arc::new(producer)),
            in_transaction: AtomicBool::new(false),
            abort_pending: AtomicBool::new(false),
            replacing: Mutex::new(()),
            failures,
            tickets,
            replaced: AtomicU64::new(0),
        })
    }

    /// The guarantee this writer keeps.
    pub fn guarantee(&self) -> ProcessingGuarantee {
        self.guarantee
    }

    /// How many times a fatal producer was replaced.
    pub fn replacements(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// The consumer offsets a commit accounts for: the consumer (for its group metadata, or to
/// commit them itself in at_least_once) and the next offset to consume per partition.
pub struct Consumed<'a, C: ConsumerContext + 'static> {
    /// The stage's group consumer.
    pub consumer: &'a BaseConsumer<C>,
    /// Next offsets to consume.
    pub offsets: &'a TopicPartitionList,
}

impl<C: ConsumerContext + 'static> std::fmt::Debug for Consumed<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumed")
            .field("offsets", &describe_offsets(self.offsets))
            .finish_non_exhaustive()
    }
}
