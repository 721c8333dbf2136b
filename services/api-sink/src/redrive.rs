//! Redrive: dead letters back onto `changes`, once their cause is fixed.
//!
//! Reads `dead-letters` from the beginning to its end, picks the letters matching the
//! filters (dead-lettered at or after `--since`, with `--status`), and re-publishes each
//! letter's original change to `changes` (same key, so the same partition and lane) with the
//! redrive count in a header. A letter is skipped when a newer version of its key has been
//! delivered since (read from `deliveries`): sending an older version after a newer one would
//! overwrite the case with stale data. Prints what it redrove and skipped.
//!
//! Guarantee: at least once. The changes are written through a
//! [`GuaranteedWriter`] and the redrive reports success only once every one is acknowledged;
//! a failed or interrupted redrive can be run again — a letter redriven twice reaches the API
//! with the same Idempotency-Key (and one whose key has moved on since is skipped).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::Message;
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::kafka::{
    GuaranteedWriter, KafkaConfig, OutgoingRecord, ProcessingGuarantee, TopicReader, WriteError,
};
use snapfeed_runtime::records::{AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt};
use snapfeed_runtime::topics::TopicNames;

use crate::deliver::REDRIVE_COUNT_HEADER;

/// Which dead letters to redrive.
#[derive(Debug, Clone, Default)]
pub struct RedriveFilter {
    /// Only letters dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only letters whose last status is this one.
    pub status: Option<i32>,
    /// Only letters of this reason.
    pub reason: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Letters re-published.
    pub redriven: usize,
    /// Letters left alone: a newer version of the key was delivered since.
    pub superseded: usize,
    /// Letters not matching the filter.
    pub filtered_out: usize,
    /// Letters whose change is undecodable (reason `undecodable`) — redriving cannot help.
    pub undecodable: usize,
}

impl std::fmt::Display for RedriveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redriven {}, skipped as superseded {}, not matching {}, undecodable {}",
            self.redriven, self.superseded, self.filtered_out, self.undecodable
        )
    }
}

/// Why a redrive failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// Reading `deliveries`, `dead-letters` or `changes` failed.
    #[error("kafka {context}: {source}")]
    Read {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// The redriven changes could not be written (or acknowledged): run it again — a change
    /// redriven twice is delivered with the same Idempotency-Key.
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn failed(context: &'static str) -> impl FnOnce(KafkaError) -> RedriveError {
    move |source| RedriveError::Read { context, source }
}

/// Redrives the matching dead letters (blocking).
pub fn redrive(
    kafka: &KafkaConfig,
    guarantee: ProcessingGuarantee,
    topics: &TopicNames,
    schemas: &SchemaStore,
    filter: &RedriveFilter,
) -> Result<RedriveReport, RedriveError> {
    let reader =
        TopicReader::new(kafka, "api-sink-redrive", guarantee).map_err(failed("reader"))?;
    let read_all = |topic: &str, each: &mut dyn FnMut(&BorrowedMessage<'_>)| {
        reader
            .read_all(topic, each)
            .map(|_| ())
            .map_err(failed("read"))
    };
    let location = |topic: &str, m: &rdkafka::message::BorrowedMessage<'_>| MessageLocation {
        topic: topic.to_string(),
        partition: m.partition(),
        offset: m.offset(),
    };
    let mut delivered: HashMap<String, i64> = HashMap::new();
    read_all(&topics.deliveries, &mut |m| {
        if let Some(Ok(receipt)) = m.payload().map(|p| {
            schemas.decode::<DeliveryReceipt>(
                p,
                DeliveryReceipt::SCHEMA,
                &location(&topics.deliveries, m),
            )
        }) {
            let newest = delivered.entry(receipt.key).or_insert(receipt.version);
            *newest = (*newest).max(receipt.version);
        }
    })?;
    let mut letters = Vec::new();
    read_all(&topics.dead_letters, &mut |m| {
        if let Some(Ok(letter)) = m.payload().map(|p| {
            schemas.decode::<DeadLetter>(p, DeadLetter::SCHEMA, &location(&topics.dead_letters, m))
        }) {
            letters.push(letter);
        }
    })?;

    // A newer version still waiting on `changes` (not yet delivered) supersedes a letter too:
    // redriving the old one behind it would leave the API on the older version.
    let wanted: std::collections::HashSet<&str> =
        letters.iter().filter_map(|l| l.key.as_deref()).collect();
    let mut pending: HashMap<String, i64> = HashMap::new();
    read_all(&topics.changes, &mut |m| {
        let Some(Ok(key)) = m.key().map(std::str::from_utf8) else {
            return;
        };
        if !wanted.contains(key) {
            return;
        }
        if let Some(Ok(change)) = m.payload().map(|p| {
            schemas.decode::<ChangeEvent>(p, ChangeEvent::SCHEMA, &location(&topics.changes, m))
        }) {
            let newest = pending.entry(change.key).or_insert(change.version);
            *newest = (*newest).max(change.version);
        }
    })?;

    // at_least_once: a redrive is not part of a transaction; acknowledged before it reports.
    let writer = GuaranteedWriter::connect(
        kafka,
        "api-sink-redrive",
        ProcessingGuarantee::AtLeastOnce,
        "api-sink-redrive",
    )?;
    let mut report = RedriveReport::default();
    for letter in letters {
        let matches = filter
            .since
            .is_none_or(|since| letter.dead_lettered_at >= since.timestamp_millis())
            && filter
                .status
                .is_none_or(|status| letter.status == Some(status))
            && filter
                .reason
                .as_deref()
                .is_none_or(|reason| letter.reason == reason);
        if !matches {
            report.filtered_out += 1;
            continue;
        }
        let (Some(key), Some(version)) = (&letter.key, letter.version) else {
            report.undecodable += 1;
            continue;
        };
        if delivered.get(key).is_some_and(|newest| *newest >= version)
            || pending.get(key).is_some_and(|newest| *newest > version)
        {
            report.superseded += 1;
            continue;
        }
        let count = (letter.redrive_count + 1).to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: REDRIVE_COUNT_HEADER,
            value: Some(count.as_bytes()),
        });
        writer.send(
            OutgoingRecord::new(&topics.changes, key.as_bytes(), &letter.change).headers(headers),
        )?;
        report.redriven += 1;
    }
    writer.acknowledge()?;
    tracing::info!(
        message = "Redrive done.",
        redriven = report.redriven,
        superseded = report.superseded,
        filtered_out = report.filtered_out
    );
    Ok(report)
}
