//! What change-detector's integration tests share: a broker and a pipeline of their own per
//! test, configs built from TOML text, generated snapshots published to `snapshots` by the
//! harness exactly as file-source writes them (`SnapshotPublisher`: no other service runs;
//! file-source's `publisher_contract` test proves the two write the same), the detector run
//! in-process ([`Detector`]) or as its binary ([`DetectorProcess`]), and
//! readers that decode `changes` and `rejects` into sets the tests compare with the generator's
//! exact [`ChangeSet`]s. Every wait is a bounded loop on a condition: "the detector's committed
//! offsets reached the end of `snapshots`" — so a "zero changes" check reads `changes` only once
//! every snapshot record has been decided and committed.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use change_detector::ChangeDetectorConfig;
use rdkafka::config::ClientConfig;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use snapfeed_harness::broker::{repo_root, BrokerKind, TestBroker, TestPipeline};
use snapfeed_harness::endpoint::{free_addr, http_get};
use snapfeed_harness::generator::{ChangeSet, KeyTuple, Snapshot};
use snapfeed_harness::in_process::InProcessService;
use snapfeed_harness::messages::{decode, follow_uncommitted, header, key_text};
use snapfeed_harness::metrics::metric;
use snapfeed_harness::offsets::GroupOffsets;
use snapfeed_harness::schemas::{lab_results_mapping, load_dataset, schemas_dir};
use snapfeed_harness::service_process::{guarantee_name, service_env, ServiceProcess};
use snapfeed_harness::snapshot_publisher::{PublishOptions, PublishReport, SnapshotPublisher};
use snapfeed_harness::wait;
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{Dataset, DatasetRecord};
use snapfeed_runtime::headers;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::{
    AvroRecord, ChangeEvent, ChangeOp, RejectedRow, StaleSnapshot, STALE_SNAPSHOT_KEY_PREFIX,
};
use tokio::task::block_in_place;

/// The change-detector binary (for crash tests).
pub const BINARY: &str = env!("CARGO_BIN_EXE_change-detector");

/// Rows of a generated first snapshot: small enough for Tansu's slow transactions, large enough
/// that 1% / 0.5% shares are tens of keys spread over every partition.
pub const ROWS: usize = 2000;

/// Bound of every wait for the detector to catch up (Tansu commits transactions slowly).
pub const CATCH_UP: Duration = Duration::from_secs(90);

/// `(canonical key, op, version)`: what one change event says.
pub type ChangeId = (String, &'static str, i64);

/// The canonical record key of a generator key tuple (the lab-results mapping's key rules).
pub use snapfeed_harness::generator::canonical_key;

/// `(key, op, version)` for each of `keys`.
pub fn ids<'a>(
    keys: impl IntoIterator<Item = &'a KeyTuple>,
    op: ChangeOp,
    version: i64,
) -> BTreeSet<ChangeId> {
    keys.into_iter()
        .map(|k| (canonical_key(k), op.as_str(), version))
        .collect()
}

/// Every key of `snapshot` as CREATE v1.
pub fn all_created(snapshot: &Snapshot) -> BTreeSet<ChangeId> {
    snapshot
        .rows()
        .iter()
        .map(|row| (canonical_key(&row.key()), ChangeOp::Create.as_str(), 1))
        .collect()
}

/// What a second snapshot's [`ChangeSet`] must produce when every key before it was at v1:
/// CREATE v1 for new keys, UPDATE v2 for changed ones (and DELETE v2 for removed ones when
/// `deletes`).
pub fn second_snapshot_changes(changes: &ChangeSet, deletes: bool) -> BTreeSet<ChangeId> {
    let mut expected = ids(&changes.created, ChangeOp::Create, 1);
    expected.extend(ids(&changes.updated, ChangeOp::Update, 2));
    if deletes {
        expected.extend(ids(&changes.removed, ChangeOp::Delete, 2));
    }
    expected
}

/// The `[detector]` settings a test varies.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// `pipeline.instance_id` (transactional id): distinct per concurrently running instance.
    pub instance_id: String,
    pub batch_max_records: usize,
    pub batch_max_ms: u64,
    /// `[detector.deletes]`: `Some(max_share)` enables deletes.
    pub deletes: Option<f64>,
    /// `skip` or `pause`.
    pub on_corrupt: &'static str,
    /// `detector.lag_interval_ms`.
    pub lag_interval_ms: u64,
    /// Overrides the broker's guarantee (e.g. `at_least_once` on every broker).
    pub guarantee: Option<ProcessingGuarantee>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            instance_id: "a".into(),
            batch_max_records: 500,
            batch_max_ms: 200,
            deletes: None,
            on_corrupt: "skip",
            lag_interval_ms: 15_000,
            guarantee: None,
        }
    }
}

/// A detector's metrics endpoint, and where its group's committed offsets stood when it
/// started: it decides at least every record from there on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub http: SocketAddr,
    pub baseline: BTreeMap<i32, i64>,
}

/// A broker, a pipeline (topics) and a directory of one test.
pub struct Fixture {
    pub broker: TestBroker,
    pub pipeline: TestPipeline,
    pub partitions: i32,
    /// The guarantee services run with here (the broker's, unless a test forces another).
    pub guarantee: ProcessingGuarantee,
    /// Holds configs and logs.
    pub root: tempfile::TempDir,
    /// Schemas the services load (a test may switch to an evolved copy).
    pub schemas_dir: PathBuf,
    /// The dataset mapping the services load.
    pub mapping: PathBuf,
    /// Schemas for decoding `changes` and `rejects`.
    pub store: SchemaStore,
}

impl Fixture {
    /// A fixture on the broker the environment selects, with `partitions` per topic.
    pub async fn new(label: &str, partitions: i32) -> Fixture {
        let broker = TestBroker::from_env();
        let pipeline = broker.pipeline(label, partitions).await;
        let root = tempfile::tempdir().expect("test dir");
        let schemas_dir = schemas_dir();
        let store = SchemaStore::load_dir(&schemas_dir).expect("schemas");
        Fixture {
            guarantee: broker.guarantee(),
            broker,
            pipeline,
            partitions,
            root,
            schemas_dir,
            mapping: lab_results_mapping(),
            store,
        }
    }

    /// True when `changes` is read with `read_committed` (transactions in use).
    pub fn committed_only(&self) -> bool {
        self.guarantee.is_transactional()
    }

    /// True when a reader can see "exactly once": transactions are in use and the broker hides
    /// aborted records from read_committed readers. Elsewhere (mock, Tansu; Nisshi with
    /// at_least_once) a crash may leave repeats visible, and tests weaken their check to "at
    /// least once, all copies identical".
    pub fn exactly_once_visible(&self) -> bool {
        self.committed_only() && self.broker.hides_aborted_records()
    }

    /// `[pipeline]`, `[kafka]`, `[http]`, `[shutdown]` for a service of this pipeline.
    pub fn common_toml(
        &self,
        guarantee: ProcessingGuarantee,
        http: &str,
        instance_id: &str,
    ) -> String {
        format!(
            "[pipeline]\nname = {:?}\nprocessing_guarantee = {:?}\nschemas_dir = {:?}\ninstance_id = {:?}\n\
             [kafka]\nbootstrap_servers = {:?}\nrequest_timeout_ms = 10000\nsession_timeout_ms = 6000\n\
             [http]\nlisten = {:?}\n\
             [shutdown]\ndrain_timeout_ms = 5000\n",
            self.pipeline.name,
            guarantee_name(guarantee),
            self.schemas_dir.display().to_string(),
            instance_id,
            self.broker.bootstrap(),
            http,
        )
    }

    /// The detector's config as TOML text (the `[http]` listen address is `http`).
    pub fn detector_toml(&self, options: &DetectorOptions, http: &str) -> String {
        let mut text = format!(
            "{}[detector]\ndataset_mapping = {:?}\nbatch_max_records = {}\nbatch_max_ms = {}\non_corrupt = {:?}\nlag_interval_ms = {}\n",
            self.common_toml(
                options.guarantee.unwrap_or(self.guarantee),
                http,
                &options.instance_id
            ),
            self.mapping.display().to_string(),
            options.batch_max_records,
            options.batch_max_ms,
            options.on_corrupt,
            options.lag_interval_ms,
        );
        if let Some(max_share) = options.deletes {
            text.push_str(&format!(
                "[detector.deletes]\nenabled = true\nmax_share = {max_share:?}\n"
            ));
        }
        text
    }

    /// The detector's config for an in-process run on `http`.
    pub fn detector_config(
        &self,
        options: &DetectorOptions,
        http: SocketAddr,
    ) -> ChangeDetectorConfig {
        let text = self.detector_toml(options, &http.to_string());
        toml::from_str(&text).unwrap_or_else(|e| panic!("detector config: {e}\n{text}"))
    }

    /// Starts a detector in-process.
    pub async fn start_detector(&self, options: &DetectorOptions) -> Detector {
        let http = free_addr();
        let baseline = self.committed();
        let mut detector = Detector::start(self.detector_config(options, http), http);
        detector.baseline = baseline;
        detector.wait_ready(Duration::from_secs(60)).await;
        detector
    }

    /// Publishes `snapshot` to `snapshots` as file-source ingests a file `name` in the
    /// canonical layout, in stream `default` (with this fixture's schemas, mapping and
    /// guarantee).
    pub fn publish_snapshot(&self, snapshot: &Snapshot, name: &str) -> PublishReport {
        self.publish(snapshot, &PublishOptions::file(name))
    }

    /// Publishes `snapshot` as file-source ingests the file `options` describes.
    pub fn publish(&self, snapshot: &Snapshot, options: &PublishOptions) -> PublishReport {
        let (store, dataset) = load_dataset(&self.schemas_dir, &self.mapping);
        block_in_place(|| {
            SnapshotPublisher::new(
                &self.broker,
                &self.pipeline,
                self.partitions,
                self.guarantee,
                store,
                dataset,
            )
            .publish(snapshot, options)
        })
    }

    /// Every change event on `changes` (read_committed when transactions are in use).
    pub fn changes(&self) -> Vec<Change> {
        let messages = block_in_place(|| {
            self.broker
                .read_to_end(&self.pipeline.topics.changes, self.committed_only())
        });
        // The schemas the services load now: a test may have evolved the dataset schema.
        let (store, dataset) = load_dataset(&self.schemas_dir, &self.mapping);
        messages
            .iter()
            .map(|m| decode_change(&store, &dataset, m))
            .collect()
    }

    /// Change events of one snapshot (by its snapshot id).
    pub fn changes_of(&self, report: &PublishReport) -> Vec<Change> {
        self.changes()
            .into_iter()
            .filter(|c| c.event.source.snapshot_id == report.snapshot_id)
            .collect()
    }

    /// Every record on `rejects`, with its Kafka key.
    pub fn rejects(&self) -> Vec<(String, RejectedRow)> {
        let messages = block_in_place(|| {
            self.broker
                .read_to_end(&self.pipeline.topics.rejects, self.committed_only())
        });
        messages
            .iter()
            .map(|m| (key_text(m), decode(&self.store, m, RejectedRow::SCHEMA)))
            .collect()
    }

    /// The stale-snapshot entries on `state` (the last per partition and snapshot): where the
    /// detector passed a late snapshot over.
    pub fn stale_snapshots(&self) -> BTreeMap<(String, i32), StaleSnapshot> {
        let messages = block_in_place(|| {
            self.broker
                .read_to_end(&self.pipeline.topics.state, self.committed_only())
        });
        messages
            .iter()
            .filter(|m| key_text(*m).starts_with(STALE_SNAPSHOT_KEY_PREFIX))
            .map(|m| {
                let stale: StaleSnapshot = decode(&self.store, m, StaleSnapshot::SCHEMA);
                ((stale.snapshot_id.clone(), m.partition()), stale)
            })
            .collect()
    }

    /// Moves the detector group's offsets back to the start of `snapshots` (no detector may
    /// be running): the replay an operator does. Gap: librdkafka's mock cluster has no group
    /// listing, which `replay` needs to refuse a live group; there the group never has offsets
    /// in exactly_once (see [`Fixture::offsets_are_stored`]), so the next detector reads from
    /// the start all the same.
    pub fn replay_from_earliest(&self) {
        if self.broker.kind() == BrokerKind::Mock {
            assert!(
                !self.offsets_are_stored(),
                "the mock cluster cannot replay a group with stored offsets"
            );
            return;
        }
        let group = format!("{}.change-detector", self.pipeline.name);
        block_in_place(|| {
            snapfeed_runtime::replay::replay(
                &self.broker.kafka_config(),
                "test",
                &group,
                &self.pipeline.topics.snapshots,
                &snapfeed_runtime::replay::ReplayTarget::Earliest,
            )
        })
        .expect("replay from earliest");
    }

    /// `(partition, offset, is a data record)` of every message on `snapshots` (data: not a
    /// snapshot-end marker).
    pub fn snapshot_layout(&self) -> Vec<(i32, i64, bool)> {
        let messages = block_in_place(|| {
            self.broker
                .read_to_end(&self.pipeline.topics.snapshots, self.committed_only())
        });
        messages
            .iter()
            .map(|m| {
                let control = header(m, headers::CONTROL).is_some();
                (m.partition(), m.offset(), !control)
            })
            .collect()
    }

    /// Next offset after the last record of each partition of `snapshots`.
    pub fn snapshot_ends(&self) -> BTreeMap<i32, i64> {
        let mut ends = BTreeMap::new();
        for (partition, offset, _) in self.snapshot_layout() {
            let end = ends.entry(partition).or_insert(0i64);
            *end = (*end).max(offset + 1);
        }
        ends
    }

    /// The detector group's committed offsets on `snapshots` (partitions without one omitted;
    /// none at all when they cannot be read).
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        block_in_place(|| self.committed_by(&self.group_offsets()))
    }

    fn group_offsets(&self) -> GroupOffsets {
        GroupOffsets::new(
            self.broker.bootstrap(),
            &format!("{}.change-detector", self.pipeline.name),
        )
    }

    fn committed_by(&self, offsets: &GroupOffsets) -> BTreeMap<i32, i64> {
        offsets
            .committed(&self.pipeline.topics.snapshots, self.partitions)
            .unwrap_or_default()
    }

    /// Whether the group's committed offsets always follow the detector's commits. Gaps:
    /// librdkafka's mock cluster acknowledges `TxnOffsetCommit` without storing it
    /// (rdkafka_mock_handlers.c), so in `exactly_once` the group never has offsets there; Tansu
    /// drops the offsets of a transaction that produced no record (a batch of unchanged
    /// records), while storing those of a transaction with records.
    pub fn offsets_are_stored(&self) -> bool {
        !self.committed_only()
            || !matches!(self.broker.kind(), BrokerKind::Mock | BrokerKind::Tansu)
    }

    /// Where offsets may lag behind the commits: how long the detectors' counters must stay
    /// still before their last batch counts as committed — several times `batch_max_ms` plus
    /// a slow commit on a loaded machine.
    fn quiet(&self) -> Duration {
        match self.broker.kind() {
            BrokerKind::Tansu => Duration::from_secs(3),
            _ => Duration::from_millis(1500),
        }
    }

    /// Waits until every record now on `snapshots` is decided and its batch committed, by the
    /// detectors behind `endpoints`.
    pub async fn wait_caught_up(&self, endpoints: &[Endpoint], limit: Duration) {
        let ends = self.snapshot_ends();
        self.wait_caught_up_to(endpoints, &ends, limit).await;
    }

    /// Waits until, on each partition in `targets`, every record before the target offset is
    /// decided and committed: the group's committed offsets reached the targets; or, where
    /// offsets may lag behind commits ([`Fixture::offsets_are_stored`]), the detectors' decided-
    /// record counters cover every data record between their start offsets and the targets and
    /// then stayed still for [`Fixture::quiet`], so the last batch is committed.
    pub async fn wait_caught_up_to(
        &self,
        endpoints: &[Endpoint],
        targets: &BTreeMap<i32, i64>,
        limit: Duration,
    ) {
        let offsets = block_in_place(|| self.group_offsets());
        let layout = self.snapshot_layout();
        let start = |p: &i32| {
            endpoints
                .iter()
                .map(|e| e.baseline.get(p).copied().unwrap_or(0))
                .min()
                .unwrap_or(0)
        };
        let want = layout
            .iter()
            .filter(|(p, offset, data)| {
                *data && targets.get(p).is_some_and(|t| offset < t) && *offset >= start(p)
            })
            .count() as f64;
        let deadline = Instant::now() + limit;
        let mut still_since: Option<(Instant, (f64, f64))> = None;
        loop {
            let committed = block_in_place(|| self.committed_by(&offsets));
            let behind: Vec<(i32, i64, Option<i64>)> = targets
                .iter()
                .filter(|(p, end)| committed.get(p).is_none_or(|c| c < end))
                .map(|(p, end)| (*p, *end, committed.get(p).copied()))
                .collect();
            if behind.is_empty() {
                return;
            }
            let now = progress(endpoints);
            if !self.offsets_are_stored() {
                match still_since {
                    Some((since, seen)) if seen == now => {
                        if now.0 >= want && since.elapsed() >= self.quiet() {
                            return;
                        }
                    }
                    _ => still_since = Some((Instant::now(), now)),
                }
            }
            assert!(
                Instant::now() < deadline,
                "detectors not caught up after {limit:?}: (partition, end, committed) {behind:?}; \
                 decided {} of the {want} records after their start offsets",
                now.0
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Produces `payload` straight to `partition` of `snapshots` (no headers, non-transactional)
    /// and returns its offset.
    pub fn produce_raw_snapshot_record(&self, partition: i32, key: &[u8], payload: &[u8]) -> i64 {
        block_in_place(|| {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", self.broker.bootstrap())
                .create()
                .expect("producer");
            producer
                .send(
                    BaseRecord::to(&self.pipeline.topics.snapshots)
                        .partition(partition)
                        .key(key)
                        .payload(payload),
                )
                .map_err(|(e, _)| e)
                .expect("send");
            producer.flush(Duration::from_secs(30)).expect("flush");
            let messages = self
                .broker
                .read_to_end(&self.pipeline.topics.snapshots, self.committed_only());
            messages
                .iter()
                .filter(|m| m.partition() == partition && m.payload() == Some(payload))
                .map(|m| m.offset())
                .max()
                .expect("the raw record is on snapshots")
        })
    }

    /// The partition of a canonical key on this pipeline's topics.
    pub fn partition_of(&self, key: &str) -> i32 {
        partition_for_key(key.as_bytes(), self.partitions)
    }

    /// Writes the detector config for the binary to `<root>/<name>.toml` (its `[http]` is
    /// overridden by [`ServiceProcess`]).
    pub fn write_detector_config(&self, options: &DetectorOptions, name: &str) -> PathBuf {
        let path = self.root.path().join(format!("{name}.toml"));
        std::fs::write(&path, self.detector_toml(options, "127.0.0.1:0")).expect("config file");
        path
    }

    /// Starts the detector binary with `config` (environment overrides point it at this
    /// broker and pipeline, with `guarantee`); logs go to `<root>/<log>.log`.
    pub fn spawn_detector_process(
        &self,
        config: &Path,
        guarantee: ProcessingGuarantee,
        log: &str,
    ) -> DetectorProcess {
        let baseline = self.committed();
        let mut env = service_env(&self.broker, &self.pipeline.name);
        for (key, value) in &mut env {
            if key == "SNAPFEED_PIPELINE__PROCESSING_GUARANTEE" {
                *value = guarantee_name(guarantee).to_string();
            }
        }
        // A SIGKILLed member holds its partitions until its session expires; keep that short.
        env.push(("SNAPFEED_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()));
        let log = self.root.path().join(format!("{log}.log"));
        let process = block_in_place(|| {
            ServiceProcess::start(Path::new(BINARY), config, &repo_root(), &env, &log)
        });
        DetectorProcess { process, baseline }
    }
}

/// Summed over `endpoints`: records decided (every outcome but `deleted`) and batches ended.
fn progress(endpoints: &[Endpoint]) -> (f64, f64) {
    let mut decided = 0.0;
    let mut batches = 0.0;
    for endpoint in endpoints {
        let Some((200, text)) = block_in_place(|| http_get(endpoint.http, "/metrics")) else {
            continue;
        };
        for outcome in [
            "unchanged",
            "created",
            "updated",
            "corrupt",
            "stale",
            "replayed",
        ] {
            decided += metric(
                &text,
                &format!("snapfeed_change_detector_records_total{{outcome=\"{outcome}\"}}"),
            )
            .unwrap_or(0.0);
        }
        for outcome in ["committed", "aborted"] {
            batches += metric(
                &text,
                &format!("snapfeed_change_detector_transactions_total{{outcome=\"{outcome}\"}}"),
            )
            .unwrap_or(0.0);
        }
    }
    (decided, batches)
}

/// The detector binary running as a process.
#[derive(Debug)]
pub struct DetectorProcess {
    pub process: ServiceProcess,
    /// The group's committed offsets when it started.
    pub baseline: BTreeMap<i32, i64>,
}

impl DetectorProcess {
    /// Its endpoint, for waits.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            http: self.process.http,
            baseline: self.baseline.clone(),
        }
    }
}

impl std::ops::Deref for DetectorProcess {
    type Target = ServiceProcess;
    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl std::ops::DerefMut for DetectorProcess {
    fn deref_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

/// A `changes` message: the event, and its record decoded through the dataset.
fn decode_change(store: &SchemaStore, dataset: &Dataset, message: &OwnedMessage) -> Change {
    let payload = message
        .payload()
        .expect("change events have a value")
        .to_vec();
    let location = MessageLocation::of(message);
    let (event, record) = dataset
        .decode_change(&payload, store, &location)
        .unwrap_or_else(|e| panic!("change at {location}: {e}"));
    assert_eq!(
        message.key(),
        Some(event.key.as_bytes()),
        "the Kafka key is the record key"
    );
    Change {
        partition: message.partition(),
        offset: message.offset(),
        event,
        record,
        payload,
    }
}

/// One decoded change event and where it was.
#[derive(Debug, Clone)]
pub struct Change {
    pub partition: i32,
    pub offset: i64,
    pub event: ChangeEvent,
    /// Its record, decoded into the current layout (`None` for DELETE).
    pub record: Option<DatasetRecord>,
    /// The encoded value, for "repeats are byte-identical" checks.
    pub payload: Vec<u8>,
}

impl Change {
    pub fn id(&self) -> ChangeId {
        (
            self.event.key.clone(),
            self.event.op.as_str(),
            self.event.version,
        )
    }
}

/// How many events say each `(key, op, version)`.
pub fn id_counts(changes: &[Change]) -> BTreeMap<ChangeId, usize> {
    let mut counts = BTreeMap::new();
    for change in changes {
        *counts.entry(change.id()).or_insert(0) += 1;
    }
    counts
}

fn sample<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<T> = items.into_iter().collect();
    let shown: Vec<&T> = items.iter().take(5).collect();
    format!("{} (first: {shown:?})", items.len())
}

/// The events say exactly `expected`, each once.
pub fn assert_exactly_once(changes: &[Change], expected: &BTreeSet<ChangeId>) {
    let counts = id_counts(changes);
    let missing: Vec<&ChangeId> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let unexpected: Vec<&ChangeId> = counts.keys().filter(|id| !expected.contains(*id)).collect();
    let repeated: Vec<(&ChangeId, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && repeated.is_empty(),
        "changes differ from the expected {} — missing {}, unexpected {}, repeated {}",
        expected.len(),
        sample(missing),
        sample(unexpected),
        sample(repeated)
    );
}

/// The events say exactly `expected` — each at least once, and every copy of one `(key,
/// version)` is byte-identical (what the sink's Idempotency-Key relies on). Returns how many
/// events were repeats.
pub fn assert_at_least_once_identical(changes: &[Change], expected: &BTreeSet<ChangeId>) -> usize {
    let counts = id_counts(changes);
    let missing: Vec<&ChangeId> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let unexpected: Vec<&ChangeId> = counts.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "changes differ from the expected {} — missing {}, unexpected {}",
        expected.len(),
        sample(missing),
        sample(unexpected)
    );
    assert_repeats_identical(changes);
    changes.len() - counts.len()
}

/// Every copy of one `(key, version)` is byte-identical.
pub fn assert_repeats_identical(changes: &[Change]) {
    let mut payloads: HashMap<(&str, i64), &[u8]> = HashMap::new();
    for change in changes {
        let first = payloads
            .entry((change.event.key.as_str(), change.event.version))
            .or_insert(change.payload.as_slice());
        assert!(
            *first == change.payload.as_slice(),
            "two different payloads for ({}, v{}) — at {}/{}",
            change.event.key,
            change.event.version,
            change.partition,
            change.offset
        );
    }
}

/// Exactly once where the reader can tell (see [`Fixture::exactly_once_visible`]), else at
/// least once with identical copies.
pub fn assert_delivered(fixture: &Fixture, changes: &[Change], expected: &BTreeSet<ChangeId>) {
    if fixture.exactly_once_visible() {
        assert_exactly_once(changes, expected);
    } else {
        let repeats = assert_at_least_once_identical(changes, expected);
        eprintln!(
            "{}: {repeats} repeated events visible (broker shows aborted records or at_least_once)",
            fixture.broker.kind()
        );
    }
}

/// change-detector run in-process (`change_detector::run`) until [`Detector::stop`], and
/// where its group's committed offsets stood when it started.
#[derive(Debug)]
pub struct Detector {
    pub service: InProcessService<change_detector::ChangeDetectorError>,
    /// The group's committed offsets when it started.
    pub baseline: BTreeMap<i32, i64>,
}

impl Detector {
    /// Spawns `run(config)`; `http` must be the config's `[http] listen`.
    pub fn start(config: ChangeDetectorConfig, http: SocketAddr) -> Detector {
        let service = InProcessService::spawn(
            "change-detector",
            http,
            Duration::from_secs(30),
            |shutdown| change_detector::run(config, shutdown),
        );
        Detector {
            service,
            baseline: BTreeMap::new(),
        }
    }

    /// Its endpoint, for waits.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            http: self.service.http,
            baseline: self.baseline.clone(),
        }
    }

    /// Triggers shutdown and waits (bounded) for `run` to return `Ok`.
    pub async fn stop(self) {
        self.service.stop().await;
    }
}

impl std::ops::Deref for Detector {
    type Target = InProcessService<change_detector::ChangeDetectorError>;
    fn deref(&self) -> &Self::Target {
        &self.service
    }
}

/// Waits until the two instances `a` and `b` together hold `keys` state keys and each holds
/// some: the group is stable and every partition's state is restored by its owner. `what`
/// names the situation in the failure message.
pub async fn wait_state_split(
    a: &Detector,
    b: &Detector,
    keys: usize,
    limit: Duration,
    what: &str,
) {
    const STATE_KEYS: &str = "snapfeed_change_detector_state_keys";
    wait::poll(limit, Duration::from_millis(200), || {
        let (in_a, in_b) = (a.metric(STATE_KEYS), b.metric(STATE_KEYS));
        if in_a + in_b == keys as f64 && in_a > 0.0 && in_b > 0.0 {
            return Ok(());
        }
        Err(format!("{what}: a holds {in_a}, b holds {in_b} of {keys}"))
    })
    .await;
}

/// A small xorshift generator for fault-injection points; the seed is printed by the caller.
#[derive(Debug)]
pub struct FaultRng(u64);

impl FaultRng {
    /// Seeded from `SNAPFEED_TEST_SEED` if set, else from the clock.
    pub fn from_env() -> (FaultRng, u64) {
        let seed = snapfeed_harness::measure::test_seed();
        (FaultRng(seed.max(1)), seed)
    }

    /// Uniform in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low).max(1)
    }
}

/// Polls `changes` without isolation until at least `count` events exist (in-flight
/// transactions included) or `limit` passes; returns how many were seen.
pub fn wait_for_uncommitted_changes(fixture: &Fixture, count: usize, limit: Duration) -> usize {
    block_in_place(|| {
        let consumer = follow_uncommitted(
            fixture.broker.bootstrap(),
            &fixture.pipeline.topics.changes,
            fixture.partitions,
        );
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        while seen < count && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(20)) {
                seen += 1;
            }
        }
        seen
    })
}
