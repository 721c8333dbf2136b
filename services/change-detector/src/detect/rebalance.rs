//! The consumer's context: where librdkafka's rebalance callbacks reach the detector. On revoke
//! the open batch is committed (or aborted) before the partitions are released, so the member
//! that decided a record is the one that commits it; on assign the partitions' state is
//! restored before any of their records is decided.
//!
//! Threading: the callbacks run inside `poll`, on the stage's own thread. The detector sits
//! behind a mutex that the consume loop takes for each step and never holds across `poll`, so
//! a callback always finds it free.

use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::Detector;

/// The consumer context, sharing the detector with the consume loop.
#[derive(Debug, Clone)]
pub struct DetectorContext {
    detector: Arc<Mutex<Detector>>,
}

impl DetectorContext {
    /// A context around `detector`.
    pub fn new(detector: Detector) -> DetectorContext {
        DetectorContext {
            detector: Arc::new(Mutex::new(detector)),
        }
    }

    /// The detector, for one step (never held across `poll`).
    pub fn detector(&self) -> MutexGuard<'_, Detector> {
        self.detector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for DetectorContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        snapfeed_runtime::client_log::forward_log("consumer", level, facility, line);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        snapfeed_runtime::client_log::forward_error("consumer", &error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.detector().record_lag(&statistics);
    }
}

impl ConsumerContext for DetectorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            let mut detector = self.detector();
            // Finish (or abort) the open batch before the partitions go.
            detector.commit_batch(consumer);
            detector.release(&partitions);
            tracing::info!(message = "Partitions revoked.", partitions = ?partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            tracing::info!(message = "Partitions assigned; restoring state.", partitions = ?partitions);
            self.detector().restore(&partitions);
        }
    }
}
