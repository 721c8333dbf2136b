//! The consumer side every consuming stage shares: the poll loop on the stage's dedicated
//! thread ([`consume_until_stopped`]), committing consumed offsets ([`commit_offsets`]), and
//! leaving the group within a bound at the end.
//!
//! A stage implements [`ConsumingStage`]: what to do with a message, what is due between polls
//! (commit a batch, retry a restore), how long it may wait for the next message — or that it is
//! full and must not take more for now — and how to finish at shutdown. The loop is the same
//! for every stage: librdkafka calls block the stage's own thread only, consumer errors are
//! logged at most every ten seconds (librdkafka recovers from them by itself), and at the end
//! the stage drains before the consumer leaves the group, so what it finished is committed by
//! the member that did it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::TopicPartitionList;

use super::close_consumer;
use super::writer::{describe_offsets, WriteError};

/// While a stage is full, how long the loop waits before asking it again.
const FULL_WAIT: Duration = Duration::from_millis(20);
/// At most one "consumer error" log line per this interval.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A stage driven by [`consume_until_stopped`].
pub trait ConsumingStage<C: ConsumerContext> {
    /// How long the next poll may wait for a message; `None` when the stage must not take more
    /// now (back-pressure) — the loop then waits briefly and asks again, without polling.
    fn poll_timeout(&mut self) -> Option<Duration>;

    /// One consumed message.
    fn on_message(&mut self, consumer: &BaseConsumer<C>, message: &BorrowedMessage<'_>);

    /// After every poll (or skipped poll): commit what is due, retry what waits.
    fn after_poll(&mut self, consumer: &BaseConsumer<C>);

    /// Shutdown: finish or abandon open work and commit what is done, within `bound`, while the
    /// consumer still owns its partitions.
    fn drain(&mut self, consumer: &BaseConsumer<C>, bound: Duration);

    /// True once the stage cannot go on (a fatal write error): the loop then ends as on
    /// shutdown — drain, leave the group, so the partitions go to the other members at once —
    /// and the stage reports its error to whoever ran the loop.
    fn cannot_go_on(&self) -> bool {
        false
    }
}

/// Polls `consumer` for `stage` on the calling (dedicated) thread until `stop` is set or the
/// stage [cannot go on](ConsumingStage::cannot_go_on); then drains the stage and leaves the
/// group, each within `drain`.
pub fn consume_until_stopped<C, S>(
    consumer: BaseConsumer<C>,
    stage: &mut S,
    stop: &AtomicBool,
    drain: Duration,
) where
    C: ConsumerContext,
    S: ConsumingStage<C>,
{
    let mut last_error: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) && !stage.cannot_go_on() {
        match stage.poll_timeout() {
            None => std::thread::sleep(FULL_WAIT),
            Some(timeout) => match consumer.poll(timeout) {
                Some(Ok(message)) => stage.on_message(&consumer, &message),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => {
                    if last_error.is_none_or(|at| at.elapsed() > ERROR_LOG_INTERVAL) {
                        tracing::warn!(message = "Consumer error.", %error);
                        last_error = Some(Instant::now());
                    }
                }
            },
        }
        stage.after_poll(&consumer);
    }
    stage.drain(&consumer, drain);
    if !close_consumer(consumer, drain) {
        tracing::warn!(message = "Consumer did not close within the drain bound.");
    }
}

/// Commits `offsets` (the next offsets to consume) for the consumer's group. `Async` only
/// queues the commit: the consumer context's commit callback reports its outcome. Blocking for
/// `Sync`.
pub fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
    mode: CommitMode,
) -> Result<(), WriteError> {
    if offsets.count() == 0 {
        return Ok(());
    }
    consumer
        .commit(offsets, mode)
        .map_err(|source| WriteError::Offsets {
            offsets: describe_offsets(offsets),
            source,
        })
}
