//! Reading the pipeline's topics for people: every message decoded to JSON by the schema its
//! own header names (`tail`), one record's life across the topics (`trace`), and the
//! operator commands' shared plumbing.
//!
//! **Health data stays redacted unless asked for.** A dataset record — a value on `snapshots`,
//! the record inside a change event or a dead letter — shows its field names with every value
//! replaced by `"redacted"`; a rejected row's raw line and a dead letter's response excerpt
//! (an API may echo the case back) likewise. `--show-values` lifts it, for an operator
//! entitled to see the data. Record keys, hashes, file names and line numbers are printed:
//! they are what logs carry too.
//!
//! Decoding here is generic (apache-avro's `Value`, the writer schema found by the payload's
//! fingerprint): slower than the services' typed codecs, which does not matter for a command,
//! and it reads every record kind, including dataset schemas it has never been told about.

use std::fmt;

use apache_avro::types::Value;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use serde_json::{json, Map, Value as Json};

use crate::avro::{hex, AvroError, MessageLocation, SchemaStore};
use crate::records::{
    AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt, DetectorState, FileLedgerEntry,
    RejectedRow, SnapshotEnd, StaleSnapshot, StateLayout, StreamProgress,
};
use crate::topics::TopicNames;

mod tail;
pub mod trace;

pub use tail::{tail, TailFrom, TailOptions};

/// What a redacted value reads as.
pub const REDACTED: &str = "redacted";

/// Whether values of health data are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Values {
    /// Field names only; every value of health data reads `"redacted"` (the default).
    #[default]
    Redacted,
    /// Everything, as written (`--show-values`).
    Shown,
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The topic named on the command line is none of the pipeline's.
    #[error("unknown topic {given:?}: expected one of snapshots, files, rejects, state, changes, deliveries, dead-letters (or a full topic name of this pipeline: {known})")]
    UnknownTopic {
        /// What was given.
        given: String,
        /// The pipeline's topic names.
        known: String,
    },
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

pub(crate) fn failed(
    context: &'static str,
) -> impl FnOnce(rdkafka::error::KafkaError) -> InspectError {
    move |source| InspectError::Kafka { context, source }
}

/// The pipeline topic `name` stands for: a logical name (`changes`, `dead-letters`, …) or the
/// full name of one of the pipeline's topics.
pub fn resolve_topic(topics: &TopicNames, name: &str) -> Result<String, InspectError> {
    let all = [
        ("snapshots", &topics.snapshots),
        ("files", &topics.files),
        ("rejects", &topics.rejects),
        ("state", &topics.state),
        ("changes", &topics.changes),
        ("deliveries", &topics.deliveries),
        ("dead-letters", &topics.dead_letters),
    ];
    all.iter()
        .find(|(logical, full)| *logical == name || full.as_str() == name)
        .map(|(_, full)| full.to_string())
        .ok_or_else(|| InspectError::UnknownTopic {
            given: name.to_string(),
            known: all
                .iter()
                .map(|(_, full)| full.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The record kinds snapfeed defines. Every other schema is a dataset's: health data.
const SNAPFEED_KINDS: [&str; 10] = [
    ChangeEvent::SCHEMA,
    DeadLetter::SCHEMA,
    DeliveryReceipt::SCHEMA,
    DetectorState::SCHEMA,
    FileLedgerEntry::SCHEMA,
    RejectedRow::SCHEMA,
    SnapshotEnd::SCHEMA,
    StaleSnapshot::SCHEMA,
    StateLayout::SCHEMA,
    StreamProgress::SCHEMA,
];

/// A value decoded for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Full name of the writer schema.
    pub schema: String,
    /// The value as JSON, health data redacted unless [`Values::Shown`].
    pub value: Json,
}

/// Decodes any single-object payload the pipeline writes, by its writer schema.
pub fn decode(
    schemas: &SchemaStore,
    payload: &[u8],
    location: &MessageLocation,
    values: Values,
) -> Result<Decoded, AvroError> {
    let (writer, fields) = writer_and_fields(schemas, payload, location)?;
    // The dataset a change event or dead letter nests (composed schemas only).
    let dataset = writer
        .dataset
        .as_ref()
        .map_or("", |dataset| dataset.name.as_str());
    let schema = writer.name.clone();
    let value = match schema.as_str() {
        ChangeEvent::SCHEMA => change_event(schemas, fields, dataset, location, values),
        DeadLetter::SCHEMA => dead_letter(schemas, fields, dataset, location, values),
        RejectedRow::SCHEMA => object(fields, |name| {
            values == Values::Redacted && name == "raw_line"
        }),
        kind if SNAPFEED_KINDS.contains(&kind) => object(fields, |_| false),
        _ => object(fields, |_| values == Values::Redacted),
    };
    Ok(Decoded { schema, value })
}

/// A record payload's schema name and top-level fields, as written.
pub fn decode_fields(
    schemas: &SchemaStore,
    payload: &[u8],
    location: &MessageLocation,
) -> Result<(String, Vec<(String, Value)>), AvroError> {
    writer_and_fields(schemas, payload, location)
        .map(|(writer, fields)| (writer.name.clone(), fields))
}

/// A writer schema and the top-level fields it wrote.
type WriterFields<'s> = (
    &'s std::sync::Arc<crate::avro::LoadedSchema>,
    Vec<(String, Value)>,
);

/// A record payload's writer schema and top-level fields, as written.
fn writer_and_fields<'s>(
    schemas: &'s SchemaStore,
    payload: &[u8],
    location: &MessageLocation,
) -> Result<WriterFields<'s>, AvroError> {
    let (writer, mut datum) = schemas.split(payload, location)?;
    match apache_avro::from_avro_datum(writer.parsed(), &mut datum, None) {
        Ok(Value::Record(fields)) => Ok((writer, fields)),
        Ok(_) | Err(_) => Err(AvroError::Corrupt {
            location: location.clone(),
            detail: format!("{} bytes do not decode as {}", payload.len(), writer.name),
        }),
    }
}

fn object(fields: Vec<(String, Value)>, redact: impl Fn(&str) -> bool) -> Json {
    let mut out = Map::new();
    for (name, value) in fields {
        let json = if redact(&name) {
            Json::from(REDACTED)
        } else {
            to_json(value)
        };
        out.insert(name, json);
    }
    Json::Object(out)
}

/// The nested single-object payload in field `name` of a record (`None` when null or absent).
fn nested_bytes(fields: &[(String, Value)], name: &str) -> Option<Vec<u8>> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| match v {
            Value::Bytes(bytes) => Some(bytes.clone()),
            Value::Union(_, inner) => match &**inner {
                Value::Bytes(bytes) => Some(bytes.clone()),
                _ => None,
            },
            _ => None,
        })
}

fn nested(
    schemas: &SchemaStore,
    bytes: Option<Vec<u8>>,
    location: &MessageLocation,
    values: Values,
) -> Json {
    match bytes {
        None => Json::Null,
        Some(bytes) if bytes.is_empty() => Json::Null,
        Some(bytes) => match decode(schemas, &bytes, location, values) {
            Ok(decoded) => json!({ "schema": decoded.schema, "fields": decoded.value }),
            Err(error) => json!({ "error": error.to_string() }),
        },
    }
}

fn change_event(
    schemas: &SchemaStore,
    mut fields: Vec<(String, Value)>,
    dataset: &str,
    location: &MessageLocation,
    values: Values,
) -> Json {
    // v2 nests the record as a typed record; v1 held its single-object bytes.
    let record = match take_nested_record(&mut fields, "record") {
        Some(inner) => json!({
            "schema": dataset,
            "fields": object(inner, |_| values == Values::Redacted),
        }),
        None => nested(schemas, nested_bytes(&fields, "record"), location, values),
    };
    let mut out = object(fields, |_| false);
    out["record"] = record;
    out
}

fn dead_letter(
    schemas: &SchemaStore,
    mut fields: Vec<(String, Value)>,
    dataset: &str,
    location: &MessageLocation,
    values: Values,
) -> Json {
    let change = nested(schemas, nested_bytes(&fields, "change"), location, values);
    let event = take_nested_record(&mut fields, "event")
        .map(|inner| change_event(schemas, inner, dataset, location, values));
    let mut out = object(fields, |name| {
        values == Values::Redacted && name == "response_excerpt"
    });
    out["change"] = change;
    if let Some(event) = event {
        out["event"] = event;
    }
    out
}

/// The dataset record's fields in a change event payload, either shape (v2 nests the record,
/// v1 held its single-object bytes); `None` for DELETE or when it does not decode.
pub(crate) fn change_record_fields(
    schemas: &SchemaStore,
    payload: &[u8],
    location: &MessageLocation,
) -> Option<Vec<(String, Value)>> {
    let (_, mut fields) = decode_fields(schemas, payload, location).ok()?;
    if let Some(record) = take_nested_record(&mut fields, "record") {
        return Some(record);
    }
    let bytes = nested_bytes(&fields, "record")?;
    decode_fields(schemas, &bytes, location)
        .ok()
        .map(|(_, fields)| fields)
}

/// Takes the fields of the nested record in field `name` out of `fields` (leaving null);
/// `None` when the field is null, absent or not a record.
fn take_nested_record(fields: &mut [(String, Value)], name: &str) -> Option<Vec<(String, Value)>> {
    let (_, value) = fields.iter_mut().find(|(n, _)| n == name)?;
    let Value::Union(_, inner) = value else {
        return None;
    };
    if !matches!(**inner, Value::Record(_)) {
        return None;
    }
    let Value::Record(inner) = std::mem::replace(&mut **inner, Value::Null) else {
        return None;
    };
    Some(inner)
}

/// An Avro value as JSON: dates and timestamps as ISO 8601 text, bytes as hex.
pub fn to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Long(i) => Json::from(i),
        Value::Float(f) => Json::from(f64::from(f)),
        Value::Double(f) => Json::from(f),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Bytes(bytes) | Value::Fixed(_, bytes) => Json::String(hex(&bytes)),
        Value::Union(_, inner) => to_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Value::Map(map) => Json::Object(map.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Value::Record(fields) => object(fields, |_| false),
        Value::Date(days) => chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
            .map_or(Json::from(days), |d| Json::String(d.to_string())),
        Value::TimestampMillis(ms) => Json::String(millis_text(ms)),
        Value::TimestampMicros(us) => Json::String(millis_text(us / 1000)),
        Value::Uuid(uuid) => Json::String(uuid.to_string()),
        other => Json::String(format!("{other:?}")),
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC text (the number itself if out of range).
pub fn millis_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A message's headers as text (snapfeed's headers are provenance, never record contents).
pub fn headers_json(message: &BorrowedMessage<'_>) -> Json {
    let mut out = Map::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header
                .value
                .map_or(Json::Null, |v| Json::from(String::from_utf8_lossy(v)));
            out.insert(header.key.to_string(), value);
        }
    }
    Json::Object(out)
}

/// One message as a JSON line: where it is, its time, key, headers, schema and value.
pub fn message_json(schemas: &SchemaStore, message: &BorrowedMessage<'_>, values: Values) -> Json {
    let location = MessageLocation::of(message);
    let mut out = json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis().map(millis_text),
        "key": message.key().map(String::from_utf8_lossy),
        "headers": headers_json(message),
    });
    match message.payload() {
        None => out["value"] = Json::Null,
        Some(payload) => match decode(schemas, payload, &location, values) {
            Ok(decoded) => {
                out["schema"] = Json::from(decoded.schema);
                out["value"] = decoded.value;
            }
            Err(error) => out["error"] = Json::from(error.to_string()),
        },
    }
    out
}

/// A header's value as text.
pub fn header<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A short hash for people: the first 12 hex digits.
#[derive(Debug)]
pub struct Short<'a>(pub &'a str);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get(..12).unwrap_or(self.0))
    }
}
