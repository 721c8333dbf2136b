//! What api-sink's integration tests share: a broker, a pipeline and a stub case API of their
//! own per test; configs built from TOML text; change events built directly (a dataset record
//! encoded with the lab-results mapping inside a `ChangeEvent`) and produced to `changes` keyed
//! by record key; the sink run in-process ([`SinkRun`]) or as its binary; readers that decode
//! `deliveries` and `dead-letters`; the group's committed offsets; `/metrics` series. Every wait
//! is a bounded loop on a condition.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_sink::ApiSinkConfig;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use snapfeed_harness::broker::{repo_root, TestBroker, TestPipeline};
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::in_process::InProcessService;
use snapfeed_harness::messages::{decode, header};
use snapfeed_harness::offsets::GroupOffsets;
use snapfeed_harness::service_process::{guarantee_name, service_env, ServiceProcess};
use snapfeed_harness::stub_api::{RecordedRequest, StubApi};
use snapfeed_harness::wait;
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{ChangeRecord, Dataset, DatasetMapping, FieldKind, FieldValue};
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::records::{
    now_millis, AvroRecord, ChangeEvent, ChangeOp, DeadLetter, DeliveryReceipt, Provenance,
};
use tokio::task::block_in_place;

/// The api-sink binary.
pub const BINARY: &str = env!("CARGO_BIN_EXE_api-sink");

/// A record key of fixed width, so no key is a substring of another (stub rules match on
/// body text).
pub fn key(n: usize) -> String {
    format!("LAB-{n:05}")
}

/// One change to produce: `(key, version)` and an optional marker text put into the record
/// (`patient_id`), for stub rules that must hit one version of a key only.
#[derive(Debug, Clone)]
pub struct TestChange {
    pub key: String,
    pub version: i64,
    pub marker: Option<String>,
    /// How long before the produce its file was claimed (`detected_at` = now − this).
    pub claimed_ms_ago: i64,
}

impl TestChange {
    pub fn new(key: impl Into<String>, version: i64) -> TestChange {
        TestChange {
            key: key.into(),
            version,
            marker: None,
            claimed_ms_ago: 0,
        }
    }

    pub fn marked(mut self, marker: impl Into<String>) -> TestChange {
        self.marker = Some(marker.into());
        self
    }

    /// Its file was claimed this long ago.
    pub fn claimed_ago(mut self, ago: Duration) -> TestChange {
        self.claimed_ms_ago = ago.as_millis() as i64;
        self
    }
}

/// A change as produced: where it landed, its bytes and the Idempotency-Key the sink must send.
#[derive(Debug, Clone)]
pub struct Produced {
    pub key: String,
    pub version: i64,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub idempotency_key: String,
}

/// Which request profile the sink uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileChoice {
    /// `json`, POST to [`SinkOptions::json_path`].
    Json,
    /// `commcare_case_v2`, domain `lab-demo`, at most `batch_max_cases` per request.
    CommCare { batch_max_cases: usize },
}

/// The sink settings a test varies.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub profile: ProfileChoice,
    /// Extra `key = value` lines inside `[sink]`.
    pub sink_keys: Vec<String>,
    /// Extra lines inside `[sink.retry]` (after short test backoffs).
    pub retry_keys: Vec<String>,
    /// Lines of `[sink.auth]`, if any.
    pub auth: Option<Vec<String>>,
    /// `[log] level`.
    pub log_level: String,
    /// `[sink.json] path` (so two sinks' requests can be told apart at the stub).
    pub json_path: String,
    /// Extra lines inside `[sink.commcare_case_v2]`.
    pub commcare_keys: Vec<String>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            profile: ProfileChoice::Json,
            sink_keys: Vec::new(),
            retry_keys: Vec::new(),
            auth: None,
            log_level: "info".into(),
            json_path: "/changes".into(),
            commcare_keys: Vec::new(),
        }
    }
}

impl SinkOptions {
    pub fn sink(mut self, line: impl Into<String>) -> Self {
        self.sink_keys.push(line.into());
        self
    }

    pub fn retry(mut self, line: impl Into<String>) -> Self {
        self.retry_keys.push(line.into());
        self
    }
}

/// A broker, a pipeline (topics), a stub API and a directory of one test.
pub struct Fixture {
    pub broker: TestBroker,
    pub pipeline: TestPipeline,
    pub partitions: i32,
    pub guarantee: ProcessingGuarantee,
    pub stub: StubApi,
    /// Configs and logs.
    pub dir: tempfile::TempDir,
    pub schemas_dir: PathBuf,
    pub mapping: PathBuf,
    pub store: SchemaStore,
    pub dataset: Dataset,
}

impl Fixture {
    /// A fixture on the broker the environment selects, with `partitions` per topic.
    pub async fn new(label: &str, partitions: i32) -> Fixture {
        let broker = TestBroker::from_env();
        let pipeline = broker.pipeline(label, partitions).await;
        let stub = StubApi::start().await;
        let schemas_dir = repo_root().join("schemas");
        let mapping = repo_root().join("deploy/config/lab_results.mapping.toml");
        let store = SchemaStore::load_dir(&schemas_dir).expect("schemas");
        let dataset = DatasetMapping::load(&mapping, &store).expect("lab-results mapping");
        Fixture {
            guarantee: broker.guarantee(),
            broker,
            pipeline,
            partitions,
            stub,
            dir: tempfile::tempdir().expect("test dir"),
            schemas_dir,
            mapping,
            store,
            dataset,
        }
    }

    /// The sink's consumer group.
    pub fn group(&self) -> String {
        format!("{}.api-sink", self.pipeline.name)
    }

    /// The whole api-sink config as TOML text, `[http] listen = http`.
    pub fn sink_toml(&self, options: &SinkOptions, http: &str) -> String {
        let mut text = format!(
            "[pipeline]\nname = {:?}\nprocessing_guarantee = {:?}\nschemas_dir = {:?}\n\
             [kafka]\nbootstrap_servers = {:?}\nrequest_timeout_ms = 10000\nsession_timeout_ms = 6000\n\
             [http]\nlisten = {:?}\n\
             [log]\nformat = \"human\"\nlevel = {:?}\n\
             [shutdown]\ndrain_timeout_ms = 5000\n\
             [sink]\napi_url = {:?}\ndataset_mapping = {:?}\nprofile = {:?}\n",
            self.pipeline.name,
            guarantee_name(self.guarantee),
            self.schemas_dir.display().to_string(),
            self.broker.bootstrap(),
            http,
            options.log_level,
            self.stub.url(),
            self.mapping.display().to_string(),
            match options.profile {
                ProfileChoice::Json => "json",
                ProfileChoice::CommCare { .. } => "commcare_case_v2",
            },
        );
        // A 5 s request timeout unless a test sets its own.
        if !options
            .sink_keys
            .iter()
            .any(|l| l.trim_start().starts_with("request_timeout_ms"))
        {
            text.push_str("request_timeout_ms = 5000\n");
        }
        for line in &options.sink_keys {
            text.push_str(line);
            text.push('\n');
        }
        // Short backoffs unless a test sets its own: the tests are about behaviour, not waiting.
        text.push_str("[sink.retry]\n");
        for (name, value) in [("initial_backoff_ms", 50), ("max_backoff_ms", 1000)] {
            if !options
                .retry_keys
                .iter()
                .any(|l| l.trim_start().starts_with(name))
            {
                text.push_str(&format!("{name} = {value}\n"));
            }
        }
        for line in &options.retry_keys {
            text.push_str(line);
            text.push('\n');
        }
        match options.profile {
            ProfileChoice::Json => {
                text.push_str(&format!("[sink.json]\npath = {:?}\n", options.json_path))
            }
            ProfileChoice::CommCare { batch_max_cases } => text.push_str(&format!(
                "[sink.commcare_case_v2]\ndomain = \"lab-demo\"\ncase_type = \"lab_result\"\n\
                 owner_id = \"owner-1\"\ncase_name_fields = [\"patient_first_name\", \"patient_last_name\"]\n\
                 batch_max_cases = {batch_max_cases}\n{}\
                 [sink.commcare_case_v2.properties]\npatient_id = \"patient_id\"\nresult = \"test_result\"\n",
                options.commcare_keys.iter().map(|l| format!("{l}\n")).collect::<String>()
            )),
        }
        if let Some(auth) = &options.auth {
            text.push_str("[sink.auth]\n");
            for line in auth {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Writes the config to `<dir>/<name>.toml` and returns the path.
    pub fn write_config(&self, options: &SinkOptions, http: &str, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, self.sink_toml(options, http)).expect("config file");
        path
    }

    /// The config as the binary would load it (validated), with `[http] listen = http`.
    pub fn sink_config(&self, options: &SinkOptions, http: SocketAddr) -> ApiSinkConfig {
        let path = self.write_config(options, &http.to_string(), "in-process");
        snapfeed_runtime::config::load(Some(&path), Vec::new()).unwrap_or_else(|e| {
            panic!(
                "api-sink config: {e}\n{}",
                std::fs::read_to_string(&path).unwrap_or_default()
            )
        })
    }

    /// Starts the sink in-process and waits until it is ready.
    pub async fn start_sink(&self, options: &SinkOptions) -> SinkRun {
        let http = free_addr();
        let run = run_sink(self.sink_config(options, http), http);
        run.wait_ready(Duration::from_secs(60)).await;
        run
    }

    /// The encoded change event for `change`.
    pub fn encode(&self, change: &TestChange) -> Vec<u8> {
        let values = self
            .dataset
            .fields()
            .iter()
            .map(|spec| {
                let text = |value: String| match spec.kind() {
                    FieldKind::Enum => FieldValue::Enum(spec.symbols()[0].clone()),
                    _ => FieldValue::String(value),
                };
                match (spec.name(), spec.kind()) {
                    ("patient_id", _) => text(format!(
                        "P-{}-v{}{}",
                        change.key,
                        change.version,
                        change.marker.as_deref().unwrap_or("")
                    )),
                    ("test_result", _) => text(format!("result v{}", change.version)),
                    (name, FieldKind::String) => text(format!("{name} of {}", change.key)),
                    (_, FieldKind::Enum) => text(String::new()),
                    (_, FieldKind::Date) => FieldValue::Date(19_000 + change.version as i32),
                    (_, FieldKind::TimestampMillis) => {
                        FieldValue::TimestampMillis(1_700_000_000_000)
                    }
                    (_, FieldKind::Int) => FieldValue::Int(1),
                    (_, FieldKind::Long) => FieldValue::Long(1),
                    (_, FieldKind::Double) => FieldValue::Double(1.5),
                    (_, FieldKind::Boolean) => FieldValue::Boolean(true),
                }
            })
            .collect();
        let record = self.dataset.record(values).expect("a lab result");
        let event = ChangeEvent {
            op: if change.version == 1 {
                ChangeOp::Create
            } else {
                ChangeOp::Update
            },
            key: change.key.clone(),
            version: change.version,
            content_hash: format!("{:032x}", change.version),
            previous_hash: (change.version > 1).then(|| format!("{:032x}", change.version - 1)),
            record_schema: self.dataset.schema_name().to_string(),
            source: Provenance {
                file_name: "test.csv".into(),
                file_hash: "0".repeat(64),
                line: Some(2),
                snapshot_id: "test-snapshot".into(),
                stream: "test".into(),
            },
            detected_at: now_millis() - change.claimed_ms_ago,
        };
        self.dataset
            .change_writer(&self.store)
            .and_then(|writer| writer.encode(&event, Some(ChangeRecord::Record(&record))))
            .expect("encode change event")
    }

    /// Produces `changes` to `changes` in order, keyed by record key (the runtime's producer
    /// config: idempotent, so one key's changes land in order), and returns where each landed.
    pub async fn produce(&self, changes: &[TestChange]) -> Vec<Produced> {
        let producer: FutureProducer = self
            .broker
            .kafka_config()
            .producer_config("test", ProcessingGuarantee::AtLeastOnce, None)
            .create()
            .expect("producer");
        let mut pending = Vec::with_capacity(changes.len());
        for change in changes {
            let payload = self.encode(change);
            let future = loop {
                let record = FutureRecord::to(&self.pipeline.topics.changes)
                    .key(change.key.as_bytes())
                    .payload(&payload);
                match producer.send_result(record) {
                    Ok(future) => break future,
                    // Queue full: let librdkafka drain a little.
                    Err((_, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            pending.push((change, payload, future));
        }
        let mut produced = Vec::with_capacity(pending.len());
        for (change, payload, future) in pending {
            let delivery = future
                .await
                .expect("delivery report")
                .unwrap_or_else(|(e, _)| panic!("produce {}: {e}", change.key));
            produced.push(Produced {
                key: change.key.clone(),
                version: change.version,
                partition: delivery.partition,
                offset: delivery.offset,
                payload,
                idempotency_key: api_sink::request::idempotency_key(
                    &self.pipeline.name,
                    &change.key,
                    change.version,
                ),
            });
        }
        produced
    }

    /// Writes the receipts a run that delivered `delivered` would have written (on the
    /// `deliveries` partition of each change's partition), acknowledged.
    pub fn write_receipts(&self, delivered: &[&Produced]) {
        let producer: rdkafka::producer::BaseProducer = self
            .broker
            .kafka_config()
            .producer_config("test", ProcessingGuarantee::AtLeastOnce, None)
            .create()
            .expect("producer");
        let schema = self
            .store
            .current(DeliveryReceipt::SCHEMA)
            .expect("receipt schema");
        for change in delivered {
            let receipt = DeliveryReceipt {
                key: change.key.clone(),
                version: change.version,
                op: "CREATE".into(),
                status: 200,
                attempts: 1,
                latency_ms: 5,
                response_id: None,
                idempotency_key: change.idempotency_key.clone(),
                source_partition: change.partition,
                source_offset: change.offset,
                delivered_at: now_millis(),
            };
            let payload = schema.encode(&receipt).expect("encode receipt");
            producer
                .send(
                    rdkafka::producer::BaseRecord::to(&self.pipeline.topics.deliveries)
                        .key(change.key.as_bytes())
                        .payload(&payload)
                        .partition(change.partition),
                )
                .map_err(|(e, _)| e)
                .expect("send receipt");
        }
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).expect("flush");
    }

    /// Every receipt on `deliveries`.
    pub fn receipts(&self) -> Vec<DeliveryReceipt> {
        self.read(&self.pipeline.topics.deliveries)
            .iter()
            .map(|m| decode(&self.store, m, DeliveryReceipt::SCHEMA))
            .collect()
    }

    /// Every letter on `dead-letters`.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.read(&self.pipeline.topics.dead_letters)
            .iter()
            .map(|m| decode(&self.store, m, DeadLetter::SCHEMA))
            .collect()
    }

    /// The `index`th dead letter as `tail --show-values` prints it (a generic Avro decode).
    pub fn dead_letter_json(&self, index: usize) -> serde_json::Value {
        let messages = self.read(&self.pipeline.topics.dead_letters);
        let message = &messages[index];
        let decoded = snapfeed_runtime::inspect::decode(
            &self.store,
            message.payload().expect("a dead letter has a value"),
            &MessageLocation::of(message),
            snapfeed_runtime::inspect::Values::Shown,
        )
        .expect("the dead letter decodes");
        decoded.value
    }

    /// Every message on `topic`, from the beginning to partition EOF.
    pub fn read(&self, topic: &str) -> Vec<OwnedMessage> {
        block_in_place(|| self.broker.read_to_end(topic, true))
    }

    /// Waits until `deliveries` holds at least `count` receipts; returns them.
    pub async fn wait_receipts(&self, count: usize, limit: Duration) -> Vec<DeliveryReceipt> {
        wait::poll(limit, Duration::from_millis(200), || {
            let receipts = self.receipts();
            if receipts.len() >= count {
                return Ok(receipts);
            }
            Err(format!(
                "{} of {count} receipts after {limit:?}",
                receipts.len()
            ))
        })
        .await
    }

    /// Waits until `dead-letters` holds at least `count` letters; returns them.
    pub async fn wait_dead_letters(&self, count: usize, limit: Duration) -> Vec<DeadLetter> {
        wait::poll(limit, Duration::from_millis(200), || {
            let letters = self.dead_letters();
            if letters.len() >= count {
                return Ok(letters);
            }
            Err(format!(
                "{} of {count} dead letters after {limit:?}",
                letters.len()
            ))
        })
        .await
    }

    /// The sink group's committed offsets on `changes` (partitions without one omitted).
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        block_in_place(|| {
            GroupOffsets::new(self.broker.bootstrap(), &self.group())
                .committed(&self.pipeline.topics.changes, self.partitions)
                .expect("committed offsets")
        })
    }

    /// Waits until the group's committed offset of every partition in `targets` is at least
    /// its target; returns the committed offsets.
    pub async fn wait_committed(
        &self,
        targets: &BTreeMap<i32, i64>,
        limit: Duration,
    ) -> BTreeMap<i32, i64> {
        wait::poll(limit, Duration::from_millis(200), || {
            let committed = self.committed();
            if targets
                .iter()
                .all(|(p, target)| committed.get(p).is_some_and(|c| c >= target))
            {
                return Ok(committed);
            }
            Err(format!(
                "committed {committed:?}, want {targets:?}, after {limit:?}"
            ))
        })
        .await
    }

    /// Starts the binary with `config` (environment overrides point it at this broker and
    /// pipeline); logs go to `<dir>/<log>.log`.
    pub fn spawn_process(
        &self,
        config: &Path,
        extra_env: &[(String, String)],
        log: &str,
    ) -> ServiceProcess {
        let mut env = service_env(&self.broker, &self.pipeline.name);
        // A SIGKILLed member holds its partitions until its session expires; keep that short.
        env.push(("SNAPFEED_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()));
        env.extend_from_slice(extra_env);
        let log = self.dir.path().join(format!("{log}.log"));
        block_in_place(|| {
            ServiceProcess::start(Path::new(BINARY), config, &repo_root(), &env, &log)
        })
    }
}

/// `count` keys ([`key`] numbers), one on each of the first `count` partitions of `partitions`
/// (the producer's partitioner: murmur2 of the key, as Java's).
pub fn keys_one_per_partition(count: i32, partitions: i32) -> Vec<String> {
    let mut found: BTreeMap<i32, String> = BTreeMap::new();
    for n in 0.. {
        let candidate = key(n);
        let partition =
            snapfeed_runtime::partition::partition_for_key(candidate.as_bytes(), partitions);
        if partition < count {
            found.entry(partition).or_insert(candidate);
        }
        if found.len() == count as usize {
            break;
        }
    }
    found.into_values().collect()
}

/// Next offset after the last change of each partition.
pub fn ends(produced: &[Produced]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for p in produced {
        let end = ends.entry(p.partition).or_insert(0i64);
        *end = (*end).max(p.offset + 1);
    }
    ends
}

/// The `key` and `version` of a json-profile request body.
pub fn key_version(request: &RecordedRequest) -> (String, i64) {
    let body = request.json();
    (
        body["key"].as_str().expect("key").to_string(),
        body["version"].as_i64().expect("version"),
    )
}

/// The `external_id`s of a CommCare bulk request body.
pub fn external_ids(request: &RecordedRequest) -> Vec<String> {
    request
        .json()
        .as_array()
        .expect("a CommCare bulk body is an array")
        .iter()
        .map(|case| {
            case["external_id"]
                .as_str()
                .expect("external_id")
                .to_string()
        })
        .collect()
}

/// `(key, version)` of every receipt.
pub fn receipt_ids(receipts: &[DeliveryReceipt]) -> BTreeSet<(String, i64)> {
    receipts
        .iter()
        .map(|r| (r.key.clone(), r.version))
        .collect()
}

/// The redrive count header of a message, if any.
pub fn redrive_count(message: &OwnedMessage) -> Option<String> {
    header(message, api_sink::deliver::REDRIVE_COUNT_HEADER)
}

/// api-sink run in-process (`api_sink::run`) until [`InProcessService::stop`].
pub type SinkRun = InProcessService<api_sink::ApiSinkError>;

/// Spawns `api_sink::run(config)`; `http` must be the config's `[http] listen`.
pub fn run_sink(config: ApiSinkConfig, http: SocketAddr) -> SinkRun {
    InProcessService::spawn("api-sink", http, Duration::from_secs(30), |shutdown| {
        api_sink::run(config, shutdown)
    })
}
