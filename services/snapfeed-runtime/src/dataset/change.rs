//! Change events with the dataset record nested as a typed Avro record (`ChangeEvent.record`,
//! schema composed from `change_event.avsc` and the dataset schema), so any Avro reader sees
//! `record.patient_id`, not bytes.
//!
//! Writing ([`ChangeWriter`]) splices: the event's fields before `record` and after it are
//! encoded by their own halves of the composed schema, and the record's Avro body goes between
//! them as it is — the detector forwards the snapshot record's bytes without decoding them. A
//! decoded record (an older version's, in the current layout) is encoded with the composed
//! schema as a whole, the way a dead letter nests its event.
//!
//! Reading ([`Dataset::decode_change`]) accepts both shapes by writer fingerprint: the nested
//! record of any dataset schema version, and the v1 shape where `record` held the record's
//! single-object bytes. Dead letters nest the change event the same way
//! ([`Dataset::encode_dead_letter`]).

use std::sync::Arc;

use serde::Serialize;

use super::mapping::Dataset;
use super::record::DatasetRecord;
use crate::avro::compose::split_around;
use crate::avro::composed_path;
use crate::avro::{AvroError, LoadedSchema, SchemaStore};
use crate::records::{AvroRecord, ChangeEvent, ChangeOp, DeadLetter, Provenance, TimestampMillis};

/// The record a change event carries.
#[derive(Debug, Clone, Copy)]
pub enum ChangeRecord<'a> {
    /// The bare Avro body (no header) of a record written with the current dataset schema.
    Body(&'a [u8]),
    /// A decoded record.
    Record(&'a DatasetRecord),
}

/// Writes change events of one dataset with the current composed schema.
#[derive(Debug)]
pub struct ChangeWriter {
    schema: Arc<LoadedSchema>,
    dataset: Arc<LoadedSchema>,
    head: LoadedSchema,
    tail: LoadedSchema,
    /// The union branch index of `record`: null, and the dataset record (zig-zag varints).
    null_branch: u8,
    record_branch: u8,
}

/// The fields [`Head`] and [`Tail`] write: the composed schema's fields before and after
/// `record` must be exactly these, or the writer refuses to start (a field added to the
/// template must be added here too, not silently written as null).
const HEAD_FIELDS: [&str; 5] = ["op", "key", "version", "content_hash", "previous_hash"];
const TAIL_FIELDS: [&str; 3] = ["record_schema", "source", "detected_at"];

/// The event's fields before `record`, in schema order.
#[derive(Serialize)]
struct Head<'a> {
    op: ChangeOp,
    key: &'a str,
    version: i64,
    content_hash: &'a str,
    previous_hash: Option<&'a str>,
}

/// The event's fields after `record`, in schema order.
#[derive(Serialize)]
struct Tail<'a> {
    record_schema: &'a str,
    source: &'a Provenance,
    detected_at: TimestampMillis,
}

impl Dataset {
    /// The writer of this dataset's change events.
    pub fn change_writer(&self, store: &SchemaStore) -> Result<ChangeWriter, AvroError> {
        let schema = store.current_for(ChangeEvent::SCHEMA, self.schema_name())?;
        let shape_error = |reason: &str| AvroError::Parse {
            path: composed_path(&schema.path, schema.dataset.as_deref()),
            reason: reason.to_string(),
        };
        let (head, tail) = split_around(&schema.json, "record")
            .ok_or_else(|| shape_error("no field `record` to nest the dataset record in"))?;
        let names = |part: &serde_json::Value| -> Vec<String> {
            part["fields"]
                .as_array()
                .map(|fields| {
                    fields
                        .iter()
                        .filter_map(|f| f["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        if names(&head) != HEAD_FIELDS || names(&tail) != TAIL_FIELDS {
            return Err(shape_error(&format!(
                "fields around `record` are {:?} and {:?}; the writer knows {HEAD_FIELDS:?} and \
                 {TAIL_FIELDS:?} (a template change needs the writer changed too)",
                names(&head),
                names(&tail)
            )));
        }
        let branches = schema.json["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["name"] == "record"))
            .and_then(|f| f["type"].as_array())
            .ok_or_else(|| shape_error("`record` is not a union"))?;
        let null = branches.iter().position(|b| b == "null");
        let record = branches
            .iter()
            .position(|b| b.get("fields").is_some() || *b == self.schema_name());
        let (Some(null), Some(record)) = (null, record) else {
            return Err(shape_error(
                "`record` must be a union of null and the dataset record",
            ));
        };
        // A union branch index is a zig-zag varint: one byte for indexes below 64.
        let zigzag = |index: usize| match u8::try_from(index) {
            Ok(index) if index < 64 => Ok(index << 1),
            _ => Err(shape_error("`record`'s union has more than 64 branches")),
        };
        let (null_branch, record_branch) = (zigzag(null)?, zigzag(record)?);
        Ok(ChangeWriter {
            head: LoadedSchema::from_json(head, &schema.path, None)?,
            tail: LoadedSchema::from_json(tail, &schema.path, None)?,
            dataset: self.schema.clone(),
            schema,
            null_branch,
            record_branch,
        })
    }

    /// Checks that `store` nests this dataset in change events and dead letters, as the
    /// services write them: a `schemas/` directory from before nesting (or one whose templates
    /// this code cannot write) is refused at start, naming the file, instead of stalling on the
    /// first change or dead letter.
    pub fn check_compositions(&self, store: &SchemaStore) -> Result<(), AvroError> {
        self.change_writer(store)?;
        let letters = store.current_for(DeadLetter::SCHEMA, self.schema_name())?;
        if letters.dataset.is_none() {
            return Err(AvroError::Parse {
                path: letters.path.clone(),
                reason: format!(
                    "{} does not nest the change event (no field typed {}): this schemas/ \
                     directory predates nested records; deploy the one shipped with this binary",
                    DeadLetter::SCHEMA,
                    crate::avro::compose::CHANGE_EVENT
                ),
            });
        }
        Ok(())
    }

    /// The single-object encoding of `letter`, with the change event it holds nested as a
    /// typed record when it was decoded (`event`, with its record when it has one).
    pub fn encode_dead_letter(
        &self,
        store: &SchemaStore,
        letter: &DeadLetter,
        event: Option<(&ChangeEvent, Option<&DatasetRecord>)>,
    ) -> Result<Vec<u8>, AvroError> {
        let typed = TypedDeadLetter {
            letter,
            event: event.map(|(event, record)| TypedChange { event, record }),
        };
        store
            .current_for(DeadLetter::SCHEMA, self.schema_name())?
            .encode(&typed)
    }
}

impl ChangeWriter {
    /// The composed schema it writes.
    pub fn schema(&self) -> &Arc<LoadedSchema> {
        &self.schema
    }

    /// The record's Avro body when `payload` (either framing) was written with the current
    /// dataset schema: what [`ChangeRecord::Body`] takes. `None` for any other version.
    pub fn current_body<'p>(&self, payload: &'p [u8]) -> Option<&'p [u8]> {
        self.dataset.body_of(payload)
    }

    /// Appends the single-object encoding of `event` carrying `record` to `buf`.
    pub fn encode_into(
        &self,
        event: &ChangeEvent,
        record: Option<ChangeRecord<'_>>,
        buf: &mut Vec<u8>,
    ) -> Result<(), AvroError> {
        let body = match record {
            Some(ChangeRecord::Record(record)) => {
                let typed = TypedChange {
                    event,
                    record: Some(record),
                };
                return self.schema.encode_into(&typed, buf);
            }
            Some(ChangeRecord::Body(body)) => Some(body),
            None => None,
        };
        self.schema.write_header(buf);
        let head = Head {
            op: event.op,
            key: &event.key,
            version: event.version,
            content_hash: &event.content_hash,
            previous_hash: event.previous_hash.as_deref(),
        };
        self.head.encode_datum_into(&head, buf)?;
        match body {
            None => buf.push(self.null_branch),
            Some(body) => {
                buf.push(self.record_branch);
                buf.extend_from_slice(body);
            }
        }
        let tail = Tail {
            record_schema: &event.record_schema,
            source: &event.source,
            detected_at: event.detected_at,
        };
        self.tail.encode_datum_into(&tail, buf)
    }

    /// The single-object encoding of `event` carrying `record`.
    pub fn encode(
        &self,
        event: &ChangeEvent,
        record: Option<ChangeRecord<'_>>,
    ) -> Result<Vec<u8>, AvroError> {
        let mut buf = Vec::with_capacity(512);
        self.encode_into(event, record, &mut buf)?;
        Ok(buf)
    }
}

/// A change event and its record, for serde: the shape of the composed schema.
#[derive(Serialize)]
struct TypedChange<'a> {
    #[serde(flatten)]
    event: &'a ChangeEvent,
    record: Option<&'a DatasetRecord>,
}

/// A dead letter with its change event nested, for serde.
#[derive(Serialize)]
struct TypedDeadLetter<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    event: Option<TypedChange<'a>>,
}

mod read;

#[cfg(test)]
mod tests;
