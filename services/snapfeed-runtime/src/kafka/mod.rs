//! Kafka for every stage: the settings ([`settings`]), the one writer of the delivery
//! guarantee ([`writer`]), and the few blocking calls every stage needs done the same way.
//!
//! - [`settings`]: the `[kafka]` section; producer, consumer and reader settings per guarantee.
//! - [`writer`]: [`GuaranteedWriter`], the producer side of `processing_guarantee` — sends with
//!   back-pressure, acknowledgements, transactions with consumer offsets (KIP-447), abort and
//!   replacement of a fatal producer. No other module starts, commits or aborts a transaction.
//! - [`consume`]: the consumer side shared by the consuming stages — the poll loop on a
//!   dedicated thread, committing consumed offsets, leaving the group within a bound.
//! - [`read`]: [`TopicReader`], reading partitions back to their end (restores, operator
//!   commands), riding out transient errors.
//!
//! Closing: [`close_consumer`] leaves the group within a deadline instead of relying on `Drop`,
//! which polls until closed with no bound.

pub mod consume;
pub mod read;
pub mod settings;
pub mod writer;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use serde::{Deserialize, Serialize};

pub use consume::{commit_offsets, consume_until_stopped, ConsumingStage};
pub use read::{committed_or_beginning, group_positions, TopicReader};
pub use settings::KafkaConfig;
pub use writer::{Acknowledgement, Consumed, GuaranteedWriter, OutgoingRecord, WriteError};

/// Kafka Streams' name for the delivery guarantee every stage keeps (see DESIGN § Delivery guarantee).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// Kafka transactions (KIP-447): needs Apache Kafka ≥ 2.5. Readers use `read_committed`.
    #[default]
    ExactlyOnce,
    /// For brokers without transactions: every write acknowledged before the offset moves; a
    /// crash may repeat a step, always with the same key, version and payload.
    AtLeastOnce,
}

impl ProcessingGuarantee {
    /// True when producers are transactional and consumers read committed data only.
    pub fn is_transactional(self) -> bool {
        matches!(self, ProcessingGuarantee::ExactlyOnce)
    }
}

/// Leaves the consumer group and closes the consumer within `deadline`, on the calling (blocking)
/// thread. Returns false if the deadline passed: the consumer is then leaked rather than dropped,
/// because librdkafka's destructor would poll until closed with no bound.
pub fn close_consumer<C: ConsumerContext>(consumer: BaseConsumer<C>, deadline: Duration) -> bool {
    let started = Instant::now();
    consumer.unsubscribe();
    if consumer.close_queue().is_err() {
        std::mem::forget(consumer);
        return false;
    }
    while !consumer.closed() {
        if started.elapsed() >= deadline {
            tracing::warn!(
                message = "Consumer did not close in time; abandoning it.",
                deadline_ms = deadline.as_millis() as u64
            );
            std::mem::forget(consumer);
            return false;
        }
        // Serves the rebalance callbacks that leaving the group triggers.
        let _ = consumer.poll(Duration::from_millis(50));
    }
    drop(consumer);
    true
}
