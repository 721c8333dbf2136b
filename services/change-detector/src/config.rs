//! change-detector configuration: the shared sections plus `[detector]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;
use snapfeed_runtime::service::StageSection;

snapfeed_runtime::service_config! {
    /// Everything change-detector reads from its config file and environment.
    pub struct ChangeDetectorConfig {
        /// The stage's own settings.
        detector: DetectorConfig,
    }
}

/// The `[detector]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Dataset mapping: key fields and the volatile fields the content hash ignores.
    pub dataset_mapping: PathBuf,
    /// A batch (one transaction) closes after this many snapshot records …
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// … or this long after its first record, whichever comes first.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// Emitting DELETE for keys absent from a complete snapshot of their stream.
    #[serde(default)]
    pub deletes: DeleteConfig,
    /// What to do with a `snapshots` message that does not decode.
    #[serde(default)]
    pub on_corrupt: CorruptPolicy,
    /// How often consumer lag is measured.
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
}

/// `[detector.deletes]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteConfig {
    /// Off by default: deletes need snapshot-end markers and complete snapshots.
    #[serde(default)]
    pub enabled: bool,
    /// If a snapshot would delete more than this share of its stream's keys on a partition,
    /// it deletes nothing, trips the guard (metric + error log): a truncated file must never
    /// wipe a case load.
    #[serde(default = "default_max_delete_share")]
    pub max_share: f64,
}

impl Default for DeleteConfig {
    fn default() -> Self {
        DeleteConfig {
            enabled: false,
            max_share: default_max_delete_share(),
        }
    }
}

/// Policy for undecodable `snapshots` messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorruptPolicy {
    /// Count, log (topic/partition/offset), record on `rejects`, move on.
    #[default]
    Skip,
    /// Stop the partition at the message (others continue); not ready until replayed past it.
    Pause,
}

fn default_batch_max_records() -> usize {
    10_000
}
fn default_batch_max_ms() -> u64 {
    200
}
fn default_max_delete_share() -> f64 {
    0.10
}
fn default_lag_interval_ms() -> u64 {
    15_000
}

impl StageSection for DetectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_max_records == 0 {
            return Err(ConfigError::invalid(
                "detector.batch_max_records",
                0,
                "at least 1",
            ));
        }
        if self.batch_max_ms == 0 {
            return Err(ConfigError::invalid(
                "detector.batch_max_ms",
                0,
                "at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.deletes.max_share) {
            return Err(ConfigError::invalid(
                "detector.deletes.max_share",
                self.deletes.max_share,
                "between 0 and 1",
            ));
        }
        Ok(())
    }
}

impl snapfeed_runtime::preflight::ServiceChecks for ChangeDetectorConfig {
    /// The mapping (the detector hashes the dataset's fields).
    fn service_checks<'a>(
        &'a self,
        schemas: Option<&'a snapfeed_runtime::avro::SchemaStore>,
    ) -> impl std::future::Future<Output = Vec<snapfeed_runtime::preflight::Check>> + 'a {
        let (mapping, _) = snapfeed_runtime::preflight::mapping_check(
            "detector.dataset_mapping",
            &self.detector.dataset_mapping,
            schemas,
        );
        std::future::ready(vec![mapping])
    }
}
