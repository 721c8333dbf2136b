//! The filter stage's loop: consume `snapshots`, decide per record, emit changes and state, and
//! commit each batch — the delivery guarantee lives here.
//!
//! **`exactly_once`.** One Kafka transaction per batch (closed by size or time): the change
//! events, the state updates and the consumer offsets (`send_offsets_to_transaction` with the
//! consumer's group metadata, KIP-447) commit together. A crash or rebalance therefore never
//! loses a change and never shows one twice to `read_committed` readers. On revoke the open
//! batch is committed (or aborted) before the partitions are released; after an abort the
//! in-memory state is rebuilt from `state` and the consumer rewinds to the committed offsets,
//! so versions stay what the committed history says.
//!
//! **`at_least_once`.** Changes are produced and acknowledged, then state, then the offsets are
//! committed. A crash between the steps repeats the batch: the same records against the same
//! state give the same changes — same key, version and payload (`detected_at` is the snapshot
//! record's timestamp, not the wall clock) — so the sink's Idempotency-Key absorbs the repeat.
//!
//! Threading: the loop runs on a dedicated thread; every librdkafka call here blocks that
//! thread only, never an async worker. Rebalance callbacks run inside `poll` on the same thread
//! and reach the engine through a mutex that the loop never holds across `poll`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::Dataset;
use snapfeed_runtime::headers;
use snapfeed_runtime::health::Readiness;
use snapfeed_runtime::kafka::{await_acknowledged, DeliveryTracker, ProcessingGuarantee};
use snapfeed_runtime::records::{
    now_millis, AvroRecord, ChangeEvent, ChangeOp, DetectorState, Provenance, RejectedRow,
    SnapshotEnd,
};
use snapfeed_runtime::topics::TopicNames;

use crate::config::{CorruptPolicy, DetectorConfig};
use crate::content_hash::{hash_hex, ContentHasher};
use crate::metrics::DetectorMetrics;
use crate::state::{Decision, DeleteVerdict, PartitionState, Streams};

/// The producer the detector writes changes and state with.
pub type DetectorProducer = ThreadedProducer<DeliveryTracker>;

/// Readiness condition: every assigned partition's state is restored.
pub const RESTORED: &str = "restored";
/// Readiness condition: no partition is stopped on a corrupt record.
pub const NOT_PAUSED: &str = "no_paused_partitions";

/// Wait before the first new attempt at a partition whose state could not be restored
/// (doubling up to [`RESTORE_RETRY_MAX`]).
const RESTORE_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between two attempts at restoring a partition.
const RESTORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// Why a batch could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// Records were not acknowledged (at_least_once).
    #[error("{0} records were not acknowledged")]
    Unacknowledged(u64),
    /// An envelope could not be encoded.
    #[error(transparent)]
    Encode(#[from] snapfeed_runtime::avro::AvroError),
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> BatchError {
    move |source| BatchError::Kafka { context, source }
}

/// What the unchanged fast path made of a snapshot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognised {
    /// Same content as the key's last version; stamped as seen.
    Unchanged,
    /// Not recognised (new, changed, deleted, unreadable here, or another writer schema):
    /// decode it. `raw` is its tracked-bytes hash (0 if unknown), to remember once observed.
    Unknown {
        /// [`ContentHasher::tracked`] of the payload.
        raw: u128,
    },
}

/// The unchanged fast path of [`Engine::handle`] (public for the benchmark): first by the
/// hash of the record's tracked bytes (fields skipped, not read), then by its content hash read
/// straight from the Avro binary (remembering the tracked-bytes hash for next time).
pub fn recognise_unchanged(
    hasher: &mut ContentHasher,
    dataset: &Dataset,
    state: &mut PartitionState,
    key: &str,
    payload: &[u8],
    stream: u32,
    snapshot_id: &str,
) -> Recognised {
    let raw = hasher.tracked(dataset, payload);
    if state.recognise(key, raw, stream, snapshot_id) {
        return Recognised::Unchanged;
    }
    match hasher.payload(dataset, payload) {
        Some(hash) if state.observe_unchanged(key, hash, raw, stream, snapshot_id) => {
            Recognised::Unchanged
        }
        _ => Recognised::Unknown { raw },
    }
}

/// The per-record outcome counters, resolved once (a labelled lookup per record costs more
/// than the rest of an unchanged record's handling).
#[derive(Debug)]
struct Outcomes {
    unchanged: IntCounter,
    created: IntCounter,
    updated: IntCounter,
}

impl Outcomes {
    fn of(metrics: &DetectorMetrics) -> Outcomes {
        let counter = |outcome: &str| metrics.records.with_label_values(&[outcome]);
        Outcomes {
            unchanged: counter("unchanged"),
            created: counter("created"),
            updated: counter("updated"),
        }
    }
}

/// The open batch.
#[derive(Debug, Default)]
struct Batch {
    started: Option<Instant>,
    records: usize,
    /// Next offset to consume, per partition.
    offsets: BTreeMap<i32, i64>,
    in_transaction: bool,
    /// State updates held back until the changes are acknowledged (at_least_once).
    pending_state: Vec<(String, i32, Vec<u8>)>,
}

/// Everything the loop and the rebalance callbacks share.
pub struct Engine {
    dataset: Arc<Dataset>,
    schemas: Arc<SchemaStore>,
    topics: TopicNames,
    guarantee: ProcessingGuarantee,
    config: DetectorConfig,
    producer: Arc<DetectorProducer>,
    producer_config: ClientConfig,
    reader: BaseConsumer,
    partitions: HashMap<i32, PartitionState>,
    /// Assigned partitions whose state could not be restored yet (e.g. the broker was
    /// restarting): their records are not processed, and the restore is retried from the loop
    /// until it succeeds or the partition is revoked. Never given up on: a partition dropped
    /// here would stall silently, since no rebalance need ever come.
    unrestored: BTreeSet<i32>,
    /// When the next restore attempt of `unrestored` is due, and the wait after it.
    restore_retry: (Instant, Duration),
    streams: Streams,
    batch: Batch,
    paused: HashSet<i32>,
    metrics: DetectorMetrics,
    readiness: Readiness,
    timeout: Duration,
    value: Vec<u8>,
    hasher: ContentHasher,
    outcomes: Outcomes,
    /// Snapshots whose deletes the guard refused (metric counted once per snapshot).
    tripped_snapshots: HashSet<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("partitions", &self.partitions.keys().collect::<Vec<_>>())
            .field("batch_records", &self.batch.records)
            .finish_non_exhaustive()
    }
}

/// What the engine needs to be built.
pub struct EngineParts {
    /// Dataset (decode, key, content hash).
    pub dataset: Arc<Dataset>,
    /// Schemas.
    pub schemas: Arc<SchemaStore>,
    /// Topic names.
    pub topics: TopicNames,
    /// Guarantee.
    pub guarantee: ProcessingGuarantee,
    /// `[detector]`.
    pub config: DetectorConfig,
    /// Producer settings (transactional id included), to create and re-create the producer.
    pub producer_config: ClientConfig,
    /// A group-less reader for restoring `state`.
    pub reader: BaseConsumer,
    /// Metrics.
    pub metrics: DetectorMetrics,
    /// Readiness.
    pub readiness: Readiness,
    /// Bound of one blocking Kafka call.
    pub timeout: Duration,
}

impl std::fmt::Debug for EngineParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineParts")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

fn create_producer(
    config: &ClientConfig,
    guarantee: ProcessingGuarantee,
    timeout: Duration,
) -> KafkaResult<Arc<DetectorProducer>> {
    let producer: DetectorProducer = config.create_with_context(DeliveryTracker::default())?;
    if guarantee.is_transactional() {
        producer.init_transactions(timeout)?;
    }
    Ok(Arc::new(producer))
}

impl Engine {
    /// Creates the producer (blocking: `init_transactions` fences an earlier incarnation).
    pub fn new(parts: EngineParts) -> KafkaResult<Engine> {
        let producer = create_producer(&parts.producer_config, parts.guarantee, parts.timeout)?;
        let hasher = ContentHasher::new(&parts.dataset);
        parts.readiness.set(RESTORED, true);
        parts.readiness.set(NOT_PAUSED, true);
        Ok(Engine {
            dataset: parts.dataset,
            schemas: parts.schemas,
            topics: parts.topics,
            guarantee: parts.guarantee,
            config: parts.config,
            producer,
            producer_config: parts.producer_config,
            reader: parts.reader,
            partitions: HashMap::new(),
            unrestored: BTreeSet::new(),
            restore_retry: (Instant::now(), RESTORE_RETRY_INITIAL),
            streams: Streams::default(),
            batch: Batch::default(),
            paused: HashSet::new(),
            outcomes: Outcomes::of(&parts.metrics),
            metrics: parts.metrics,
            readiness: parts.readiness,
            timeout: parts.timeout,
            value: Vec::with_capacity(1024),
            hasher,
            tripped_snapshots: HashSet::new(),
        })
    }

    /// The producer (for the final flush).
    pub fn producer(&self) -> Arc<DetectorProducer> {
        self.producer.clone()
    }

    /// How long the loop may wait for the next record before the open batch is due.
    pub fn poll_timeout(&self) -> Duration {
        match self.batch.started {
            None => Duration::from_millis(100),
            Some(started) => Duration::from_millis(self.config.batch_max_ms)
                .saturating_sub(started.elapsed())
                .min(Duration::from_millis(100)),
        }
    }

    /// True when the open batch must be committed now.
    pub fn batch_due(&self) -> bool {
        match self.batch.started {
            None => false,
            Some(started) => {
                self.batch.records >= self.config.batch_max_records
                    || started.elapsed() >= Duration::from_millis(self.config.batch_max_ms)
            }
        }
    }

    /// Handles one `snapshots` record.
    pub fn handle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), BatchError> {
        let partition = message.partition();
        if !self.partitions.contains_key(&partition) || self.paused.contains(&partition) {
            return Ok(());
        }
        self.batch.started.get_or_insert_with(Instant::now);
        let meta = RecordMeta::from_message(message);
        let at = message.timestamp().to_millis().unwrap_or(0);
        // Built only when a record needs a full decode or is reported: not per record.
        let location = || MessageLocation {
            topic: message.topic().to_string(),
            partition,
            offset: message.offset(),
        };
        let payload = message.payload().unwrap_or_default();
        if meta.control == Some(headers::CONTROL_SNAPSHOT_END) {
            let location = location();
            match self
                .schemas
                .decode::<SnapshotEnd>(payload, SnapshotEnd::SCHEMA, &location)
            {
                Ok(marker) => self.on_snapshot_end(partition, &marker, &meta, at)?,
                Err(error) => {
                    if !self.on_corrupt(consumer, &meta, &location, &error.to_string())? {
                        return Ok(());
                    }
                }
            }
        } else {
            let message_key = message.key().and_then(|k| std::str::from_utf8(k).ok());
            let stream = self.streams.id(meta.stream);
            // The hot path: most records are unchanged, and that is recognised under the
            // message key without decoding or allocating. Anything else is decoded
            // (validated) before it is acted on.
            let mut raw = 0;
            if let (Some(key), Some(state)) = (message_key, self.partitions.get_mut(&partition)) {
                match recognise_unchanged(
                    &mut self.hasher,
                    &self.dataset,
                    state,
                    key,
                    payload,
                    stream,
                    meta.snapshot_id,
                ) {
                    Recognised::Unchanged => {
                        self.outcomes.unchanged.inc();
                        self.batch.offsets.insert(partition, message.offset() + 1);
                        self.batch.records += 1;
                        return Ok(());
                    }
                    Recognised::Unknown { raw: tracked } => raw = tracked,
                }
            }
            let location = location();
            let (key, hash): (Cow<'_, str>, u128) =
                match self.dataset.decode(payload, &self.schemas, &location) {
                    Ok(record) => {
                        let key = match message_key {
                            Some(key) => Cow::Borrowed(key),
                            None => match record.key(&self.dataset) {
                                Ok(key) => Cow::Owned(key.into_string()),
                                Err(error) => {
                                    let detail = format!("no record key: {error}");
                                    if self.on_corrupt(consumer, &meta, &location, &detail)? {
                                        self.batch.offsets.insert(partition, message.offset() + 1);
                                    }
                                    return Ok(());
                                }
                            },
                        };
                        (key, self.hasher.record(&record))
                    }
                    Err(error) => {
                        if self.on_corrupt(consumer, &meta, &location, &error.to_string())? {
                            self.batch.offsets.insert(partition, message.offset() + 1);
                            self.batch.records += 1;
                        }
                        return Ok(());
                    }
                };
            let decision = self
                .partitions
                .get_mut(&partition)
                .map(|state| {
                    let decision = state.observe(&key, hash, stream, meta.snapshot_id, at);
                    if raw != 0 {
                        state.remember_raw(&key, raw);
                    }
                    decision
                })
                .unwrap_or(Decision::Unchanged);
            match decision {
                Decision::Unchanged => self.outcomes.unchanged.inc(),
                Decision::Create { version, previous } => {
                    self.outcomes.created.inc();
                    self.emit(
                        partition,
                        ChangeOp::Create,
                        &key,
                        version,
                        hash,
                        previous,
                        Some(payload),
                        &meta,
                        at,
                    )?;
                }
                Decision::Update { version, previous } => {
                    self.outcomes.updated.inc();
                    self.emit(
                        partition,
                        ChangeOp::Update,
                        &key,
                        version,
                        hash,
                        Some(previous),
                        Some(payload),
                        &meta,
                        at,
                    )?;
                }
            }
        }
        self.batch.offsets.insert(partition, message.offset() + 1);
        self.batch.records += 1;
        Ok(())
    }

    /// A record that does not decode: `Ok(true)` when the policy moves past it.
    fn on_corrupt<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        meta: &RecordMeta<'_>,
        location: &MessageLocation,
        error: &str,
    ) -> Result<bool, BatchError> {
        self.metrics.records.with_label_values(&["corrupt"]).inc();
        match self.config.on_corrupt {
            CorruptPolicy::Skip => {
                tracing::warn!(message = "Skipping a snapshot record that does not decode.", %location, %error);
                let row = RejectedRow {
                    file_name: meta.file_name.to_string(),
                    file_hash: meta.file_hash.to_string(),
                    snapshot_id: meta.snapshot_id.to_string(),
                    stream: meta.stream.to_string(),
                    line: meta.line.unwrap_or(0),
                    column: None,
                    reason: "corrupt_payload".into(),
                    detail: error.to_string(),
                    raw_line: String::new(),
                    raw_truncated: false,
                    rejected_at: now_millis(),
                };
                let payload = self.schemas.current(RejectedRow::SCHEMA)?.encode(&row)?;
                let key = location.to_string();
                self.ensure_transaction()?;
                self.send(
                    BaseRecord::to(&self.topics.rejects)
                        .key(key.as_bytes())
                        .payload(payload.as_slice()),
                )?;
                Ok(true)
            }
            CorruptPolicy::Pause => {
                tracing::error!(
                    message = "Stopping the partition at a snapshot record that does not decode (on_corrupt = pause); replay past it once resolved.",
                    %location,
                    %error
                );
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&location.topic, location.partition);
                consumer.pause(&tpl).map_err(kafka("pause"))?;
                self.paused.insert(location.partition);
                self.metrics.paused_partitions.set(self.paused.len() as i64);
                self.readiness.set(NOT_PAUSED, false);
                Ok(false)
            }
        }
    }

    fn on_snapshot_end(
        &mut self,
        partition: i32,
        marker: &SnapshotEnd,
        meta: &RecordMeta<'_>,
        at: i64,
    ) -> Result<(), BatchError> {
        if !self.config.deletes.enabled {
            return Ok(());
        }
        let stream = self.streams.id(&marker.stream);
        let Some(state) = self.partitions.get(&partition) else {
            return Ok(());
        };
        let verdict = state.complete_snapshot(
            stream,
            &marker.snapshot_id,
            marker.rows_in_partition.max(0) as u64,
            self.config.deletes.max_share,
        );
        match verdict {
            DeleteVerdict::Incomplete { seen, expected } => {
                self.metrics
                    .snapshots
                    .with_label_values(&["incomplete"])
                    .inc();
                tracing::info!(
                    message = "Snapshot not seen whole on this partition; no deletes for it.",
                    snapshot_id = %marker.snapshot_id,
                    stream = %marker.stream,
                    partition,
                    seen,
                    expected
                );
            }
            DeleteVerdict::GuardTripped { would_delete, of } => {
                self.metrics
                    .snapshots
                    .with_label_values(&["complete"])
                    .inc();
                // One truncated file trips on every partition: count the snapshot once.
                if self.tripped_snapshots.insert(marker.snapshot_id.clone()) {
                    self.metrics.delete_guard_tripped.inc();
                }
                if self.tripped_snapshots.len() > 1_000 {
                    self.tripped_snapshots.clear();
                }
                tracing::error!(
                    message = "Delete guard tripped: the snapshot would delete too many records; none deleted.",
                    snapshot_id = %marker.snapshot_id,
                    file = %marker.file_name,
                    stream = %marker.stream,
                    partition,
                    would_delete,
                    of,
                    max_share = self.config.deletes.max_share
                );
            }
            DeleteVerdict::Delete(keys) => {
                self.metrics
                    .snapshots
                    .with_label_values(&["complete"])
                    .inc();
                for key in keys {
                    let Some(after) = self
                        .partitions
                        .get_mut(&partition)
                        .and_then(|s| s.delete(&key, at))
                    else {
                        continue;
                    };
                    self.metrics.records.with_label_values(&["deleted"]).inc();
                    let meta = RecordMeta {
                        line: None,
                        ..*meta
                    };
                    self.emit(
                        partition,
                        ChangeOp::Delete,
                        &key,
                        after.version,
                        after.hash(),
                        Some(after.hash()),
                        None,
                        &meta,
                        at,
                    )?;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        partition: i32,
        op: ChangeOp,
        key: &str,
        version: i64,
        hash: u128,
        previous: Option<u128>,
        record: Option<&[u8]>,
        meta: &RecordMeta<'_>,
        at: i64,
    ) -> Result<(), BatchError> {
        let event = ChangeEvent {
            op,
            key: key.to_string(),
            version,
            content_hash: hash_hex(hash),
            previous_hash: previous.map(hash_hex),
            record: record.map(<[u8]>::to_vec),
            record_schema: self.dataset.schema_name().to_string(),
            source: Provenance {
                file_name: meta.file_name.to_string(),
                file_hash: meta.file_hash.to_string(),
                line: meta.line,
                snapshot_id: meta.snapshot_id.to_string(),
                stream: meta.stream.to_string(),
            },
            // The snapshot record's timestamp: a repeated batch yields a byte-identical event.
            detected_at: at,
        };
        self.value.clear();
        self.schemas
            .current(ChangeEvent::SCHEMA)?
            .encode_into(&event, &mut self.value)?;
        let value = std::mem::take(&mut self.value);
        self.ensure_transaction()?;
        // Same key, same partition count: the partition the snapshot record came from.
        let sent = self.send(
            BaseRecord::to(&self.topics.changes)
                .partition(partition)
                .key(key.as_bytes())
                .payload(value.as_slice()),
        );
        self.value = value;
        sent?;
        let state = self
            .partitions
            .get(&partition)
            .and_then(|s| s.to_record(key, &self.streams, meta.snapshot_id));
        if let Some(state) = state {
            let payload = self
                .schemas
                .current(DetectorState::SCHEMA)?
                .encode(&state)?;
            if self.guarantee.is_transactional() {
                self.send(
                    BaseRecord::to(&self.topics.state)
                        .partition(partition)
                        .key(key.as_bytes())
                        .payload(payload.as_slice()),
                )?;
            } else {
                self.batch
                    .pending_state
                    .push((key.to_string(), partition, payload));
            }
        }
        Ok(())
    }

    fn ensure_transaction(&mut self) -> Result<(), BatchError> {
        if self.guarantee.is_transactional() && !self.batch.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(kafka("begin transaction"))?;
            self.batch.in_transaction = true;
        }
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), BatchError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(kafka("send")(error)),
            }
        }
    }

    /// Commits the open batch (changes, state, offsets). On failure it aborts and recovers:
    /// state rebuilt from `state`, consumer rewound to the committed offsets.
    pub fn commit_batch<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.batch.offsets.is_empty() && !self.batch.in_transaction {
            self.batch = Batch::default();
            return;
        }
        let started = self.batch.started.unwrap_or_else(Instant::now);
        match self.try_commit(consumer) {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics
                    .transaction_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.batch = Batch::default();
            }
            Err(error) => {
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(message = "Batch failed; aborting and rebuilding from committed state.", %error);
                self.recover(consumer);
            }
        }
        self.metrics
            .state_keys
            .set(self.partitions.values().map(|p| p.len() as i64).sum());
    }

    fn offsets_tpl(&self) -> Result<TopicPartitionList, BatchError> {
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in &self.batch.offsets {
            tpl.add_partition_offset(&self.topics.snapshots, *partition, Offset::Offset(*offset))
                .map_err(kafka("offsets"))?;
        }
        Ok(tpl)
    }

    fn try_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), BatchError> {
        let offsets = self.offsets_tpl()?;
        if self.guarantee.is_transactional() {
            self.ensure_transaction()?;
            let metadata = consumer.group_metadata().ok_or(BatchError::Kafka {
                context: "group metadata",
                source: KafkaError::NoMessageReceived,
            })?;
            if offsets.count() > 0 {
                self.producer
                    .send_offsets_to_transaction(&offsets, &metadata, self.timeout)
                    .map_err(kafka("send offsets to transaction"))?;
            }
            await_acknowledged(&self.producer, self.timeout);
            self.producer
                .commit_transaction(self.timeout)
                .map_err(kafka("commit transaction"))?;
            self.batch.in_transaction = false;
            return Ok(());
        }
        // at_least_once: changes acknowledged → state → acknowledged → offsets.
        self.flush_acknowledged()?;
        for (key, partition, payload) in std::mem::take(&mut self.batch.pending_state) {
            self.send(
                BaseRecord::to(&self.topics.state)
                    .partition(partition)
                    .key(key.as_bytes())
                    .payload(payload.as_slice()),
            )?;
        }
        self.flush_acknowledged()?;
        if offsets.count() > 0 {
            consumer
                .commit(&offsets, CommitMode::Sync)
                .map_err(kafka("commit offsets"))?;
        }
        Ok(())
    }

    fn flush_acknowledged(&self) -> Result<(), BatchError> {
        await_acknowledged(&self.producer, self.timeout);
        self.producer.flush(self.timeout).map_err(kafka("flush"))?;
        match self.producer.context().take_failures() {
            0 => Ok(()),
            failed => Err(BatchError::Unacknowledged(failed)),
        }
    }

    /// Abort, rebuild every held partition from `state`, rewind to the committed offsets.
    fn recover<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.batch.in_transaction {
            if let Err(error) = self.producer.abort_transaction(self.timeout) {
                tracing::warn!(message = "Abort failed; replacing the producer.", %error);
                match create_producer(&self.producer_config, self.guarantee, self.timeout) {
                    Ok(producer) => self.producer = producer,
                    Err(error) => tracing::error!(message = "Cannot replace the producer.", %error),
                }
            }
        }
        let _ = self.producer.context().take_failures();
        self.batch = Batch::default();
        let held: Vec<i32> = self
            .partitions
            .keys()
            .chain(&self.unrestored)
            .copied()
            .collect();
        self.restore(&held);
        if let Err(error) = self.rewind(consumer, None) {
            tracing::error!(message = "Cannot rewind to the committed offsets.", %error);
        }
    }

    /// Seeks the consumer back to the committed offsets of `only` (every assigned partition
    /// when `None`), so the records since the last commit are decided again.
    fn rewind<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        only: Option<&[i32]>,
    ) -> KafkaResult<()> {
        let committed = consumer.committed(self.timeout)?;
        let mut rewind = TopicPartitionList::new();
        for element in committed.elements() {
            if only.is_some_and(|only| !only.contains(&element.partition())) {
                continue;
            }
            let offset = match element.offset() {
                Offset::Invalid => Offset::Beginning,
                offset => offset,
            };
            rewind.add_partition_offset(element.topic(), element.partition(), offset)?;
        }
        consumer.seek_partitions(rewind, self.timeout).map(|_| ())
    }

    /// Retries the restore of partitions whose state could not be read (with backoff); once
    /// restored, rewinds them to their committed offsets, because the records that arrived
    /// meanwhile were passed over by `handle`. Called from the loop, between polls.
    pub fn retry_restore<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let (due, wait) = self.restore_retry;
        if self.unrestored.is_empty() || Instant::now() < due {
            return;
        }
        let partitions: Vec<i32> = self.unrestored.iter().copied().collect();
        tracing::info!(message = "Retrying the state restore.", partitions = ?partitions);
        self.restore(&partitions);
        let restored: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.unrestored.contains(p))
            .collect();
        if !restored.is_empty() {
            if let Err(error) = self.rewind(consumer, Some(&restored)) {
                // Without the rewind, records passed over while unrestored would be skipped:
                // keep the partitions unprocessed and try again.
                tracing::warn!(message = "Cannot rewind restored partitions; retrying.", %error, partitions = ?restored);
                for partition in restored {
                    self.partitions.remove(&partition);
                    self.unrestored.insert(partition);
                }
                self.readiness.set(RESTORED, false);
            }
        }
        let next = if self.unrestored.is_empty() {
            RESTORE_RETRY_INITIAL
        } else {
            (wait * 2).min(RESTORE_RETRY_MAX)
        };
        self.restore_retry = (Instant::now() + wait, next);
    }

    /// Restores the state of `partitions` from the `state` topic (replacing what is held).
    pub fn restore(&mut self, partitions: &[i32]) {
        self.readiness.set(RESTORED, false);
        for &partition in partitions {
            let started = Instant::now();
            match self.read_state(partition) {
                Ok((state, entries)) => {
                    let seconds = started.elapsed().as_secs_f64();
                    self.metrics.restore_seconds.observe(seconds);
                    self.metrics.restored_entries.inc_by(entries);
                    tracing::info!(
                        message = "State restored.",
                        partition,
                        keys = state.len(),
                        entries,
                        seconds
                    );
                    self.partitions.insert(partition, state);
                    self.unrestored.remove(&partition);
                }
                Err(error) => {
                    // Without its state a partition would re-emit everything as CREATE: never
                    // process it. It stays unrestored (not ready) and `retry_restore` tries again.
                    tracing::warn!(message = "Cannot restore state yet; partition not processed until it is.", partition, %error);
                    self.partitions.remove(&partition);
                    if self.unrestored.insert(partition) {
                        self.restore_retry = (
                            Instant::now() + RESTORE_RETRY_INITIAL,
                            RESTORE_RETRY_INITIAL * 2,
                        );
                    }
                }
            }
        }
        self.metrics
            .state_keys
            .set(self.partitions.values().map(|p| p.len() as i64).sum());
        self.readiness.set(RESTORED, self.unrestored.is_empty());
    }

    fn read_state(&mut self, partition: i32) -> KafkaResult<(PartitionState, u64)> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topics.state, partition, Offset::Beginning)?;
        self.reader.assign(&tpl)?;
        let mut state = PartitionState::default();
        let mut entries = 0u64;
        let mut last_progress = Instant::now();
        let mut last_error = None;
        let location = |offset| MessageLocation {
            topic: self.topics.state.clone(),
            partition,
            offset,
        };
        loop {
            match self.reader.poll(Duration::from_millis(100)) {
                // Left over from an earlier restore's assignment: not this partition's.
                Some(Ok(message)) if message.partition() != partition => {}
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    entries += 1;
                    let Some(Ok(key)) = message.key().map(std::str::from_utf8) else {
                        continue;
                    };
                    match message.payload() {
                        None => {
                            state.restore_entry(key, None, &mut self.streams);
                        }
                        Some(payload) => match self.schemas.decode::<DetectorState>(
                            payload,
                            DetectorState::SCHEMA,
                            &location(message.offset()),
                        ) {
                            Ok(entry) => {
                                if !state.restore_entry(key, Some(&entry), &mut self.streams) {
                                    tracing::warn!(
                                        message = "Skipping a state entry with an impossible hash or version.",
                                        partition,
                                        offset = message.offset()
                                    );
                                }
                            }
                            Err(error) => {
                                tracing::warn!(message = "Skipping an unreadable state entry.", %error)
                            }
                        },
                    }
                }
                // End of the partition as the fetch high-watermark shows it.
                Some(Err(KafkaError::PartitionEOF(eof))) if eof == partition => break,
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                // Transport errors (a broker restarting, all brokers down) are reported as
                // events, possibly queued while the reader sat idle; librdkafka reconnects and
                // fetches on by itself. Only a read that makes no progress for the whole bound
                // fails, with the last error seen.
                Some(Err(error)) => last_error = Some(error),
            }
            if last_progress.elapsed() > self.timeout {
                let _ = self.reader.unassign();
                return Err(last_error.unwrap_or(KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                )));
            }
        }
        self.reader.unassign()?;
        Ok((state, entries))
    }

    /// Drops the state of revoked partitions.
    pub fn release(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
            self.unrestored.remove(partition);
            self.batch.offsets.remove(partition);
            if self.paused.remove(partition) {
                self.metrics.paused_partitions.set(self.paused.len() as i64);
            }
        }
        self.readiness.set(NOT_PAUSED, self.paused.is_empty());
        self.readiness.set(RESTORED, self.unrestored.is_empty());
        self.metrics
            .state_keys
            .set(self.partitions.values().map(|p| p.len() as i64).sum());
    }

    /// Records the consumer lag librdkafka reports in its statistics (summed over the
    /// assigned partitions of `topic`). Measured by librdkafka from its own fetch responses:
    /// asking the broker for watermarks here would block the loop behind the long-poll fetch.
    pub fn record_lag(&self, statistics: &rdkafka::Statistics) {
        let lag: i64 = statistics
            .topics
            .get(&self.topics.snapshots)
            .map(|topic| {
                topic
                    .partitions
                    .iter()
                    .filter(|(partition, _)| self.partitions.contains_key(partition))
                    .map(|(_, p)| p.consumer_lag.max(0))
                    .sum()
            })
            .unwrap_or(0);
        self.metrics.consumer_lag.set(lag);
    }
}

/// Provenance headers of a snapshot record.
#[derive(Debug, Clone, Copy)]
struct RecordMeta<'a> {
    file_name: &'a str,
    file_hash: &'a str,
    snapshot_id: &'a str,
    stream: &'a str,
    line: Option<i64>,
    control: Option<&'a str>,
}

impl<'a> RecordMeta<'a> {
    /// The provenance headers, borrowed from the message (no allocation per record).
    fn from_message(message: &'a BorrowedMessage<'_>) -> RecordMeta<'a> {
        let mut meta = RecordMeta {
            file_name: "",
            file_hash: "",
            snapshot_id: "",
            stream: "default",
            line: None,
            control: None,
        };
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                let Some(Ok(value)) = header.value.map(std::str::from_utf8) else {
                    continue;
                };
                match header.key {
                    headers::FILE_NAME => meta.file_name = value,
                    headers::FILE_HASH => meta.file_hash = value,
                    headers::SNAPSHOT_ID => meta.snapshot_id = value,
                    headers::STREAM => meta.stream = value,
                    headers::LINE => meta.line = value.parse().ok(),
                    headers::CONTROL => meta.control = Some(value),
                    _ => {}
                }
            }
        }
        meta
    }
}

/// The consumer context: commits or aborts the open batch before partitions are released,
/// and restores state for assigned partitions before any of their records are processed.
#[derive(Debug, Clone)]
pub struct DetectorContext {
    engine: Arc<Mutex<Option<Engine>>>,
}

impl DetectorContext {
    /// A context whose engine is installed later ([`DetectorContext::install`]).
    pub fn new() -> DetectorContext {
        DetectorContext {
            engine: Arc::new(Mutex::new(None)),
        }
    }

    /// Installs the engine.
    pub fn install(&self, engine: Engine) {
        *lock(&self.engine) = Some(engine);
    }

    /// The engine (the loop takes it for each step; never held across `poll`).
    pub fn engine(&self) -> MutexGuard<'_, Option<Engine>> {
        lock(&self.engine)
    }
}

impl Default for DetectorContext {
    fn default() -> Self {
        DetectorContext::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        if let Some(engine) = lock(&self.engine).as_ref() {
            engine.record_lag(&statistics);
        }
    }
}

impl ConsumerContext for DetectorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if let Some(engine) = lock(&self.engine).as_mut() {
                // Finish (or abort) the open batch before the partitions go.
                engine.commit_batch(consumer);
                engine.release(&partitions_of(tpl));
                tracing::info!(message = "Partitions revoked.", partitions = ?partitions_of(tpl));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if let Some(engine) = lock(&self.engine).as_mut() {
                let partitions = partitions_of(tpl);
                tracing::info!(message = "Partitions assigned; restoring state.", partitions = ?partitions);
                engine.restore(&partitions);
            }
        }
    }
}

/// The consume → decide → commit loop, on the calling (dedicated) thread, until `stop`.
pub fn run_loop(consumer: &BaseConsumer<DetectorContext>, stop: &AtomicBool) {
    let context = consumer.context().clone();
    let mut last_error: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let timeout = context
            .engine()
            .as_ref()
            .map(Engine::poll_timeout)
            .unwrap_or(Duration::from_millis(100));
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                if let Some(engine) = context.engine().as_mut() {
                    if let Err(error) = engine.handle(consumer, &message) {
                        tracing::warn!(message = "Record handling failed; recovering.", %error);
                        engine.recover(consumer);
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) => {
                if last_error.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(message = "Consumer error.", %error);
                    last_error = Some(Instant::now());
                }
            }
        }
        if let Some(engine) = context.engine().as_mut() {
            if engine.batch_due() {
                engine.commit_batch(consumer);
            }
            engine.retry_restore(consumer);
        }
    }
    let mut engine = context.engine();
    if let Some(engine) = engine.as_mut() {
        engine.commit_batch(consumer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapfeed_runtime::dataset::{DatasetMapping, DatasetRecord, FieldKind, FieldValue};
    use std::path::Path;

    fn dataset() -> Dataset {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let store = SchemaStore::load_dir(&root.join("schemas")).unwrap();
        DatasetMapping::load(&root.join("deploy/config/lab_results.mapping.toml"), &store).unwrap()
    }

    /// A record whose values follow `seed`; `volatile` varies only the volatile fields.
    fn record(dataset: &Dataset, seed: i64, volatile: i64) -> DatasetRecord {
        let values = dataset
            .fields()
            .iter()
            .map(|spec| {
                let v = if spec.volatile() { volatile } else { seed };
                match spec.kind() {
                    FieldKind::String => FieldValue::String(format!("v{v}")),
                    FieldKind::Int => FieldValue::Int(v as i32),
                    FieldKind::Long => FieldValue::Long(v),
                    FieldKind::Double => FieldValue::Double(v as f64),
                    FieldKind::Boolean => FieldValue::Boolean(v % 2 == 0),
                    FieldKind::Date => FieldValue::Date(v as i32),
                    FieldKind::TimestampMillis => FieldValue::TimestampMillis(v),
                    FieldKind::Enum => FieldValue::Enum(spec.symbols()[0].clone()),
                }
            })
            .collect();
        dataset.record(values).unwrap()
    }

    /// What `handle` does with one record: the fast path, else a full observe.
    fn handle(
        dataset: &Dataset,
        hasher: &mut ContentHasher,
        state: &mut PartitionState,
        record: &DatasetRecord,
        snapshot: &str,
    ) -> (Recognised, Decision) {
        let mut payload = Vec::new();
        dataset.encode(record, &mut payload).unwrap();
        let seen = recognise_unchanged(hasher, dataset, state, "k", &payload, 0, snapshot);
        if seen == Recognised::Unchanged {
            return (seen, Decision::Unchanged);
        }
        let decision = state.observe("k", hasher.record(record), 0, snapshot, 0);
        if let Recognised::Unknown { raw } = seen {
            state.remember_raw("k", raw);
        }
        (seen, decision)
    }

    #[test]
    fn the_fast_path_recognises_only_unchanged_records_through_a_key_s_history() {
        let dataset = dataset();
        let mut hasher = ContentHasher::new(&dataset);
        let mut state = PartitionState::default();
        let mut step = |state: &mut PartitionState, seed: i64, volatile: i64, snapshot: &str| {
            let record = record(&dataset, seed, volatile);
            handle(&dataset, &mut hasher, state, &record, snapshot)
        };
        let state = &mut state;
        // New, then the same bytes (tracked-bytes match), then only a volatile field differs.
        let (seen, decision) = step(state, 1, 100, "s1");
        assert!(matches!(seen, Recognised::Unknown { .. }));
        assert!(matches!(decision, Decision::Create { version: 1, .. }));
        assert_eq!(step(state, 1, 100, "s2").0, Recognised::Unchanged);
        assert_eq!(step(state, 1, 101, "s3").0, Recognised::Unchanged);
        // Changed, then back to the first content: an UPDATE each time, never recognised.
        let (seen, decision) = step(state, 2, 101, "s4");
        assert!(matches!(seen, Recognised::Unknown { .. }));
        assert!(matches!(decision, Decision::Update { version: 2, .. }));
        let (seen, decision) = step(state, 1, 101, "s5");
        assert!(matches!(seen, Recognised::Unknown { .. }));
        assert!(matches!(decision, Decision::Update { version: 3, .. }));
        assert_eq!(step(state, 1, 102, "s6").0, Recognised::Unchanged);
        // Deleted, then back with the same content: a CREATE, not "unchanged".
        state.delete("k", 0);
        let (seen, decision) = step(state, 1, 102, "s7");
        assert!(matches!(seen, Recognised::Unknown { .. }));
        assert!(matches!(decision, Decision::Create { version: 5, .. }));
        // After a restore the tracked bytes are unknown: the content hash still recognises it.
        let streams = Streams::default();
        let entry = state.to_record("k", &streams, "s7").unwrap();
        let mut restored = PartitionState::default();
        restored.restore_entry("k", Some(&entry), &mut Streams::default());
        let mut payload = Vec::new();
        dataset
            .encode(&record(&dataset, 1, 103), &mut payload)
            .unwrap();
        let seen =
            recognise_unchanged(&mut hasher, &dataset, &mut restored, "k", &payload, 0, "s8");
        assert_eq!(seen, Recognised::Unchanged);
    }
}
