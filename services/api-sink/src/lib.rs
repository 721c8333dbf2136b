//! api-sink — the **sink** stage: delivers every change to the case API in order per key, committing the consumer offset only after delivery (see DESIGN § api-sink).
//!
//! This crate is the library; `main.rs` is the thin binary. [`run`] starts the service frame
//! (schemas, `/metrics`, `/healthz`, `/readyz`), verifies its topics (refusing to start when
//! snapshots/state/changes are not co-partitioned), creates its consumer (group
//! `<pipeline>.api-sink`, manual offsets) and producer, proves the cluster answers, and serves until
//! shutdown; then it closes both clients explicitly within the drain bound.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use snapfeed_runtime::kafka::{close_consumer, run_blocking};
use snapfeed_runtime::service::{HasCommonSections, RuntimeError, ServiceRuntime};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::ApiSinkConfig;

/// The service name: metric prefix, client id, consumer group suffix.
pub const SERVICE: &str = "api-sink";

/// Why api-sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiSinkError {
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

fn kafka_error(context: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> ApiSinkError {
    move |source| ApiSinkError::Kafka { context, source }
}

/// Runs api-sink until `shutdown` fires.
pub async fn run(config: ApiSinkConfig, mut shutdown: Shutdown) -> Result<(), ApiSinkError> {
    let common = config.common();
    let required = |t: &TopicNames| {
        vec![
            t.changes.clone(),
            t.deliveries.clone(),
            t.dead_letters.clone(),
        ]
    };
    let Some(runtime) =
        ServiceRuntime::start_verified(SERVICE, common, required, &shutdown).await?
    else {
        return Ok(());
    };
    let guarantee = config.pipeline.processing_guarantee;
    let group = config.pipeline.group_id(SERVICE);
    let consumer: BaseConsumer = config
        .kafka
        .consumer_config(SERVICE, &group, guarantee)
        .create()
        .map_err(kafka_error("create consumer"))?;
    let consumer = Arc::new(consumer);
    let transactional_id = format!(
        "{}.{SERVICE}.{}",
        config.pipeline.name,
        config.pipeline.instance_id()
    );
    let producer: BaseProducer = config
        .kafka
        .producer_config(SERVICE, guarantee, Some(&transactional_id))
        .create()
        .map_err(kafka_error("create producer"))?;
    let producer = Arc::new(producer);
    let timeout = config.kafka.request_timeout();
    let (c, topic) = (consumer.clone(), runtime.topics.changes.clone());
    run_blocking(move || c.fetch_metadata(Some(&topic), timeout).map(|_| ()))
        .await
        .map_err(kafka_error("consumer metadata"))?;
    if guarantee.is_transactional() {
        let p = producer.clone();
        run_blocking(move || p.init_transactions(timeout))
            .await
            .map_err(kafka_error("init transactions"))?;
    }
    runtime.readiness.set("connected", true);
    tracing::info!(message = "Ready.", service = SERVICE, group = %group);

    shutdown.wait().await;
    runtime.readiness.set("connected", false);
    let drain = config.shutdown.drain_timeout();
    let p = producer.clone();
    if let Err(error) = run_blocking(move || p.flush(drain)).await {
        tracing::warn!(message = "Producer did not flush before the drain bound.", %error);
    }
    drop(producer);
    match Arc::try_unwrap(consumer) {
        Ok(consumer) => {
            let closed = tokio::task::spawn_blocking(move || close_consumer(consumer, drain)).await;
            if !matches!(closed, Ok(true)) {
                tracing::warn!(message = "Consumer did not close within the drain bound.");
            }
        }
        Err(_) => tracing::warn!(message = "Consumer still shared at shutdown; not closed."),
    }
    tokio::time::timeout(Duration::from_secs(5), runtime.stop())
        .await
        .ok();
    Ok(())
}
