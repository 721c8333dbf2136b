//! The consumer side of api-sink, on the stage's own thread (the runtime's
//! [`consume_until_stopped`](snapfeed_runtime::kafka::consume_until_stopped) loop): each
//! consumed change is routed to its lane ([`SinkStage`]); the done prefix of every partition is
//! committed every 200 ms, synchronously on revoke and at shutdown ([`SinkContext`]).
//!
//! Guarantee: an offset is committed only once every change before it is delivered or
//! dead-lettered and its receipt or dead letter acknowledged ([`crate::offsets`]); a revoked
//! partition's lanes are drained (bounded) and what they finished committed before the
//! partition goes, so the new owner starts where this one stopped — without skipping a change,
//! repeating at most what was in flight.
//!
//! Back-pressure: the lanes hold at most about [`BACKLOG_LIMIT`] changes. Above it the loop
//! stops taking messages — librdkafka keeps the group membership alive in the background — but
//! still polls every [`MAX_POLL_GAP`], so a rebalance is served and the member is not dropped
//! for not polling. Pausing single partitions was tried first; after a pause/resume cycle on
//! transactional topics fetching did not restart on the in-process broker, so the bound is
//! global — see the README's notes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use snapfeed_runtime::client_log;
use snapfeed_runtime::kafka::{commit_offsets, ConsumingStage};

use crate::deliver::{Incoming, Sink};

/// Changes routed and not yet finished above which the consumer stops taking more.
pub const BACKLOG_LIMIT: usize = 20_000;
/// Longest gap between two polls while the backlog is full (well below max.poll.interval.ms).
pub const MAX_POLL_GAP: Duration = Duration::from_secs(60);
/// How long one poll waits for a message.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// How often the done prefix is committed (asynchronously).
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// The consumer context: on revoke, waits for in-progress deliveries and commits what is
/// done before the partitions go; on assign, starts a new generation for each partition.
pub(crate) struct SinkContext {
    sink: Arc<Sink>,
    /// `changes`.
    topic: String,
    /// Bound for draining a revoked partition's deliveries.
    drain: Duration,
    /// Bound of the committed-offsets lookup on assignment.
    timeout: Duration,
}

impl SinkContext {
    pub(crate) fn new(
        sink: Arc<Sink>,
        topic: String,
        drain: Duration,
        timeout: Duration,
    ) -> SinkContext {
        SinkContext {
            sink,
            topic,
            drain,
            timeout,
        }
    }

    /// The group's committed offsets of `tpl` (0 where nothing is committed: the consumer
    /// starts at the beginning). `None` when the lookup fails.
    fn committed(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Option<BTreeMap<i32, i64>> {
        match consumer.committed_offsets(tpl.clone(), self.timeout) {
            Ok(committed) => Some(
                committed
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(offset) => (e.partition(), offset),
                        _ => (e.partition(), 0),
                    })
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(message = "Cannot look up the committed offsets; receipts are not read back.", %error);
                None
            }
        }
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        client_log::forward_log("consumer", level, facility, line);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_log::forward_error("consumer", &error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.sink.metrics().record_lag(&statistics, &self.topic);
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            self.sink.revoke(&partitions, self.drain);
            commit(consumer, &self.sink, &self.topic, CommitMode::Sync);
            self.sink.forget(&partitions);
            tracing::info!(message = "Partitions revoked.", partitions = ?partitions);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if result.is_ok() {
            let confirmed: Vec<(i32, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(offset) => Some((e.partition(), offset)),
                    _ => None,
                })
                .collect();
            self.sink.committed(&confirmed);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for partition in &partitions {
                self.sink.assigned(*partition);
            }
            // Before the first change of these partitions is consumed (fetching starts after
            // this callback): what an earlier run delivered past the committed offsets.
            if !partitions.is_empty() {
                if let Some(committed) = self.committed(consumer, tpl) {
                    self.sink.recall_deliveries(&committed);
                }
            }
            tracing::info!(message = "Partitions assigned.", partitions = ?partitions);
        }
    }
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The sink as the consume loop drives it.
pub(crate) struct SinkStage {
    sink: Arc<Sink>,
    /// `changes`.
    topic: String,
    last_commit: Instant,
    last_poll: Instant,
}

impl SinkStage {
    pub(crate) fn new(sink: Arc<Sink>, topic: String) -> SinkStage {
        SinkStage {
            sink,
            topic,
            last_commit: Instant::now(),
            last_poll: Instant::now(),
        }
    }
}

impl ConsumingStage<SinkContext> for SinkStage {
    fn poll_timeout(&mut self) -> Option<Duration> {
        let full = self.sink.total_backlog() > BACKLOG_LIMIT;
        if full && self.last_poll.elapsed() < MAX_POLL_GAP {
            return None;
        }
        self.last_poll = Instant::now();
        Some(POLL_TIMEOUT)
    }

    fn on_message(&mut self, _consumer: &BaseConsumer<SinkContext>, message: &BorrowedMessage<'_>) {
        self.sink
            .route(message.key(), Incoming::from_message(message));
    }

    fn after_poll(&mut self, consumer: &BaseConsumer<SinkContext>) {
        if self.last_commit.elapsed() >= COMMIT_INTERVAL {
            self.last_commit = Instant::now();
            commit(consumer, &self.sink, &self.topic, CommitMode::Async);
            self.sink.check_reachability();
        }
    }

    /// A fatal write error (a record the cluster will never take, a producer that cannot be
    /// replaced): the offset stays undone and the service stops with the error.
    fn cannot_go_on(&self) -> bool {
        self.sink.has_failed()
    }

    /// In-progress deliveries finish (or give up at the bound), what is done is committed.
    fn drain(&mut self, consumer: &BaseConsumer<SinkContext>, bound: Duration) {
        self.sink.stop();
        let deadline = Instant::now() + bound;
        while self.sink.busy() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        commit(consumer, &self.sink, &self.topic, CommitMode::Sync);
    }
}

/// Commits the done prefix of every partition.
fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    sink: &Sink,
    topic: &str,
    mode: CommitMode,
) {
    let offsets = sink.committable();
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in &offsets {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return;
        }
    }
    match commit_offsets(consumer, &tpl, mode) {
        // An async commit is only queued here: it is recorded by `commit_callback` once the
        // broker confirms it, so a failed one is offered again.
        Ok(()) if matches!(mode, CommitMode::Sync) => sink.committed(&offsets),
        Ok(()) => {}
        Err(error) => tracing::warn!(message = "Offset commit failed; will retry.", %error),
    }
}
