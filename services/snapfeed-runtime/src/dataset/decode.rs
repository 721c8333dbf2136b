//! Decoding a single-object payload written by any version of the dataset schema kept in
//! `schemas/history/` into the current layout, so a schema upgrade never strands data written
//! before it. Avro's resolution rules decide: reader fields the writer lacked take their schema
//! default (a writer that lacks a field without one is refused as incompatible), writer fields
//! the reader dropped are skipped, and int and long promote to the reader's long or double.
//! How each writer schema's fields land is worked out once and cached by fingerprint. Errors
//! name fields and types, never a value.

use std::fmt;
use std::sync::Arc;

use apache_avro::Schema;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::field::{FieldKind, FieldSpec};
use super::mapping::{field_position, Dataset};
use super::record::{DatasetRecord, FieldValue};
use crate::avro::{AvroError, LoadedSchema, MessageLocation, SchemaStore};

impl Dataset {
    /// Decodes a single-object payload written by any known version of the dataset schema
    /// into the current layout.
    pub fn decode(
        &self,
        payload: &[u8],
        store: &SchemaStore,
        location: &MessageLocation,
    ) -> Result<DatasetRecord, AvroError> {
        let (writer, datum) = store.writer_of(payload, &self.schema.name, location)?;
        let plan = self.plan_for(writer)?;
        let seed = RecordSeed {
            dataset: self,
            plan: &plan,
        };
        writer.decode_datum_seed(datum, seed, location)
    }

    /// How `writer`'s fields land in the reader's positions; built once per writer schema.
    pub(super) fn plan_for(&self, writer: &LoadedSchema) -> Result<Arc<WriterPlan>, AvroError> {
        if writer.fingerprint == self.schema.fingerprint {
            return Ok(self.identity.clone());
        }
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut plans = self
            .plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(plan) = plans.get(&writer.fingerprint) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(self.build_plan(writer)?);
        plans.insert(writer.fingerprint, plan.clone());
        Ok(plan)
    }

    fn build_plan(&self, writer: &LoadedSchema) -> Result<WriterPlan, AvroError> {
        let incompatible = |reason: String| AvroError::Incompatible {
            history: writer.path.clone(),
            current: self.schema.path.clone(),
            reason,
        };
        let Schema::Record(record) = writer.parsed() else {
            return Err(incompatible("writer is not a record".into()));
        };
        let writer_names: Vec<Box<str>> = record
            .fields
            .iter()
            .map(|f| f.name.as_str().into())
            .collect();
        let reader_index: Vec<Option<usize>> = writer_names
            .iter()
            .map(|n| field_position(&self.fields, n))
            .collect();
        let mut initial = Vec::with_capacity(self.fields.len());
        for (index, spec) in self.fields.iter().enumerate() {
            if reader_index.contains(&Some(index)) {
                initial.push(FieldValue::Null);
            } else {
                let default = spec.default.clone();
                initial.push(default.ok_or_else(|| {
                    incompatible(format!(
                        "writer lacks field {} and the reader has no default for it",
                        spec.name
                    ))
                })?);
            }
        }
        Ok(WriterPlan {
            writer_names,
            reader_index,
            initial,
        })
    }
}

/// How one writer schema's fields map onto the reader's.
#[derive(Debug)]
pub(super) struct WriterPlan {
    /// Writer field names in writer order, to check the datum walks the fields as planned.
    writer_names: Vec<Box<str>>,
    /// Reader position of each writer field; `None` for fields the reader dropped.
    reader_index: Vec<Option<usize>>,
    /// Starting values: defaults for reader fields the writer lacks, `Null` for the rest.
    initial: Vec<FieldValue>,
}

impl WriterPlan {
    /// The reader's own schema: every field in place, nothing to default.
    pub(super) fn identity(names: &Arc<[Box<str>]>) -> WriterPlan {
        WriterPlan {
            writer_names: names.to_vec(),
            reader_index: (0..names.len()).map(Some).collect(),
            initial: vec![FieldValue::Null; names.len()],
        }
    }
}

pub(super) struct RecordSeed<'a> {
    pub(super) dataset: &'a Dataset,
    pub(super) plan: &'a WriterPlan,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = DatasetRecord;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<DatasetRecord, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = DatasetRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} record", self.dataset.schema.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DatasetRecord, A::Error> {
        let plan = self.plan;
        let mut values = plan.initial.clone();
        let mut position = 0;
        // The decoder yields record fields in writer-schema order, so position = writer index.
        while map
            .next_key_seed(ExpectedName(plan.writer_names.get(position).map(|n| &**n)))?
            .is_some()
        {
            match plan.reader_index.get(position).copied().flatten() {
                Some(index) => {
                    let spec = &self.dataset.fields[index];
                    values[index] = map.next_value_seed(ValueSeed(spec))?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            position += 1;
        }
        if position != plan.writer_names.len() {
            return Err(de::Error::custom("record ended before all writer fields"));
        }
        Ok(DatasetRecord {
            names: self.dataset.names.clone(),
            values,
        })
    }
}

/// Checks a record field name against the plan without allocating.
struct ExpectedName<'a>(Option<&'a str>);

impl<'de> DeserializeSeed<'de> for ExpectedName<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ExpectedName<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        match self.0 {
            Some(expected) if expected == name => Ok(()),
            _ => Err(E::custom(format_args!("unexpected writer field {name}"))),
        }
    }
}

/// Decodes one field value into the reader's kind, applying Avro's promotions.
struct ValueSeed<'a>(&'a FieldSpec);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = FieldValue;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<FieldValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn mismatch<E: de::Error>(&self, written: &str) -> E {
        // Names types only: the value itself is health data.
        E::custom(format_args!(
            "field {} ({}) holds a {written}",
            self.0.name, self.0.kind
        ))
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.0.kind)
    }

    fn visit_unit<E: de::Error>(self) -> Result<FieldValue, E> {
        match self.0.nullable {
            true => Ok(FieldValue::Null),
            false => Err(self.mismatch("null")),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<FieldValue, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<FieldValue, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::String => Ok(FieldValue::String(v.to_string())),
            FieldKind::Enum => match self.0.symbols.iter().find(|s| *s == v) {
                Some(symbol) => Ok(FieldValue::Enum(symbol.clone())),
                None => Err(self.mismatch("symbol the reader's enum lacks")),
            },
            _ => Err(self.mismatch("string")),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::String => Ok(FieldValue::String(v)),
            _ => self.visit_str(&v),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<FieldValue, E> {
        match std::str::from_utf8(v) {
            Ok(s) if self.0.kind == FieldKind::String => self.visit_str(s),
            _ => Err(self.mismatch("bytes")),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Boolean => Ok(FieldValue::Boolean(v)),
            _ => Err(self.mismatch("boolean")),
        }
    }

    fn visit_i32<E: de::Error>(self, v: i32) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Int => Ok(FieldValue::Int(v)),
            FieldKind::Date => Ok(FieldValue::Date(v)),
            FieldKind::Long => Ok(FieldValue::Long(v.into())),
            FieldKind::Double => Ok(FieldValue::Double(v.into())),
            _ => Err(self.mismatch("int")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Long => Ok(FieldValue::Long(v)),
            FieldKind::TimestampMillis => Ok(FieldValue::TimestampMillis(v)),
            // Avro promotes long to double; precision loss beyond 2^53 is Avro's rule too.
            FieldKind::Double => Ok(FieldValue::Double(v as f64)),
            _ => Err(self.mismatch("long")),
        }
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<FieldValue, E> {
        self.visit_f64(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Double => Ok(FieldValue::Double(v)),
            _ => Err(self.mismatch("floating-point number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::fixtures::{
        dataset, location, sample, schemas_dir, store, WithoutDeviceId,
    };

    #[test]
    fn encode_decode_round_trip() {
        let dataset = dataset();
        let record = sample(&dataset);
        let mut buf = Vec::new();
        dataset.encode(&record, &mut buf).unwrap();
        assert_eq!(buf[..2], crate::avro::SINGLE_OBJECT_MAGIC);
        let decoded = dataset.decode(&buf, &store(), &location()).unwrap();
        assert_eq!(decoded.values(), record.values());
        assert_eq!(decoded, record);
    }

    #[test]
    fn data_written_by_v1_reads_with_device_id_null() {
        let dataset = dataset();
        let store = store();
        let v1_path = schemas_dir().join("history/lab_result.v1.avsc");
        let v1 =
            LoadedSchema::parse(&std::fs::read_to_string(&v1_path).unwrap(), &v1_path).unwrap();
        let record = sample(&dataset);

        let bytes = v1.encode(&WithoutDeviceId(&record)).unwrap();
        assert_ne!(v1.fingerprint, dataset.schema().fingerprint);

        for _ in 0..2 {
            // Twice: the second read uses the cached plan.
            let decoded = dataset.decode(&bytes, &store, &location()).unwrap();
            assert_eq!(decoded.get("device_id"), Some(&FieldValue::Null));
            for (name, value) in decoded.names().iter().zip(decoded.values()) {
                if &**name != "device_id" {
                    assert_eq!(Some(value), record.get(name), "{name}");
                }
            }
        }
    }

    #[test]
    fn corrupt_and_foreign_payloads_are_errors() {
        let dataset = dataset();
        let store = store();
        let mut bytes = Vec::new();
        dataset.encode(&sample(&dataset), &mut bytes).unwrap();
        let truncated = &bytes[..bytes.len() / 2];
        let error = dataset.decode(truncated, &store, &location()).unwrap_err();
        assert!(matches!(error, AvroError::Corrupt { .. }), "{error}");
        assert!(!error.to_string().contains("P-000123"));
    }
}
