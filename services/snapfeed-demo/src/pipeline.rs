//! The pipeline under demonstration, started in-process: librdkafka's mock broker with the
//! topics `init-topics` would create, the stub case API (unless `--api-url` names a real one),
//! and file-source, change-detector and api-sink through their library `run` functions. The
//! services talk to each other only through Kafka, as the separate binaries do; each gets its
//! own metrics address so the reconciliation can tell them apart.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use snapfeed_harness::broker::TestBroker;
use snapfeed_harness::service_process::http_get;
use snapfeed_harness::stub_api::StubApi;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::inspect::trace::{trace, Trace, TraceOptions};
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::reconcile::{
    reconcile, ReconcileError, ReconcileOptions, ReconcileTarget, Reconciliation,
};
use snapfeed_runtime::shutdown::{self, ShutdownTrigger};
use snapfeed_runtime::topics::{TopicNameOverrides, TopicNames, TopicsConfig};

use crate::{Args, DemoResult};

/// Where the repository's `schemas/` and `deploy/config/` are (the demo runs from a checkout).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Where each service serves `/metrics` and `/readyz`.
pub(crate) struct Endpoints {
    pub(crate) source: SocketAddr,
    pub(crate) detector: SocketAddr,
    pub(crate) sink: SocketAddr,
}

/// Everything [`Pipeline::start`] started, held until [`Pipeline::stop`].
// Fields drop in declaration order: if the demo fails half-way, the broker goes last, after
// everything that talks to it.
pub(crate) struct Pipeline {
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    trigger: ShutdownTrigger,
    pub(crate) endpoints: Endpoints,
    stub: Option<StubApi>,
    /// The pipeline name and its topics (for `reconcile`).
    name: &'static str,
    topics: TopicNames,
    schemas: SchemaStore,
    broker: TestBroker,
}

impl Pipeline {
    /// Starts broker, API and services, and waits until every service is ready; the file-source
    /// watches `inbox`.
    pub(crate) async fn start(
        args: &Args,
        inbox: &Path,
        stage_timeout: Duration,
    ) -> DemoResult<Pipeline> {
        let broker = TestBroker::mock();
        let pipeline = "lab-results";
        let names = TopicNames::resolve(pipeline, &TopicNameOverrides::default());
        broker
            .create_topics(&names.specs(&TopicsConfig {
                partitions: args.partitions,
                replication_factor: 1,
                ..TopicsConfig::default()
            }))
            .await;
        println!(
            "  broker   in-process at {} — topics created",
            broker.bootstrap()
        );

        let stub = match &args.api_url {
            Some(_) => None,
            None => Some(StubApi::start().await),
        };
        let api_url = args
            .api_url
            .clone()
            .or_else(|| stub.as_ref().map(StubApi::url))
            .unwrap_or_default();
        println!(
            "  case API {api_url}{}",
            if stub.is_some() { " (stub)" } else { "" }
        );

        let endpoints = Endpoints {
            source: free_addr()?,
            detector: free_addr()?,
            sink: free_addr()?,
        };
        let mapping = repo_root()
            .join("deploy/config/lab_results.mapping.toml")
            .display()
            .to_string();
        let source_toml = format!(
            "{}[source]\ninbox = {:?}\ndataset_mapping = {mapping:?}\nmarker_suffix = \".ok\"\npoll_interval_ms = 100\n",
            common_toml(pipeline, broker.bootstrap(), endpoints.source),
            inbox.display().to_string()
        );
        let detector_toml = format!(
            "{}[detector]\ndataset_mapping = {mapping:?}\n",
            common_toml(pipeline, broker.bootstrap(), endpoints.detector)
        );
        let sink_toml = format!(
            "{}[sink]\napi_url = {api_url:?}\ndataset_mapping = {mapping:?}\nprofile = \"json\"\nlanes_per_partition = 4\nmax_in_flight = 32\n[sink.json]\npath = \"/changes\"\n",
            common_toml(pipeline, broker.bootstrap(), endpoints.sink)
        );
        let (trigger, shutdown) = shutdown::channel();
        let tasks = vec![
            tokio::spawn({
                let config = toml::from_str(&source_toml)?;
                let shutdown = shutdown.clone();
                async move {
                    file_source::run(config, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                }
            }),
            tokio::spawn({
                let config = toml::from_str(&detector_toml)?;
                let shutdown = shutdown.clone();
                async move {
                    change_detector::run(config, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                }
            }),
            tokio::spawn({
                let config = toml::from_str(&sink_toml)?;
                let shutdown = shutdown.clone();
                async move {
                    api_sink::run(config, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                }
            }),
        ];
        for (name, addr) in [
            ("file-source", endpoints.source),
            ("change-detector", endpoints.detector),
            ("api-sink", endpoints.sink),
        ] {
            wait_until(stage_timeout, || {
                matches!(http_get(addr, "/readyz"), Some((200, _)))
            })
            .await
            .map_err(|_| format!("{name} not ready"))?;
            println!("  {name:<15} ready — http://{addr}/metrics");
        }
        let schemas = SchemaStore::load_dir(&repo_root().join("schemas"))?;
        Ok(Pipeline {
            tasks,
            trigger,
            endpoints,
            stub,
            name: pipeline,
            topics: names,
            schemas,
            broker,
        })
    }

    /// `reconcile --file NAME` on the pipeline's topics, as an operator would run it (blocking
    /// reads, off the async workers).
    /// `None`: no ledger entry has the name (a duplicate, recorded under the first name).
    pub(crate) fn reconcile_file(&self, file_name: &str) -> DemoResult<Option<Reconciliation>> {
        let target = ReconcileTarget::File(file_name.to_string());
        let found = tokio::task::block_in_place(|| {
            reconcile(
                &self.broker.kafka_config(),
                self.name,
                &self.topics,
                &self.schemas,
                ProcessingGuarantee::ExactlyOnce,
                &target,
                // Gap (mock cluster): it acknowledges TxnOffsetCommit without storing it, so
                // the detector group has no offsets here; the metrics above show every record
                // decided instead.
                ReconcileOptions {
                    count_undecided: false,
                },
            )
        });
        match found {
            Ok(reconciliation) => Ok(Some(reconciliation)),
            Err(ReconcileError::NotFound { .. }) => Ok(None),
            Err(error) => Err(format!("reconcile --file {file_name}: {error}").into()),
        }
    }

    /// `trace KEY` of the first key the pipeline updated, values redacted, as an operator
    /// would run it; `None` when nothing was updated.
    pub(crate) fn trace_an_updated_key(&self) -> DemoResult<Option<Trace>> {
        use rdkafka::{Message, Offset};
        use snapfeed_runtime::kafka::TopicReader;
        use snapfeed_runtime::records::{AvroRecord, ChangeEvent, ChangeOp};
        tokio::task::block_in_place(|| {
            let kafka = self.broker.kafka_config();
            let guarantee = ProcessingGuarantee::ExactlyOnce;
            let reader = TopicReader::new(&kafka, "demo", guarantee)?;
            let from: Vec<(i32, Offset)> = (0..reader.partitions(&self.topics.changes)?)
                .map(|p| (p, Offset::Beginning))
                .collect();
            let mut updated = None;
            reader.read_until(&self.topics.changes, &from, |m| {
                let location = snapfeed_runtime::avro::MessageLocation::of(m);
                match m.payload().map(|p| {
                    self.schemas
                        .decode::<ChangeEvent>(p, ChangeEvent::SCHEMA, &location)
                }) {
                    Some(Ok(change)) if change.op == ChangeOp::Update => {
                        updated = Some(change.key);
                        std::ops::ControlFlow::Break(())
                    }
                    _ => std::ops::ControlFlow::Continue(()),
                }
            })?;
            let Some(key) = updated else {
                return Ok(None);
            };
            let options = TraceOptions {
                key,
                ..TraceOptions::default()
            };
            Ok(Some(trace(
                &kafka,
                self.name,
                guarantee,
                &self.topics,
                &self.schemas,
                &options,
            )?))
        })
    }

    /// Distinct effects the stub API saw (by Idempotency-Key); `None` with `--api-url`.
    pub(crate) fn unique_effects(&self) -> Option<usize> {
        self.stub.as_ref().map(StubApi::unique_effects)
    }

    /// Fires shutdown and gives each service 15 s to drain, then stops the stub API and the
    /// broker.
    pub(crate) async fn stop(self) {
        self.trigger.trigger();
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("a service failed: {error}"),
                _ => eprintln!("a service did not stop in time"),
            }
        }
        drop(self.stub);
        drop(self.broker);
    }
}

/// The shared config sections. `fetch.wait.max.ms` is shortened for the in-process mock
/// broker, which answers an empty fetch only after the full wait (500 ms by default) even when
/// records become readable meanwhile; Apache Kafka answers as soon as data arrives, so real
/// deployments keep librdkafka's default. It is a consumer property: set for consumers only,
/// so producers do not warn that they ignore it.
fn common_toml(name: &str, bootstrap: &str, listen: SocketAddr) -> String {
    format!(
        "[pipeline]\nname = {name:?}\nprocessing_guarantee = \"exactly_once\"\nschemas_dir = {schemas:?}\n\
         [kafka]\nbootstrap_servers = {bootstrap:?}\nrequest_timeout_ms = 10000\n\
         [kafka.consumer_options]\n\"fetch.wait.max.ms\" = \"10\"\n\
         [http]\nlisten = \"{listen}\"\n[log]\nlevel = \"warn\"\n[shutdown]\ndrain_timeout_ms = 5000\n",
        schemas = repo_root().join("schemas").display().to_string(),
    )
}

pub(crate) async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
