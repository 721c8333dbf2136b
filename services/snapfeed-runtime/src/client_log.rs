//! librdkafka's own log lines and error events, forwarded into `tracing` (target `librdkafka`,
//! with the client's role in the service and librdkafka's facility), at librdkafka's level.
//!
//! Without this they went to the `log` crate, which no service installs: a broker restart, a
//! lost group membership or a fatal idempotent-producer error left no trace in the logs.
//! librdkafka logs protocol events — brokers, topics, partitions, offsets, error names — never
//! message keys or payloads, so forwarding them keeps the rule that record contents are never
//! logged. Its `debug` contexts stay off unless an operator sets `kafka.librdkafka_options.debug`.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// The most verbose librdkafka level the installed `tracing` filter lets through for target
/// `librdkafka`, so librdkafka does not format lines that would be dropped.
pub fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

/// One librdkafka log line of `client` (its role: "producer", "consumer", …).
pub fn forward_log(client: &str, level: RDKafkaLogLevel, facility: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, facility, "{line}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", client, facility, "{line}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, facility, "{line}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, facility, "{line}"),
    }
}

/// One librdkafka error event of `client`. Most are transient (a broker went away, all brokers
/// down while one restarts) and librdkafka retries them itself: a warning. A fatal error leaves
/// the client unusable until it is replaced: an error.
pub fn forward_error(client: &str, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::PartitionEOF) {
        // Not an error: end of partition (`enable.partition.eof`), also handed to `poll`.
        return;
    }
    if code == Some(RDKafkaErrorCode::Fatal) {
        tracing::error!(target: "librdkafka", client, %error, reason, "Fatal client error.");
    } else {
        tracing::warn!(target: "librdkafka", client, %error, reason, "Client error.");
    }
}

/// A client context that only forwards logs, for clients without callbacks of their own.
#[derive(Debug, Clone, Copy)]
pub struct ClientLog {
    /// The client's role in the service ("producer", "consumer", "reader", …).
    pub client: &'static str,
}

impl ClientLog {
    /// Logs of the client called `client`.
    pub fn new(client: &'static str) -> ClientLog {
        ClientLog { client }
    }
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        forward_log(self.client, level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(self.client, &error, reason);
    }
}

impl ConsumerContext for ClientLog {}
