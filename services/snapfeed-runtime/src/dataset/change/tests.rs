use apache_avro::types::Value;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::*;
use crate::avro::SINGLE_OBJECT_HEADER_LEN;
use crate::dataset::fixtures::{dataset, location, sample, schemas_dir, store, WithoutDeviceId};
use crate::dataset::FieldValue;

fn event(op: ChangeOp) -> ChangeEvent {
    ChangeEvent {
        op,
        key: "P-000123|ACC|7|94500-6".into(),
        version: 2,
        content_hash: "0123456789abcdef0123456789abcdef".into(),
        previous_hash: Some("ffeeddccbbaa99887766554433221100".into()),
        record_schema: "snapfeed.lab.LabResult".into(),
        source: Provenance {
            file_name: "elr.csv".into(),
            file_hash: "ab".repeat(32),
            line: Some(42),
            snapshot_id: "cd".repeat(32),
            stream: "lab-a".into(),
        },
        detected_at: 1_764_000_000_000,
    }
}

/// The fields of the nested record, as a generic Avro reader (apache-avro) sees them.
fn generic_fields(schema: &LoadedSchema, payload: &[u8]) -> Vec<(String, Value)> {
    let mut datum = &payload[SINGLE_OBJECT_HEADER_LEN..];
    match apache_avro::from_avro_datum(schema.parsed(), &mut datum, None).unwrap() {
        Value::Record(fields) => fields,
        other => panic!("not a record: {other:?}"),
    }
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> &'a Value {
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn a_spliced_body_and_an_encoded_record_write_the_same_bytes_and_read_back() {
    let (dataset, store) = (dataset(), store());
    let record = sample(&dataset);
    let mut payload = Vec::new();
    dataset.encode(&record, &mut payload).unwrap();
    let writer = dataset.change_writer(&store).unwrap();
    let body = writer.current_body(&payload).expect("current schema");
    let event = event(ChangeOp::Update);

    let spliced = writer
        .encode(&event, Some(ChangeRecord::Body(body)))
        .unwrap();
    let encoded = writer
        .encode(&event, Some(ChangeRecord::Record(&record)))
        .unwrap();
    assert_eq!(spliced, encoded);
    assert_eq!(spliced[2..10], writer.schema().fingerprint);

    let (decoded, decoded_record) = dataset
        .decode_change(&spliced, &store, &location())
        .unwrap();
    assert_eq!(decoded, event);
    assert_eq!(decoded_record.as_ref(), Some(&record));
    // Decoding into the event type alone skips the nested record.
    let plain: ChangeEvent = store
        .decode(&spliced, ChangeEvent::SCHEMA, &location())
        .unwrap();
    assert_eq!(plain, event);
}

#[test]
fn a_generic_avro_reader_sees_the_record_fields_not_bytes() {
    let (dataset, store) = (dataset(), store());
    let writer = dataset.change_writer(&store).unwrap();
    let bytes = writer
        .encode(
            &event(ChangeOp::Create),
            Some(ChangeRecord::Record(&sample(&dataset))),
        )
        .unwrap();
    let fields = generic_fields(writer.schema(), &bytes);
    let Value::Union(1, record) = field(&fields, "record") else {
        panic!("record is not the non-null branch");
    };
    let Value::Record(record) = &**record else {
        panic!("record is not a record");
    };
    assert_eq!(
        field(record, "patient_id"),
        &Value::String("P-000123".into())
    );
    assert_eq!(
        field(&fields, "key"),
        &Value::String("P-000123|ACC|7|94500-6".into())
    );
    assert_eq!(
        field(&fields, "detected_at"),
        &Value::TimestampMillis(1_764_000_000_000)
    );
}

#[test]
fn a_delete_carries_no_record() {
    let (dataset, store) = (dataset(), store());
    let writer = dataset.change_writer(&store).unwrap();
    let event = event(ChangeOp::Delete);
    let bytes = writer.encode(&event, None).unwrap();
    let (decoded, record) = dataset.decode_change(&bytes, &store, &location()).unwrap();
    assert_eq!((decoded, record), (event, None));
    let fields = generic_fields(writer.schema(), &bytes);
    assert_eq!(
        field(&fields, "record"),
        &Value::Union(0, Box::new(Value::Null))
    );
}

/// A change event in the v1 shape: `record` holds the record's single-object bytes.
struct V1<'a>(&'a ChangeEvent, Option<&'a [u8]>);

impl Serialize for V1<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("op", &self.0.op)?;
        map.serialize_entry("key", &self.0.key)?;
        map.serialize_entry("version", &self.0.version)?;
        map.serialize_entry("content_hash", &self.0.content_hash)?;
        map.serialize_entry("previous_hash", &self.0.previous_hash)?;
        map.serialize_entry("record", &self.1.map(serde_bytes::Bytes::new))?;
        map.serialize_entry("record_schema", &self.0.record_schema)?;
        map.serialize_entry("source", &self.0.source)?;
        map.serialize_entry("detected_at", &self.0.detected_at)?;
        map.end()
    }
}

#[test]
fn an_event_in_the_v1_bytes_shape_still_reads_with_its_record() {
    let (dataset, store) = (dataset(), store());
    let path = schemas_dir().join("history/change_event.v1.avsc");
    let v1 = LoadedSchema::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let record = sample(&dataset);
    let mut payload = Vec::new();
    dataset.encode(&record, &mut payload).unwrap();
    let event = event(ChangeOp::Update);
    let bytes = v1.encode(&V1(&event, Some(&payload))).unwrap();
    assert!(store.by_fingerprint(&v1.fingerprint).is_some());

    let (decoded, decoded_record) = dataset.decode_change(&bytes, &store, &location()).unwrap();
    assert_eq!(decoded, event);
    assert_eq!(decoded_record, Some(record));
    let plain: ChangeEvent = store
        .decode(&bytes, ChangeEvent::SCHEMA, &location())
        .unwrap();
    assert_eq!(plain, event);

    let delete = v1.encode(&V1(&event, None)).unwrap();
    let (_, none) = dataset.decode_change(&delete, &store, &location()).unwrap();
    assert_eq!(none, None);
}

#[test]
fn an_event_nesting_an_older_dataset_version_reads_into_the_current_layout() {
    let (dataset, store) = (dataset(), store());
    // The change event composed with lab_result.v1 (no device_id) is known by fingerprint.
    let older = store
        .all()
        .into_iter()
        .find(|s| {
            s.name == ChangeEvent::SCHEMA
                && s.dataset
                    .as_ref()
                    .is_some_and(|d| d.path.ends_with("history/lab_result.v1.avsc"))
        })
        .expect("change event composed with lab_result v1")
        .clone();
    let record = sample(&dataset);
    #[derive(Serialize)]
    struct Typed<'a> {
        #[serde(flatten)]
        event: &'a ChangeEvent,
        record: Option<WithoutDeviceId<'a>>,
    }
    let event = event(ChangeOp::Create);
    let bytes = older
        .encode(&Typed {
            event: &event,
            record: Some(WithoutDeviceId(&record)),
        })
        .unwrap();
    let (decoded, decoded_record) = dataset.decode_change(&bytes, &store, &location()).unwrap();
    assert_eq!(decoded, event);
    let decoded_record = decoded_record.unwrap();
    assert_eq!(decoded_record.get("device_id"), Some(&FieldValue::Null));
    assert_eq!(decoded_record.get("patient_id"), record.get("patient_id"));
}

#[test]
fn a_dead_letter_nests_its_decoded_change_event() {
    let (dataset, store) = (dataset(), store());
    let record = sample(&dataset);
    let event = event(ChangeOp::Update);
    let letter = DeadLetter {
        change: vec![1, 2, 3],
        key: Some(event.key.clone()),
        version: Some(event.version),
        reason: "http_4xx".into(),
        status: Some(422),
        response_excerpt: None,
        attempts: 1,
        first_attempt_at: Some(1),
        last_attempt_at: Some(1),
        attempt_history: Vec::new(),
        source_topic: "p.changes".into(),
        source_partition: 0,
        source_offset: 9,
        dead_lettered_at: 2,
        redrive_count: 0,
    };
    let bytes = dataset
        .encode_dead_letter(&store, &letter, Some((&event, Some(&record))))
        .unwrap();
    let plain: DeadLetter = store
        .decode(&bytes, DeadLetter::SCHEMA, &location())
        .unwrap();
    assert_eq!(plain, letter);
    let schema = store.writer(&bytes, &location()).unwrap().clone();
    let fields = generic_fields(&schema, &bytes);
    let Value::Union(1, nested) = field(&fields, "event") else {
        panic!("event is null");
    };
    let Value::Record(nested) = &**nested else {
        panic!("event is not a record");
    };
    let Value::Union(1, record_value) = field(nested, "record") else {
        panic!("record is null");
    };
    let Value::Record(record_fields) = &**record_value else {
        panic!("record is not a record");
    };
    assert_eq!(
        field(record_fields, "test_code"),
        &Value::String("94500-6".into())
    );

    let undecodable = dataset.encode_dead_letter(&store, &letter, None).unwrap();
    let fields = generic_fields(&schema, &undecodable);
    assert_eq!(
        field(&fields, "event"),
        &Value::Union(0, Box::new(Value::Null))
    );
}

#[test]
fn with_two_datasets_each_gets_its_own_change_event_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    copy_schemas(&schemas_dir(), dir.path());
    let lab = std::fs::read_to_string(schemas_dir().join("lab_result.avsc")).unwrap();
    let other = lab.replace(
        "\"namespace\": \"snapfeed.lab\"",
        "\"namespace\": \"other.lab\"",
    );
    assert_ne!(lab, other);
    std::fs::write(dir.path().join("other.avsc"), other).unwrap();
    let store = SchemaStore::load_dir(dir.path()).unwrap();
    assert_eq!(
        store.datasets(),
        ["other.lab.LabResult", "snapfeed.lab.LabResult"]
    );

    let error = store.current(ChangeEvent::SCHEMA).unwrap_err();
    assert!(
        matches!(error, AvroError::AmbiguousDataset { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("other.lab.LabResult"), "{error}");
    let lab_events = store
        .current_for(ChangeEvent::SCHEMA, "snapfeed.lab.LabResult")
        .unwrap();
    let other_events = store
        .current_for(ChangeEvent::SCHEMA, "other.lab.LabResult")
        .unwrap();
    assert_ne!(lab_events.fingerprint, other_events.fingerprint);

    // An event nesting the other dataset, read as a lab result change: refused by name.
    let lab_dataset = dataset();
    let bytes = other_events.encode(&event(ChangeOp::Delete)).unwrap();
    let error = lab_dataset
        .decode_change(&bytes, &store, &location())
        .unwrap_err();
    assert!(matches!(error, AvroError::WrongSchema { .. }), "{error}");
    assert!(error.to_string().contains("other.lab.LabResult"), "{error}");
}

fn copy_schemas(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("history")).unwrap();
    for sub in ["", "history"] {
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "avsc") {
                std::fs::copy(&path, to.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
}
