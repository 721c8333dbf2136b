//! The schemas in `schemas/` and the framing every service relies on: they parse, they evolve
//! by the documented rule, every record kind round-trips, other Avro readers can read what we
//! write, and bad payloads are errors that say where they came from.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use snapfeed_runtime::avro::{AvroError, LoadedSchema, MessageLocation, SchemaStore};
use snapfeed_runtime::records::*;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn store() -> SchemaStore {
    SchemaStore::load_dir(&schemas_dir()).unwrap()
}

fn at(offset: i64) -> MessageLocation {
    MessageLocation {
        topic: "lab-results.changes".into(),
        partition: 2,
        offset,
    }
}

fn change_event(op: ChangeOp, version: i64) -> ChangeEvent {
    ChangeEvent {
        op,
        key: "05D2222542|ACC1|94500-6".into(),
        version,
        content_hash: "0123456789abcdef0123456789abcdef".into(),
        previous_hash: (version > 1).then(|| "ffeeddccbbaa99887766554433221100".into()),
        record_schema: "snapfeed.lab.LabResult".into(),
        source: Provenance {
            file_name: "elr-2026-11-26.csv".into(),
            file_hash: "ab".repeat(32),
            line: Some(42),
            snapshot_id: "ab".repeat(32),
            stream: "lab-a".into(),
        },
        detected_at: 1_764_000_000_000,
    }
}

#[test]
fn every_schema_parses_and_every_record_kind_is_present() {
    let store = store();
    for name in [
        ChangeEvent::SCHEMA,
        DetectorState::SCHEMA,
        StreamProgress::SCHEMA,
        StaleSnapshot::SCHEMA,
        FileLedgerEntry::SCHEMA,
        RejectedRow::SCHEMA,
        SnapshotEnd::SCHEMA,
        DeliveryReceipt::SCHEMA,
        DeadLetter::SCHEMA,
        "snapfeed.lab.LabResult",
    ] {
        store
            .current(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn current_lab_result_reads_data_written_by_its_previous_version() {
    let store = store();
    let v1 = LoadedSchema::parse(
        &std::fs::read_to_string(schemas_dir().join("history/lab_result.v1.avsc")).unwrap(),
        Path::new("history/lab_result.v1.avsc"),
    )
    .unwrap();
    let current = store.current("snapfeed.lab.LabResult").unwrap();
    assert_ne!(v1.fingerprint, current.fingerprint);

    let mut row = serde_json::Map::new();
    for field in v1_field_names(&v1) {
        row.insert(field, serde_json::Value::Null);
    }
    for (field, value) in [
        ("patient_id", serde_json::json!("P-1")),
        ("facility_clia", serde_json::json!("05D2222542")),
        ("specimen_collection_date", serde_json::json!(18_700)),
        ("test_name", serde_json::json!("SARS-CoV-2 RNA")),
        ("test_code", serde_json::json!("94500-6")),
        ("test_result", serde_json::json!("Detected")),
        ("accession_number", serde_json::json!("ACC1")),
        ("patient_sex", serde_json::json!("F")),
    ] {
        row.insert(field.into(), value);
    }
    let written = v1.encode(&row).unwrap();

    #[derive(Debug, serde::Deserialize)]
    struct Reader {
        patient_id: String,
        patient_sex: Option<String>,
        specimen_collection_date: i32,
        accession_number: String,
        /// Added in v2 with default null.
        device_id: Option<String>,
    }
    let read: Reader = store
        .decode(&written, "snapfeed.lab.LabResult", &at(0))
        .unwrap();
    assert_eq!(read.patient_id, "P-1");
    assert_eq!(read.patient_sex.as_deref(), Some("F"));
    assert_eq!(read.specimen_collection_date, 18_700);
    assert_eq!(read.accession_number, "ACC1");
    assert_eq!(read.device_id, None);
}

#[test]
fn a_stream_progress_entry_of_the_first_version_reads_with_an_unknown_first_offset() {
    let store = store();
    let v1 = LoadedSchema::parse(
        &std::fs::read_to_string(schemas_dir().join("history/stream_progress.v1.avsc")).unwrap(),
        Path::new("history/stream_progress.v1.avsc"),
    )
    .unwrap();
    let written = v1
        .encode(&serde_json::json!({
            "stream": "lab-a",
            "snapshot_id": "s-1",
            "snapshot_time": 1_796_293_800_000_i64,
            "file_name": "elr_20261203_103000.csv",
        }))
        .unwrap();
    let read: StreamProgress = store
        .decode(&written, StreamProgress::SCHEMA, &at(0))
        .unwrap();
    assert_eq!(read.snapshot_id, "s-1");
    assert_eq!(read.first_offset, -1, "unknown: every older record is late");
}

#[test]
fn a_detector_state_entry_of_the_first_version_reads_without_a_tracked_hash() {
    let store = store();
    let v1 = LoadedSchema::parse(
        &std::fs::read_to_string(schemas_dir().join("history/detector_state.v1.avsc")).unwrap(),
        Path::new("history/detector_state.v1.avsc"),
    )
    .unwrap();
    assert_ne!(
        v1.fingerprint,
        store.current(DetectorState::SCHEMA).unwrap().fingerprint
    );
    let written = v1
        .encode(&serde_json::json!({
            "content_hash": "ab".repeat(16),
            "version": 3,
            "stream": "lab-a",
            "first_seen_at": 1_796_293_800_000_i64,
            "last_changed_at": 1_796_293_900_000_i64,
            "last_snapshot_id": "s-1",
            "deleted": false,
        }))
        .unwrap();
    let read: DetectorState = store
        .decode(&written, DetectorState::SCHEMA, &at(0))
        .unwrap();
    assert_eq!((read.version, read.tracked_hash), (3, None));
}

#[test]
fn a_stale_snapshot_entry_round_trips_under_its_reserved_key() {
    let store = store();
    let stale = StaleSnapshot {
        stream: "lab-a".into(),
        snapshot_id: "s-0930".into(),
        file_name: "elr_20261203_093000.csv".into(),
        snapshot_time: 1_796_290_200_000,
        newest_snapshot_id: "s-1000".into(),
        newest_snapshot_time: 1_796_292_000_000,
        rows_in_partition: 1_234,
        rows_passed_over: 1_000,
        decided_at: 1_796_293_000_000,
    };
    let bytes = store
        .current(StaleSnapshot::SCHEMA)
        .unwrap()
        .encode(&stale)
        .unwrap();
    let back: StaleSnapshot = store.decode(&bytes, StaleSnapshot::SCHEMA, &at(3)).unwrap();
    assert_eq!(back, stale);
    let key = stale_snapshot_key("s-0930");
    assert_eq!(key.strip_prefix(STALE_SNAPSHOT_KEY_PREFIX), Some("s-0930"));
    assert!(key.strip_prefix(STREAM_PROGRESS_KEY_PREFIX).is_none());
}

fn v1_field_names(schema: &LoadedSchema) -> Vec<String> {
    match schema.parsed() {
        apache_avro::Schema::Record(record) => {
            record.fields.iter().map(|f| f.name.clone()).collect()
        }
        _ => unreachable!(),
    }
}

#[test]
fn an_incompatible_history_version_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("history")).unwrap();
    std::fs::write(
        dir.path().join("thing.avsc"),
        r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"n","type":"string"}]}"#,
    )
    .unwrap();
    // v1 had `n` as a record type the current string cannot read.
    std::fs::write(
        dir.path().join("history/thing.v1.avsc"),
        r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"n","type":{"type":"array","items":"int"}}]}"#,
    )
    .unwrap();
    let error = SchemaStore::load_dir(dir.path()).unwrap_err();
    assert!(matches!(error, AvroError::Incompatible { .. }), "{error}");
    assert!(error.to_string().contains("thing.v1.avsc"), "{error}");
}

/// A copy of `schemas/` (and `history/`) in a temporary directory.
fn copy_of_schemas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    snapfeed_harness::schemas::copy_schemas(dir.path());
    dir
}

#[test]
fn an_incompatible_dataset_history_is_named_as_itself_not_as_a_composition() {
    let dir = copy_of_schemas();
    let lab = std::fs::read_to_string(schemas_dir().join("lab_result.avsc")).unwrap();
    let mut v0: serde_json::Value = serde_json::from_str(&lab).unwrap();
    // patient_id once an int: the current string cannot read it.
    for field in v0["fields"].as_array_mut().unwrap() {
        if field["name"] == "patient_id" {
            field["type"] = "int".into();
        }
    }
    std::fs::write(
        dir.path().join("history/lab_result.v0.avsc"),
        v0.to_string(),
    )
    .unwrap();
    let error = SchemaStore::load_dir(dir.path()).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, AvroError::Incompatible { .. }), "{text}");
    assert!(text.contains("lab_result.v0.avsc cannot be read"), "{text}");
    assert!(!text.contains("change_event"), "{text}");
}

#[test]
fn a_history_version_without_a_current_schema_of_its_name_is_refused() {
    let dir = copy_of_schemas();
    std::fs::write(
        dir.path().join("history/gone.v1.avsc"),
        r#"{"type":"record","name":"Gone","namespace":"snapfeed","fields":[]}"#,
    )
    .unwrap();
    let error = SchemaStore::load_dir(dir.path()).unwrap_err();
    assert!(error.to_string().contains("gone.v1.avsc"), "{error}");
    assert!(error.to_string().contains("snapfeed.Gone"), "{error}");
}

#[test]
fn a_template_whose_fields_the_writer_does_not_know_stops_the_writer_at_start() {
    let dir = copy_of_schemas();
    let path = dir.path().join("change_event.avsc");
    let mut template: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    template["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "reviewer", "type": ["null", "string"], "default": null}
        ));
    std::fs::write(&path, template.to_string()).unwrap();
    // The store loads (the field is a compatible addition) …
    let store = SchemaStore::load_dir(dir.path()).unwrap();
    let mapping =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/lab_results.mapping.toml");
    let dataset = snapfeed_runtime::dataset::DatasetMapping::load(&mapping, &store).unwrap();
    // … but the writer would write it as null for ever: it refuses, naming the field.
    let error = dataset.change_writer(&store).unwrap_err().to_string();
    assert!(error.contains("reviewer"), "{error}");
    assert!(error.contains("change_event.avsc"), "{error}");
}

#[test]
fn single_object_encoding_is_readable_by_apache_avro() {
    let store = store();
    let schema = store.current(ChangeEvent::SCHEMA).unwrap();
    let event = change_event(ChangeOp::Update, 3);
    let bytes = schema.encode(&event).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(&bytes[2..10], &schema.fingerprint);
    let value = apache_avro::from_avro_datum(schema.parsed(), &mut &bytes[10..], None).unwrap();
    let apache_avro::types::Value::Record(fields) = value else {
        panic!("not a record")
    };
    assert_eq!(
        fields[0],
        (
            "op".into(),
            apache_avro::types::Value::Enum(1, "UPDATE".into())
        )
    );
    assert_eq!(
        fields[2],
        ("version".into(), apache_avro::types::Value::Long(3))
    );
}

#[test]
fn unknown_fingerprint_names_topic_partition_offset() {
    let store = store();
    let mut bytes = store
        .current(ChangeEvent::SCHEMA)
        .unwrap()
        .encode(&change_event(ChangeOp::Create, 1))
        .unwrap();
    bytes[2..10].copy_from_slice(&[9, 9, 9, 9, 9, 9, 9, 9]);
    let error = store
        .decode::<ChangeEvent>(&bytes, ChangeEvent::SCHEMA, &at(17))
        .unwrap_err();
    assert!(matches!(error, AvroError::UnknownFingerprint { .. }));
    let text = error.to_string();
    assert!(text.contains("lab-results.changes/2@17"), "{text}");
    assert!(text.contains("0909090909090909"), "{text}");
}

#[test]
fn corrupt_payloads_are_errors_with_location_never_panics() {
    let store = store();
    let good = store
        .current(ChangeEvent::SCHEMA)
        .unwrap()
        .encode(&ChangeEvent {
            key: "patient Jane Doe".into(),
            ..change_event(ChangeOp::Create, 1)
        })
        .unwrap();
    for cut in [0, 1, 5, 10, 11, good.len() / 2, good.len() - 1] {
        let error = store
            .decode::<ChangeEvent>(&good[..cut], ChangeEvent::SCHEMA, &at(5))
            .unwrap_err();
        assert!(
            matches!(error, AvroError::Corrupt { .. }),
            "cut at {cut}: {error}"
        );
        let text = error.to_string();
        assert!(text.contains("lab-results.changes/2@5"), "{text}");
        assert!(
            !text.contains("Jane"),
            "payload leaked into the error: {text}"
        );
    }
    let garbage = b"\x01\x02not avro at all";
    assert!(matches!(
        store.decode::<ChangeEvent>(garbage, ChangeEvent::SCHEMA, &at(6)),
        Err(AvroError::Corrupt { .. })
    ));
    // A leading 00 is the Confluent framing: its id cannot be looked up without a registry.
    let framed = b"\x00\x01not avro at all";
    assert!(matches!(
        store.decode::<ChangeEvent>(framed, ChangeEvent::SCHEMA, &at(6)),
        Err(AvroError::UnknownRegistryId {
            id: 0x016e_6f74,
            ..
        })
    ));
    assert!(matches!(
        store.decode::<ChangeEvent>(b"\x00\x01", ChangeEvent::SCHEMA, &at(6)),
        Err(AvroError::Corrupt { .. })
    ));
}

#[test]
fn a_payload_of_another_record_kind_is_named() {
    let store = store();
    let state = DetectorState {
        content_hash: "00".repeat(16),
        version: 1,
        stream: "lab-a".into(),
        first_seen_at: 1,
        last_changed_at: 1,
        last_snapshot_id: "s".into(),
        deleted: false,
        tracked_hash: None,
    };
    let bytes = store
        .current(DetectorState::SCHEMA)
        .unwrap()
        .encode(&state)
        .unwrap();
    let error = store
        .decode::<ChangeEvent>(&bytes, ChangeEvent::SCHEMA, &at(1))
        .unwrap_err();
    assert!(
        error.to_string().contains("snapfeed.DetectorState"),
        "{error}"
    );
}

fn round_trip<T>(value: &T) -> T
where
    T: AvroRecord + serde::Serialize + for<'a> serde::Deserialize<'a>,
{
    let store = store();
    let bytes = store.current(T::SCHEMA).unwrap().encode(value).unwrap();
    store.decode(&bytes, T::SCHEMA, &at(0)).unwrap()
}

#[test]
fn every_record_kind_round_trips() {
    let ledger = FileLedgerEntry {
        file_hash: "ab".repeat(32),
        file_name: "f.csv".into(),
        stream: "lab-a".into(),
        snapshot_id: "s1".into(),
        status: FileStatus::InProgress,
        rows_committed: 5000,
        rows_sent: 4990,
        rows_rejected: 10,
        rows_total: None,
        bytes: 123_456,
        started_at: 1,
        updated_at: 2,
        error: None,
    };
    assert_eq!(round_trip(&ledger), ledger);
    let reject = RejectedRow {
        file_name: "f.csv".into(),
        file_hash: "ab".repeat(32),
        snapshot_id: "s1".into(),
        stream: "lab-a".into(),
        line: 7,
        column: Some("Specimen_Collection_Date".into()),
        reason: "bad_date".into(),
        detail: "matches none of %m/%d/%Y, %Y-%m-%d".into(),
        raw_line: "a,b,c".into(),
        raw_truncated: false,
        rejected_at: 3,
    };
    assert_eq!(round_trip(&reject), reject);
    let end = SnapshotEnd {
        snapshot_id: "s1".into(),
        stream: "lab-a".into(),
        file_hash: "ab".repeat(32),
        file_name: "f.csv".into(),
        partition: 4,
        rows_in_partition: 81_234,
        rows_total: 500_000,
        completed_at: 9,
    };
    assert_eq!(round_trip(&end), end);
    let receipt = DeliveryReceipt {
        key: "k".into(),
        version: 2,
        op: "UPDATE".into(),
        status: 201,
        attempts: 3,
        latency_ms: 1500,
        response_id: Some("case-9".into()),
        idempotency_key: "ik".into(),
        source_partition: 1,
        source_offset: 99,
        delivered_at: 10,
    };
    assert_eq!(round_trip(&receipt), receipt);
}

fn arb_dead_letter() -> impl Strategy<Value = DeadLetter> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::option::of("[a-zA-Z0-9|\\\\]{1,20}"),
        proptest::option::of(any::<i64>()),
        proptest::option::of(100i32..600),
        proptest::collection::vec(
            (
                any::<i64>(),
                proptest::option::of(100i32..600),
                proptest::option::of("[a-z_]{1,12}"),
            ),
            0..5,
        ),
        any::<i32>(),
    )
        .prop_map(
            |(change, key, version, status, history, redrives)| DeadLetter {
                change,
                key,
                version,
                reason: "http_4xx".into(),
                status,
                response_excerpt: Some("{\"error\":\"bad\"}".into()),
                attempts: history.len() as i32,
                first_attempt_at: history.first().map(|h| h.0),
                last_attempt_at: history.last().map(|h| h.0),
                attempt_history: history
                    .into_iter()
                    .map(|(at, status, error)| Attempt { at, status, error })
                    .collect(),
                source_topic: "p.changes".into(),
                source_partition: 0,
                source_offset: 1,
                dead_lettered_at: 2,
                redrive_count: redrives,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn change_events_round_trip(version in 1i64..1_000_000, line in proptest::option::of(1i64..10_000_000), op in 0u8..3) {
        let op = [ChangeOp::Create, ChangeOp::Update, ChangeOp::Delete][op as usize];
        let mut event = change_event(op, version);
        event.source.line = line;
        prop_assert_eq!(round_trip(&event), event);
    }

    #[test]
    fn dead_letters_round_trip(letter in arb_dead_letter()) {
        prop_assert_eq!(round_trip(&letter), letter);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let store = store();
        let _ = store.decode::<ChangeEvent>(&bytes, ChangeEvent::SCHEMA, &at(0));
        let mut framed = vec![0xC3, 0x01];
        framed.extend_from_slice(&store.current(ChangeEvent::SCHEMA).unwrap().fingerprint);
        framed.extend_from_slice(&bytes);
        let _ = store.decode::<ChangeEvent>(&framed, ChangeEvent::SCHEMA, &at(0));
    }
}

#[test]
fn fingerprints_match_the_java_implementation() {
    // SchemaNormalization.parsingFingerprint64 of "int" is 0x7275d51a3f395c8f (little-endian here).
    let int: serde_avro_fast::Schema = r#""int""#.parse().unwrap();
    assert_eq!(
        int.rabin_fingerprint(),
        &0x7275_d51a_3f39_5c8fu64.to_le_bytes()
    );
    // And for schemas with logical types, the values fastavro 1.13 computes: the change event
    // composed with lab_result.avsc (as `schemas --out` writes it), and its v1 (bytes) shape.
    let store = store();
    let change = store.current(ChangeEvent::SCHEMA).unwrap();
    assert_eq!(
        snapfeed_runtime::avro::hex(&change.fingerprint),
        "4c51da52c6e9d34c"
    );
    let v1 = [0x3c, 0xc1, 0xaf, 0xa5, 0x28, 0x05, 0x50, 0x09];
    assert!(store
        .by_fingerprint(&v1)
        .is_some_and(|s| s.dataset.is_none()));
}

#[test]
fn a_stream_progress_entry_round_trips_under_its_reserved_key() {
    let store = store();
    let progress = StreamProgress {
        stream: "lab-a".into(),
        snapshot_id: "cd".repeat(32),
        snapshot_time: 1_796_293_800_000,
        file_name: "elr_20261203_103000.csv".into(),
        first_offset: 4_711,
    };
    let bytes = store
        .current(StreamProgress::SCHEMA)
        .unwrap()
        .encode(&progress)
        .unwrap();
    let location = snapfeed_runtime::avro::MessageLocation {
        topic: "p.state".into(),
        partition: 0,
        offset: 0,
    };
    let back: StreamProgress = store
        .decode(&bytes, StreamProgress::SCHEMA, &location)
        .unwrap();
    assert_eq!(back, progress);
    let key = stream_progress_key("lab-a");
    assert!(key.starts_with('\0'), "no record key starts with NUL");
    assert_eq!(key.strip_prefix(STREAM_PROGRESS_KEY_PREFIX), Some("lab-a"));
}

#[test]
fn a_schemas_directory_from_before_nesting_is_refused_at_start() {
    let dir = copy_of_schemas();
    for name in ["change_event", "dead_letter"] {
        let history = dir.path().join(format!("history/{name}.v1.avsc"));
        std::fs::rename(&history, dir.path().join(format!("{name}.avsc"))).unwrap();
    }
    let store = SchemaStore::load_dir(dir.path()).unwrap();
    let mapping =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/lab_results.mapping.toml");
    let dataset = snapfeed_runtime::dataset::DatasetMapping::load(&mapping, &store).unwrap();
    let error = dataset.check_compositions(&store).unwrap_err().to_string();
    assert!(error.contains("change_event.avsc"), "{error}");
    // With the change event composed but the dead letter still old: named too.
    std::fs::copy(
        schemas_dir().join("change_event.avsc"),
        dir.path().join("change_event.avsc"),
    )
    .unwrap();
    let half = SchemaStore::load_dir(dir.path()).unwrap();
    let error = dataset.check_compositions(&half).unwrap_err().to_string();
    assert!(error.contains("dead_letter.avsc"), "{error}");
    assert!(error.contains("predates nested records"), "{error}");
    assert!(dataset.check_compositions(&self::store()).is_ok());
}
