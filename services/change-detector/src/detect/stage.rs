//! The detector as a stage of the runtime's consume loop
//! ([`consume_until_stopped`](snapfeed_runtime::kafka::consume_until_stopped)): each message
//! decided, the batch committed when due, failed restores retried between polls, the open
//! batch committed at shutdown while the partitions are still ours.
//!
//! A fatal error (a write, or state written for another partition count) ends the loop the way shutdown does ([`ConsumingStage::cannot_go_on`]) —
//! drain, leave the group, so the partitions go to the other members at once — and the stage
//! thread returns the error, which ends the service. Nothing is committed after it.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::BorrowedMessage;
use snapfeed_runtime::kafka::ConsumingStage;

use super::{Detector, DetectorContext, StageError};

/// The detector as the consume loop's stage. The detector itself lives in the consumer's
/// context, where the rebalance callbacks reach it too; each step takes it for that step only.
#[derive(Debug)]
pub struct DetectorStage {
    context: DetectorContext,
    /// A step ended in a fatal error (seen under the lock that step held).
    failed: bool,
}

impl DetectorStage {
    /// The stage of the detector in `context`.
    pub fn new(context: DetectorContext) -> DetectorStage {
        DetectorStage {
            context,
            failed: false,
        }
    }

    /// Runs one step on the detector and notes whether it failed fatally (seen under the lock
    /// the step holds).
    fn step(&mut self, step: impl FnOnce(&mut Detector)) {
        let mut detector = self.context.detector();
        step(&mut detector);
        self.failed |= detector.failed.is_some();
    }

    /// After the loop: closes the writer (aborting what is still open) within `bound`, and
    /// returns the fatal error the stage stopped with, if any. A failed writer is not touched
    /// again: its open transaction is aborted by the next instance with its transactional id,
    /// or by the broker's transaction timeout.
    pub fn finish(self, bound: Duration) -> Result<(), StageError> {
        let mut detector = self.context.detector();
        if let Some(error) = detector.failed.take() {
            return Err(error);
        }
        if let Err(error) = detector.batch.close(bound) {
            tracing::warn!(message = "Writer did not close cleanly.", %error);
        }
        Ok(())
    }
}

impl ConsumingStage<DetectorContext> for DetectorStage {
    fn poll_timeout(&mut self) -> Option<Duration> {
        Some(self.context.detector().batch.poll_timeout())
    }

    fn on_message(
        &mut self,
        consumer: &BaseConsumer<DetectorContext>,
        message: &BorrowedMessage<'_>,
    ) {
        self.step(|detector| detector.on_message(consumer, message));
    }

    fn after_poll(&mut self, consumer: &BaseConsumer<DetectorContext>) {
        self.step(|detector| {
            if detector.batch.is_due() {
                detector.commit_batch(consumer);
            }
            detector.retry_restore(consumer);
        });
    }

    fn drain(&mut self, consumer: &BaseConsumer<DetectorContext>, _bound: Duration) {
        // Commit what is decided while the partitions are still ours.
        self.step(|detector| detector.commit_batch(consumer));
    }

    fn cannot_go_on(&self) -> bool {
        self.failed
    }
}
