//! change-detector configuration: the shared sections plus `[detector]`.

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::{ConfigError, ServiceConfig};
use snapfeed_runtime::health::HttpConfig;
use snapfeed_runtime::kafka::KafkaConfig;
use snapfeed_runtime::service::{CommonSections, HasCommonSections, PipelineConfig};
use snapfeed_runtime::shutdown::ShutdownConfig;
use snapfeed_runtime::telemetry::LogConfig;
use snapfeed_runtime::topics::TopicsConfig;

/// Everything change-detector reads from its config file and environment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeDetectorConfig {
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
    /// The stage's own settings.
    #[serde(default)]
    pub detector: DetectorConfig,
}

/// The `[detector]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {}

impl HasCommonSections for ChangeDetectorConfig {
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

impl ServiceConfig for ChangeDetectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.common().validate()
    }
}
