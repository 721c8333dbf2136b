//! api-sink — the **sink** stage: delivers every change to the case API in order per key, committing the consumer offset only after delivery (see DESIGN § api-sink).
//!
//! - [`config`]: `[sink]` — API, profile, auth, limits, retry.
//! - [`request`]: a change → an HTTP request (json, CommCare Case API v2, template), with its
//!   Idempotency-Key.
//! - [`auth`]: API key, bearer, basic, OAuth2 client credentials (cached, refreshed).
//! - [`retry`]: transient or permanent, backoff with full jitter, retry budget, global breaker.
//! - [`deliver`]: lanes, retries, dead letters, receipts — the offset is the retry state.
//! - [`offsets`]: the committable contiguous prefix per partition.
//! - [`redrive`]: dead letters back onto `changes`.
//! - [`metrics`]: the `snapfeed_api_sink_…` metrics.
//!
//! [`run`] consumes `changes` on a dedicated thread (every librdkafka call blocks that thread
//! only) and hands each change to its lane on the async runtime. Offsets are committed
//! asynchronously as the done prefix grows, synchronously on revoke and at shutdown.

pub mod auth;
pub mod config;
pub mod deliver;
pub mod metrics;
pub mod offsets;
pub mod redrive;
pub mod request;
pub mod retry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use snapfeed_runtime::client_log::{self, ClientLog};
use snapfeed_runtime::dataset::{DatasetError, DatasetMapping};
use snapfeed_runtime::kafka::{close_consumer, ProcessingGuarantee};
use snapfeed_runtime::service::{HasCommonSections, RuntimeError, ServiceRuntime};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::ApiSinkConfig;
use deliver::{Incoming, Sink, SinkParts};

/// The service name: metric prefix, client id, consumer group suffix.
pub const SERVICE: &str = "api-sink";

/// Changes routed and not yet finished above which the consumer stops taking more.
const BACKLOG_LIMIT: usize = 20_000;
/// Longest gap between two polls while the backlog is full (well below max.poll.interval.ms).
const MAX_POLL_GAP: Duration = Duration::from_secs(60);

/// Why api-sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiSinkError {
    /// Start-up failed (config, schemas, endpoint, topics, cluster).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The dataset mapping is wrong.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The request profile cannot be set up (e.g. a template that does not render).
    #[error(transparent)]
    Request(#[from] request::SetupError),
    /// A secret or setting is wrong.
    #[error(transparent)]
    Config(#[from] snapfeed_runtime::config::ConfigError),
    /// The HTTP client cannot be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
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

/// The consumer context: on revoke, waits for in-progress deliveries and commits what is
/// done before the partitions go; on assign, starts a new generation for each partition.
pub struct SinkContext {
    sink: Arc<Sink>,
    topic: String,
    drain: Duration,
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        client_log::forward_log("consumer", level, facility, line);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_log::forward_error("consumer", &error, reason);
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            self.sink.revoke(&partitions, self.drain);
            commit(consumer, &self.sink, &self.topic, CommitMode::Sync);
            self.sink.forget(&partitions);
            tracing::info!(message = "Partitions revoked.", partitions = ?partitions);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if result.is_ok() {
            let confirmed: Vec<(i32, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(offset) => Some((e.partition(), offset)),
                    _ => None,
                })
                .collect();
            self.sink.committed(&confirmed);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for partition in &partitions {
                self.sink.assigned(*partition);
            }
            tracing::info!(message = "Partitions assigned.", partitions = ?partitions);
        }
    }
}

/// Commits the done prefix of every partition.
fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    sink: &Sink,
    topic: &str,
    mode: CommitMode,
) {
    let offsets = sink.committable();
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in &offsets {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return;
        }
    }
    match consumer.commit(&tpl, mode) {
        // An async commit is only queued here: it is recorded by `commit_callback` once the
        // broker confirms it, so a failed one is offered again.
        Ok(()) if matches!(mode, CommitMode::Sync) => sink.committed(&offsets),
        Ok(()) => {}
        Err(error) => tracing::warn!(message = "Offset commit failed; will retry.", %error),
    }
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
    let dataset = Arc::new(DatasetMapping::load(
        &config.sink.dataset_mapping,
        &runtime.schemas,
    )?);
    let metrics = metrics::SinkMetrics::register(&runtime.registry).map_err(|e| {
        snapfeed_runtime::config::ConfigError::invalid("(metrics)", SERVICE, e.to_string())
    })?;
    let builder = request::RequestBuilder::new(&config.sink, &config.pipeline.name, &dataset)?;
    let auth = auth::Authenticator::new(&config.sink.auth, config.sink.request_timeout())?;
    // Receipts and dead letters: idempotent, acknowledged before an offset moves. Not
    // transactional: the HTTP call cannot join a Kafka transaction anyway.
    let producer: FutureProducer<ClientLog> = config
        .kafka
        .producer_config(SERVICE, ProcessingGuarantee::AtLeastOnce, None)
        .create_with_context(ClientLog::new("producer"))
        .map_err(kafka_error("create producer"))?;
    let sink = Arc::new(Sink::new(SinkParts {
        config: config.sink.clone(),
        pipeline: config.pipeline.name.clone(),
        topics: runtime.topics.clone(),
        dataset,
        schemas: runtime.schemas.clone(),
        builder,
        auth,
        producer,
        metrics,
        readiness: runtime.readiness.clone(),
    })?);
    let group = config.pipeline.group_id(SERVICE);
    let drain = config.shutdown.drain_timeout();
    let topic = runtime.topics.changes.clone();
    let consumer: BaseConsumer<SinkContext> = config
        .kafka
        .consumer_config(SERVICE, &group, config.pipeline.processing_guarantee)
        .create_with_context(SinkContext {
            sink: sink.clone(),
            topic: topic.clone(),
            drain,
        })
        .map_err(kafka_error("create consumer"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(kafka_error("subscribe"))?;
    runtime.readiness.set("connected", true);
    tracing::info!(message = "Consuming.", group = %group, changes = %topic);

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, sink) = (stop.clone(), sink.clone());
        std::thread::Builder::new()
            .name("api-sink-consumer".into())
            .spawn(move || consume(consumer, &sink, &topic, &stop, drain))
            .map_err(|e| {
                snapfeed_runtime::config::ConfigError::invalid("(thread)", SERVICE, e.to_string())
            })?
    };
    shutdown.wait().await;
    runtime.readiness.set("connected", false);
    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || worker.join());
    if tokio::time::timeout(drain + Duration::from_secs(3), joined)
        .await
        .is_err()
    {
        tracing::warn!(message = "Consumer did not stop within the drain bound.");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), runtime.stop()).await;
    Ok(())
}

/// The consumer thread: fetch, route, flow control, commit; then drain and leave the group.
///
/// Flow control is a soft bound on changes routed and not yet finished: above it the thread
/// stops taking messages (librdkafka keeps the group membership alive in the background) and
/// only commits, until the lanes have worked the backlog down. Pausing single partitions was
/// tried first; after a pause/resume cycle on transactional topics fetching did not restart
/// on the in-process broker, so the bound is global — see the README's notes.
fn consume(
    consumer: BaseConsumer<SinkContext>,
    sink: &Arc<Sink>,
    topic: &str,
    stop: &AtomicBool,
    drain: Duration,
) {
    let mut last_commit = Instant::now();
    let mut last_poll = Instant::now();
    let mut last_error: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        // Above the bound, wait — but poll at least every MAX_POLL_GAP so a rebalance is
        // served and the member is not dropped for not polling (max.poll.interval.ms).
        let full = sink.total_backlog() > BACKLOG_LIMIT;
        if full && last_poll.elapsed() < MAX_POLL_GAP {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            last_poll = Instant::now();
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(message)) => sink.route(message.key(), Incoming::from_message(&message)),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => {
                    if last_error.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(message = "Consumer error.", %error);
                        last_error = Some(Instant::now());
                    }
                }
            }
        }
        if last_commit.elapsed() >= Duration::from_millis(200) {
            last_commit = Instant::now();
            commit(&consumer, sink, topic, CommitMode::Async);
            sink.check_reachability();
        }
    }
    // Drain: in-progress deliveries finish (or give up at the bound), what is done is committed.
    sink.stop();
    let deadline = Instant::now() + drain;
    while sink.busy() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    commit(&consumer, sink, topic, CommitMode::Sync);
    if !close_consumer(consumer, drain) {
        tracing::warn!(message = "Consumer did not close within the drain bound.");
    }
}
