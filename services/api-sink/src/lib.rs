//! api-sink — the **sink** stage: delivers every change to the case API in order per key, committing the consumer offset only after delivery (see DESIGN § api-sink).
//!
//! - [`config`]: `[sink]` — API, profile, auth, limits, retry.
//! - `consume`: the consumer thread — route each change to its lane, commit the done prefix,
//!   back-pressure on the lanes' backlog.
//! - [`deliver`]: lanes, attempts, dead letters, receipts — the offset is the retry state.
//! - [`request`]: a change → an HTTP request (json, CommCare Case API v2, template), with its
//!   Idempotency-Key.
//! - [`auth`]: API key, bearer, basic, OAuth2 client credentials (cached, refreshed).
//! - [`retry`]: classification, the retry decision, backoff with full jitter, retry budget,
//!   global breaker.
//! - [`throttle`]: the API host's rate controller, shared by every lane — the pause after a
//!   429/503 (`Retry-After`), the adaptive in-flight limit (AIMD), the token bucket.
//! - [`offsets`]: the committable contiguous prefix per partition.
//! - [`receipts`]: on assignment, what an earlier run already delivered past the committed
//!   offset (not sent again); the replay markers that void it for a replayed range.
//! - [`redrive`]: dead letters back onto `changes`.
//! - [`metrics`]: the `snapfeed_api_sink_…` metrics.
//!
//! [`run`] starts in the runtime's frame: it consumes `changes` on a dedicated thread (every
//! librdkafka call blocks that thread only) and hands each change to its lane on the async
//! runtime; receipts and dead letters go through the runtime's writer.

pub mod auth;
pub mod config;
mod consume;
pub mod deliver;
pub mod metrics;
pub mod offsets;
mod preflight;
pub mod receipts;
pub mod redrive;
pub mod request;
pub mod retry;
pub mod throttle;

use std::sync::Arc;

use snapfeed_runtime::kafka::{
    consume_until_stopped, ProcessingGuarantee, TopicReader, WriteError,
};
use snapfeed_runtime::service::{
    HasCommonSections, RuntimeError, ServiceRuntime, StageThread, CONNECTED,
};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::ApiSinkConfig;
use consume::{SinkContext, SinkStage};
use deliver::{Sink, SinkParts};

/// The service name: metric prefix, client id, consumer group suffix.
pub const SERVICE: &str = "api-sink";

/// Why api-sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiSinkError {
    /// The frame failed: config, schemas, dataset, endpoint, topics, cluster, metrics, thread.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The request profile cannot be set up (e.g. a template that does not render).
    #[error(transparent)]
    Request(#[from] request::SetupError),
    /// A secret or setting is wrong.
    #[error(transparent)]
    Config(#[from] snapfeed_runtime::config::ConfigError),
    /// The HTTP client cannot be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// Receipts or dead letters cannot be written, and retrying cannot help (the record is too
    /// large for the cluster, not authorised, or no producer can be set up). What was not
    /// recorded is delivered again after a restart.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Runs api-sink until `shutdown` fires (or it cannot go on).
pub async fn run(config: ApiSinkConfig, shutdown: Shutdown) -> Result<(), ApiSinkError> {
    let required = |t: &TopicNames| {
        vec![
            t.changes.clone(),
            t.deliveries.clone(),
            t.dead_letters.clone(),
        ]
    };
    let Some(runtime) =
        ServiceRuntime::start_verified(SERVICE, config.common(), required, &shutdown).await?
    else {
        return Ok(());
    };
    let Some(dataset) = runtime
        .load_dataset(&config.sink.dataset_mapping, &shutdown)
        .await?
    else {
        runtime.stop().await;
        return Ok(());
    };
    let metrics = runtime.register_metrics(metrics::SinkMetrics::register)?;
    let builder = request::RequestBuilder::new(&config.sink, &config.pipeline.name, &dataset)?;
    let auth = auth::Authenticator::new(&config.sink.auth, config.sink.request_timeout())?;
    // Receipts and dead letters: acknowledged before an offset moves. Not transactional: the
    // HTTP call cannot join a Kafka transaction anyway.
    let writer = runtime
        .connect_writer(
            ProcessingGuarantee::AtLeastOnce,
            format!(
                "{}.{SERVICE}.{}",
                config.pipeline.name,
                config.pipeline.instance_id()
            ),
        )
        .await?;
    // Receipts land on the `deliveries` partition of their change's partition only when the
    // two topics have the same partition count; otherwise they are not consulted.
    let co_partitioned = runtime.partitions_of(&runtime.topics.changes)
        == runtime.partitions_of(&runtime.topics.deliveries);
    let receipts = if co_partitioned {
        let reader = TopicReader::new(&runtime.kafka, SERVICE, ProcessingGuarantee::AtLeastOnce)
            .map_err(|source| RuntimeError::Kafka {
                context: "create the receipt reader",
                source,
            })?;
        Some(receipts::ReceiptReader::new(
            reader,
            runtime.topics.deliveries.clone(),
            runtime.schemas.clone(),
        ))
    } else {
        tracing::warn!(
            message = "changes and deliveries have different partition counts: receipts are not read back on assignment, so changes delivered just before a crash are sent again after it.",
            changes = runtime.partitions_of(&runtime.topics.changes),
            deliveries = runtime.partitions_of(&runtime.topics.deliveries)
        );
        None
    };
    let sink = Arc::new(Sink::new(SinkParts {
        receipts,
        config: config.sink.clone(),
        pipeline: config.pipeline.name.clone(),
        topics: runtime.topics.clone(),
        dataset,
        schemas: runtime.schemas.clone(),
        builder,
        auth,
        writer,
        metrics,
        readiness: runtime.readiness.clone(),
    })?);
    let topic = runtime.topics.changes.clone();
    let context = SinkContext::new(
        sink.clone(),
        topic.clone(),
        runtime.drain,
        runtime.kafka.request_timeout(),
    );
    let lag_interval_ms = config.sink.lag_interval_ms.to_string();
    let consumer = runtime.subscribe(&topic, context, |settings| {
        // Lag per partition comes from librdkafka's statistics, at this interval.
        settings.set("statistics.interval.ms", lag_interval_ms);
    })?;
    runtime.readiness.set(CONNECTED, true);
    let drain = runtime.drain;
    let stage = StageThread::spawn("api-sink-consumer", move |stop| {
        let mut stage = SinkStage::new(sink.clone(), topic);
        consume_until_stopped(consumer, &mut stage, stop, drain);
        match sink.take_fatal() {
            Some(error) => Err(ApiSinkError::Write(error)),
            None => Ok(()),
        }
    })?;
    runtime.serve(shutdown, stage).await
}
