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

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::decode::{RecordSeed, WriterPlan};
use super::mapping::Dataset;
use super::record::DatasetRecord;
use crate::avro::compose::split_around;
use crate::avro::composed_path;
use crate::avro::{
    AvroError, LoadedSchema, MessageLocation, SchemaStore, SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
};
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
}

impl Dataset {
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
}

impl ChangeWriter {
    /// The composed schema it writes.
    pub fn schema(&self) -> &Arc<LoadedSchema> {
        &self.schema
    }

    /// The record's Avro body when `payload` (single-object) was written with the current
    /// dataset schema: what [`ChangeRecord::Body`] takes. `None` for any other version.
    pub fn current_body<'p>(&self, payload: &'p [u8]) -> Option<&'p [u8]> {
        let header = payload.get(..SINGLE_OBJECT_HEADER_LEN)?;
        (header[..2] == SINGLE_OBJECT_MAGIC && header[2..] == self.dataset.fingerprint)
            .then(|| &payload[SINGLE_OBJECT_HEADER_LEN..])
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
        buf.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        buf.extend_from_slice(&self.schema.fingerprint);
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

impl Dataset {
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

    /// Decodes a change event written by any version of `change_event.avsc` with any version
    /// of this dataset's schema, and its record into the current layout (`None` for DELETE).
    pub fn decode_change(
        &self,
        payload: &[u8],
        store: &SchemaStore,
        location: &MessageLocation,
    ) -> Result<(ChangeEvent, Option<DatasetRecord>), AvroError> {
        let writer = store.writer_of(payload, ChangeEvent::SCHEMA, location)?;
        let plan = match &writer.dataset {
            Some(nested) => {
                if nested.name != self.schema.name {
                    return Err(AvroError::WrongSchema {
                        location: location.clone(),
                        written: format!("{} of {}", ChangeEvent::SCHEMA, nested.name),
                        expected: format!("{} of {}", ChangeEvent::SCHEMA, self.schema.name),
                    });
                }
                Some(self.plan_for(nested)?)
            }
            None => None,
        };
        let mut legacy = None;
        let seed = ChangeSeed {
            dataset: self,
            plan: plan.as_deref(),
            legacy: &mut legacy,
        };
        let (event, record) =
            writer.decode_datum_seed(&payload[SINGLE_OBJECT_HEADER_LEN..], seed, location)?;
        // The v1 shape: the record is single-object bytes of its own, decoded on its own.
        let record = match legacy {
            Some(bytes) => Some(self.decode(&bytes, store, location)?),
            None => record,
        };
        Ok((event, record))
    }
}

/// A change event field, told by name without allocating; fields added later are `Other`.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Op,
    Key,
    Version,
    ContentHash,
    PreviousHash,
    Record,
    RecordSchema,
    Source,
    DetectedAt,
    #[serde(other)]
    Other,
}

/// Reads a change event's fields by name, the record through the dataset's plan.
struct ChangeSeed<'a> {
    dataset: &'a Dataset,
    /// The plan of the nested dataset writer; `None` for the v1 (bytes) shape.
    plan: Option<&'a WriterPlan>,
    /// The v1 shape's record bytes, decoded after the event.
    legacy: &'a mut Option<Vec<u8>>,
}

impl<'de> DeserializeSeed<'de> for ChangeSeed<'_> {
    type Value = (ChangeEvent, Option<DatasetRecord>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChangeSeed<'_> {
    type Value = (ChangeEvent, Option<DatasetRecord>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a change event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut op, mut key, mut version, mut content_hash) = (None, None, None, None);
        let (mut previous_hash, mut record) = (None, None);
        let (mut record_schema, mut source, mut detected_at) = (None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Op => op = Some(map.next_value()?),
                Field::Key => key = Some(map.next_value()?),
                Field::Version => version = Some(map.next_value()?),
                Field::ContentHash => content_hash = Some(map.next_value()?),
                Field::PreviousHash => previous_hash = map.next_value()?,
                Field::Record => {
                    record = map.next_value_seed(OptionalRecord {
                        dataset: self.dataset,
                        plan: self.plan,
                        legacy: &mut *self.legacy,
                    })?
                }
                Field::RecordSchema => record_schema = Some(map.next_value()?),
                Field::Source => source = Some(map.next_value()?),
                Field::DetectedAt => detected_at = Some(map.next_value()?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = |field: &'static str| <A::Error as de::Error>::missing_field(field);
        let event = ChangeEvent {
            op: op.ok_or_else(|| missing("op"))?,
            key: key.ok_or_else(|| missing("key"))?,
            version: version.ok_or_else(|| missing("version"))?,
            content_hash: content_hash.ok_or_else(|| missing("content_hash"))?,
            previous_hash,
            record_schema: record_schema.ok_or_else(|| missing("record_schema"))?,
            source: source.ok_or_else(|| missing("source"))?,
            detected_at: detected_at.ok_or_else(|| missing("detected_at"))?,
        };
        Ok((event, record))
    }
}

/// `record`: null, a nested record (through the plan), or v1's single-object bytes (kept for
/// decoding after the event, as they need the store).
struct OptionalRecord<'a, 'l> {
    dataset: &'a Dataset,
    plan: Option<&'a WriterPlan>,
    legacy: &'l mut Option<Vec<u8>>,
}

impl<'de> DeserializeSeed<'de> for OptionalRecord<'_, '_> {
    type Value = Option<DatasetRecord>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalRecord<'_, '_> {
    type Value = Option<DatasetRecord>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null, a dataset record, or its single-object bytes")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        match self.plan {
            Some(plan) => {
                let seed = RecordSeed {
                    dataset: self.dataset,
                    plan,
                };
                seed.deserialize(deserializer).map(Some)
            }
            None => deserializer.deserialize_bytes(self),
        }
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
        *self.legacy = Some(bytes.to_vec());
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
