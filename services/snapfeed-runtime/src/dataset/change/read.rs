//! Reading a change event of either shape by its writer fingerprint: the record nested as a
//! typed record (any version of the dataset schema, resolved through the dataset's plans), or
//! the v1 shape where `record` held the record's single-object bytes.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::avro::{AvroError, MessageLocation, SchemaStore};
use crate::dataset::decode::{RecordSeed, WriterPlan};
use crate::dataset::mapping::Dataset;
use crate::dataset::record::DatasetRecord;
use crate::records::{AvroRecord, ChangeEvent};

impl Dataset {
    /// Decodes a change event written by any version of `change_event.avsc` with any version
    /// of this dataset's schema, and its record into the current layout (`None` for DELETE).
    pub fn decode_change(
        &self,
        payload: &[u8],
        store: &SchemaStore,
        location: &MessageLocation,
    ) -> Result<(ChangeEvent, Option<DatasetRecord>), AvroError> {
        let (writer, datum) = store.writer_of(payload, ChangeEvent::SCHEMA, location)?;
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
        let (event, record) = writer.decode_datum_seed(datum, seed, location)?;
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
