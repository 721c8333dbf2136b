//! Lanes: where a consumed change waits for its turn, and how a lane works through its changes.
//!
//! The consumer thread routes each change to a lane of its partition by the hash of its key
//! ([`Sink::route`]); a lane (a task on the async runtime) takes the changes queued so far as
//! one run — at most as many as one request can carry — decodes them, and delivers them in
//! order (`batch`). One key's changes therefore reach the API in order, while lanes and
//! partitions proceed in parallel.
//!
//! Guarantee: a lane never delivers a change of a partition it no longer owns. Every run
//! belongs to one assignment (a generation) of its partition; on revoke or shutdown the lane
//! is cancelled, drops what is queued and abandons what it is retrying — the new owner (or the
//! next start) delivers it from the committed offset, so an old version can never reach the
//! API after a newer one. A change that does not decode is dead-lettered, never skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{Dataset, DatasetRecord};
use snapfeed_runtime::records::ChangeEvent;
use snapfeed_runtime::topics::TopicNames;
use tokio::sync::{mpsc, Notify};

use super::attempt::Attempts;
use super::batch::{deliver_changes, RunTarget, Sent};
use super::{lock, Halt, Incoming, Outcome, Sink};
use crate::request::{BatchBuildError, BuildError, DecodedChange, PreparedBatch};

/// Which assignment of which partition a run of changes belongs to: when the partition is
/// revoked (or the sink stops) the run is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lane {
    partition: i32,
    generation: u64,
}

/// One assigned partition's lanes.
#[derive(Debug, Default)]
struct PartitionLanes {
    /// The assignment they belong to.
    generation: u64,
    /// Each lane's queue, by key hash.
    queues: Vec<mpsc::UnboundedSender<Incoming>>,
    /// Changes routed and not yet finished (queued or delivering).
    backlog: Arc<AtomicUsize>,
}

/// The lanes of every assigned partition, and the cancellation of a lane's work.
#[derive(Debug)]
pub(super) struct Lanes {
    /// `lanes_per_partition`.
    per_partition: usize,
    /// Assigned partitions (or ones with changes routed), by number.
    partitions: Mutex<HashMap<i32, PartitionLanes>>,
    /// Source of assignment generations.
    generations: AtomicU64,
    /// The sink is stopping.
    stop: AtomicBool,
    /// Wakes waiting lanes on stop and revoke, so they notice they are cancelled.
    cancelled: Notify,
    /// Where lanes and acknowledgement waits run (routing happens on the consumer thread).
    pub(super) runtime: tokio::runtime::Handle,
}

impl Lanes {
    /// Must be called inside the tokio runtime.
    pub(super) fn new(per_partition: usize) -> Lanes {
        Lanes {
            per_partition: per_partition.max(1),
            partitions: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            cancelled: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cancelled.notify_waiters();
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// True once the sink stops or the lane's partition assignment is gone.
    pub(super) fn cancelled(&self, lane: Lane) -> bool {
        self.stopping() || self.generation(lane.partition) != Some(lane.generation)
    }

    fn generation(&self, partition: i32) -> Option<u64> {
        lock(&self.partitions).get(&partition).map(|p| p.generation)
    }

    /// Completes when `lane` is cancelled.
    pub(super) async fn until_cancelled(&self, lane: Lane) {
        loop {
            // Created before the check: a notification in between is not missed.
            let notified = self.cancelled.notified();
            if self.cancelled(lane) {
                return;
            }
            notified.await;
        }
    }

    /// Completes when the sink stops.
    pub(super) async fn until_stopped(&self) {
        loop {
            let notified = self.cancelled.notified();
            if self.stopping() {
                return;
            }
            notified.await;
        }
    }

    /// A new assignment of `partition`: changes queued under an earlier one are dropped.
    pub(super) fn assigned(&self, partition: i32) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.partitions)
            .entry(partition)
            .or_default()
            .generation = generation;
    }

    /// Closes the partitions' lanes and wakes every waiting lane: the revoked ones give up.
    pub(super) fn revoke(&self, partitions: &[i32]) {
        {
            let mut held = lock(&self.partitions);
            for partition in partitions {
                held.remove(partition);
            }
        }
        self.cancelled.notify_waiters();
    }

    /// Changes routed and not yet finished, over all partitions.
    pub(super) fn backlog(&self) -> usize {
        lock(&self.partitions)
            .values()
            .map(|p| p.backlog.load(Ordering::Relaxed))
            .sum()
    }
}

/// `changes` values → change events and their dataset records.
#[derive(Debug)]
pub(super) struct Decoder {
    pub(super) dataset: Arc<Dataset>,
    schemas: Arc<SchemaStore>,
    /// `changes`, to name where an undecodable value came from.
    topic: String,
}

impl Decoder {
    pub(super) fn new(
        dataset: Arc<Dataset>,
        schemas: Arc<SchemaStore>,
        topics: &TopicNames,
    ) -> Decoder {
        Decoder {
            dataset,
            schemas,
            topic: topics.changes.clone(),
        }
    }

    /// The change and its record (`None` for DELETE); `None` when either does not decode
    /// (logged by location, never by content).
    fn decode(&self, incoming: &Incoming) -> Option<(ChangeEvent, Option<DatasetRecord>)> {
        let location = MessageLocation {
            topic: self.topic.clone(),
            partition: incoming.partition,
            offset: incoming.offset,
        };
        let decode = || {
            self.dataset
                .decode_change(&incoming.payload, &self.schemas, &location)
        };
        // A schema registry id not seen yet is looked up (blocking, retried while the
        // registry is unavailable): off this async worker where the runtime allows it.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let decoded = if multi_thread && self.schemas.needs_lookup(&incoming.payload) {
            tokio::task::block_in_place(decode)
        } else {
            decode()
        };
        match decoded {
            Ok(decoded) => Some(decoded),
            Err(error) => {
                tracing::warn!(message = "Change does not decode.", %location, %error);
                None
            }
        }
    }
}

impl Sink {
    /// Routes a consumed change to its lane (consumer thread).
    pub(crate) fn route(self: &Arc<Self>, key: Option<&[u8]>, mut incoming: Incoming) {
        if self.skip_delivered(&incoming, key) {
            return;
        }
        let per_partition = self.lanes.per_partition;
        let lane = match key {
            Some(key) if per_partition > 1 => {
                (xxhash_rust::xxh3::xxh3_64(key) % per_partition as u64) as usize
            }
            _ => 0,
        };
        lock(&self.progress.tracker).started(incoming.partition, incoming.offset);
        self.metrics.in_flight.inc();
        let mut partitions = lock(&self.lanes.partitions);
        let entry = partitions.entry(incoming.partition).or_default();
        incoming.generation = entry.generation;
        if entry.queues.is_empty() {
            for _ in 0..per_partition {
                let (tx, rx) = mpsc::unbounded_channel();
                entry.queues.push(tx);
                let sink = self.clone();
                let backlog = entry.backlog.clone();
                self.lanes
                    .runtime
                    .spawn(async move { sink.run_lane(rx, backlog).await });
            }
        }
        entry.backlog.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = entry.queues.get(lane) {
            let _ = tx.send(incoming);
        }
    }

    /// One lane: runs of queued changes, delivered in order, until its queue closes (revoke)
    /// — or until an outcome cannot be recorded: then it stops taking changes and waits to be
    /// cancelled, so nothing behind that change is delivered and its offset holds the
    /// partition's commits.
    async fn run_lane(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Incoming>,
        backlog: Arc<AtomicUsize>,
    ) {
        let batch_max = self.builder.batch_max().max(1);
        while let Some(first) = rx.recv().await {
            let mut run = vec![first];
            while run.len() < batch_max {
                match rx.try_recv() {
                    Ok(next) => run.push(next),
                    Err(_) => break,
                }
            }
            let count = run.len();
            let lane = Lane {
                partition: run[0].partition,
                generation: run[0].generation,
            };
            if self.lanes.cancelled(lane) {
                // Revoked or stopping: not done; consumed again from the committed offset.
                backlog.fetch_sub(count, Ordering::Relaxed);
                continue;
            }
            self.progress.busy.fetch_add(1, Ordering::Relaxed);
            // Abandoned (revoke, stop): the rest of the run is left undone.
            let delivered = self.deliver_run(lane, &run).await;
            self.progress.busy.fetch_sub(1, Ordering::Relaxed);
            backlog.fetch_sub(count, Ordering::Relaxed);
            if delivered == Err(Halt::Stalled) {
                self.lanes.until_cancelled(lane).await;
                self.change_stalled(false);
                return;
            }
        }
    }

    /// Delivers a run of changes of one lane, in order: undecodable ones are dead-lettered,
    /// the decodable ones between them go to `batch`.
    async fn deliver_run(self: &Arc<Self>, lane: Lane, run: &[Incoming]) -> Result<(), Halt> {
        let mut decoded: Vec<Option<(ChangeEvent, Option<DatasetRecord>)>> = run
            .iter()
            .map(|incoming| self.decoder.decode(incoming))
            .collect();
        // Repeats of a (key, version) already delivered — or earlier in this run — are done
        // without a request (see `resume`); the rest of the run goes on without them. Rare:
        // only then is the run copied.
        let mut in_run = std::collections::HashSet::new();
        let repeats: Vec<bool> = run
            .iter()
            .zip(&decoded)
            .map(|(incoming, decoded)| {
                decoded.as_ref().is_some_and(|(event, _)| {
                    if in_run.insert((event.key.as_str(), event.version)) {
                        self.skip_repeat(incoming, &event.key, event.version)
                    } else {
                        self.skip_repeat_in_run(incoming);
                        true
                    }
                })
            })
            .collect();
        let kept: Vec<Incoming>;
        let run = if repeats.contains(&true) {
            kept = run
                .iter()
                .zip(&repeats)
                .filter(|(_, repeat)| !**repeat)
                .map(|(incoming, _)| incoming.clone())
                .collect();
            let mut repeat = repeats.iter();
            decoded.retain(|_| !repeat.next().copied().unwrap_or(false));
            &kept[..]
        } else {
            run
        };
        let mut start = 0;
        while start < run.len() {
            if decoded[start].is_none() {
                self.finish_undecodable(&run[start]).await?;
                start += 1;
                continue;
            }
            let end = (start..run.len())
                .find(|&i| decoded[i].is_none())
                .unwrap_or(run.len());
            let changes: Vec<DecodedChange<'_>> = decoded[start..end]
                .iter()
                .flatten()
                .map(|(event, record)| DecodedChange {
                    event,
                    record: record.as_ref(),
                })
                .collect();
            let target = LaneRun {
                sink: self,
                lane,
                run: &run[start..end],
                changes: &changes,
            };
            deliver_changes(&target, &changes, 0).await?;
            start = end;
        }
        Ok(())
    }
}

/// A lane's run of decoded changes, as `batch` delivers it: requests built by the profile,
/// sent with retries by `attempt`, outcomes recorded by `outcome`.
struct LaneRun<'a> {
    sink: &'a Arc<Sink>,
    lane: Lane,
    /// The consumed changes, position for position with `changes`.
    run: &'a [Incoming],
    changes: &'a [DecodedChange<'a>],
}

impl RunTarget for LaneRun<'_> {
    fn build(&self, changes: &[DecodedChange<'_>]) -> Result<Vec<PreparedBatch>, BatchBuildError> {
        self.sink.builder.build_batch(changes)
    }

    fn unbuildable(&self, index: usize, error: &BuildError) {
        tracing::warn!(
            message = "A change cannot become a request; dead-lettering it.",
            %error,
            partition = self.run[index].partition,
            offset = self.run[index].offset
        );
    }

    async fn send(&self, batch: &PreparedBatch, base: usize) -> Result<Sent, Halt> {
        if self.sink.builder.confirms() {
            // Changes an earlier run may have sent without writing their receipt (killed in
            // between): ask before sending, as after an ambiguous failure (`resume`).
            let offsets: Vec<(i32, i64)> = batch
                .members
                .clone()
                .filter_map(|i| self.run.get(base + i))
                .map(|incoming| (incoming.partition, incoming.offset))
                .collect();
            if self.sink.may_have_been_sent(&offsets) {
                if let Some(landed) = self.sink.confirm(self.lane, batch).await? {
                    if landed.iter().any(|l| *l) {
                        return Ok(Sent::PartlyLanded {
                            landed,
                            attempts: Attempts::default(),
                        });
                    }
                }
            }
        }
        self.sink.send_with_retries(self.lane, batch).await
    }

    async fn finish(
        &self,
        index: usize,
        outcome: Outcome,
        attempts: &Attempts,
        idempotency_key: Option<String>,
    ) -> Result<(), Halt> {
        self.sink
            .finish(
                &self.run[index],
                &self.changes[index],
                outcome,
                attempts,
                idempotency_key,
            )
            .await
    }
}
