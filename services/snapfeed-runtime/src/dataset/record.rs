//! A dataset record in memory: [`FieldValue`]s in schema field order ([`DatasetRecord`]), its
//! canonical key, and its Avro encoding. [`Dataset::record`] checks values against the field
//! types and enum symbols, so encoding a record cannot fail on a value. Records hold health
//! data: the `Debug` of a record shows field kinds only, and nothing here logs.

use std::fmt;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::field::FieldKind;
use super::mapping::Dataset;
use crate::avro::AvroError;
use crate::record_key::{KeyError, RecordKey};

/// One field value of a [`DatasetRecord`]. Its `Debug` shows the value (health data): for
/// tests and local debugging, never for logs.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Absent (nullable fields only).
    Null,
    /// A `string`.
    String(String),
    /// An `int`.
    Int(i32),
    /// A `long`.
    Long(i64),
    /// A `double`.
    Double(f64),
    /// A `boolean`.
    Boolean(bool),
    /// A `date`: days since 1970-01-01.
    Date(i32),
    /// A `timestamp-millis`: milliseconds since 1970-01-01T00:00:00Z.
    TimestampMillis(i64),
    /// An enum symbol.
    Enum(String),
}

impl FieldValue {
    /// Whether the value can stand in a field of this kind (`Null` only if nullable).
    pub fn fits(&self, kind: FieldKind, nullable: bool) -> bool {
        if let FieldValue::Null = self {
            return nullable;
        }
        matches!(
            (self, kind),
            (FieldValue::String(_), FieldKind::String)
                | (FieldValue::Int(_), FieldKind::Int)
                | (FieldValue::Long(_), FieldKind::Long)
                | (FieldValue::Double(_), FieldKind::Double)
                | (FieldValue::Boolean(_), FieldKind::Boolean)
                | (FieldValue::Date(_), FieldKind::Date)
                | (FieldValue::TimestampMillis(_), FieldKind::TimestampMillis)
                | (FieldValue::Enum(_), FieldKind::Enum)
        )
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_avro_fast picks the union branch by the serialized type.
        match self {
            FieldValue::Null => serializer.serialize_none(),
            FieldValue::String(s) | FieldValue::Enum(s) => serializer.serialize_str(s),
            FieldValue::Int(v) | FieldValue::Date(v) => serializer.serialize_i32(*v),
            FieldValue::Long(v) | FieldValue::TimestampMillis(v) => serializer.serialize_i64(*v),
            FieldValue::Double(v) => serializer.serialize_f64(*v),
            FieldValue::Boolean(v) => serializer.serialize_bool(*v),
        }
    }
}

/// One record of the dataset: values in schema field order.
#[derive(Clone, PartialEq)]
pub struct DatasetRecord {
    /// The schema's field names, shared by every record of the dataset.
    pub(super) names: Arc<[Box<str>]>,
    pub(super) values: Vec<FieldValue>,
}

/// A value list that does not fit the dataset (a programming error in the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordShapeError {
    /// Wrong number of values.
    #[error("expected {expected} values, got {got}")]
    Arity {
        /// Fields in the schema.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A value of the wrong type, a null in a required field, or an unknown enum symbol.
    #[error("value for field {field} does not fit its {kind} type")]
    Type {
        /// The field name.
        field: String,
        /// Its type.
        kind: FieldKind,
    },
}

impl DatasetRecord {
    /// The value of field `name`, if the schema has it.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        let index = self.names.iter().position(|n| &**n == name)?;
        self.values.get(index)
    }

    /// The values in schema field order.
    pub fn values(&self) -> &[FieldValue] {
        &self.values
    }

    /// The schema's field names, in order.
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// Consumes the record into its values.
    pub fn into_values(self) -> Vec<FieldValue> {
        self.values
    }

    /// The canonical record key from the dataset's key fields (trimmed, case rule applied).
    pub fn key(&self, dataset: &Dataset) -> Result<RecordKey, KeyError> {
        let components =
            dataset
                .key_field_indexes
                .iter()
                .map(|&index| match self.values.get(index) {
                    Some(FieldValue::String(s)) => s.as_str(),
                    // Validation makes key fields required strings; anything else is an empty component.
                    _ => "",
                });
        RecordKey::build(components, &dataset.key_cases)
    }
}

impl fmt::Debug for DatasetRecord {
    /// Field kinds only: records hold health data, which never goes into logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.names.iter().zip(&self.values) {
            let shown = match value {
                FieldValue::Null => "null",
                FieldValue::String(_) => "string(..)",
                FieldValue::Int(_) => "int(..)",
                FieldValue::Long(_) => "long(..)",
                FieldValue::Double(_) => "double(..)",
                FieldValue::Boolean(_) => "boolean(..)",
                FieldValue::Date(_) => "date(..)",
                FieldValue::TimestampMillis(_) => "timestamp-millis(..)",
                FieldValue::Enum(_) => "enum(..)",
            };
            map.entry(name, &format_args!("{shown}"));
        }
        map.finish()
    }
}

impl Serialize for DatasetRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Entries in schema order: serde_avro_fast's fast path, no reordering buffers.
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (name, value) in self.names.iter().zip(&self.values) {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
}

impl Dataset {
    /// A record from values in schema field order, checked against the field types (and
    /// enum symbols) so that encoding it cannot fail on a value.
    pub fn record(&self, values: Vec<FieldValue>) -> Result<DatasetRecord, RecordShapeError> {
        if values.len() != self.fields.len() {
            return Err(RecordShapeError::Arity {
                expected: self.fields.len(),
                got: values.len(),
            });
        }
        for (spec, value) in self.fields.iter().zip(&values) {
            let symbol_ok = match value {
                FieldValue::Enum(symbol) => spec.symbols.contains(symbol),
                _ => true,
            };
            if !symbol_ok || !value.fits(spec.kind, spec.nullable) {
                return Err(RecordShapeError::Type {
                    field: spec.name.to_string(),
                    kind: spec.kind,
                });
            }
        }
        Ok(DatasetRecord {
            names: self.names.clone(),
            values,
        })
    }

    /// Appends the single-object encoding of `record` to `buf`.
    pub fn encode(&self, record: &DatasetRecord, buf: &mut Vec<u8>) -> Result<(), AvroError> {
        self.schema.encode_into(record, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::SINGLE_OBJECT_HEADER_LEN;
    use crate::dataset::fixtures::{dataset, sample};
    use apache_avro::types::Value as AvroValue;

    #[test]
    fn apache_avro_reads_our_bytes() {
        let dataset = dataset();
        let mut bytes = Vec::new();
        dataset.encode(&sample(&dataset), &mut bytes).unwrap();
        let schema = dataset.schema().parsed();
        let value =
            apache_avro::from_avro_datum(schema, &mut &bytes[SINGLE_OBJECT_HEADER_LEN..], None)
                .unwrap();
        let AvroValue::Record(fields) = value else {
            panic!("not a record")
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("patient_id"), AvroValue::String("P-000123".into()));
        assert_eq!(
            get("patient_last_name"),
            AvroValue::Union(1, Box::new(AvroValue::String("Núñez".into())))
        );
        assert_eq!(
            get("patient_first_name"),
            AvroValue::Union(0, Box::new(AvroValue::Null))
        );
        assert_eq!(
            get("patient_dob"),
            AvroValue::Union(1, Box::new(AvroValue::Date(-3650)))
        );
        assert_eq!(
            get("patient_sex"),
            AvroValue::Union(1, Box::new(AvroValue::Enum(1, "M".into())))
        );
        assert_eq!(get("specimen_collection_date"), AvroValue::Date(18_700));
        assert_eq!(
            get("report_generated_at"),
            AvroValue::Union(1, Box::new(AvroValue::TimestampMillis(1_620_000_000_123)))
        );
    }

    #[test]
    fn key_is_built_from_key_fields_with_case_rules() {
        let dataset = dataset();
        let record = sample(&dataset);
        assert_eq!(
            record.key(&dataset).unwrap().as_str(),
            "05D0123456|ACC\\|7|94500-6"
        );
        let mut values = record.into_values();
        let test_code = dataset.key_field_indexes()[2];
        values[test_code] = FieldValue::String("  ".into());
        let blank = dataset.record(values).unwrap();
        assert_eq!(
            blank.key(&dataset),
            Err(KeyError::EmptyComponent { index: 2 })
        );
    }

    #[test]
    fn records_are_checked_against_the_schema() {
        let dataset = dataset();
        let values = sample(&dataset).into_values();
        let mut short = values.clone();
        short.pop();
        assert_eq!(
            dataset.record(short),
            Err(RecordShapeError::Arity {
                expected: 27,
                got: 26
            })
        );
        let mut null_required = values.clone();
        null_required[0] = FieldValue::Null;
        assert!(
            matches!(dataset.record(null_required), Err(RecordShapeError::Type { field, .. }) if field == "patient_id")
        );
        let mut bad_symbol = values;
        bad_symbol[4] = FieldValue::Enum("Male".into());
        assert!(
            matches!(dataset.record(bad_symbol), Err(RecordShapeError::Type { field, .. }) if field == "patient_sex")
        );
    }

    #[test]
    fn debug_output_never_shows_values() {
        let dataset = dataset();
        let shown = format!("{:?}", sample(&dataset));
        assert!(
            shown.contains("patient_last_name") && shown.contains("date(..)"),
            "{shown}"
        );
        assert!(
            !shown.contains("Núñez") && !shown.contains("P-000123"),
            "{shown}"
        );
    }
}
