//! Getting the topics right before any work starts: reach the cluster (retrying with backoff
//! while it is unreachable, so a service started before Kafka waits instead of crash-looping),
//! create missing topics when configured, and verify that the required topics exist and that
//! `snapshots`, `state` and `changes` are co-partitioned — fatal otherwise. Metadata calls block,
//! so they run on the blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use super::{CommonSections, RuntimeError, ServiceRuntime};
use crate::kafka::KafkaConfig;
use crate::shutdown::Shutdown;
use crate::topics::{self, TopicError};

impl ServiceRuntime {
    /// Reaches the cluster (retrying while it is unreachable, until `shutdown`), creates missing
    /// topics when `topics.create_missing` is set, and verifies that `required` exist and that
    /// snapshots/state/changes are co-partitioned. Returns partition counts by topic.
    pub async fn ensure_topics(
        &self,
        common: CommonSections<'_>,
        required: &[&str],
        shutdown: &Shutdown,
    ) -> Result<BTreeMap<String, i32>, RuntimeError> {
        let admin = admin_client(common.kafka, self.service)?;
        let all: Vec<String> = self
            .topics
            .specs(common.topics)
            .into_iter()
            .map(|s| s.name)
            .collect();
        let mut counts = wait_for_partition_counts(&admin, common.kafka, &all, shutdown).await?;
        if common.topics.create_missing {
            let created = topics::create_missing(
                &admin,
                &self.topics.specs(common.topics),
                &counts,
                common.topics.replication_factor,
                common.kafka.request_timeout(),
            )
            .await?;
            if !created.is_empty() {
                tracing::info!(message = "Created topics.", topics = ?created);
                counts = wait_for_partition_counts(&admin, common.kafka, &all, shutdown).await?;
            }
        }
        topics::verify(&self.topics, required, &counts)?;
        Ok(counts)
    }
}

/// An admin client (it runs its own background thread).
pub fn admin_client(
    kafka: &KafkaConfig,
    service: &str,
) -> Result<Arc<AdminClient<DefaultClientContext>>, RuntimeError> {
    kafka
        .admin_config(service)
        .create()
        .map(Arc::new)
        .map_err(|source| RuntimeError::Kafka {
            context: "admin client",
            source,
        })
}

/// Reads partition counts, retrying with capped backoff while the cluster does not answer.
async fn wait_for_partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    kafka: &KafkaConfig,
    topics: &[String],
    shutdown: &Shutdown,
) -> Result<BTreeMap<String, i32>, RuntimeError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match fetch_partition_counts(admin, kafka, topics).await {
            Ok(counts) => return Ok(counts),
            Err(error) if error.is_retryable() && !shutdown.is_triggered() => {
                tracing::warn!(message = "Kafka not reachable yet; retrying.", %error, retry_in_ms = delay.as_millis() as u64);
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Err(RuntimeError::Interrupted),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// One metadata round trip, off the async workers.
pub async fn fetch_partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, TopicError> {
    let timeout = kafka.request_timeout();
    let bootstrap = kafka.bootstrap_servers.clone();
    // Metadata requests block: run on the blocking pool, never on an async worker.
    let admin = Arc::clone(admin);
    let topics = topics.to_vec();
    let joined = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(None, timeout)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        Ok::<_, rdkafka::error::KafkaError>(topics::partition_counts(&metadata, &names))
    })
    .await;
    match joined {
        Ok(Ok(counts)) => Ok(counts),
        Ok(Err(source)) => Err(TopicError::Metadata { bootstrap, source }),
        Err(_) => Err(TopicError::Metadata {
            bootstrap,
            source: rdkafka::error::KafkaError::Canceled,
        }),
    }
}
