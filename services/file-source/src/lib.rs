//! file-source — the **source** stage: snapshot files from an inbox into the `snapshots` topic,
//! exactly once per file (see DESIGN § file-source).
//!
//! This crate is the library; `main.rs` is the thin binary. [`run`] starts the service frame
//! (schemas, `/metrics`, `/healthz`, `/readyz`), verifies its topics, connects its producer
//! (transactional in `exactly_once`, so `init_transactions` also fences a previous incarnation)
//! and serves until shutdown, then closes the producer within the drain bound.

pub mod config;
pub mod convert;

use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer};
use snapfeed_runtime::kafka::run_blocking;
use snapfeed_runtime::service::{HasCommonSections, RuntimeError, ServiceRuntime};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::FileSourceConfig;

/// The service name: metric prefix, client id, consumer group suffix.
pub const SERVICE: &str = "file-source";

/// Why file-source stopped.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// Start-up failed (config, schemas, endpoint, topics, cluster).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
}

/// Runs file-source until `shutdown` fires.
pub async fn run(config: FileSourceConfig, mut shutdown: Shutdown) -> Result<(), FileSourceError> {
    let common = config.common();
    let required = |t: &TopicNames| vec![t.snapshots.clone(), t.files.clone(), t.rejects.clone()];
    let Some(runtime) =
        ServiceRuntime::start_verified(SERVICE, common, required, &shutdown).await?
    else {
        return Ok(());
    };
    let topics = runtime.topics.clone();

    let transactional_id = format!(
        "{}.{SERVICE}.{}",
        config.pipeline.name,
        config.pipeline.instance_id()
    );
    let producer: BaseProducer = config
        .kafka
        .producer_config(
            SERVICE,
            config.pipeline.processing_guarantee,
            Some(&transactional_id),
        )
        .create()
        .map_err(|source| FileSourceError::Kafka {
            context: "create producer",
            source,
        })?;
    let producer = std::sync::Arc::new(producer);
    if config.pipeline.processing_guarantee.is_transactional() {
        let timeout = config.kafka.request_timeout();
        let p = producer.clone();
        run_blocking(move || p.init_transactions(timeout))
            .await
            .map_err(|source| FileSourceError::Kafka {
                context: "init transactions",
                source,
            })?;
    }
    runtime.readiness.set("connected", true);
    tracing::info!(message = "Ready.", service = SERVICE, snapshots = %topics.snapshots);

    shutdown.wait().await;
    runtime.readiness.set("connected", false);
    let drain = config.shutdown.drain_timeout();
    let p = producer.clone();
    if let Err(error) = run_blocking(move || p.flush(drain)).await {
        tracing::warn!(message = "Producer did not flush before the drain bound.", %error);
    }
    // Dropping a flushed producer returns at once; its background threads end with it.
    drop(producer);
    tokio::time::timeout(Duration::from_secs(5), runtime.stop())
        .await
        .ok();
    Ok(())
}
