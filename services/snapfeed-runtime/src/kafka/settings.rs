//! The `[kafka]` section and the librdkafka settings derived from it: one place decides how
//! producers and consumers are set up for the configured [`ProcessingGuarantee`], so a single
//! setting switches transactions and `read_committed` on or off everywhere.
//!
//! - Producers always use `partitioner=murmur2_random`, the Java client's partitioner, so our
//!   topics co-partition with Kafka Streams / Connect tools a user adds.
//! - Producers are idempotent in both modes; in `exactly_once` they are also transactional.
//! - Consumers never auto-commit and never auto-store offsets: every stage commits only what it
//!   has made durable downstream.
//! - Anything else (security.protocol, sasl.*, ssl.*) passes through `librdkafka_options`, to
//!   every client; a property of one client kind only (a consumer's `fetch.wait.max.ms`, a
//!   producer's `batch.size`) goes in `consumer_options` or `producer_options`, so the other
//!   kind does not warn that it ignores it (librdkafka's `CONFWARN`).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

use super::ProcessingGuarantee;
use crate::config::ConfigError;

/// The `[kafka]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` of the cluster.
    pub bootstrap_servers: String,
    /// Client id reported to the broker; defaults to `snapfeed-<service>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// How long a produced message may wait for acknowledgement before it fails.
    /// Must not exceed `transaction_timeout_ms` (librdkafka's rule).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Broker-side timeout of an open transaction (librdkafka default: 60000).
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Consumer group session timeout (librdkafka default: 45000).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Kafka static membership (KIP-345) for the stages' group consumers: `group.instance.id`
    /// = `<group>.<pipeline.instance_id>`, so an instance restarted under the same id within
    /// `session_timeout_ms` gets its partitions back without a group-wide rebalance. Needs an
    /// instance id that is stable across restarts and unique per instance (a StatefulSet's pod
    /// name, a fixed id): two live instances with the same id fence each other. A static member
    /// that stops does not leave the group: its partitions wait `session_timeout_ms` for it.
    #[serde(default)]
    pub static_membership: bool,
    /// Upper bound for one blocking metadata or coordinator call at start-up and shutdown.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Any librdkafka property, passed through as is (security.protocol, sasl.*, ssl.*, …).
    /// Properties that snapfeed sets itself to keep its guarantees are refused here.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
    /// librdkafka properties for consumers only (group consumers and topic readers), refused
    /// like `librdkafka_options` when snapfeed owns them.
    #[serde(default)]
    pub consumer_options: BTreeMap<String, String>,
    /// librdkafka properties for producers only, refused like `librdkafka_options` when
    /// snapfeed owns them.
    #[serde(default)]
    pub producer_options: BTreeMap<String, String>,
}

fn default_message_timeout_ms() -> u64 {
    // Below the transaction timeout so a stuck message fails the transaction, not the broker's timer.
    30_000
}

fn default_transaction_timeout_ms() -> u64 {
    // librdkafka's default.
    60_000
}

fn default_session_timeout_ms() -> u64 {
    // librdkafka's default.
    45_000
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// `fetch.wait.max.ms` of a [`super::TopicReader`] (librdkafka's default: 500).
const READER_FETCH_WAIT_MS: &str = "10";

/// `fetch.queue.backoff.ms` of every consumer (librdkafka's default: 1000): how long
/// a partition's next fetch waits once its local queue is over `queued.min.messages` /
/// `queued.max.messages.kbytes`. A reader draining its queue in milliseconds (a restore) would
/// otherwise idle up to a second per refill — `cargo bench -p change-detector --bench restore`:
/// 200k state entries on 4 partitions of Tansu restore in 1.17 s with the default, 0.25 s with
/// 10 ms. A stage's group consumer working through a backlog (after a restart, a replay, a
/// deploy) paid it too — `--bench catch_up`: a detector read 500k records of a snapshot on
/// Tansu at 160k/s with the default (1 run), 273k/s (261k–335k, 3 runs) with 10 ms, busy
/// instead of idle. Against a broker slow to answer fetches (Nisshi) the frequent re-checks
/// cost CPU instead (README § Performance); `kafka.consumer_options` can set it back.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Properties snapfeed owns: setting them by pass-through would silently break a guarantee.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    (
        "group.id",
        "each service derives its group from pipeline.name",
    ),
    (
        "transactional.id",
        "derived from the service and its instance",
    ),
    (
        "group.instance.id",
        "set kafka.static_membership instead (derived from pipeline.instance_id)",
    ),
    ("enable.idempotence", "always on"),
    ("isolation.level", "follows pipeline.processing_guarantee"),
    (
        "enable.auto.commit",
        "offsets are committed only after the downstream effect is durable",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after the downstream effect is durable",
    ),
    (
        "partitioner",
        "murmur2_random keeps topics co-partitioned with Java clients",
    ),
];

impl KafkaConfig {
    /// Checks ranges and refuses pass-through properties that snapfeed owns.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "\"\"",
                "a comma-separated list of host:port",
            ));
        }
        for (table, options) in self.option_tables() {
            for (property, why) in OWNED_PROPERTIES {
                if let Some(value) = options.get(*property) {
                    return Err(ConfigError::invalid(
                        format!("kafka.{table}.\"{property}\""),
                        format!("{value:?}"),
                        format!("not set here: {why}"),
                    ));
                }
            }
        }
        if self.message_timeout_ms > self.transaction_timeout_ms {
            return Err(ConfigError::invalid(
                "kafka.message_timeout_ms",
                self.message_timeout_ms,
                format!(
                    "at most kafka.transaction_timeout_ms ({})",
                    self.transaction_timeout_ms
                ),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "kafka.request_timeout_ms",
                0,
                "at least 1",
            ));
        }
        Ok(())
    }

    /// The pass-through tables by their key names.
    fn option_tables(&self) -> [(&'static str, &BTreeMap<String, String>); 3] {
        [
            ("librdkafka_options", &self.librdkafka_options),
            ("consumer_options", &self.consumer_options),
            ("producer_options", &self.producer_options),
        ]
    }

    /// Bound for one blocking call to the cluster.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    fn base(&self, service: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("snapfeed-{service}"));
        config.set("client.id", client_id);
        // librdkafka formats only what the `tracing` filter keeps (see `client_log`).
        config.set_log_level(crate::client_log::log_level());
        set_all(&mut config, &self.librdkafka_options);
        config
    }

    /// A producer for `service`. `transactional_id` is used only in `exactly_once`; it must be
    /// stable across restarts of the same instance so a restarted instance fences its zombie.
    pub fn producer_config(
        &self,
        service: &str,
        guarantee: ProcessingGuarantee,
        transactional_id: Option<&str>,
    ) -> ClientConfig {
        let mut config = self.base(service);
        config
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        if guarantee.is_transactional() {
            if let Some(id) = transactional_id {
                config.set("transactional.id", id).set(
                    "transaction.timeout.ms",
                    self.transaction_timeout_ms.to_string(),
                );
            }
        }
        set_all(&mut config, &self.producer_options);
        config
    }

    /// A group consumer for `service` in `group_id`: manual offset storage and commits, reading
    /// committed data only when the guarantee is transactional.
    pub fn consumer_config(
        &self,
        service: &str,
        group_id: &str,
        guarantee: ProcessingGuarantee,
    ) -> ClientConfig {
        let mut config = self.base(service);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("enable.partition.eof", "true")
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set(
                "isolation.level",
                if guarantee.is_transactional() {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            );
        set_all(&mut config, &self.consumer_options);
        config
    }

    /// A consumer without a group, for reading a compacted topic back (ledger, state): it never
    /// commits, and only sees committed data in `exactly_once`.
    pub fn reader_config(&self, service: &str, guarantee: ProcessingGuarantee) -> ClientConfig {
        let mut config = self.base(service);
        config
            // A group id is required by librdkafka even for assign(); nothing is ever committed.
            .set("group.id", format!("snapfeed-{service}-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            // The read ends at each partition's EOF, which only a fetch past the last record
            // reports: a broker holding that fetch open for the default 500 ms would make every
            // restore pay it (and a rebalance stall for it), whatever the data size.
            .set("fetch.wait.max.ms", READER_FETCH_WAIT_MS)
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set(
                "isolation.level",
                if guarantee.is_transactional() {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            );
        set_all(&mut config, &self.consumer_options);
        config
    }

    /// An admin client config (topic creation and checks).
    pub fn admin_config(&self, service: &str) -> ClientConfig {
        self.base(service)
    }
}

/// Sets every pass-through property of one table.
fn set_all(config: &mut ClientConfig, options: &BTreeMap<String, String>) {
    for (key, value) in options {
        config.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaConfig {
        toml::from_str("bootstrap_servers = \"k:9092\"\n[librdkafka_options]\n\"security.protocol\" = \"SASL_SSL\"\n").unwrap()
    }

    #[test]
    fn producer_uses_java_partitioner_and_transactions_only_in_exactly_once() {
        let kafka = config();
        let eos = kafka.producer_config(
            "file-source",
            ProcessingGuarantee::ExactlyOnce,
            Some("tx-1"),
        );
        assert_eq!(eos.get("partitioner"), Some("murmur2_random"));
        assert_eq!(eos.get("transactional.id"), Some("tx-1"));
        assert_eq!(eos.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(eos.get("client.id"), Some("snapfeed-file-source"));
        let alo = kafka.producer_config(
            "file-source",
            ProcessingGuarantee::AtLeastOnce,
            Some("tx-1"),
        );
        assert_eq!(alo.get("transactional.id"), None);
        assert_eq!(alo.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn consumer_isolation_follows_guarantee_and_never_autocommits() {
        let kafka = config();
        let eos = kafka.consumer_config("api-sink", "g", ProcessingGuarantee::ExactlyOnce);
        assert_eq!(eos.get("isolation.level"), Some("read_committed"));
        assert_eq!(eos.get("enable.auto.commit"), Some("false"));
        assert_eq!(eos.get("enable.auto.offset.store"), Some("false"));
        let alo = kafka.consumer_config("api-sink", "g", ProcessingGuarantee::AtLeastOnce);
        assert_eq!(alo.get("isolation.level"), Some("read_uncommitted"));
    }

    #[test]
    fn owned_properties_are_refused_with_their_key() {
        let mut kafka = config();
        kafka
            .librdkafka_options
            .insert("enable.auto.commit".into(), "true".into());
        let error = kafka.validate().unwrap_err().to_string();
        assert!(
            error.contains("kafka.librdkafka_options.\"enable.auto.commit\""),
            "{error}"
        );
    }

    #[test]
    fn owned_properties_are_refused_in_the_per_kind_tables_too() {
        for table in ["consumer_options", "producer_options"] {
            let kafka: KafkaConfig = toml::from_str(&format!(
                "bootstrap_servers = \"k:9092\"\n[{table}]\n\"isolation.level\" = \"read_uncommitted\"\n"
            ))
            .unwrap();
            let error = kafka.validate().unwrap_err().to_string();
            assert!(
                error.contains(&format!("kafka.{table}.\"isolation.level\"")),
                "{error}"
            );
        }
    }

    #[test]
    fn per_kind_options_reach_only_their_kind_of_client() {
        let kafka: KafkaConfig = toml::from_str(
            "bootstrap_servers = \"k:9092\"\n\
             [librdkafka_options]\n\"security.protocol\" = \"SSL\"\n\
             [consumer_options]\n\"fetch.wait.max.ms\" = \"10\"\n\
             [producer_options]\n\"batch.size\" = \"65536\"\n",
        )
        .unwrap();
        kafka.validate().unwrap();
        let guarantee = ProcessingGuarantee::ExactlyOnce;
        let producer = kafka.producer_config("s", guarantee, Some("tx"));
        let consumer = kafka.consumer_config("s", "g", guarantee);
        let reader = kafka.reader_config("s", guarantee);
        let admin = kafka.admin_config("s");
        for client in [&producer, &consumer, &reader, &admin] {
            assert_eq!(client.get("security.protocol"), Some("SSL"));
        }
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(reader.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(producer.get("batch.size"), Some("65536"));
        for client in [&producer, &admin] {
            assert_eq!(client.get("fetch.wait.max.ms"), None);
        }
        for client in [&consumer, &reader, &admin] {
            assert_eq!(client.get("batch.size"), None);
        }
    }

    #[test]
    fn a_reader_does_not_wait_out_the_fetch_that_reports_the_end() {
        let kafka = config();
        let guarantee = ProcessingGuarantee::AtLeastOnce;
        let reader = kafka.reader_config("s", guarantee);
        let consumer = kafka.consumer_config("s", "g", guarantee);
        assert_eq!(reader.get("fetch.wait.max.ms"), Some(READER_FETCH_WAIT_MS));
        for client in [&reader, &consumer] {
            assert_eq!(
                client.get("fetch.queue.backoff.ms"),
                Some(FETCH_QUEUE_BACKOFF_MS),
                "a drained queue is refilled at once, not after a second"
            );
        }
        // The stage's own consumer keeps librdkafka's long poll: it waits for new records.
        assert_eq!(consumer.get("fetch.wait.max.ms"), None);
    }

    #[test]
    fn message_timeout_must_fit_in_transaction_timeout() {
        let mut kafka = config();
        kafka.message_timeout_ms = 120_000;
        let error = kafka.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.message_timeout_ms"), "{error}");
    }
}
