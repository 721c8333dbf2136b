//! Delivering changes: lanes, retries, dead letters, receipts — and the rule the sink lives by:
//! **the consumer offset is the retry state**. An offset is committed only after its change is
//! delivered (receipt acknowledged) or dead-lettered (dead letter acknowledged), and only as a
//! contiguous prefix per partition ([`crate::offsets`]). A restart or rebalance therefore
//! simply retries from the committed offset; the Idempotency-Key makes the repeat harmless.
//! The lane does not wait for that acknowledgement: see [`outcome`].
//!
//! Concurrency: each partition has `lanes_per_partition` lanes; a change goes to the lane of
//! its key's hash, and a lane delivers one request at a time, so one key's changes arrive in
//! order while partitions (and lanes) proceed in parallel. A lane retrying a transient failure
//! simply waits — other lanes keep flowing — and when the changes held across all lanes pass a
//! soft bound (`BACKLOG_LIMIT` in `lib.rs`) the consumer polls only as often as group
//! membership needs until they drain (it does not pause single partitions: librdkafka's mock broker never resumes fetching a paused
//! partition of a transactional topic). Global bounds: `max_in_flight` requests,
//! `rate_limit_per_second`, and a breaker that makes every lane back off together when most
//! requests fail.

mod outcome;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use chrono::Utc;
use rdkafka::message::Headers;
use rdkafka::producer::FutureProducer;
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::client_log::ClientLog;
use snapfeed_runtime::dataset::{Dataset, DatasetRecord};
use snapfeed_runtime::health::Readiness;
use snapfeed_runtime::records::{now_millis, Attempt, AvroRecord, ChangeEvent};
use snapfeed_runtime::topics::TopicNames;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::auth::Authenticator;
use crate::config::SinkConfig;
use crate::metrics::SinkMetrics;
use crate::offsets::OffsetTracker;
use crate::request::{DecodedChange, PreparedBatch, RequestBuilder};
use crate::retry::{Backoff, Classification, Classifier, GlobalBreaker, RetryBudget};

/// Readiness condition: the API answered recently (or nothing needed it).
pub const API_REACHABLE: &str = "api_reachable";
/// Header counting how often a change was redriven from the dead letters.
pub const REDRIVE_COUNT_HEADER: &str = "snapfeed-redrive-count";

/// A consumed change, owned, on its way to a lane.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The raw value (kept whole for a dead letter).
    pub payload: Vec<u8>,
    /// Times redriven so far.
    pub redrive_count: i32,
    /// The partition's assignment generation when routed (stale after a revoke).
    generation: u64,
}

impl Incoming {
    /// From a consumed message.
    pub fn from_message<M: rdkafka::Message>(message: &M) -> Incoming {
        let redrive_count = message
            .headers()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == REDRIVE_COUNT_HEADER)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        Incoming {
            partition: message.partition(),
            offset: message.offset(),
            payload: message.payload().unwrap_or_default().to_vec(),
            redrive_count,
            generation: 0,
        }
    }
}

/// Which assignment of which partition a run of changes belongs to: when the partition is
/// revoked (or the sink stops) the run is cancelled — a revoked lane must never deliver an old
/// version after the new owner delivered a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lane {
    partition: i32,
    generation: u64,
}

/// Per-partition bookkeeping the consumer thread and the lanes share.
#[derive(Debug, Default)]
struct PartitionLanes {
    generation: u64,
    lanes: Vec<mpsc::UnboundedSender<Incoming>>,
    /// Changes routed and not yet finished (queued or delivering).
    backlog: Arc<AtomicUsize>,
}

/// Everything the lanes share.
pub struct Sink {
    config: SinkConfig,
    pipeline: String,
    topics: TopicNames,
    dataset: Arc<Dataset>,
    schemas: Arc<SchemaStore>,
    client: reqwest::Client,
    builder: RequestBuilder,
    auth: Authenticator,
    classifier: Classifier,
    budget: RetryBudget,
    breaker: GlobalBreaker,
    in_flight: Semaphore,
    rate: Option<tokio::sync::Mutex<Instant>>,
    producer: FutureProducer<ClientLog>,
    metrics: SinkMetrics,
    readiness: Readiness,
    tracker: Mutex<OffsetTracker>,
    partitions: Mutex<HashMap<i32, PartitionLanes>>,
    /// Deliveries in progress (HTTP, or a receipt/dead letter not yet acknowledged), for
    /// draining on revoke and at shutdown.
    busy: AtomicUsize,
    /// Receipts and dead letters sent and not yet acknowledged (part of the backlog).
    pending_records: AtomicUsize,
    stop: AtomicBool,
    stopped: Notify,
    /// Millis since start of the first unanswered request in a row (0: the API answers).
    unreachable_since: AtomicU64,
    started: Instant,
    paused_lanes: AtomicUsize,
    generations: AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What [`Sink::new`] needs.
pub struct SinkParts {
    /// `[sink]`.
    pub config: SinkConfig,
    /// Pipeline name (Idempotency-Key).
    pub pipeline: String,
    /// Topics.
    pub topics: TopicNames,
    /// Dataset (decodes the change's record).
    pub dataset: Arc<Dataset>,
    /// Schemas.
    pub schemas: Arc<SchemaStore>,
    /// Request builder for the profile.
    pub builder: RequestBuilder,
    /// Authentication.
    pub auth: Authenticator,
    /// Producer for receipts and dead letters.
    pub producer: FutureProducer<ClientLog>,
    /// Metrics.
    pub metrics: SinkMetrics,
    /// Readiness.
    pub readiness: Readiness,
}

impl std::fmt::Debug for SinkParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkParts")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// How one change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered {
        status: u16,
        response_id: Option<String>,
    },
    DeadLetter {
        reason: &'static str,
        status: Option<u16>,
        excerpt: Option<String>,
    },
    /// Shutdown or revoke interrupted it: not done, it will be consumed again.
    Abandoned,
}

/// One request's attempts.
#[derive(Debug, Default)]
struct Attempts {
    first: Option<Instant>,
    first_at: Option<i64>,
    last_at: Option<i64>,
    history: Vec<Attempt>,
}

impl Sink {
    /// Builds the shared sink (must be called inside the tokio runtime).
    pub fn new(parts: SinkParts) -> Result<Sink, reqwest::Error> {
        let config = parts.config;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .build()?;
        parts.readiness.set(API_REACHABLE, true);
        Ok(Sink {
            classifier: Classifier::new(&config.retry, config.response_excerpt_bytes),
            budget: RetryBudget::new(&config.retry),
            breaker: GlobalBreaker::new(&config.retry),
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            rate: config
                .rate_limit_per_second
                .map(|_| tokio::sync::Mutex::new(Instant::now())),
            config,
            pipeline: parts.pipeline,
            topics: parts.topics,
            dataset: parts.dataset,
            schemas: parts.schemas,
            client,
            builder: parts.builder,
            auth: parts.auth,
            producer: parts.producer,
            metrics: parts.metrics,
            readiness: parts.readiness,
            tracker: Mutex::new(OffsetTracker::default()),
            partitions: Mutex::new(HashMap::new()),
            busy: AtomicUsize::new(0),
            pending_records: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            stopped: Notify::new(),
            unreachable_since: AtomicU64::new(0),
            started: Instant::now(),
            paused_lanes: AtomicUsize::new(0),
            generations: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Stops taking work: lanes finish their current request (or abandon a retry wait).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.notify_waiters();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// True once the sink stops or the lane's partition assignment is gone.
    fn cancelled(&self, lane: Lane) -> bool {
        self.stopping()
            || lock(&self.partitions)
                .get(&lane.partition)
                .map(|p| p.generation)
                != Some(lane.generation)
    }

    /// Completes when `lane` is cancelled.
    async fn until_cancelled(&self, lane: Lane) {
        loop {
            // Created before the check: a notification in between is not missed.
            let notified = self.stopped.notified();
            if self.cancelled(lane) {
                return;
            }
            notified.await;
        }
    }

    /// Routes a consumed change to its lane (consumer thread).
    pub fn route(self: &Arc<Self>, key: Option<&[u8]>, mut incoming: Incoming) {
        let lanes_per_partition = self.config.lanes_per_partition.max(1);
        let lane = match key {
            Some(key) if lanes_per_partition > 1 => {
                (xxhash_rust::xxh3::xxh3_64(key) % lanes_per_partition as u64) as usize
            }
            _ => 0,
        };
        lock(&self.tracker).started(incoming.partition, incoming.offset);
        self.metrics.in_flight.inc();
        let mut partitions = lock(&self.partitions);
        let entry = partitions.entry(incoming.partition).or_default();
        incoming.generation = entry.generation;
        if entry.lanes.is_empty() {
            for _ in 0..lanes_per_partition {
                let (tx, rx) = mpsc::unbounded_channel();
                entry.lanes.push(tx);
                let sink = self.clone();
                let backlog = entry.backlog.clone();
                self.runtime
                    .spawn(async move { sink.run_lane(rx, backlog).await });
            }
        }
        entry.backlog.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = entry.lanes.get(lane) {
            let _ = tx.send(incoming);
        }
    }

    /// Changes routed and not yet finished, over all partitions, plus outcome records not
    /// yet acknowledged.
    pub fn total_backlog(&self) -> usize {
        let routed: usize = lock(&self.partitions)
            .values()
            .map(|p| p.backlog.load(Ordering::Relaxed))
            .sum();
        routed + self.pending_records.load(Ordering::Relaxed)
    }

    /// Changes routed to `partition` and not yet finished.
    pub fn backlog(&self, partition: i32) -> usize {
        lock(&self.partitions)
            .get(&partition)
            .map_or(0, |p| p.backlog.load(Ordering::Relaxed))
    }

    /// A new assignment of `partition`: changes queued under an earlier one are dropped.
    pub fn assigned(&self, partition: i32) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let mut partitions = lock(&self.partitions);
        let entry = partitions.entry(partition).or_default();
        entry.generation = generation;
    }

    /// Partitions revoked: their lanes are closed (queued changes dropped — they will be
    /// consumed again by the new owner from the committed offset). Waits (bounded) for the
    /// requests already in progress, so their outcome is committed by the caller.
    pub fn revoke(&self, partitions: &[i32], wait: Duration) {
        {
            let mut held = lock(&self.partitions);
            for partition in partitions {
                if let Some(mut lanes) = held.remove(partition) {
                    lanes.lanes.clear();
                }
            }
        }
        // Wake every waiting lane: the revoked ones give up at once.
        self.stopped.notify_waiters();
        let deadline = std::time::Instant::now() + wait;
        while self.busy.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Offsets ready to commit.
    pub fn committable(&self) -> Vec<(i32, i64)> {
        lock(&self.tracker).committable()
    }

    /// Records a commit.
    pub fn committed(&self, offsets: &[(i32, i64)]) {
        lock(&self.tracker).committed(offsets);
    }

    /// Forgets revoked partitions' offsets (after their final commit).
    pub fn forget(&self, partitions: &[i32]) {
        let mut tracker = lock(&self.tracker);
        tracker.forget(partitions);
        self.metrics.in_flight.set(tracker.in_flight() as i64);
    }

    /// Updates `/readyz` from how long the API has gone unanswered.
    pub fn check_reachability(&self) {
        let since = self.unreachable_since.load(Ordering::Relaxed);
        let unreachable = since > 0
            && self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(since))
                > Duration::from_millis(self.config.unreachable_not_ready_after_ms);
        self.readiness.set(API_REACHABLE, !unreachable);
    }

    /// In-progress deliveries.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

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
            let current = lock(&self.partitions)
                .get(&run[0].partition)
                .map(|p| p.generation);
            let count = run.len();
            if self.stopping() || current != Some(run[0].generation) {
                // Revoked or stopping: not done; consumed again from the committed offset.
                backlog.fetch_sub(count, Ordering::Relaxed);
                continue;
            }
            self.busy.fetch_add(1, Ordering::Relaxed);
            self.deliver_run(&run).await;
            self.busy.fetch_sub(1, Ordering::Relaxed);
            backlog.fetch_sub(count, Ordering::Relaxed);
        }
    }

    /// Delivers a run of changes of one lane, in order.
    async fn deliver_run(self: &Arc<Self>, run: &[Incoming]) {
        let mut events: Vec<Option<ChangeEvent>> = Vec::with_capacity(run.len());
        let mut records: Vec<Option<DatasetRecord>> = Vec::with_capacity(run.len());
        for incoming in run {
            let location = MessageLocation {
                topic: self.topics.changes.clone(),
                partition: incoming.partition,
                offset: incoming.offset,
            };
            let event = self.schemas.decode::<ChangeEvent>(
                &incoming.payload,
                ChangeEvent::SCHEMA,
                &location,
            );
            let (event, record) = match event {
                Ok(event) => match &event.record {
                    Some(bytes) => match self.dataset.decode(bytes, &self.schemas, &location) {
                        Ok(record) => (Some(event), Some(record)),
                        Err(error) => {
                            tracing::warn!(message = "Change record does not decode.", %location, %error);
                            (None, None)
                        }
                    },
                    None => (Some(event), None),
                },
                Err(error) => {
                    tracing::warn!(message = "Change does not decode.", %location, %error);
                    (None, None)
                }
            };
            events.push(event);
            records.push(record);
        }
        // Undecodable changes are dead letters; the rest go in order, in runs between them.
        let mut start = 0;
        while start < run.len() {
            if events[start].is_none() {
                self.finish(
                    &run[start],
                    None,
                    Outcome::DeadLetter {
                        reason: "undecodable",
                        status: None,
                        excerpt: None,
                    },
                    &Attempts::default(),
                )
                .await;
                start += 1;
                continue;
            }
            let end = (start..run.len())
                .find(|&i| events[i].is_none())
                .unwrap_or(run.len());
            let decoded: Vec<DecodedChange<'_>> = (start..end)
                .filter_map(|i| {
                    events[i].as_ref().map(|event| DecodedChange {
                        event,
                        record: records[i].as_ref(),
                    })
                })
                .collect();
            if self
                .deliver_decoded(&run[start..end], &decoded)
                .await
                .is_err()
            {
                return;
            }
            start = end;
        }
    }

    /// `Err(())` when abandoned (shutdown/revoke): the rest of the run is left undone.
    async fn deliver_decoded(
        self: &Arc<Self>,
        run: &[Incoming],
        decoded: &[DecodedChange<'_>],
    ) -> Result<(), ()> {
        let batches = match self.builder.build_batch(decoded) {
            Ok(batches) => batches,
            Err(error) => {
                // Deliver the ones before the unbuildable change, dead-letter it, go on after it.
                let index = error.index;
                tracing::warn!(message = "A change cannot become a request; dead-lettering it.", error = %error.source, offset = run[index].offset);
                Box::pin(self.deliver_decoded(&run[..index], &decoded[..index])).await?;
                self.finish(
                    &run[index],
                    Some(decoded[index].event),
                    Outcome::DeadLetter {
                        reason: "request_build_failed",
                        status: None,
                        excerpt: None,
                    },
                    &Attempts::default(),
                )
                .await;
                return Box::pin(self.deliver_decoded(&run[index + 1..], &decoded[index + 1..]))
                    .await;
            }
        };
        for batch in batches {
            self.deliver_batch(run, decoded, batch).await?;
        }
        Ok(())
    }

    async fn deliver_batch(
        self: &Arc<Self>,
        run: &[Incoming],
        decoded: &[DecodedChange<'_>],
        batch: PreparedBatch,
    ) -> Result<(), ()> {
        let members = batch.members.clone();
        let mut attempts = Attempts::default();
        let lane = Lane {
            partition: run[0].partition,
            generation: run[0].generation,
        };
        let outcome = self.send_with_retries(lane, &batch, &mut attempts).await;
        match outcome {
            Outcome::Abandoned => Err(()),
            Outcome::DeadLetter {
                reason: "http_4xx",
                status: Some(400),
                ..
            } if members.len() > 1 => {
                // Bisect: find the offending change(s); only those are dead-lettered.
                let middle = members.start + members.len() / 2;
                for half in [members.start..middle, middle..members.end] {
                    let sub = &decoded[half.clone()];
                    let halves = self.builder.build_batch(sub).map_err(|_| ())?;
                    for mut part in halves {
                        part.members =
                            (part.members.start + half.start)..(part.members.end + half.start);
                        Box::pin(self.deliver_batch(run, decoded, part)).await?;
                    }
                }
                Ok(())
            }
            outcome => {
                for (position, index) in members.clone().enumerate() {
                    let key = batch.member_keys.get(position).cloned();
                    self.finish_with_key(
                        &run[index],
                        Some(decoded[index].event),
                        outcome.clone(),
                        &attempts,
                        key,
                    )
                    .await;
                }
                Ok(())
            }
        }
    }

    /// Sends one request until it is delivered, permanently refused, out of budget, or
    /// abandoned — honouring the global breaker, the rate limit and `max_in_flight`.
    async fn send_with_retries(
        &self,
        lane: Lane,
        batch: &PreparedBatch,
        attempts: &mut Attempts,
    ) -> Outcome {
        let mut backoff = Backoff::new(&self.config.retry);
        let mut reauthenticated = false;
        let mut paused = false;
        let outcome = loop {
            if self.cancelled(lane) {
                break Outcome::Abandoned;
            }
            tokio::select! {
                _ = self.breaker.wait() => {}
                _ = self.until_cancelled(lane) => break Outcome::Abandoned,
            }
            tokio::select! {
                _ = self.rate_limit() => {}
                _ = self.until_cancelled(lane) => break Outcome::Abandoned,
            }
            let permit = tokio::select! {
                permit = self.in_flight.acquire() => permit,
                _ = self.until_cancelled(lane) => break Outcome::Abandoned,
            };
            let Ok(_permit) = permit else {
                break Outcome::Abandoned;
            };
            let now = Instant::now();
            attempts.first.get_or_insert(now);
            let at = now_millis();
            attempts.first_at.get_or_insert(at);
            attempts.last_at = Some(at);
            let authorization = match self.auth.header(&self.client).await {
                Ok(header) => header,
                Err(error) => {
                    tracing::warn!(
                        message = "No credentials for the request; retrying.",
                        reason = error.reason()
                    );
                    attempts.history.push(Attempt {
                        at,
                        status: None,
                        error: Some(error.reason().to_string()),
                    });
                    let delay = backoff.next_delay(attempts.history.len() as u32, None);
                    if !self.wait_or_stop(lane, delay, &mut paused).await {
                        break Outcome::Abandoned;
                    }
                    continue;
                }
            };
            if self.cancelled(lane) {
                // Revoked or stopping while waiting for credentials: the new owner sends it.
                break Outcome::Abandoned;
            }
            let started = Instant::now();
            let result = batch
                .request
                .to_reqwest(
                    &self.client,
                    authorization.clone(),
                    self.config.request_timeout(),
                )
                .send()
                .await;
            let classification = self.classifier.classify(result, Utc::now()).await;
            self.metrics
                .request_duration
                .observe(started.elapsed().as_secs_f64());
            drop(_permit);
            if let Some(until) = self
                .breaker
                .record(classification.is_api_failure(), Instant::now())
            {
                self.metrics.global_backoff.inc();
                tracing::warn!(
                    message = "Most requests fail; every lane backs off.",
                    pause_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64
                );
            }
            match classification {
                Classification::Delivered {
                    status,
                    response_id,
                } => {
                    self.unreachable_since.store(0, Ordering::Relaxed);
                    self.metrics.requests_delivered.inc();
                    attempts.history.push(Attempt {
                        at,
                        status: Some(i32::from(status)),
                        error: None,
                    });
                    break Outcome::Delivered {
                        status,
                        response_id,
                    };
                }
                Classification::Permanent { status, excerpt } => {
                    self.unreachable_since.store(0, Ordering::Relaxed);
                    attempts.history.push(Attempt {
                        at,
                        status: status.map(i32::from),
                        error: None,
                    });
                    if status == Some(401) && !reauthenticated {
                        if let Some(rejected) = &authorization {
                            // An expired or revoked token: fetch a new one, try once more.
                            reauthenticated = true;
                            self.auth.invalidate(rejected).await;
                            continue;
                        }
                    }
                    if matches!(status, Some(401 | 403)) {
                        // Credentials rejected: no change is at fault, and dead-lettering every
                        // change until someone rotates a key would empty the stream into the
                        // dead letters. Retry with backoff instead (the lane stays paused).
                        self.metrics
                            .requests
                            .with_label_values(&["transient"])
                            .inc();
                        self.metrics
                            .retries
                            .with_label_values(&["unauthorized"])
                            .inc();
                        tracing::warn!(
                            message = "The API refused our credentials; retrying with backoff.",
                            status = status.map(i32::from)
                        );
                        if let (Some(401), Some(rejected)) = (status, &authorization) {
                            self.auth.invalidate(rejected).await;
                        }
                        let count = attempts.history.len() as u32;
                        let delay = backoff.next_delay(count, None);
                        if !self.wait_or_stop(lane, delay, &mut paused).await {
                            break Outcome::Abandoned;
                        }
                        continue;
                    }
                    self.metrics
                        .requests
                        .with_label_values(&["permanent"])
                        .inc();
                    break Outcome::DeadLetter {
                        reason: "http_4xx",
                        status,
                        excerpt: Some(excerpt),
                    };
                }
                Classification::Transient {
                    status,
                    retry_after,
                    reason,
                } => {
                    if status.is_none() {
                        let since = self.started.elapsed().as_millis().max(1) as u64;
                        let _ = self.unreachable_since.compare_exchange(
                            0,
                            since,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    } else {
                        self.unreachable_since.store(0, Ordering::Relaxed);
                    }
                    self.metrics
                        .requests
                        .with_label_values(&["transient"])
                        .inc();
                    self.metrics.retries.with_label_values(&[reason]).inc();
                    attempts.history.push(Attempt {
                        at,
                        status: status.map(i32::from),
                        error: Some(reason.to_string()),
                    });
                    let count = attempts.history.len() as u32;
                    if self.budget.is_exhausted(
                        count,
                        attempts.first.unwrap_or(now),
                        Instant::now(),
                    ) {
                        break Outcome::DeadLetter {
                            reason: crate::retry::REASON_RETRY_BUDGET_EXHAUSTED,
                            status,
                            excerpt: None,
                        };
                    }
                    let delay = backoff.next_delay(count, retry_after);
                    if !self.wait_or_stop(lane, delay, &mut paused).await {
                        break Outcome::Abandoned;
                    }
                }
            }
        };
        if paused {
            self.paused_lanes.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .paused_partitions
                .set(self.paused_lanes.load(Ordering::Relaxed) as i64);
        }
        outcome
    }

    /// Sleeps `delay` (the lane is paused meanwhile); false if shutdown came first.
    async fn wait_or_stop(&self, lane: Lane, delay: Duration, paused: &mut bool) -> bool {
        if !*paused {
            *paused = true;
            self.paused_lanes.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .paused_partitions
                .set(self.paused_lanes.load(Ordering::Relaxed) as i64);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => !self.cancelled(lane),
            _ = self.until_cancelled(lane) => false,
        }
    }

    async fn rate_limit(&self) {
        let (Some(rate), Some(per_second)) = (&self.rate, self.config.rate_limit_per_second) else {
            return;
        };
        let spacing = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        let wait_until = {
            let mut next = rate.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + spacing;
            start
        };
        tokio::time::sleep_until(wait_until).await;
    }
}
