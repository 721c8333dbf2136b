//! The frame every stage runs in, written once: the shared config sections ([`sections`]),
//! schemas, the health/metrics endpoint, the topics checked before any work starts, the
//! stage's dedicated thread and the bounded shutdown around it ([`worker`]).
//!
//! Start-up order: load schemas → serve `/healthz` (alive, not ready) → reach the cluster
//! (retrying with backoff while unreachable, so a service started before Kafka waits instead of
//! crash-looping) → create missing topics if configured → verify topics and co-partitioning
//! (fatal on mismatch) → load the dataset mapping and, with `[schema_registry]`, register the
//! pipeline's schemas (retrying while the registry is unavailable; fatal when it refuses one)
//! ([`ServiceRuntime::load_dataset`]) → the stage sets up its clients ([`ServiceRuntime::connect_writer`],
//! [`ServiceRuntime::subscribe`]) and runs on its thread ([`ServiceRuntime::serve`]) until
//! shutdown, setting its own readiness conditions.

pub mod sections;
mod topic_check;
pub mod worker;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntGauge, Opts, Registry};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::avro::registry::{self, RegistrationError};
use crate::avro::{AvroError, SchemaStore};
use crate::config::ConfigError;
use crate::dataset::{Dataset, DatasetError, DatasetMapping};
use crate::health::{HealthServer, HealthServerError, Readiness};
use crate::kafka::{GuaranteedWriter, KafkaConfig, ProcessingGuarantee, WriteError};
use crate::shutdown::Shutdown;
use crate::topics::{TopicError, TopicNames};

pub use sections::{CommonSections, HasCommonSections, PipelineConfig, StageSection};
pub use topic_check::{admin_client, fetch_partition_counts};
pub use worker::StageThread;

/// Readiness condition every consuming stage sets once its clients are up.
pub const CONNECTED: &str = "connected";
/// Readiness condition held false while the schemas are being registered (`[schema_registry]`).
pub const SCHEMA_REGISTRY: &str = "schema_registry";
/// Time a stopping stage gets on top of the drain bound (closing clients after draining).
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Bound for stopping the endpoint, the last step.
const ENDPOINT_STOP: Duration = Duration::from_secs(5);

/// Why a service could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Config problem found late (e.g. a secret that cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Schemas could not be loaded.
    #[error(transparent)]
    Schemas(#[from] AvroError),
    /// The schema registry refused a schema (or its credentials).
    #[error(transparent)]
    Registry(#[from] RegistrationError),
    /// The dataset mapping is wrong.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The endpoint could not bind.
    #[error(transparent)]
    Health(#[from] HealthServerError),
    /// Topic problem.
    #[error(transparent)]
    Topics(#[from] TopicError),
    /// The metrics could not be registered (a name clash: a bug, not a config problem).
    #[error("cannot register metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The stage's thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The stage's thread panicked (a bug): its open work is redone by the next run.
    #[error("stage thread {name} panicked")]
    StagePanicked {
        /// Thread name.
        name: String,
    },
    /// The writer could not be set up.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A Kafka client could not be created or used.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// Shutdown was requested before start-up finished.
    #[error("shutdown requested during start-up")]
    Interrupted,
}

/// The `group.instance.id` of an instance of a stage under `kafka.static_membership`.
pub fn static_member_id(group: &str, instance_id: &str) -> String {
    format!("{group}.{instance_id}")
}

/// The constant label every metric of a service carries: the pipeline's name.
pub const PIPELINE_LABEL: &str = "pipeline";

/// The running frame around a stage.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// `file-source`, `change-detector` or `api-sink`.
    pub service: &'static str,
    /// Where the stage registers its metrics.
    pub registry: Registry,
    /// The stage's readiness conditions.
    pub readiness: Readiness,
    /// Resolved topic names.
    pub topics: TopicNames,
    /// Loaded schemas.
    pub schemas: Arc<SchemaStore>,
    /// Partition counts by topic, as verified at start ([`ServiceRuntime::start_verified`]).
    pub partitions: BTreeMap<String, i32>,
    /// `[pipeline]`: group ids, guarantee, instance id.
    pub pipeline: PipelineConfig,
    /// `[kafka]`: for the stage's clients.
    pub kafka: KafkaConfig,
    /// `shutdown.drain_timeout_ms`.
    pub drain: Duration,
    health: HealthServer,
}

impl ServiceRuntime {
    /// Loads schemas and starts the health/metrics endpoint.
    pub async fn start(
        service: &'static str,
        common: CommonSections<'_>,
        shutdown: Shutdown,
    ) -> Result<ServiceRuntime, RuntimeError> {
        let schemas = Arc::new(common.load_schemas()?);
        // Every series carries `pipeline="<name>"`, so several pipelines share one Prometheus
        // (and one dashboard, with a pipeline selector).
        let registry = Registry::new_custom(
            None,
            Some(
                [(PIPELINE_LABEL.to_string(), common.pipeline.name.clone())]
                    .into_iter()
                    .collect(),
            ),
        )
        .map_err(RuntimeError::Metrics)?;
        crate::process_metrics::register(&registry).map_err(RuntimeError::Metrics)?;
        let build_info = IntGauge::with_opts(
            Opts::new(
                format!("snapfeed_{}_build_info", metric_service(service)),
                "Always 1; labels carry the version and the processing guarantee.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label(
                "processing_guarantee",
                match common.pipeline.processing_guarantee {
                    ProcessingGuarantee::ExactlyOnce => "exactly_once",
                    ProcessingGuarantee::AtLeastOnce => "at_least_once",
                },
            ),
        )
        .map_err(RuntimeError::Metrics)?;
        build_info.set(1);
        registry
            .register(Box::new(build_info))
            .map_err(RuntimeError::Metrics)?;
        let readiness = Readiness::default();
        let health = HealthServer::start(
            common.http.addr()?,
            registry.clone(),
            readiness.clone(),
            shutdown,
        )
        .await?;
        tracing::info!(message = "Serving /metrics, /healthz, /readyz.", service, addr = %health.addr);
        Ok(ServiceRuntime {
            service,
            registry,
            readiness,
            topics: common.topic_names(),
            schemas,
            partitions: BTreeMap::new(),
            pipeline: common.pipeline.clone(),
            kafka: common.kafka.clone(),
            drain: common.shutdown.drain_timeout(),
            health,
        })
    }

    /// [`ServiceRuntime::start`] then [`ServiceRuntime::ensure_topics`] for `required` (names
    /// picked from the resolved [`TopicNames`]). `Ok(None)` when shutdown came first.
    pub async fn start_verified(
        service: &'static str,
        common: CommonSections<'_>,
        required: impl Fn(&TopicNames) -> Vec<String>,
        shutdown: &Shutdown,
    ) -> Result<Option<ServiceRuntime>, RuntimeError> {
        let mut runtime = match ServiceRuntime::start(service, common, shutdown.clone()).await {
            Ok(runtime) => runtime,
            Err(RuntimeError::Interrupted) => return Ok(None),
            Err(error) => return Err(error),
        };
        let required = required(&runtime.topics);
        let required: Vec<&str> = required.iter().map(String::as_str).collect();
        match runtime.ensure_topics(common, &required, shutdown).await {
            Ok(counts) => {
                runtime.partitions = counts;
                Ok(Some(runtime))
            }
            Err(RuntimeError::Interrupted) => {
                runtime.stop().await;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Partition count of `topic` as verified at start (0 if unknown).
    pub fn partitions_of(&self, topic: &str) -> i32 {
        self.partitions.get(topic).copied().unwrap_or(0)
    }

    /// Registers the stage's metrics (`register` is its metrics type's constructor).
    pub fn register_metrics<M>(
        &self,
        register: impl FnOnce(&Registry) -> prometheus::Result<M>,
    ) -> Result<M, RuntimeError> {
        register(&self.registry).map_err(RuntimeError::Metrics)
    }

    /// Loads the dataset mapping against the loaded schemas; with `[schema_registry]`,
    /// registers every schema the pipeline writes for this dataset and waits for the ids
    /// (not ready meanwhile; `Ok(None)` when shutdown came first).
    pub async fn load_dataset(
        &self,
        mapping: &Path,
        shutdown: &Shutdown,
    ) -> Result<Option<Arc<Dataset>>, RuntimeError> {
        let dataset = DatasetMapping::load(mapping, &self.schemas)?;
        dataset.check_compositions(&self.schemas)?;
        if let Some(client) = self.schemas.registry() {
            self.readiness.set(SCHEMA_REGISTRY, false);
            let registered = registry::register_pipeline(
                client,
                &self.schemas,
                &self.topics,
                dataset.schema_name(),
                shutdown,
            )
            .await;
            match registered {
                Ok(()) => self.readiness.set(SCHEMA_REGISTRY, true),
                Err(RegistrationError::Interrupted) => return Ok(None),
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Some(Arc::new(dataset)))
    }

    /// Sets up the stage's [`GuaranteedWriter`] off the async workers (`init_transactions`
    /// blocks until the coordinator answers). `transactional_id` must be stable per instance.
    pub async fn connect_writer(
        &self,
        guarantee: ProcessingGuarantee,
        transactional_id: String,
    ) -> Result<Arc<GuaranteedWriter>, RuntimeError> {
        let (kafka, service) = (self.kafka.clone(), self.service);
        let connected = tokio::task::spawn_blocking(move || {
            GuaranteedWriter::connect(&kafka, service, guarantee, &transactional_id)
        })
        .await
        .map_err(|_| RuntimeError::StagePanicked {
            name: format!("{service} writer set-up"),
        })??;
        Ok(Arc::new(connected))
    }

    /// A consumer in the stage's group (`<pipeline>.<service>`), subscribed to `topic`, with
    /// the guarantee's isolation level; `tune` adds stage-specific settings.
    pub fn subscribe<C: ConsumerContext>(
        &self,
        topic: &str,
        context: C,
        tune: impl FnOnce(&mut ClientConfig),
    ) -> Result<BaseConsumer<C>, RuntimeError> {
        let group = self.pipeline.group_id(self.service);
        let mut settings =
            self.kafka
                .consumer_config(self.service, &group, self.pipeline.processing_guarantee);
        if self.kafka.static_membership {
            settings.set(
                "group.instance.id",
                static_member_id(&group, &self.pipeline.instance_id()),
            );
        }
        tune(&mut settings);
        let consumer: BaseConsumer<C> =
            settings
                .create_with_context(context)
                .map_err(|source| RuntimeError::Kafka {
                    context: "create the consumer",
                    source,
                })?;
        consumer
            .subscribe(&[topic])
            .map_err(|source| RuntimeError::Kafka {
                context: "subscribe",
                source,
            })?;
        tracing::info!(
            message = "Consuming.",
            group = %group,
            topic,
            static_member = self.kafka.static_membership
        );
        Ok(consumer)
    }

    /// Runs until `shutdown` fires or the stage ends on its own: then stops the stage within
    /// the drain bound, and the endpoint last. Returns the stage's result.
    pub async fn serve<E>(self, mut shutdown: Shutdown, mut stage: StageThread<E>) -> Result<(), E>
    where
        E: From<RuntimeError> + Send + 'static,
    {
        let result = tokio::select! {
            _ = shutdown.wait() => {
                self.readiness.set(CONNECTED, false);
                let stopped = stage.stop(self.drain + STOP_GRACE).await;
                let _ = tokio::time::timeout(ENDPOINT_STOP, self.health.stopped()).await;
                stopped
            }
            ended = stage.ended() => {
                self.readiness.set(CONNECTED, false);
                self.health.abort();
                ended
            }
        };
        result
    }

    /// The bound address of the endpoint.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        self.health.addr
    }

    /// Stops the endpoint (after shutdown fired) — the last thing a service does — within a
    /// bound.
    pub async fn stop(self) {
        let _ = tokio::time::timeout(ENDPOINT_STOP, self.health.stopped()).await;
    }
}

/// `change-detector` → `change_detector`, for metric names.
pub fn metric_service(service: &str) -> String {
    service.replace('-', "_")
}
