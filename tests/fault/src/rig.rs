//! One scenario's world: a broker process of its own (Nisshi or Tansu, chosen by
//! `SNAPFEED_TEST_BROKER`), a pipeline (topics), the stub case API, a temporary directory with
//! the inbox, the service configs and every log, and the service processes the scenario starts.
//!
//! Services run from their built binaries ([`crate::binaries`]) with configs written here and the
//! harness's environment overrides ([`service_env`]): the broker's guarantee (`at_least_once`
//! on Nisshi, `exactly_once` on Tansu), a short session timeout (a SIGKILLed member holds its
//! partitions until it expires) and a short drain bound. Only processes started through
//! [`Rig::start`] are ever signalled, always by their own handle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use snapfeed_harness::broker::{repo_root, BrokerKind, TestBroker, TestPipeline};
use snapfeed_harness::generator::{Snapshot, WriteOptions, WrittenFile};
use snapfeed_harness::service_process::{service_env, ServiceProcess};
use snapfeed_harness::stub_api::StubApi;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use tokio::task::block_in_place;

use crate::binaries::binary;
use crate::health_data::HealthData;

/// Bound of every wait for a service to report ready (a restarted detector or sink waits for
/// its SIGKILLed predecessor's session to expire, then restores).
pub const READY_LIMIT: Duration = Duration::from_secs(120);

/// The three stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The source.
    FileSource,
    /// The filter.
    ChangeDetector,
    /// The sink.
    ApiSink,
}

impl Service {
    /// Binary (and log) name.
    pub fn name(self) -> &'static str {
        match self {
            Service::FileSource => "file-source",
            Service::ChangeDetector => "change-detector",
            Service::ApiSink => "api-sink",
        }
    }
}

/// The broker the environment asks for, without starting it.
pub fn requested_broker() -> BrokerKind {
    if std::env::var("SNAPFEED_TEST_BOOTSTRAP").is_ok_and(|b| !b.is_empty()) {
        return BrokerKind::External;
    }
    match std::env::var("SNAPFEED_TEST_BROKER")
        .unwrap_or_default()
        .as_str()
    {
        "nisshi" => BrokerKind::Nisshi,
        "tansu" => BrokerKind::Tansu,
        _ => BrokerKind::Mock,
    }
}

/// A service process the scenario started.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub process: ServiceProcess,
    /// Which stage.
    pub service: Service,
    /// Its `pipeline.instance_id`.
    pub instance: String,
}

impl Proc {
    /// Whether it still serves `/healthz`.
    pub fn alive(&self) -> bool {
        matches!(
            block_in_place(|| self.process.get("/healthz")),
            Some((200, _))
        )
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        block_in_place(|| self.process.kill());
    }

    /// SIGTERM, bounded; the exit status is not judged here (the lifecycle tests do).
    pub fn terminate(&mut self) {
        block_in_place(|| {
            let _ = self.process.terminate(Duration::from_secs(20));
        });
    }
}

/// One file handed to file-source.
#[derive(Debug, Clone)]
pub struct DroppedFile {
    /// Its name in the inbox.
    pub name: String,
    /// SHA-256, as file-source identifies it.
    pub hash: String,
    /// What the generator wrote.
    pub written: Option<WrittenFile>,
}

/// One scenario's broker, pipeline, stub API, directory and processes.
pub struct Rig {
    /// Scenario label, printed with its figures.
    pub scenario: &'static str,
    /// The broker.
    pub broker: TestBroker,
    /// Topics and groups of this scenario.
    pub pipeline: TestPipeline,
    /// Partitions of `snapshots`, `state`, `changes`.
    pub partitions: i32,
    /// The stub case API.
    pub stub: StubApi,
    /// Inbox, staging, configs, logs.
    pub root: tempfile::TempDir,
    /// Schemas, to decode what the services wrote.
    pub store: SchemaStore,
    /// Values that must never be logged (every dropped snapshot's).
    pub health: HealthData,
    /// Random kill points; seeded from `SNAPFEED_TEST_SEED` or the clock (printed).
    pub rng: SmallRng,
    /// The seed of `rng`.
    pub seed: u64,
    /// `[log] level` of services started from now on.
    pub log_level: String,
    /// `source.rows_per_transaction`.
    pub rows_per_transaction: u64,
    /// `source.stable_for_ms`.
    pub stable_for_ms: u64,
    /// `detector.batch_max_records`.
    pub batch_max_records: u64,
    /// Extra lines inside `[sink]`.
    pub sink_lines: Vec<String>,
    /// Lines of `[sink.retry]`.
    pub retry_lines: Vec<String>,
    /// Extra environment of services started from now on (e.g. librdkafka `debug`).
    pub extra_env: Vec<(String, String)>,
    /// Body of a `[schema_registry]` section for services started from now on (`url = …`
    /// and options); `None`: no registry.
    pub schema_registry: Option<String>,
    logs: Vec<PathBuf>,
    lives: usize,
    started: Instant,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig")
            .field("scenario", &self.scenario)
            .field("broker", &self.broker)
            .field("pipeline", &self.pipeline.name)
            .finish_non_exhaustive()
    }
}

impl Rig {
    /// The world of `scenario` on the broker the environment selects, if the scenario runs on
    /// it (`runs_on`; an external cluster runs every scenario); otherwise prints why it is
    /// skipped and returns `None`. The in-process mock broker is always skipped: the suite is
    /// about real broker processes (restarts, sessions, persistence) and real service processes.
    pub async fn new(
        scenario: &'static str,
        partitions: i32,
        runs_on: &[BrokerKind],
    ) -> Option<Rig> {
        let kind = requested_broker();
        if kind == BrokerKind::Mock {
            println!(
                "FAULT {scenario}: skipped on the in-process mock broker; the fault suite runs on \
                 real brokers: eval \"$(.ci/install-brokers)\"; SNAPFEED_TEST_BROKER=nisshi|tansu \
                 cargo test -p snapfeed-fault -- --nocapture"
            );
            return None;
        }
        if kind != BrokerKind::External && !runs_on.contains(&kind) {
            println!(
                "FAULT {scenario}: skipped on {kind}: issue #7 runs it on {runs_on:?} only (Tansu: \
                 memory storage, no persistence worth restarting; aborted records visible)"
            );
            return None;
        }
        let broker = TestBroker::from_env();
        let pipeline = broker.pipeline(scenario, partitions).await;
        let stub = StubApi::start().await;
        let root = tempfile::tempdir().expect("scenario directory");
        for dir in ["inbox", "staging", "logs"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("scenario directory");
        }
        let store = SchemaStore::load_dir(&repo_root().join("schemas")).expect("schemas");
        let seed = snapfeed_harness::measure::test_seed();
        println!(
            "FAULT {scenario}: start on {kind} ({}), fault points from SNAPFEED_TEST_SEED={seed}",
            guarantee_name(broker.guarantee())
        );
        Some(Rig {
            scenario,
            broker,
            pipeline,
            partitions,
            stub,
            root,
            store,
            health: HealthData::default(),
            rng: SmallRng::seed_from_u64(seed),
            seed,
            log_level: "info".into(),
            rows_per_transaction: 2000,
            stable_for_ms: 500,
            batch_max_records: 500,
            sink_lines: vec![
                "max_in_flight = 32".into(),
                "lanes_per_partition = 4".into(),
            ],
            retry_lines: vec![
                "initial_backoff_ms = 100".into(),
                "max_backoff_ms = 2000".into(),
            ],
            extra_env: Vec::new(),
            schema_registry: None,
            logs: Vec::new(),
            lives: 0,
            started: Instant::now(),
        })
    }

    /// The guarantee the services run with here.
    pub fn guarantee(&self) -> ProcessingGuarantee {
        self.broker.guarantee()
    }

    /// Time since the rig was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The watched inbox.
    pub fn inbox(&self) -> PathBuf {
        self.root.path().join("inbox")
    }

    /// Where failed files and their reports go.
    pub fn failed_dir(&self) -> PathBuf {
        self.inbox().join("failed")
    }

    /// Where ingested (and re-delivered) files go.
    pub fn processed_dir(&self) -> PathBuf {
        self.inbox().join("processed")
    }

    /// Every log file a service of this scenario wrote.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    fn common_toml(&self, instance: &str) -> String {
        let registry = self
            .schema_registry
            .as_ref()
            .map(|body| format!("[schema_registry]\n{body}\n"))
            .unwrap_or_default();
        format!(
            "[pipeline]\nname = {:?}\nprocessing_guarantee = {:?}\nschemas_dir = {:?}\ninstance_id = {:?}\n\
             [kafka]\nbootstrap_servers = {:?}\nrequest_timeout_ms = 10000\nsession_timeout_ms = 6000\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"human\"\nlevel = {:?}\n\
             [shutdown]\ndrain_timeout_ms = 5000\n{registry}",
            self.pipeline.name,
            guarantee_name(self.guarantee()),
            repo_root().join("schemas").display().to_string(),
            instance,
            self.broker.bootstrap(),
            self.log_level,
        )
    }

    /// The config text of `service` instance `instance`.
    pub fn config_toml(&self, service: Service, instance: &str) -> String {
        let mapping = repo_root()
            .join("deploy/config/lab_results.mapping.toml")
            .display()
            .to_string();
        let mut text = self.common_toml(instance);
        match service {
            Service::FileSource => text.push_str(&format!(
                "[source]\ninbox = {:?}\ndataset_mapping = {mapping:?}\nstable_for_ms = {}\n\
                 poll_interval_ms = 100\nrows_per_transaction = {}\n",
                self.inbox().display().to_string(),
                self.stable_for_ms,
                self.rows_per_transaction,
            )),
            Service::ChangeDetector => text.push_str(&format!(
                "[detector]\ndataset_mapping = {mapping:?}\nbatch_max_records = {}\nbatch_max_ms = 100\n\
                 lag_interval_ms = 5000\n",
                self.batch_max_records,
            )),
            Service::ApiSink => {
                text.push_str(&format!(
                    "[sink]\napi_url = {:?}\ndataset_mapping = {mapping:?}\nprofile = \"json\"\n\
                     request_timeout_ms = 5000\n",
                    self.stub.url(),
                ));
                for line in &self.sink_lines {
                    text.push_str(line);
                    text.push('\n');
                }
                text.push_str("[sink.json]\npath = \"/changes\"\n[sink.retry]\n");
                for line in &self.retry_lines {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Writes the config of `service` instance `instance`; returns its path.
    pub fn write_config(&self, service: Service, instance: &str) -> PathBuf {
        let path = self
            .root
            .path()
            .join(format!("{}-{instance}.toml", service.name()));
        std::fs::write(&path, self.config_toml(service, instance)).expect("config file");
        path
    }

    /// Runs an operator subcommand of `service`'s binary (`<binary> --config … <args>`) with
    /// instance `instance`'s config, as an operator would, and returns what it printed.
    /// Blocking: call it from `block_in_place`.
    pub fn operator_command(
        &self,
        service: Service,
        instance: &str,
        args: &[&str],
    ) -> std::process::Output {
        let config = self.write_config(service, instance);
        std::process::Command::new(crate::binaries::binary(service.name()))
            .current_dir(repo_root())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run the operator command")
    }

    /// Starts `service` (instance id `instance`) from its binary and waits until it is ready.
    pub fn start(&mut self, service: Service, instance: &str) -> Proc {
        let config = self.write_config(service, instance);
        self.lives += 1;
        let log = self.root.path().join("logs").join(format!(
            "{:03}-{}-{instance}.log",
            self.lives,
            service.name()
        ));
        self.logs.push(log.clone());
        let mut env = service_env(&self.broker, &self.pipeline.name);
        // A SIGKILLed member holds its partitions until its session expires; keep that short.
        env.push(("SNAPFEED_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()));
        env.extend(self.extra_env.iter().cloned());
        let binary = binary(service.name());
        let process = block_in_place(|| {
            let mut process = ServiceProcess::start(&binary, &config, &repo_root(), &env, &log);
            process.wait_ready(READY_LIMIT);
            process
        });
        Proc {
            process,
            service,
            instance: instance.to_string(),
        }
    }

    /// The three stages, one instance each (`a`), source first.
    pub fn start_pipeline(&mut self) -> Vec<Proc> {
        vec![
            self.start(Service::ChangeDetector, "a"),
            self.start(Service::ApiSink, "a"),
            self.start(Service::FileSource, "a"),
        ]
    }

    /// SIGKILLs `proc` and starts its instance again (ready).
    pub fn kill_and_restart(&mut self, proc: &mut Proc) {
        proc.kill();
        *proc = self.start(proc.service, &proc.instance.clone());
    }

    /// A random delay in `low..high`.
    pub fn random_delay(&mut self, low: Duration, high: Duration) -> Duration {
        let ms = self
            .rng
            .gen_range(low.as_millis() as u64..high.as_millis().max(low.as_millis() + 1) as u64);
        Duration::from_millis(ms)
    }

    /// Writes `snapshot` (shaped by `options`) as `name` outside the inbox, then renames it in,
    /// so file-source never sees it half-written; remembers its health data.
    pub fn drop_snapshot(
        &mut self,
        snapshot: &Snapshot,
        name: &str,
        options: &WriteOptions,
    ) -> DroppedFile {
        let staged = self.root.path().join("staging").join(name);
        let written = snapshot.write(&staged, options).expect("write snapshot");
        self.health.remember(snapshot);
        let hash = file_hash(&staged);
        std::fs::rename(&staged, self.inbox().join(name)).expect("into the inbox");
        DroppedFile {
            name: name.to_string(),
            hash,
            written: Some(written),
        }
    }

    /// Puts `bytes` into the inbox as `name` (via a rename).
    pub fn drop_bytes(&self, name: &str, bytes: &[u8]) -> DroppedFile {
        let staged = self.root.path().join("staging").join(name);
        std::fs::write(&staged, bytes).expect("staged file");
        let hash = file_hash(&staged);
        std::fs::rename(&staged, self.inbox().join(name)).expect("into the inbox");
        DroppedFile {
            name: name.to_string(),
            hash,
            written: None,
        }
    }

    /// Waits until file-source has finished with `name`: moved to `processed/` or `failed/`.
    pub async fn wait_file_done(&self, name: &str, limit: Duration) -> FileFate {
        let deadline = Instant::now() + limit;
        loop {
            if self.processed_dir().join(name).is_file() {
                return FileFate::Processed;
            }
            if self.failed_dir().join(name).is_file() {
                return FileFate::Failed;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {name} neither processed nor failed after {limit:?}",
                self.scenario
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether file-source holds `name` in a work directory (claimed, not finished).
    pub fn in_work(&self, name: &str) -> bool {
        let work = self.inbox().join("work");
        std::fs::read_dir(&work)
            .map(|dirs| {
                dirs.filter_map(Result::ok)
                    .any(|d| d.path().join(name).is_file())
            })
            .unwrap_or(false)
    }

    /// The last `lines` lines of every log, for a failed scenario.
    fn print_log_tails(&self, lines: usize) {
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "FAULT {}: failed after {:.1} s (SNAPFEED_TEST_SEED={})",
                self.scenario,
                self.started.elapsed().as_secs_f64(),
                self.seed
            );
            self.print_log_tails(25);
            if let Some(log) = self.broker.log_path() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!(
                    "--- last lines of the broker's log ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        // Logs, configs and the broker's database, for whoever looks into a failure (or asked).
        let asked = std::env::var("SNAPFEED_FAULT_KEEP").is_ok_and(|v| v == "1");
        if failed || asked {
            self.root.disable_cleanup(true);
            eprintln!(
                "FAULT {}: kept{} service logs in {}, broker data in {:?}",
                self.scenario,
                if failed {
                    ""
                } else {
                    " (SNAPFEED_FAULT_KEEP=1)"
                },
                self.root.path().display(),
                self.broker.keep_data_dir()
            );
        }
    }
}

/// Where file-source put a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFate {
    /// `processed/`: ingested, or a re-delivery.
    Processed,
    /// `failed/`, with a report.
    Failed,
}

/// `"exactly_once"` / `"at_least_once"`.
pub fn guarantee_name(guarantee: ProcessingGuarantee) -> &'static str {
    match guarantee {
        ProcessingGuarantee::ExactlyOnce => "exactly_once",
        ProcessingGuarantee::AtLeastOnce => "at_least_once",
    }
}

/// SHA-256 of a file in lower-case hex, as file-source names a file's content.
pub fn file_hash(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read file");
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
