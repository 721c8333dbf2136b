//! change-detector — the **filter** stage: keeps per-key state in the compacted `state` topic and emits only new and changed records to `changes`, in Kafka transactions (see DESIGN § change-detector).
//!
//! - [`config`]: `[detector]` — dataset, batch bounds, deletes and their guard, corrupt policy.
//! - [`content_hash`]: what "changed" means (volatile fields and nulls do not count).
//! - [`state`]: per-key state per partition; snapshot generations for deletes.
//! - [`detect`]: the consume → decide → commit loop and its transaction (the guarantee).
//! - [`metrics`]: the `snapfeed_change_detector_…` metrics.
//!
//! [`run`] starts the service frame, verifies co-partitioning, and runs the loop on a dedicated
//! thread until shutdown; then it commits the open batch, leaves the group and flushes, all
//! within the drain bound. Replay (`replay` subcommand) resets the group's offsets; with state
//! intact a replay re-emits nothing, because every record is compared with the state its first
//! pass left behind — re-processing is idempotent by construction.

pub mod config;
pub mod content_hash;
pub mod detect;
pub mod metrics;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use snapfeed_runtime::dataset::{DatasetError, DatasetMapping};
use snapfeed_runtime::kafka::close_consumer;
use snapfeed_runtime::service::{HasCommonSections, RuntimeError, ServiceRuntime};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::ChangeDetectorConfig;

/// The service name: metric prefix, client id, consumer group suffix.
pub const SERVICE: &str = "change-detector";

/// Why change-detector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChangeDetectorError {
    /// Start-up failed (config, schemas, endpoint, topics, cluster).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The dataset mapping is wrong.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
}

fn kafka_error(
    context: &'static str,
) -> impl FnOnce(rdkafka::error::KafkaError) -> ChangeDetectorError {
    move |source| ChangeDetectorError::Kafka { context, source }
}

/// Runs change-detector until `shutdown` fires.
pub async fn run(
    config: ChangeDetectorConfig,
    mut shutdown: Shutdown,
) -> Result<(), ChangeDetectorError> {
    let common = config.common();
    let required = |t: &TopicNames| {
        vec![
            t.snapshots.clone(),
            t.state.clone(),
            t.changes.clone(),
            t.rejects.clone(),
        ]
    };
    let Some(runtime) =
        ServiceRuntime::start_verified(SERVICE, common, required, &shutdown).await?
    else {
        return Ok(());
    };
    let dataset = Arc::new(DatasetMapping::load(
        &config.detector.dataset_mapping,
        &runtime.schemas,
    )?);
    let metrics = metrics::DetectorMetrics::register(&runtime.registry).map_err(|e| {
        RuntimeError::Config(snapfeed_runtime::config::ConfigError::invalid(
            "(metrics)",
            SERVICE,
            e.to_string(),
        ))
    })?;
    let guarantee = config.pipeline.processing_guarantee;
    let group = config.pipeline.group_id(SERVICE);
    let timeout = config.kafka.request_timeout();
    // KIP-447: fencing follows the consumer group generation, so the id only has to be stable
    // per running instance.
    let transactional_id = format!(
        "{}.{SERVICE}.{}",
        config.pipeline.name,
        config.pipeline.instance_id()
    );
    let parts = detect::EngineParts {
        dataset,
        schemas: runtime.schemas.clone(),
        topics: runtime.topics.clone(),
        guarantee,
        config: config.detector.clone(),
        producer_config: config
            .kafka
            .producer_config(SERVICE, guarantee, Some(&transactional_id)),
        reader: config
            .kafka
            .reader_config(SERVICE, guarantee)
            .create()
            .map_err(kafka_error("create state reader"))?,
        metrics,
        readiness: runtime.readiness.clone(),
        timeout,
    };
    let engine = tokio::task::spawn_blocking(move || detect::Engine::new(parts))
        .await
        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
        .map_err(kafka_error("create producer"))?;
    let consumer: BaseConsumer<detect::DetectorContext> = config
        .kafka
        .consumer_config(SERVICE, &group, guarantee)
        // Lag comes from librdkafka's statistics, at this interval.
        .set(
            "statistics.interval.ms",
            config.detector.lag_interval_ms.to_string(),
        )
        .create_with_context(detect::DetectorContext::new())
        .map_err(kafka_error("create consumer"))?;
    let producer = engine.producer();
    consumer.context().install(engine);
    consumer
        .subscribe(&[&runtime.topics.snapshots])
        .map_err(kafka_error("subscribe"))?;
    runtime.readiness.set("connected", true);
    tracing::info!(message = "Consuming.", group = %group, snapshots = %runtime.topics.snapshots);

    let stop = Arc::new(AtomicBool::new(false));
    let drain = config.shutdown.drain_timeout();
    let worker = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("change-detector".into())
            .spawn(move || {
                detect::run_loop(&consumer, &stop);
                // Leaving the group revokes the partitions: the open batch is already committed.
                if !close_consumer(consumer, drain) {
                    tracing::warn!(message = "Consumer did not close within the drain bound.");
                }
                if let Err(error) = producer.flush(drain) {
                    tracing::warn!(message = "Producer did not flush within the drain bound.", %error);
                }
            })
            .map_err(|source| RuntimeError::Config(snapfeed_runtime::config::ConfigError::invalid("(thread)", SERVICE, source.to_string())))?
    };
    shutdown.wait().await;
    runtime.readiness.set("connected", false);
    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || worker.join());
    if tokio::time::timeout(drain + Duration::from_secs(2), joined)
        .await
        .is_err()
    {
        tracing::warn!(message = "Loop did not stop within the drain bound.");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), runtime.stop()).await;
    Ok(())
}
