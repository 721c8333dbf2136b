//! [`WriteError`]: why a write did not become durable, naming the topic/partition of a record or
//! the transaction step, and whether the stage can go on (abort and redo from the last commit)
//! or must stop ([`WriteError::is_fatal`]).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;

/// Why a write did not become durable. Each variant names where: the topic and partition of a
/// record, or the transaction step.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The producer did not take the record (or reported it failed).
    #[error("cannot write to {topic}{}: {source}", partition_suffix(*.partition))]
    Send {
        /// Topic of the record.
        topic: String,
        /// Its partition, when chosen by the stage.
        partition: Option<i32>,
        /// The client error.
        source: KafkaError,
    },
    /// at_least_once: records sent before an acknowledgement point were not acknowledged.
    #[error("{failed} record(s) were not acknowledged by the broker")]
    Unacknowledged {
        /// How many.
        failed: u64,
    },
    /// A transaction step (begin, offsets, commit, abort), a flush, or setting up the producer.
    #[error("cannot {step}: {source}")]
    Step {
        /// What the writer was doing.
        step: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// at_least_once: the consumer offsets could not be committed (the records are durable; the
    /// step will be repeated).
    #[error("cannot commit consumer offsets {offsets}: {source}")]
    Offsets {
        /// `topic[partition]@offset, …`.
        offsets: String,
        /// The client error.
        source: KafkaError,
    },
    /// Another producer with the same transactional id took over. Fatal: the stage stops.
    #[error("fenced: another instance took over transactional id {transactional_id} ({source}); this one must stop")]
    Fenced {
        /// The contested id.
        transactional_id: String,
        /// The client error.
        source: KafkaError,
    },
    /// The producer failed fatally and no new one could be set up. Fatal: the stage stops.
    #[error("the producer failed fatally and cannot be replaced: {source}")]
    Unrecoverable {
        /// Why the replacement failed.
        source: KafkaError,
    },
}

fn partition_suffix(partition: Option<i32>) -> String {
    partition.map(|p| format!("[{p}]")).unwrap_or_default()
}

impl WriteError {
    /// True when the stage cannot go on: redoing the work would not help (fenced, a producer
    /// that cannot be replaced, a record the cluster will never take).
    pub fn is_fatal(&self) -> bool {
        match self {
            WriteError::Fenced { .. } | WriteError::Unrecoverable { .. } => true,
            WriteError::Send { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                )
            ),
            _ => false,
        }
    }

    /// True when aborting and redoing the work from the last commit can succeed.
    pub fn is_retryable(&self) -> bool {
        !self.is_fatal()
    }
}

pub(super) fn step(step: &'static str) -> impl FnOnce(KafkaError) -> WriteError {
    move |source| WriteError::Step { step, source }
}

/// `topic[partition]@offset, …` of an offset list, for error messages.
pub(crate) fn describe_offsets(offsets: &TopicPartitionList) -> String {
    offsets
        .elements()
        .iter()
        .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_topic_and_partition() {
        let error = WriteError::Send {
            topic: "lab-results.changes".into(),
            partition: Some(3),
            source: KafkaError::Canceled,
        };
        assert!(error
            .to_string()
            .starts_with("cannot write to lab-results.changes[3]:"));
        assert!(error.is_retryable());
    }

    #[test]
    fn fenced_and_unrecoverable_are_fatal_the_rest_retryable() {
        let fenced = WriteError::Fenced {
            transactional_id: "p.change-detector.0".into(),
            source: KafkaError::Canceled,
        };
        assert!(fenced.is_fatal());
        assert!(fenced.to_string().contains("p.change-detector.0"));
        assert!(WriteError::Unrecoverable {
            source: KafkaError::Canceled
        }
        .is_fatal());
        assert!(WriteError::Unacknowledged { failed: 2 }.is_retryable());
        let too_large = WriteError::Send {
            topic: "t".into(),
            partition: None,
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        };
        assert!(too_large.is_fatal(), "the cluster will never take it");
    }
}
