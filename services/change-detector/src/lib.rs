//! change-detector — the **filter** stage: keeps per-key state in the compacted `state` topic
//! and emits only new and changed records to `changes`, in Kafka transactions (see DESIGN
//! § change-detector).
//!
//! - [`config`]: `[detector]` — dataset, batch bounds, deletes and their guard, corrupt policy.
//! - [`content_hash`]: what "changed" means (volatile fields and nulls do not count).
//! - [`state`]: per-key state per partition; snapshot generations for deletes.
//! - [`detect`]: the consume → decide → commit stage; [`detect::batch`] keeps the guarantee.
//! - [`metrics`]: the `snapfeed_change_detector_…` metrics.
//! - [`repartition`]: the `repartition` command — re-keys `state` after partitions were added.
//!
//! [`run`] starts the service frame (the runtime's [`ServiceRuntime`]), verifies
//! co-partitioning, and runs the stage on its own thread until shutdown; then it commits the
//! open batch (one commit, bounded by the writer's Kafka timeouts), leaves the group and
//! closes the writer within the drain bound. A fatal
//! write error (fenced by another instance) ends the stage and the service with it. Replay
//! (`replay` subcommand) resets the group's offsets; with state intact a replay re-emits
//! nothing, because every record is compared with the state its first pass left behind —
//! re-processing is idempotent by construction.

pub mod config;
pub mod content_hash;
pub mod detect;
pub mod metrics;
pub mod repartition;
pub mod state;

use snapfeed_runtime::kafka::{consume_until_stopped, TopicReader, WriteError};
use snapfeed_runtime::service::{
    HasCommonSections, RuntimeError, ServiceRuntime, StageThread, CONNECTED,
};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::ChangeDetectorConfig;
use detect::batch::Batch;
use detect::decide::Decider;
use detect::emit::Envelopes;
use detect::layout::LayoutMismatch;
use detect::restore::{Partitions, StateReader};
use detect::{Detector, DetectorContext, DetectorStage, StageError};
use metrics::DetectorMetrics;

/// The service name: metric prefix, client id, consumer group suffix.
pub const SERVICE: &str = "change-detector";

/// Why change-detector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChangeDetectorError {
    /// Start-up failed (config, schemas, dataset, endpoint, topics, cluster, metrics, thread).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Writing failed fatally (fenced by another instance with the same transactional id, or
    /// a producer that cannot be replaced): the stage stopped rather than fight over it.
    #[error(transparent)]
    Write(WriteError),
    /// The state was written for another partition count than the topics have: nothing was
    /// decided with it (`change-detector repartition` re-keys it).
    #[error(transparent)]
    Layout(LayoutMismatch),
}

impl From<StageError> for ChangeDetectorError {
    fn from(error: StageError) -> Self {
        match error {
            StageError::Write(error) => ChangeDetectorError::Write(error),
            StageError::Layout(mismatch) => ChangeDetectorError::Layout(mismatch),
        }
    }
}

/// Runs change-detector until `shutdown` fires, or until the stage cannot go on.
pub async fn run(
    config: ChangeDetectorConfig,
    shutdown: Shutdown,
) -> Result<(), ChangeDetectorError> {
    let required = |t: &TopicNames| {
        vec![
            t.snapshots.clone(),
            t.state.clone(),
            t.changes.clone(),
            t.rejects.clone(),
        ]
    };
    let Some(runtime) =
        ServiceRuntime::start_verified(SERVICE, config.common(), required, &shutdown).await?
    else {
        return Ok(());
    };
    let Some(dataset) = runtime
        .load_dataset(&config.detector.dataset_mapping, &shutdown)
        .await?
    else {
        runtime.stop().await;
        return Ok(());
    };
    let metrics = runtime.register_metrics(DetectorMetrics::register)?;
    let guarantee = runtime.pipeline.processing_guarantee;
    // KIP-447: fencing follows the consumer group generation, so the id only has to be stable
    // per running instance.
    let transactional_id = format!(
        "{}.{SERVICE}.{}",
        runtime.pipeline.name,
        runtime.pipeline.instance_id()
    );
    let writer = runtime.connect_writer(guarantee, transactional_id).await?;
    let reader = StateReader {
        reader: TopicReader::new(&runtime.kafka, SERVICE, guarantee).map_err(|source| {
            RuntimeError::Kafka {
                context: "create the state reader",
                source,
            }
        })?,
        topic: runtime.topics.state.clone(),
        schemas: runtime.schemas.clone(),
        timeout: runtime.kafka.request_timeout(),
        partitions: runtime.partitions_of(&runtime.topics.snapshots),
    };
    let detector = Detector::new(
        Decider::new(dataset.clone(), runtime.schemas.clone()),
        Partitions::new(reader, metrics.clone(), runtime.readiness.clone()),
        Batch::new(writer, runtime.topics.clone(), &config.detector),
        Envelopes::new(runtime.schemas.clone(), dataset.clone()).map_err(RuntimeError::from)?,
        config.detector.clone(),
        metrics,
    );
    let context = DetectorContext::new(detector);
    let lag_interval_ms = config.detector.lag_interval_ms.to_string();
    let consumer = runtime.subscribe(&runtime.topics.snapshots, context.clone(), |settings| {
        // Lag comes from librdkafka's statistics, at this interval.
        settings.set("statistics.interval.ms", lag_interval_ms);
    })?;
    runtime.readiness.set(CONNECTED, true);
    let drain = runtime.drain;
    let stage = StageThread::spawn(SERVICE, move |stop| {
        let mut stage = DetectorStage::new(context);
        consume_until_stopped(consumer, &mut stage, stop, drain);
        stage.finish(drain).map_err(ChangeDetectorError::from)
    })?;
    runtime.serve(shutdown, stage).await
}
