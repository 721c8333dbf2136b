//! `tail TOPIC [--from earliest|TIME] [--key K] [--limit N] [--show-values]`: a pipeline topic
//! decoded to JSON lines, one per message — topic, partition, offset, timestamp, key, headers,
//! writer schema and value (health data redacted, see [`super`]). Reads from the chosen start
//! to the end the topic had when the read reached it; messages come in offset order within a
//! partition, partitions interleaved.

use std::io::Write;
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use rdkafka::Offset;

use super::{failed, message_json, resolve_topic, InspectError, Values};
use crate::avro::SchemaStore;
use crate::kafka::{KafkaConfig, ProcessingGuarantee, TopicReader};
use crate::topics::TopicNames;

/// Where `tail` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TailFrom {
    /// The first message retained (the default).
    #[default]
    Earliest,
    /// The first message at or after this time (message timestamps).
    Time(DateTime<Utc>),
}

impl std::str::FromStr for TailFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<TailFrom, String> {
        if text == "earliest" {
            return Ok(TailFrom::Earliest);
        }
        DateTime::parse_from_rfc3339(text)
            .map(|time| TailFrom::Time(time.with_timezone(&Utc)))
            .map_err(|error| {
                format!(
                    "{text:?}: {error} (expected `earliest` or an RFC 3339 time such as 2026-12-01T08:00:00Z)"
                )
            })
    }
}

/// What `tail` prints.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// A logical topic name (`changes`, `dead-letters`, …) or a full one.
    pub topic: String,
    /// Where to start.
    pub from: TailFrom,
    /// Only messages with this key.
    pub key: Option<String>,
    /// Stop after this many messages printed.
    pub limit: Option<usize>,
    /// Redacted (default) or shown.
    pub values: Values,
}

/// Writes the chosen messages to `out` as JSON lines; returns how many. Blocking.
pub fn tail(
    kafka: &KafkaConfig,
    guarantee: ProcessingGuarantee,
    topics: &TopicNames,
    schemas: &SchemaStore,
    options: &TailOptions,
    out: &mut impl Write,
) -> Result<usize, InspectError> {
    let topic = resolve_topic(topics, &options.topic)?;
    let reader = TopicReader::new(kafka, "tail", guarantee).map_err(failed("create a reader"))?;
    let partitions = reader
        .partitions(&topic)
        .map_err(failed("read the topic's metadata"))?;
    let beginning = || -> Vec<(i32, Offset)> {
        (0..partitions)
            .map(|partition| (partition, Offset::Beginning))
            .collect()
    };
    let (from, since) = match options.from {
        TailFrom::Earliest => (beginning(), None),
        // Where the broker cannot look offsets up by time, read from the beginning: the time
        // filter below is applied either way.
        TailFrom::Time(time) => {
            let millis = time.timestamp_millis();
            let from = reader
                .offsets_for_time(&topic, millis)
                .ok()
                .filter(|found| found.len() == partitions as usize)
                .map(|found| {
                    found
                        .into_iter()
                        .filter_map(|(partition, offset)| match offset {
                            // No message at or after the time.
                            Offset::End => None,
                            Offset::Offset(_) => Some((partition, offset)),
                            _ => Some((partition, Offset::Beginning)),
                        })
                        .collect()
                })
                .unwrap_or_else(beginning);
            (from, Some(millis))
        }
    };
    if options.limit == Some(0) {
        return Ok(0);
    }
    let mut printed = 0usize;
    let mut output: Result<(), std::io::Error> = Ok(());
    reader
        .read_until(&topic, &from, |message| {
            use rdkafka::Message;
            if let Some(since) = since {
                if message.timestamp().to_millis().is_some_and(|t| t < since) {
                    return ControlFlow::Continue(());
                }
            }
            if let Some(key) = &options.key {
                if message.key() != Some(key.as_bytes()) {
                    return ControlFlow::Continue(());
                }
            }
            let line = message_json(schemas, message, options.values);
            output = writeln!(out, "{line}");
            printed += 1;
            if output.is_err() || options.limit.is_some_and(|limit| printed >= limit) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .map_err(failed("read the topic"))?;
    output?;
    out.flush()?;
    Ok(printed)
}
