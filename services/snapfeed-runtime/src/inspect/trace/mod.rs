//! `trace KEY`: one record's life across the pipeline's topics, oldest first.
//!
//! - `snapshots`: each row of the key (file, line, snapshot id, snapshot time) and the
//!   detector's verdict on it — the change it became, `passed over` (its snapshot was late:
//!   a stale-snapshot entry on the partition of `state`), `unchanged` (decided: before
//!   change-detector's committed offset, no change), or not decided yet;
//! - `changes`: each CREATE / UPDATE / DELETE with its version, and which fields changed from
//!   the version before (by name; values only with `--show-values`); repeats of a version (an
//!   at_least_once detector's) and redriven copies are marked;
//! - `state`: the detector's entries for the key (the compacted topic keeps the newest);
//! - `deliveries`: each receipt — version, HTTP status, attempts, latency, Idempotency-Key;
//! - `dead-letters`: each letter — reason, status, every attempt, redrive count.
//!
//! Rejected rows are not traced: a row is rejected before it has a trustworthy key.
//!
//! Cost: the key's partition of `snapshots`, `state`, `changes` and `deliveries` (the key's
//! partition under today's count — `--all-partitions` reads every partition, for history
//! written before a repartition) and of `dead-letters`, each read once. Blocking.

use std::collections::HashMap;
use std::fmt;

use apache_avro::types::Value;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset};

use super::{
    change_record_fields, decode_fields, failed, header, millis_text, to_json, InspectError, Short,
    Values,
};
use crate::avro::{MessageLocation, SchemaStore};
use crate::dead_letters::redrive_count;
use crate::headers;
use crate::kafka::{group_positions, KafkaConfig, ProcessingGuarantee, TopicReader};
use crate::partition::partition_for_key;
use crate::records::{
    AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt, DetectorState, StaleSnapshot,
    STALE_SNAPSHOT_KEY_PREFIX,
};
use crate::topics::TopicNames;

mod fields;

use fields::field_changes;

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// The record key, canonical form (as on the topics).
    pub key: String,
    /// Redacted (default) or shown.
    pub values: Values,
    /// Read every partition, not only the key's under today's partition count.
    pub all_partitions: bool,
}

/// Which topic an event comes from, in the order a record passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// A row on `snapshots`.
    Row,
    /// An event on `changes`.
    Change,
    /// An entry on `state`.
    State,
    /// A receipt on `deliveries`.
    Delivery,
    /// A letter on `dead-letters`.
    DeadLetter,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Row => "row",
            Stage::Change => "change",
            Stage::State => "state",
            Stage::Delivery => "delivered",
            Stage::DeadLetter => "dead-letter",
        }
    }
}

/// One thing that happened to the record.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    /// When (milliseconds since the epoch): the message time, or the time the record states.
    pub at: i64,
    /// Which topic.
    pub stage: Stage,
    /// Where.
    pub location: MessageLocation,
    /// The version it concerns, where it concerns one.
    pub version: Option<i64>,
    /// What it says, no values unless asked.
    pub detail: String,
}

impl TraceEvent {
    /// A message of the key that does not decode: its place and the error (which never quotes
    /// the payload), so a gap in the trace is visible.
    fn undecodable(
        stage: Stage,
        at: i64,
        location: MessageLocation,
        error: &crate::avro::AvroError,
    ) -> TraceEvent {
        TraceEvent {
            at,
            stage,
            location,
            version: None,
            detail: format!("UNDECODABLE: {error}"),
        }
    }
}

/// The value of `m` (a message of the traced key) as `T`; a value that does not decode becomes
/// an UNDECODABLE event of `stage` in `events` (a tombstone is nothing). `None` for both.
fn decoded<T: AvroRecord + serde::de::DeserializeOwned>(
    schemas: &SchemaStore,
    m: &BorrowedMessage<'_>,
    stage: Stage,
    events: &mut Vec<TraceEvent>,
) -> Option<T> {
    let location = MessageLocation::of(m);
    match schemas.decode::<T>(m.payload()?, T::SCHEMA, &location) {
        Ok(value) => Some(value),
        Err(error) => {
            events.push(TraceEvent::undecodable(stage, time_of(m), location, &error));
            None
        }
    }
}

/// A record's life, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The key.
    pub key: String,
    /// Everything found.
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// The events of one stage.
    pub fn of(&self, stage: Stage) -> impl Iterator<Item = &TraceEvent> {
        self.events.iter().filter(move |e| e.stage == stage)
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "trace of {} — {} events", self.key, self.events.len())?;
        for event in &self.events {
            writeln!(
                f,
                "{}  {:<11} {:<32} {}",
                millis_text(event.at),
                event.stage.label(),
                event.location.to_string(),
                event.detail
            )?;
        }
        Ok(())
    }
}

/// Traces `options.key` on the pipeline `pipeline` (its group ids derive from it). Blocking.
pub fn trace(
    kafka: &KafkaConfig,
    pipeline: &str,
    guarantee: ProcessingGuarantee,
    topics: &TopicNames,
    schemas: &SchemaStore,
    options: &TraceOptions,
) -> Result<Trace, InspectError> {
    let reader = TopicReader::new(kafka, "trace", guarantee).map_err(failed("create a reader"))?;
    let key = options.key.as_str();
    // Where to read a topic of `count` partitions: the key's partition, or all of them.
    let places = |count: i32| -> Vec<(i32, Offset)> {
        if options.all_partitions {
            (0..count).map(|p| (p, Offset::Beginning)).collect()
        } else {
            vec![(partition_for_key(key.as_bytes(), count), Offset::Beginning)]
        }
    };
    let from = |topic: &str| -> Result<Vec<(i32, Offset)>, InspectError> {
        Ok(places(
            reader.partitions(topic).map_err(failed("read metadata"))?,
        ))
    };
    let ours = |m: &BorrowedMessage<'_>| m.key() == Some(key.as_bytes());
    let mut events = Vec::new();

    // The detector's committed offsets before its changes: in exactly_once a row before the
    // offset has its change in the read below (they commit together), so it is never taken
    // for "unchanged" because the change came after the read.
    let detector = format!("{pipeline}.change-detector");
    let partitions = reader
        .partitions(&topics.snapshots)
        .map_err(failed("read metadata"))?;
    let decided = group_positions(kafka, "trace", &detector, &topics.snapshots, partitions)
        .map_err(failed("read change-detector's offsets"))?;

    // Changes next: the rows' verdicts refer to them.
    type Fields = Option<Vec<(String, Value)>>;
    let mut changes: Vec<(MessageLocation, i64, ChangeEvent, Fields, i32)> = Vec::new();
    reader
        .read_from(&topics.changes, &from(&topics.changes)?, |m| {
            if !ours(m) {
                return;
            }
            if let Some(change) = decoded::<ChangeEvent>(schemas, m, Stage::Change, &mut events) {
                let location = MessageLocation::of(m);
                let fields = m
                    .payload()
                    .and_then(|p| change_record_fields(schemas, p, &location));
                changes.push((location, time_of(m), change, fields, redrive_count(m)));
            }
        })
        .map_err(failed("read the changes"))?;
    let mut previous: Option<(i64, Vec<(String, Value)>)> = None;
    for (location, at, change, fields, redrive) in &changes {
        let mut detail = format!(
            "{} v{}  snapshot {} ({} line {})  hash {}",
            change.op.as_str(),
            change.version,
            Short(&change.source.snapshot_id),
            change.source.file_name,
            change
                .source
                .line
                .map_or_else(|| "-".to_string(), |l| l.to_string()),
            Short(&change.content_hash),
        );
        let repeat = previous
            .as_ref()
            .is_some_and(|(version, _)| *version == change.version);
        if *redrive > 0 {
            detail.push_str(&format!("  redrive #{redrive} of this version"));
        } else if repeat {
            detail.push_str("  repeat of this version (written again by an at_least_once detector; delivered once)");
        } else if let Some(fields) = fields {
            let before = previous.as_ref().map(|(_, fields)| fields.as_slice());
            detail.push_str("  ");
            detail.push_str(&field_changes(before, fields, options.values));
        }
        events.push(TraceEvent {
            at: *at,
            stage: Stage::Change,
            location: location.clone(),
            version: Some(change.version),
            detail,
        });
        if !repeat && *redrive == 0 {
            previous = Some((change.version, fields.clone().unwrap_or_default()));
        }
    }

    // State before the rows: a row of a snapshot passed over as late on its partition (a
    // stale-snapshot entry there) changed nothing though no change names it.
    let mut passed_over: HashMap<(i32, String), String> = HashMap::new();
    reader
        .read_from(&topics.state, &from(&topics.state)?, |m| {
            if let Some(stale) = stale_snapshot(schemas, m) {
                passed_over.insert((m.partition(), stale.snapshot_id), stale.newest_snapshot_id);
                return;
            }
            if !ours(m) {
                return;
            }
            let location = MessageLocation::of(m);
            let (version, detail) = match m.payload() {
                None => (None, "tombstone (entry removed)".to_string()),
                Some(p) => {
                    match schemas.decode::<DetectorState>(p, DetectorState::SCHEMA, &location) {
                        Ok(s) => (
                            Some(s.version),
                            format!(
                                "v{}{}  hash {}  last snapshot {}  stream {}",
                                s.version,
                                if s.deleted { " (deleted)" } else { "" },
                                Short(&s.content_hash),
                                Short(&s.last_snapshot_id),
                                s.stream
                            ),
                        ),
                        Err(error) => (None, format!("undecodable: {error}")),
                    }
                }
            };
            events.push(TraceEvent {
                at: time_of(m),
                stage: Stage::State,
                location,
                version,
                detail,
            });
        })
        .map_err(failed("read the state"))?;

    let snapshot_from = places(partitions);
    reader
        .read_from(&topics.snapshots, &snapshot_from, |m| {
            if !ours(m) || header(m, headers::CONTROL).is_some() {
                return;
            }
            let location = MessageLocation::of(m);
            let snapshot = header(m, headers::SNAPSHOT_ID).unwrap_or("?");
            let late = passed_over.get(&(m.partition(), snapshot.to_string()));
            let change = changes
                .iter()
                .find(|(_, _, c, _, _)| c.source.snapshot_id == snapshot);
            let verdict = match (change, late) {
                (Some((_, _, change, _, _)), _) => {
                    format!("→ {} v{}", change.op.as_str(), change.version)
                }
                (None, Some(newest)) => format!(
                    "→ passed over: older than snapshot {} already applied (a late file)",
                    Short(newest)
                ),
                (None, None)
                    if decided.iter().any(|(p, offset)| {
                        *p == m.partition()
                            && matches!(offset, Offset::Offset(o) if *o > m.offset())
                    }) =>
                {
                    "→ unchanged".to_string()
                }
                (None, None) => {
                    "→ no change so far (past change-detector's committed offset)".to_string()
                }
            };
            let mut detail = format!(
                "{} line {}  snapshot {}{}  {verdict}",
                header(m, headers::FILE_NAME).unwrap_or("?"),
                header(m, headers::LINE).unwrap_or("?"),
                Short(snapshot),
                header(m, headers::SNAPSHOT_TIME)
                    .and_then(|t| t.parse().ok())
                    .map(|t| format!(" taken {}", millis_text(t)))
                    .unwrap_or_default(),
            );
            if options.values == Values::Shown {
                if let Some(Ok((_, fields))) =
                    m.payload().map(|p| decode_fields(schemas, p, &location))
                {
                    detail.push_str(&format!("  {}", to_json(Value::Record(fields))));
                }
            }
            events.push(TraceEvent {
                at: time_of(m),
                stage: Stage::Row,
                location,
                version: None,
                detail,
            });
        })
        .map_err(failed("read the snapshots"))?;

    // A receipt goes to its change's partition — the key's, the topics being co-partitioned —
    // or, where they are not, to its key's partition of `deliveries`: the key's either way.
    reader
        .read_from(&topics.deliveries, &from(&topics.deliveries)?, |m| {
            if !ours(m) {
                return;
            }
            let Some(r) = decoded::<DeliveryReceipt>(schemas, m, Stage::Delivery, &mut events)
            else {
                return;
            };
            let location = MessageLocation::of(m);
            if r.key != key {
                return;
            }
            events.push(TraceEvent {
                at: r.delivered_at,
                stage: Stage::Delivery,
                location,
                version: Some(r.version),
                detail: format!(
                    "{} v{}  HTTP {} after {} attempt(s), {} ms{}  idempotency key {}  change {}/{}@{}",
                    r.op,
                    r.version,
                    r.status,
                    r.attempts,
                    r.latency_ms,
                    r.response_id
                        .as_deref()
                        .map(|id| format!("  response id {id}"))
                        .unwrap_or_default(),
                    r.idempotency_key,
                    topics.changes,
                    r.source_partition,
                    r.source_offset
                ),
            });
        })
        .map_err(failed("read the deliveries"))?;

    reader
        .read_from(&topics.dead_letters, &from(&topics.dead_letters)?, |m| {
            if !ours(m) {
                return;
            }
            let Some(l) = decoded::<DeadLetter>(schemas, m, Stage::DeadLetter, &mut events) else {
                return;
            };
            let location = MessageLocation::of(m);
            if l.key.as_deref() != Some(key) {
                return;
            }
            let attempts: Vec<String> = l
                .attempt_history
                .iter()
                .map(|a| {
                    format!(
                        "{} {}",
                        millis_text(a.at),
                        match (a.status, &a.error) {
                            (Some(status), _) => format!("HTTP {status}"),
                            (None, Some(error)) => error.clone(),
                            (None, None) => "no answer".to_string(),
                        }
                    )
                })
                .collect();
            events.push(TraceEvent {
                at: l.dead_lettered_at,
                stage: Stage::DeadLetter,
                location,
                version: l.version,
                detail: format!(
                    "v{}  {}{}  {} attempt(s): {}  redriven {}x  change {}/{}@{}",
                    l.version.map_or_else(|| "?".to_string(), |v| v.to_string()),
                    l.reason,
                    l.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
                    l.attempts,
                    attempts.join(", "),
                    l.redrive_count,
                    l.source_topic,
                    l.source_partition,
                    l.source_offset
                ),
            });
        })
        .map_err(failed("read the dead letters"))?;

    events.sort_by(|a, b| {
        a.at.cmp(&b.at)
            .then(a.stage.cmp(&b.stage))
            .then_with(|| a.location.offset.cmp(&b.location.offset))
    });
    Ok(Trace {
        key: key.to_string(),
        events,
    })
}

/// A stale-snapshot control entry of `state` (any key's: it is per partition).
fn stale_snapshot(schemas: &SchemaStore, m: &BorrowedMessage<'_>) -> Option<StaleSnapshot> {
    let key = std::str::from_utf8(m.key()?).ok()?;
    key.strip_prefix(STALE_SNAPSHOT_KEY_PREFIX)?;
    schemas
        .decode::<StaleSnapshot>(m.payload()?, StaleSnapshot::SCHEMA, &MessageLocation::of(m))
        .ok()
}

/// The message's timestamp, 0 when it has none.
fn time_of(m: &BorrowedMessage<'_>) -> i64 {
    m.timestamp().to_millis().unwrap_or(0)
}
