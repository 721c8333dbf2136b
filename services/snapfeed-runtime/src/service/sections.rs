//! The configuration every service shares — `[pipeline]`, `[kafka]`, `[topics]`, `[http]`,
//! `[log]`, `[shutdown]` and the optional `[schema_registry]` — declared once:
//! [`service_config!`](crate::service_config) writes a service's config type from these
//! sections plus the stage's own, with unknown keys refused and validation of every section
//! at load.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::avro::registry::{Registry, SchemaRegistryConfig};
use crate::avro::SchemaStore;
use crate::config::ConfigError;
use crate::health::HttpConfig;
use crate::kafka::{KafkaConfig, ProcessingGuarantee};
use crate::shutdown::ShutdownConfig;
use crate::telemetry::LogConfig;
use crate::topics::{TopicNames, TopicsConfig};

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
    /// `[schema_registry]`, when set.
    pub schema_registry: Option<&'a SchemaRegistryConfig>,
}

impl CommonSections<'_> {
    /// Validates every shared section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pipeline.validate()?;
        self.kafka.validate()?;
        self.topics.validate()?;
        self.http.addr()?;
        self.log.validate()?;
        if let Some(registry) = self.schema_registry {
            registry.validate()?;
        }
        self.shutdown.validate()
    }

    /// The schemas of `pipeline.schemas_dir`, with the schema registry client attached when
    /// `[schema_registry]` is set (ids in payloads are then looked up in it, retried until
    /// the registry answers: a service's readers wait rather than skip a record).
    pub fn load_schemas(&self) -> Result<SchemaStore, super::RuntimeError> {
        self.load_schemas_with(None)
    }

    /// [`CommonSections::load_schemas`] for an operator command: a lookup gives up after a
    /// minute with an error, so the command ends.
    pub fn load_schemas_for_command(&self) -> Result<SchemaStore, super::RuntimeError> {
        self.load_schemas_with(Some(std::time::Duration::from_secs(60)))
    }

    fn load_schemas_with(
        &self,
        patience: Option<std::time::Duration>,
    ) -> Result<SchemaStore, super::RuntimeError> {
        let mut store = SchemaStore::load_dir(&self.pipeline.schemas_dir)?;
        if let Some(config) = self.schema_registry {
            let registry = Registry::start(config)?;
            store.attach_registry(match patience {
                Some(patience) => registry.with_patience(patience),
                None => registry,
            });
        }
        Ok(store)
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

/// A stage's own section (`[source]`, `[detector]`, `[sink]`): its cross-field rules.
pub trait StageSection {
    /// Range and cross-field rules serde cannot express; errors name the key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Declares a service's configuration: the shared sections plus the stage's own one,
/// `deny_unknown_fields`, with [`HasCommonSections`] and
/// [`ServiceConfig`](crate::config::ServiceConfig) implemented (every section validated).
///
/// ```ignore
/// snapfeed_runtime::service_config! {
///     /// Everything change-detector reads from its config file and environment.
///     pub struct ChangeDetectorConfig {
///         /// The stage's own settings.
///         detector: DetectorConfig,
///     }
/// }
/// ```
#[macro_export]
macro_rules! service_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(#[$stage_meta:meta])*
            $stage:ident: $stage_type:ty $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, $crate::reexport::serde::Deserialize, $crate::reexport::serde::Serialize)]
        #[serde(crate = "snapfeed_runtime::reexport::serde", deny_unknown_fields)]
        pub struct $name {
            /// Pipeline name, guarantee, schemas, instance id.
            #[serde(default)]
            pub pipeline: $crate::service::PipelineConfig,
            /// Cluster connection.
            pub kafka: $crate::kafka::KafkaConfig,
            /// Topic names and creation.
            #[serde(default)]
            pub topics: $crate::topics::TopicsConfig,
            /// Metrics/health endpoint.
            #[serde(default)]
            pub http: $crate::health::HttpConfig,
            /// Logging.
            #[serde(default)]
            pub log: $crate::telemetry::LogConfig,
            /// Drain bound.
            #[serde(default)]
            pub shutdown: $crate::shutdown::ShutdownConfig,
            /// Confluent Schema Registry framing, optional.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub schema_registry: Option<$crate::avro::registry::SchemaRegistryConfig>,
            $(#[$stage_meta])*
            pub $stage: $stage_type,
        }

        impl $crate::service::HasCommonSections for $name {
            fn common(&self) -> $crate::service::CommonSections<'_> {
                $crate::service::CommonSections {
                    pipeline: &self.pipeline,
                    kafka: &self.kafka,
                    topics: &self.topics,
                    http: &self.http,
                    log: &self.log,
                    shutdown: &self.shutdown,
                    schema_registry: self.schema_registry.as_ref(),
                }
            }
        }

        impl $crate::config::ServiceConfig for $name {
            fn validate(&self) -> Result<(), $crate::config::ConfigError> {
                $crate::service::HasCommonSections::common(self).validate()?;
                $crate::service::StageSection::validate(&self.$stage)
            }
        }
    };
}
