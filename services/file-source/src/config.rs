//! file-source configuration: the shared sections plus `[source]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::{ConfigError, ServiceConfig};
use snapfeed_runtime::health::HttpConfig;
use snapfeed_runtime::kafka::KafkaConfig;
use snapfeed_runtime::service::{CommonSections, HasCommonSections, PipelineConfig};
use snapfeed_runtime::shutdown::ShutdownConfig;
use snapfeed_runtime::telemetry::LogConfig;
use snapfeed_runtime::topics::TopicsConfig;

/// Everything file-source reads from its config file and environment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Pipeline name, guarantee, schemas.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Cluster connection.
    pub kafka: KafkaConfig,
    /// Topic names and creation.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Metrics/health endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Drain bound.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The inbox and the dataset.
    pub source: SourceConfig,
}

/// The `[source]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Directory watched for snapshot files.
    pub inbox: PathBuf,
    /// Dataset mapping (CSV header → schema field, key fields, formats).
    pub dataset_mapping: PathBuf,
}

impl HasCommonSections for FileSourceConfig {
    fn common(&self) -> CommonSections<'_> {
        CommonSections {
            pipeline: &self.pipeline,
            kafka: &self.kafka,
            topics: &self.topics,
            http: &self.http,
            log: &self.log,
            shutdown: &self.shutdown,
        }
    }
}

impl ServiceConfig for FileSourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.common().validate()?;
        if self.source.inbox.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "source.inbox",
                "\"\"",
                "a directory path",
            ));
        }
        Ok(())
    }
}
