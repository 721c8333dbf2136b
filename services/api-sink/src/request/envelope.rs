//! The change envelope — the `json` profile's body and the `template` profile's context — and
//! the text forms of field values (see [`super`] for the format). Pure functions.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use snapfeed_runtime::dataset::{DatasetRecord, FieldValue};
use snapfeed_runtime::records::{ChangeEvent, ChangeOp};

use super::{field_error, BuildError, DecodedChange};

/// The change envelope (see the module docs).
pub fn envelope(change: DecodedChange<'_>) -> Result<Map<String, Value>, BuildError> {
    let event = change.event;
    let record = match (event.op, change.record) {
        (_, Some(record)) => Value::Object(record_json(record)?),
        (ChangeOp::Delete, None) => Value::Null,
        (op, None) => return Err(BuildError::MissingRecord { op: op.as_str() }),
    };
    let detected_at = timestamp_text(event.detected_at)
        .ok_or_else(|| field_error("detected_at", "timestamp out of range"))?;
    let source = &event.source;
    let mut map = Map::new();
    map.insert("op".into(), event.op.as_str().into());
    map.insert("key".into(), event.key.clone().into());
    map.insert("version".into(), event.version.into());
    map.insert("content_hash".into(), event.content_hash.clone().into());
    map.insert("previous_hash".into(), event.previous_hash.clone().into());
    map.insert("detected_at".into(), detected_at.into());
    map.insert("record_schema".into(), event.record_schema.clone().into());
    map.insert(
        "source".into(),
        serde_json::json!({
            "file_name": source.file_name,
            "file_hash": source.file_hash,
            "line": source.line,
            "snapshot_id": source.snapshot_id,
            "stream": source.stream,
        }),
    );
    map.insert("record".into(), record);
    Ok(map)
}

/// The envelope as JSON bytes — the `json` profile's body: exactly the bytes of
/// `serde_json::to_vec(&Value::Object(envelope(change)?))` (keys in sorted order, as
/// serde_json's map keeps them), written straight from the change instead of through a
/// `Value` tree: this runs once per delivery, and the tree cost ~40 allocations.
pub fn envelope_json(change: DecodedChange<'_>) -> Result<Vec<u8>, BuildError> {
    let event = change.event;
    let record = match (event.op, change.record) {
        (_, Some(record)) => Some(record_fields(record)?),
        (ChangeOp::Delete, None) => None,
        (op, None) => return Err(BuildError::MissingRecord { op: op.as_str() }),
    };
    let detected_at = timestamp_text(event.detected_at)
        .ok_or_else(|| field_error("detected_at", "timestamp out of range"))?;
    let body = EnvelopeBody {
        event,
        detected_at: &detected_at,
        record: record.as_deref(),
    };
    let mut bytes = Vec::with_capacity(1024);
    serde_json::to_writer(&mut bytes, &body)
        .map_err(|_| field_error("record", "cannot be serialized as JSON"))?;
    Ok(bytes)
}

/// A field value as JSON, checked (finite doubles, dates in range) before serializing.
enum FieldJson<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
    Text(String),
}

impl Serialize for FieldJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldJson::Null => serializer.serialize_unit(),
            FieldJson::Str(s) => serializer.serialize_str(s),
            FieldJson::Int(v) => serializer.serialize_i64(*v),
            FieldJson::Double(v) => serializer.serialize_f64(*v),
            FieldJson::Bool(v) => serializer.serialize_bool(*v),
            FieldJson::Text(s) => serializer.serialize_str(s),
        }
    }
}

/// The record's fields sorted by name (the order serde_json's map gives).
fn record_fields(record: &DatasetRecord) -> Result<Vec<(&str, FieldJson<'_>)>, BuildError> {
    let mut fields = Vec::with_capacity(record.values().len());
    for (name, value) in record.names().iter().zip(record.values()) {
        let json = match value {
            FieldValue::Null => FieldJson::Null,
            FieldValue::String(s) | FieldValue::Enum(s) => FieldJson::Str(s),
            FieldValue::Int(v) => FieldJson::Int(i64::from(*v)),
            FieldValue::Long(v) => FieldJson::Int(*v),
            FieldValue::Double(v) if v.is_finite() => FieldJson::Double(*v),
            FieldValue::Double(_) => {
                return Err(field_error(
                    name,
                    "a double JSON cannot hold (NaN or infinite)",
                ))
            }
            FieldValue::Boolean(v) => FieldJson::Bool(*v),
            FieldValue::Date(days) => FieldJson::Text(
                date_text(*days).ok_or_else(|| field_error(name, "date out of range"))?,
            ),
            FieldValue::TimestampMillis(ms) => FieldJson::Text(
                timestamp_text(*ms).ok_or_else(|| field_error(name, "timestamp out of range"))?,
            ),
        };
        fields.push((&**name, json));
    }
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    Ok(fields)
}

struct EnvelopeBody<'a> {
    event: &'a ChangeEvent,
    detected_at: &'a str,
    record: Option<&'a [(&'a str, FieldJson<'a>)]>,
}

struct RecordBody<'a>(&'a [(&'a str, FieldJson<'a>)]);

impl Serialize for RecordBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

struct SourceBody<'a>(&'a snapfeed_runtime::records::Provenance);

impl Serialize for SourceBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let source = self.0;
        // Sorted: file_hash, file_name, line, snapshot_id, stream.
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("file_hash", &source.file_hash)?;
        map.serialize_entry("file_name", &source.file_name)?;
        map.serialize_entry("line", &source.line)?;
        map.serialize_entry("snapshot_id", &source.snapshot_id)?;
        map.serialize_entry("stream", &source.stream)?;
        map.end()
    }
}

impl Serialize for EnvelopeBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        // Keys in sorted order, as in `envelope`'s map.
        let mut map = serializer.serialize_map(Some(9))?;
        map.serialize_entry("content_hash", &event.content_hash)?;
        map.serialize_entry("detected_at", self.detected_at)?;
        map.serialize_entry("key", &event.key)?;
        map.serialize_entry("op", event.op.as_str())?;
        map.serialize_entry("previous_hash", &event.previous_hash)?;
        map.serialize_entry("record", &self.record.map(RecordBody))?;
        map.serialize_entry("record_schema", &event.record_schema)?;
        map.serialize_entry("source", &SourceBody(&event.source))?;
        map.serialize_entry("version", &event.version)?;
        map.end()
    }
}

/// A dataset record as a JSON object, field → value.
pub fn record_json(record: &DatasetRecord) -> Result<Map<String, Value>, BuildError> {
    let mut map = Map::with_capacity(record.values().len());
    for (name, value) in record.names().iter().zip(record.values()) {
        let json = match value {
            FieldValue::Null => Value::Null,
            FieldValue::String(s) | FieldValue::Enum(s) => Value::String(s.clone()),
            FieldValue::Int(v) => Value::from(*v),
            FieldValue::Long(v) => Value::from(*v),
            FieldValue::Double(v) => serde_json::Number::from_f64(*v)
                .map(Value::Number)
                .ok_or_else(|| field_error(name, "a double JSON cannot hold (NaN or infinite)"))?,
            FieldValue::Boolean(v) => Value::Bool(*v),
            FieldValue::Date(days) => Value::String(
                date_text(*days).ok_or_else(|| field_error(name, "date out of range"))?,
            ),
            FieldValue::TimestampMillis(ms) => Value::String(
                timestamp_text(*ms).ok_or_else(|| field_error(name, "timestamp out of range"))?,
            ),
        };
        map.insert(name.to_string(), json);
    }
    Ok(map)
}

/// A field value as text (`None` for null): what CommCare properties and case names hold.
pub fn value_text(name: &str, value: &FieldValue) -> Result<Option<String>, BuildError> {
    Ok(Some(match value {
        FieldValue::Null => return Ok(None),
        FieldValue::String(s) | FieldValue::Enum(s) => s.clone(),
        FieldValue::Int(v) => v.to_string(),
        FieldValue::Long(v) => v.to_string(),
        FieldValue::Double(v) if v.is_finite() => v.to_string(),
        FieldValue::Double(_) => return Err(field_error(name, "a double that is NaN or infinite")),
        FieldValue::Boolean(v) => v.to_string(),
        FieldValue::Date(days) => {
            date_text(*days).ok_or_else(|| field_error(name, "date out of range"))?
        }
        FieldValue::TimestampMillis(ms) => {
            timestamp_text(*ms).ok_or_else(|| field_error(name, "timestamp out of range"))?
        }
    }))
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
fn date_text(days: i32) -> Option<String> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let date = epoch.checked_add_signed(chrono::TimeDelta::try_days(i64::from(days))?)?;
    if (0..=9999).contains(&date.year()) {
        // What `%Y-%m-%d` gives for these years, without parsing the format on every value.
        return Some(format!(
            "{:04}-{:02}-{:02}",
            date.year(),
            date.month(),
            date.day()
        ));
    }
    Some(date.format("%Y-%m-%d").to_string())
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
fn timestamp_text(millis: i64) -> Option<String> {
    DateTime::from_timestamp_millis(millis)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use snapfeed_runtime::avro::SchemaStore;
    use snapfeed_runtime::dataset::DatasetMapping;

    use super::super::tests::{change, decoded};
    use super::*;

    #[test]
    fn values_json_cannot_hold_fail_naming_the_field_only() {
        let schema = r#"{"type": "record", "name": "Reading", "namespace": "t", "fields": [
            {"name": "id", "type": "string"}, {"name": "ratio", "type": ["null", "double"], "default": null}]}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reading.avsc"), schema).unwrap();
        std::fs::write(
            dir.path().join("reading.toml"),
            "schema = \"reading.avsc\"\nkey_fields = [\"id\"]\n[[field]]\nname = \"id\"\n\
             column = \"ID\"\n[[field]]\nname = \"ratio\"\ncolumn = \"Ratio\"\n",
        )
        .unwrap();
        let store = SchemaStore::load_dir(dir.path()).unwrap();
        let dataset = DatasetMapping::load(&dir.path().join("reading.toml"), &store).unwrap();
        let record = dataset
            .record(vec![
                FieldValue::String("r1".into()),
                FieldValue::Double(f64::NAN),
            ])
            .unwrap();
        let event = change(ChangeOp::Create, "r1", 1);
        let error = envelope(decoded(&event, Some(&record))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field ratio: a double JSON cannot hold (NaN or infinite)"
        );
        let error = envelope_json(decoded(&event, Some(&record))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field ratio: a double JSON cannot hold (NaN or infinite)"
        );
    }

    #[test]
    fn the_direct_json_body_is_byte_for_byte_the_envelope() {
        let dataset = super::super::tests::lab_dataset();
        let record = super::super::tests::sample_record(&dataset);
        for (op, version, record) in [
            (ChangeOp::Create, 1, Some(&record)),
            (ChangeOp::Update, 2, Some(&record)),
            (ChangeOp::Delete, 3, None),
        ] {
            let event = change(op, "05D|ACC|94500-6", version);
            let change = decoded(&event, record);
            let expected = serde_json::to_vec(&Value::Object(envelope(change).unwrap())).unwrap();
            assert_eq!(
                String::from_utf8(envelope_json(change).unwrap()).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{op:?}"
            );
        }
        let event = change(ChangeOp::Update, "k", 2);
        assert_eq!(
            envelope_json(decoded(&event, None)).unwrap_err(),
            BuildError::MissingRecord { op: "UPDATE" }
        );
    }

    #[test]
    fn values_have_one_text_form() {
        let text = |value: FieldValue| value_text("f", &value).unwrap();
        assert_eq!(text(FieldValue::Null), None);
        assert_eq!(text(FieldValue::Date(0)).as_deref(), Some("1970-01-01"));
        assert_eq!(text(FieldValue::Date(-1)).as_deref(), Some("1969-12-31"));
        assert_eq!(
            text(FieldValue::Date(18_700)).as_deref(),
            Some("2021-03-14")
        );
        assert_eq!(
            text(FieldValue::Date(-719_528)).as_deref(),
            Some("0000-01-01")
        );
        assert_eq!(
            text(FieldValue::TimestampMillis(-1)).as_deref(),
            Some("1969-12-31T23:59:59.999Z")
        );
        assert_eq!(text(FieldValue::Double(2.5)).as_deref(), Some("2.5"));
        assert_eq!(text(FieldValue::Long(-7)).as_deref(), Some("-7"));
        assert_eq!(text(FieldValue::Boolean(true)).as_deref(), Some("true"));
        assert_eq!(text(FieldValue::Enum("F".into())).as_deref(), Some("F"));
        let error = value_text("ratio", &FieldValue::Double(f64::INFINITY)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field ratio: a double that is NaN or infinite"
        );
        assert!(value_text("d", &FieldValue::Date(i32::MAX)).is_err());
    }
}
