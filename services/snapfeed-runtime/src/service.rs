//! What every service does around its stage: the shared config sections, schemas, the
//! health/metrics endpoint, and getting the topics right before any work starts.
//!
//! Start-up order: load schemas → serve `/healthz` (alive, not ready) → reach the cluster
//! (retrying with backoff while unreachable, so a service started before Kafka waits instead of
//! crash-looping) → create missing topics if configured → verify topics and co-partitioning
//! (fatal on mismatch) → the stage runs and sets its own readiness conditions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntGauge, Opts, Registry};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use serde::{Deserialize, Serialize};

use crate::avro::{AvroError, SchemaStore};
use crate::config::ConfigError;
use crate::health::{HealthServer, HealthServerError, HttpConfig, Readiness};
use crate::kafka::{KafkaConfig, ProcessingGuarantee};
use crate::shutdown::{Shutdown, ShutdownConfig};
use crate::telemetry::LogConfig;
use crate::topics::{self, TopicError, TopicNames, TopicsConfig};

/// The `[pipeline]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name: prefixes topic names and consumer groups.
    #[serde(default = "default_pipeline_name")]
    pub name: String,
    /// `exactly_once` (Kafka transactions, default) or `at_least_once` (brokers without them).
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// Directory holding the `*.avsc` schemas (and `history/`).
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// Stable identity of this instance (transactional ids); defaults to `$HOSTNAME`, else `0`.
    #[serde(default)]
    pub instance_id: Option<String>,
}

fn default_pipeline_name() -> String {
    "lab-results".into()
}

fn default_schemas_dir() -> PathBuf {
    "schemas".into()
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: default_pipeline_name(),
            processing_guarantee: ProcessingGuarantee::default(),
            schemas_dir: default_schemas_dir(),
            instance_id: None,
        }
    }
}

impl PipelineConfig {
    /// Checks the name can prefix topic names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let valid = !self.name.is_empty()
            && self.name.len() <= 200
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(ConfigError::invalid(
                "pipeline.name",
                format!("{:?}", self.name),
                "1-200 characters of [a-zA-Z0-9._-] (it prefixes Kafka topic names)",
            ));
        }
        Ok(())
    }

    /// This instance's stable id.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "0".into())
    }

    /// The consumer group of a service: `<pipeline>.<service>`.
    pub fn group_id(&self, service: &str) -> String {
        format!("{}.{service}", self.name)
    }
}

/// The sections every service config has, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct CommonSections<'a> {
    /// `[pipeline]`.
    pub pipeline: &'a PipelineConfig,
    /// `[kafka]`.
    pub kafka: &'a KafkaConfig,
    /// `[topics]`.
    pub topics: &'a TopicsConfig,
    /// `[http]`.
    pub http: &'a HttpConfig,
    /// `[log]`.
    pub log: &'a LogConfig,
    /// `[shutdown]`.
    pub shutdown: &'a ShutdownConfig,
}

impl CommonSections<'_> {
    /// Validates every shared section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pipeline.validate()?;
        self.kafka.validate()?;
        self.topics.validate()?;
        self.http.addr()?;
        self.log.validate()?;
        self.shutdown.validate()
    }

    /// Resolved topic names.
    pub fn topic_names(&self) -> TopicNames {
        TopicNames::resolve(&self.pipeline.name, &self.topics.names)
    }
}

/// A service config: shared sections plus the stage's own.
pub trait HasCommonSections {
    /// The shared sections.
    fn common(&self) -> CommonSections<'_>;
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Config problem found late (e.g. a secret that cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Schemas could not be loaded.
    #[error(transparent)]
    Schemas(#[from] AvroError),
    /// The endpoint could not bind.
    #[error(transparent)]
    Health(#[from] HealthServerError),
    /// Topic problem.
    #[error(transparent)]
    Topics(#[from] TopicError),
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
    health: HealthServer,
}

impl ServiceRuntime {
    /// Loads schemas and starts the health/metrics endpoint.
    pub async fn start(
        service: &'static str,
        common: CommonSections<'_>,
        shutdown: Shutdown,
    ) -> Result<ServiceRuntime, RuntimeError> {
        let schemas = Arc::new(SchemaStore::load_dir(&common.pipeline.schemas_dir)?);
        let registry = Registry::new();
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
        .map_err(|e| ConfigError::invalid("(metrics)", service, e.to_string()))?;
        build_info.set(1);
        registry
            .register(Box::new(build_info))
            .map_err(|e| ConfigError::invalid("(metrics)", service, e.to_string()))?;
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

    /// The bound address of the endpoint.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        self.health.addr
    }

    /// Reaches the cluster (retrying while it is unreachable, until `shutdown`), creates missing
    /// topics when `topics.create_missing` is set, and verifies that `required` exist and that
    /// snapshots/state/changes are co-partitioned. Returns partition counts by topic.
    pub async fn ensure_topics(
        &self,
        common: CommonSections<'_>,
        required: &[&str],
        shutdown: &Shutdown,
    ) -> Result<BTreeMap<String, i32>, RuntimeError> {
        let admin = admin_client(common.kafka, self.service)?;
        let all: Vec<String> = self
            .topics
            .specs(common.topics)
            .into_iter()
            .map(|s| s.name)
            .collect();
        let mut counts = wait_for_partition_counts(&admin, common.kafka, &all, shutdown).await?;
        if common.topics.create_missing {
            let created = topics::create_missing(
                &admin,
                &self.topics.specs(common.topics),
                &counts,
                common.topics.replication_factor,
                common.kafka.request_timeout(),
            )
            .await?;
            if !created.is_empty() {
                tracing::info!(message = "Created topics.", topics = ?created);
                counts = wait_for_partition_counts(&admin, common.kafka, &all, shutdown).await?;
            }
        }
        topics::verify(&self.topics, required, &counts)?;
        Ok(counts)
    }

    /// Stops the endpoint (after shutdown fired) — the last thing a service does.
    pub async fn stop(self) {
        self.health.stopped().await;
    }
}

/// `change-detector` → `change_detector`, for metric names.
pub fn metric_service(service: &str) -> String {
    service.replace('-', "_")
}

/// An admin client (it runs its own background thread).
pub fn admin_client(
    kafka: &KafkaConfig,
    service: &str,
) -> Result<Arc<AdminClient<DefaultClientContext>>, RuntimeError> {
    kafka
        .admin_config(service)
        .create()
        .map(Arc::new)
        .map_err(|source| RuntimeError::Kafka {
            context: "admin client",
            source,
        })
}

/// Reads partition counts, retrying with capped backoff while the cluster does not answer.
async fn wait_for_partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    kafka: &KafkaConfig,
    topics: &[String],
    shutdown: &Shutdown,
) -> Result<BTreeMap<String, i32>, RuntimeError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match fetch_partition_counts(admin, kafka, topics).await {
            Ok(counts) => return Ok(counts),
            Err(error) if error.is_retryable() && !shutdown.is_triggered() => {
                tracing::warn!(message = "Kafka not reachable yet; retrying.", %error, retry_in_ms = delay.as_millis() as u64);
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Err(RuntimeError::Interrupted),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// One metadata round trip, off the async workers.
pub async fn fetch_partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, TopicError> {
    let timeout = kafka.request_timeout();
    let bootstrap = kafka.bootstrap_servers.clone();
    // Metadata requests block: run on the blocking pool, never on an async worker.
    let admin = Arc::clone(admin);
    let topics = topics.to_vec();
    let joined = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(None, timeout)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        Ok::<_, rdkafka::error::KafkaError>(topics::partition_counts(&metadata, &names))
    })
    .await;
    match joined {
        Ok(Ok(counts)) => Ok(counts),
        Ok(Err(source)) => Err(TopicError::Metadata { bootstrap, source }),
        Err(_) => Err(TopicError::Metadata {
            bootstrap,
            source: rdkafka::error::KafkaError::Canceled,
        }),
    }
}
