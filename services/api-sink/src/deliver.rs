//! Delivering changes: lanes, retries, dead letters, receipts — and the rule the sink lives by:
//! **the consumer offset is the retry state**. An offset is committed only after its change is
//! delivered (receipt acknowledged) or dead-lettered (dead letter acknowledged), and only as a
//! contiguous prefix per partition ([`crate::offsets`]). A restart or rebalance therefore
//! simply retries from the committed offset; the Idempotency-Key makes the repeat harmless.
//!
//! One change's way, a file per step:
//! - `lane`: the consumer thread routes a change to the lane of its key's hash; a lane takes a
//!   run of changes, decodes them, and delivers them in order (cancelled when its partition is
//!   revoked or the sink stops);
//! - `batch`: a run → requests (CommCare batches several changes per request), sent in order;
//!   a batch refused with a 400 is bisected, a change that cannot become a request is
//!   dead-lettered;
//! - `attempt`: one request, attempted until [`crate::retry::decide`] says delivered or
//!   dead letter — each attempt first passing `admission`: the host's pause after a 429/503,
//!   the global breaker, the rate limit and the adaptive in-flight limit;
//! - `confirm`: after an ambiguous failure (timeout, connection lost), the API is asked which
//!   changes already took effect before the request is sent again (CommCare `bulk-fetch`);
//! - `outcome`: the receipt or dead letter; one that cannot even be encoded stalls its lane
//!   instead of being passed over;
//! - `write`: the record written through the runtime's writer; only once the broker
//!   acknowledged it is the offset marked done.
//! - `resume`: changes an earlier run delivered past the committed offset (their receipts read
//!   back on assignment) are marked done without being sent again.
//!
//! Concurrency: each partition has `lanes_per_partition` lanes, and a lane delivers one
//! request at a time, so one key's changes arrive in order while partitions (and lanes) proceed
//! in parallel. A lane retrying a transient failure simply waits — other lanes keep flowing —
//! and when the changes held across all lanes pass a soft bound the consumer polls only as
//! often as group membership needs until they drain (see `crate::consume`).

mod admission;
mod attempt;
mod batch;
mod confirm;
mod lane;
mod outcome;
mod resume;
mod write;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::Dataset;
use snapfeed_runtime::health::Readiness;
use snapfeed_runtime::kafka::{GuaranteedWriter, WriteError};
use snapfeed_runtime::topics::TopicNames;

use crate::auth::Authenticator;
use crate::config::SinkConfig;
use crate::metrics::SinkMetrics;
use crate::offsets::OffsetTracker;
use crate::receipts::{DeliveredChanges, ReceiptReader};
use crate::request::RequestBuilder;
pub(crate) use crate::retry::Outcome;
use attempt::Api;
use lane::{Decoder, Lanes};
use write::OutcomeWriter;

/// Readiness condition: the API answered recently (or nothing needed it).
pub const API_REACHABLE: &str = "api_reachable";
/// Readiness condition: every outcome could be recorded (no lane is stalled).
pub const OUTCOMES_RECORDED: &str = "outcomes_recorded";
/// Header counting how often a change was redriven from the dead letters.
pub use snapfeed_runtime::dead_letters::REDRIVE_COUNT_HEADER;
/// Dead-letter reason for a change that does not decode.
pub const REASON_UNDECODABLE: &str = "undecodable";

/// A consumed change, owned, on its way to a lane.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The raw value (kept whole for a dead letter).
    pub payload: Vec<u8>,
    /// Times redriven so far.
    pub redrive_count: i32,
    /// The partition's assignment generation when routed (stale after a revoke).
    pub(super) generation: u64,
}

impl Incoming {
    /// From a consumed message.
    pub(crate) fn from_message<M: rdkafka::Message>(message: &M) -> Incoming {
        let redrive_count = snapfeed_runtime::dead_letters::redrive_count(message);
        Incoming {
            partition: message.partition(),
            offset: message.offset(),
            payload: message.payload().unwrap_or_default().to_vec(),
            redrive_count,
            generation: 0,
        }
    }
}

/// Why a lane stops delivering its run before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Revoked or stopping: the rest is left to the next owner (or start), from the committed
    /// offset.
    Abandoned,
    /// An outcome could not be recorded: the lane stops at that change (see `outcome`).
    Stalled,
}

/// Where delivery stands: which offsets are done, and what is still being worked on.
#[derive(Debug, Default)]
struct Progress {
    /// Done offsets per partition; the committable prefix.
    tracker: Mutex<OffsetTracker>,
    /// Deliveries in progress (HTTP, or a receipt/dead letter not yet acknowledged), for
    /// draining on revoke and at shutdown.
    busy: AtomicUsize,
    /// Receipts and dead letters sent and not yet acknowledged (part of the backlog).
    pending_records: AtomicUsize,
    /// Lanes stopped at an outcome they could not record. A mutex, not an atomic: the count
    /// and what it is reported as (metric, readiness) change together.
    stalled: Mutex<usize>,
}

/// Everything the lanes share.
pub(crate) struct Sink {
    /// The lanes of every assigned partition, and which assignment each belongs to.
    lanes: Lanes,
    /// `changes` values → change events and their dataset records.
    decoder: Decoder,
    /// Changes → requests, by the configured profile.
    builder: RequestBuilder,
    /// The API: client, credentials, retry policy and the global limits.
    api: Api,
    /// Receipts and dead letters.
    outcomes: OutcomeWriter,
    /// Done offsets and work in progress.
    progress: Progress,
    /// `snapfeed_api_sink_…`.
    metrics: SinkMetrics,
    /// `/readyz`: [`API_REACHABLE`] and [`OUTCOMES_RECORDED`].
    readiness: Readiness,
    /// Reads receipts back on assignment (`None`: topics not co-partitioned).
    receipts: Option<ReceiptReader>,
    /// Changes past the committed offset an earlier run delivered (receipt found): not sent
    /// again. Per partition, offset → record key.
    delivered_before: Mutex<DeliveredChanges>,
    /// Versions the API accepted, per partition (a repeat on `changes` is not sent again).
    recent_deliveries: Mutex<resume::RecentDeliveries>,
    /// Changes an earlier run may have sent without a receipt: confirmed before their first
    /// send, where the profile can ask.
    maybe_sent: Mutex<resume::MaybeSent>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What [`Sink::new`] needs.
pub(crate) struct SinkParts {
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
    /// Writer of receipts and dead letters.
    pub writer: Arc<GuaranteedWriter>,
    /// Metrics.
    pub metrics: SinkMetrics,
    /// Readiness.
    pub readiness: Readiness,
    /// Reads receipts back on assignment (`None`: topics not co-partitioned).
    pub receipts: Option<ReceiptReader>,
}

impl Sink {
    /// Builds the shared sink (must be called inside the tokio runtime).
    pub(crate) fn new(parts: SinkParts) -> Result<Sink, reqwest::Error> {
        let config = parts.config;
        let api = Api::new(&config, parts.auth)?;
        parts
            .metrics
            .concurrency_limit
            .set(api.admission.concurrency_limit() as i64);
        // Ready only once the client and its metrics exist: a scrape right after /readyz
        // turned 200 once found the in-flight limit not yet exposed.
        parts.readiness.set(API_REACHABLE, true);
        parts.readiness.set(OUTCOMES_RECORDED, true);
        Ok(Sink {
            lanes: Lanes::new(config.lanes_per_partition),
            decoder: Decoder::new(parts.dataset, parts.schemas.clone(), &parts.topics),
            builder: parts.builder,
            api,
            outcomes: OutcomeWriter::new(
                parts.writer,
                parts.schemas,
                parts.topics,
                parts.pipeline,
                parts.receipts.is_some(),
            ),
            progress: Progress::default(),
            metrics: parts.metrics,
            readiness: parts.readiness,
            receipts: parts.receipts,
            delivered_before: Mutex::new(DeliveredChanges::new()),
            recent_deliveries: Mutex::new(resume::RecentDeliveries::default()),
            maybe_sent: Mutex::new(resume::MaybeSent::default()),
        })
    }

    /// Stops taking work: lanes finish their current request (or abandon a retry wait).
    pub(crate) fn stop(&self) {
        self.lanes.stop();
    }

    /// Changes routed and not yet finished, over all partitions, plus outcome records not
    /// yet acknowledged.
    pub(crate) fn total_backlog(&self) -> usize {
        self.lanes.backlog() + self.progress.pending_records.load(Ordering::Relaxed)
    }

    /// A new assignment of `partition`: changes queued under an earlier one are dropped.
    pub(crate) fn assigned(&self, partition: i32) {
        self.lanes.assigned(partition);
    }

    /// Partitions revoked: their lanes are closed (queued changes dropped — they will be
    /// consumed again by the new owner from the committed offset). Waits (bounded) for the
    /// requests already in progress, so their outcome is committed by the caller.
    pub(crate) fn revoke(&self, partitions: &[i32], wait: Duration) {
        self.lanes.revoke(partitions);
        let deadline = std::time::Instant::now() + wait;
        while self.busy() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Offsets ready to commit.
    pub(crate) fn committable(&self) -> Vec<(i32, i64)> {
        lock(&self.progress.tracker).committable()
    }

    /// Records a commit.
    pub(crate) fn committed(&self, offsets: &[(i32, i64)]) {
        lock(&self.progress.tracker).committed(offsets);
    }

    /// Forgets revoked partitions' offsets (after their final commit).
    pub(crate) fn forget(&self, partitions: &[i32]) {
        self.forget_deliveries(partitions);
        let mut tracker = lock(&self.progress.tracker);
        tracker.forget(partitions);
        self.metrics.in_flight.set(tracker.in_flight() as i64);
    }

    /// Updates `/readyz` from how long the API has gone unanswered.
    pub(crate) fn check_reachability(&self) {
        self.readiness
            .set(API_REACHABLE, !self.api.reachability.is_unreachable());
    }

    /// In-progress deliveries.
    pub(crate) fn busy(&self) -> usize {
        self.progress.busy.load(Ordering::Relaxed)
    }

    /// The error that makes further delivery pointless (outcomes can never be written), once.
    pub(crate) fn take_fatal(&self) -> Option<WriteError> {
        self.outcomes.take_fatal()
    }

    /// Whether such an error happened.
    pub(crate) fn has_failed(&self) -> bool {
        self.outcomes.has_fatal()
    }

    /// Marks a change's offset done (its outcome is durable).
    fn done(&self, partition: i32, offset: i64) {
        let mut tracker = lock(&self.progress.tracker);
        tracker.done(partition, offset);
        self.metrics.in_flight.set(tracker.in_flight() as i64);
    }
}

impl Sink {
    /// The sink's metrics (the consumer context records the lag into them).
    pub(crate) fn metrics(&self) -> &SinkMetrics {
        &self.metrics
    }
}

impl Sink {
    /// A lane stalls (`+1`) or its stall ends (`-1`); the count is reported as
    /// `stalled_lanes` and `/readyz` `outcomes_recorded` under the same lock, so a concurrent
    /// stall and release never leave readiness at the wrong value.
    fn change_stalled(&self, stalled: bool) {
        let mut count = lock(&self.progress.stalled);
        if stalled {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        self.metrics.stalled_lanes.set(*count as i64);
        self.readiness.set(OUTCOMES_RECORDED, *count == 0);
    }
}
