//! `[schema_registry]` against the harness's stub registry (Confluent REST subset): schemas
//! registered at start under their subjects, values framed `00` + id and read back, both
//! framings read side by side; a registry down at start retried until it answers; 5xx
//! mid-run retried; an incompatible subject, a missing registration and an unknown id each
//! stop with an error naming what was wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use snapfeed_harness::generator::{Snapshot, WriteOptions};
use snapfeed_harness::schemas::{lab_results_mapping, load_dataset, schemas_dir};
use snapfeed_harness::snapshot_records::snapshot_records;
use snapfeed_harness::stub_registry::StubRegistry;
use snapfeed_runtime::avro::registry::{
    register_pipeline, subjects, RegistrationError, Registry, SchemaRegistryConfig, SubjectStrategy,
};
use snapfeed_runtime::avro::{AvroError, LoadedSchema, MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{ChangeRecord, Dataset, DatasetRecord};
use snapfeed_runtime::preflight::registry_check;
use snapfeed_runtime::records::{AvroRecord, ChangeEvent, ChangeOp, Provenance, SnapshotEnd};
use snapfeed_runtime::shutdown;
use snapfeed_runtime::topics::{TopicNameOverrides, TopicNames};

fn config(url: &str, extra: &str) -> SchemaRegistryConfig {
    toml::from_str(&format!(
        "url = {url:?}\nrequest_timeout_ms = 2000\n{extra}"
    ))
    .unwrap()
}

fn topics() -> TopicNames {
    TopicNames::resolve("lab", &TopicNameOverrides::default())
}

fn location() -> MessageLocation {
    MessageLocation {
        topic: "lab.changes".into(),
        partition: 0,
        offset: 7,
    }
}

/// A store and dataset with a registry client for `url` attached.
fn store_with(config: &SchemaRegistryConfig) -> (Arc<SchemaStore>, Dataset) {
    let (mut store, dataset) = load_dataset(&schemas_dir(), &lab_results_mapping());
    store.attach_registry(Registry::start(config).unwrap());
    (Arc::new(store), dataset)
}

/// A few generated records, as file-source writes them (single-object).
fn records(dataset: &Dataset, store: &SchemaStore) -> Vec<DatasetRecord> {
    let snapshot = Snapshot::initial(5, 11);
    let records = snapshot_records(&snapshot, &WriteOptions::default(), dataset).unwrap();
    records
        .records
        .iter()
        .map(|r| dataset.decode(&r.payload, store, &location()).unwrap())
        .collect()
}

fn event(key: &str) -> ChangeEvent {
    ChangeEvent {
        op: ChangeOp::Create,
        key: key.into(),
        version: 1,
        content_hash: "00".repeat(16),
        previous_hash: None,
        record_schema: "lab.LabResult".into(),
        source: Provenance {
            file_name: "elr.csv".into(),
            file_hash: "ab".repeat(32),
            line: Some(2),
            snapshot_id: "s1".into(),
            stream: "elr".into(),
        },
        detected_at: 1_700_000_000_000,
    }
}

async fn register(
    registry: &StubRegistry,
    extra: &str,
) -> (Arc<SchemaStore>, Dataset, Result<(), RegistrationError>) {
    let config = config(&registry.url(), extra);
    let (store, dataset) = store_with(&config);
    let (_trigger, shutdown) = shutdown::channel();
    let client = store.registry().unwrap().clone();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        register_pipeline(&client, &store, &topics(), dataset.schema_name(), &shutdown),
    )
    .await
    .expect("registration ends");
    (store, dataset, result)
}

fn id_of(payload: &[u8]) -> u32 {
    assert_eq!(payload[0], 0, "Confluent magic byte");
    u32::from_be_bytes(payload[1..5].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_written_kind_is_registered_and_values_are_framed_with_its_id() {
    let registry = StubRegistry::start().await;
    let (store, dataset, result) = register(&registry, "").await;
    result.unwrap();
    let topics = topics();
    // One subject per topic with one record kind, one per kind on the mixed topics.
    let mut expected: Vec<String> = [
        "lab.changes-value",
        "lab.files-value",
        "lab.rejects-value",
        "lab.deliveries-value",
        "lab.dead-letters-value",
        "lab.snapshots-snapfeed.lab.LabResult",
        "lab.snapshots-snapfeed.SnapshotEnd",
        "lab.state-snapfeed.DetectorState",
        "lab.state-snapfeed.StreamProgress",
        "lab.state-snapfeed.StaleSnapshot",
        "lab.state-snapfeed.StateLayout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.sort();
    let mut registered = registry.subjects();
    registered.sort();
    assert_eq!(registered, expected);
    assert_eq!(
        subjects(
            &store,
            &topics,
            dataset.schema_name(),
            SubjectStrategy::TopicName,
            None
        )
        .unwrap()
        .len(),
        11
    );

    // A change event: framed with the id the registry gave `<changes>-value`, and the
    // registry's text is the composed schema (a generic reader sees the nested record).
    let writer = dataset.change_writer(&store).unwrap();
    let record = &records(&dataset, &store)[0];
    let bytes = writer
        .encode(&event("k1"), Some(ChangeRecord::Record(record)))
        .unwrap();
    let id = id_of(&bytes);
    assert_eq!(registry.subject_ids("lab.changes-value"), vec![id]);
    let text = registry.schema_text(id).unwrap();
    let registered: LoadedSchema = LoadedSchema::parse(&text, Path::new("registry")).unwrap();
    assert_eq!(registered.fingerprint, writer.schema().fingerprint);
    assert!(text.contains("LabResult"), "nested record named");
    let (decoded, nested) = dataset.decode_change(&bytes, &store, &location()).unwrap();
    assert_eq!(decoded, event("k1"));
    assert_eq!(nested.as_ref(), Some(record));

    // file-source's per-row path (encode_refs, by the harness's copy of its conversion).
    let snapshot = Snapshot::initial(3, 12);
    let rows = snapshot_records(&snapshot, &WriteOptions::default(), &dataset).unwrap();
    for row in &rows.records {
        assert_eq!(
            id_of(&row.payload),
            registry.subject_ids("lab.snapshots-snapfeed.lab.LabResult")[0]
        );
        dataset.decode(&row.payload, &store, &location()).unwrap();
    }

    // A dataset record and a marker: framed too, and read back.
    let mut payload = Vec::new();
    dataset.encode(record, &mut payload).unwrap();
    assert_eq!(
        id_of(&payload),
        registry.subject_ids("lab.snapshots-snapfeed.lab.LabResult")[0]
    );
    assert_eq!(
        &dataset.decode(&payload, &store, &location()).unwrap(),
        record
    );
    let mut body = Vec::new();
    assert!(
        dataset.visit_current(&payload, |_, _| {}),
        "hot path reads registry framing"
    );
    assert!(dataset.tracked_bytes(&payload, &mut body));
    let marker = SnapshotEnd {
        snapshot_id: "s1".into(),
        stream: "elr".into(),
        file_hash: "ab".repeat(32),
        file_name: "elr.csv".into(),
        partition: 0,
        rows_in_partition: 5,
        rows_total: 5,
        completed_at: 1,
    };
    let bytes = store
        .current(SnapshotEnd::SCHEMA)
        .unwrap()
        .encode(&marker)
        .unwrap();
    assert_eq!(
        id_of(&bytes),
        registry.subject_ids("lab.snapshots-snapfeed.SnapshotEnd")[0]
    );
    let back: SnapshotEnd = store
        .decode(&bytes, SnapshotEnd::SCHEMA, &location())
        .unwrap();
    assert_eq!(back, marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_framings_are_read_side_by_side_and_single_object_framing_keeps_the_registry_for_reading(
) {
    let registry = StubRegistry::start().await;
    // Registry framing, then a process with `value_framing = "single_object"`: each reads
    // what the other wrote.
    let (framed_store, dataset, result) = register(&registry, "").await;
    result.unwrap();
    let record = records(&dataset, &framed_store)[1].clone();
    let framed = dataset
        .change_writer(&framed_store)
        .unwrap()
        .encode(&event("k2"), Some(ChangeRecord::Record(&record)))
        .unwrap();
    let requests = registry.request_count();
    let (plain_store, _, result) = register(&registry, "value_framing = \"single_object\"").await;
    result.unwrap();
    assert_eq!(
        registry.request_count(),
        requests,
        "single_object framing registers nothing"
    );
    let plain = dataset
        .change_writer(&plain_store)
        .unwrap()
        .encode(&event("k2"), Some(ChangeRecord::Record(&record)))
        .unwrap();
    assert_eq!(plain[..2], [0xC3, 0x01], "single-object framing");
    for store in [&framed_store, &plain_store] {
        for bytes in [&framed, &plain] {
            let (decoded, nested) = dataset.decode_change(bytes, store, &location()).unwrap();
            assert_eq!(decoded.key, "k2");
            assert_eq!(nested.as_ref(), Some(&record));
        }
    }
    // A reader without `[schema_registry]` names what it lacks.
    let (bare, _) = load_dataset(&schemas_dir(), &lab_results_mapping());
    let error = dataset
        .decode_change(&framed, &bare, &location())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("lab.changes/0@7")
            && error.contains(&format!("schema registry id {}", id_of(&framed)))
            && error.contains("no [schema_registry] is configured"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_down_at_start_is_retried_until_it_answers() {
    let mut registry = StubRegistry::start().await;
    registry.go_down().await;
    let config = config(&registry.url(), "");
    let (store, dataset) = store_with(&config);
    let (trigger, shutdown) = shutdown::channel();
    let client = store.registry().unwrap().clone();
    let name = dataset.schema_name().to_string();
    let task = {
        let store = store.clone();
        tokio::spawn(async move {
            register_pipeline(&client, &store, &topics(), &name, &shutdown).await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!task.is_finished(), "waits while the registry is down");
    registry.come_up().await;
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("registers once the registry is back")
        .unwrap()
        .unwrap();
    assert_eq!(registry.subjects().len(), 11);
    drop(trigger);

    // Down again, and shutdown comes first: it ends, interrupted, without an error of its own.
    registry.go_down().await;
    let (store, dataset) = store_with(&config);
    let (trigger, shutdown) = shutdown::channel();
    let client = store.registry().unwrap().clone();
    let name = dataset.schema_name().to_string();
    let task = tokio::spawn(async move {
        register_pipeline(&client, &store, &topics(), &name, &shutdown).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    trigger.trigger();
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("shutdown ends the wait")
        .unwrap();
    assert!(
        matches!(ended, Err(RegistrationError::Interrupted)),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_subject_stops_with_the_subject_and_the_reason() {
    let registry = StubRegistry::start().await;
    registry.force_incompatible(
        "lab.changes-value",
        "READER_FIELD_MISSING_DEFAULT_VALUE: record",
    );
    let (_, _, result) = register(&registry, "").await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("lab.changes-value")
            && error.contains("snapfeed.ChangeEvent")
            && error.contains("incompatible")
            && error.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_register_a_missing_schema_names_its_subject() {
    let registry = StubRegistry::start().await;
    let (_, _, result) = register(&registry, "auto_register = false").await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("subject lab.") && error.contains("auto_register = false"),
        "{error}"
    );
    assert!(registry.subjects().is_empty(), "nothing registered");

    // Registered beforehand (by a pipeline with auto_register, or an operator): looked up.
    let (_, _, result) = register(&registry, "").await;
    result.unwrap();
    let before = registry.subjects();
    let (_, _, result) = register(&registry, "auto_register = false").await;
    result.unwrap();
    assert_eq!(registry.subjects(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_met_mid_run_is_learnt_once_with_5xx_retried_and_an_unknown_one_is_named() {
    let registry = StubRegistry::start().await;
    let (store, dataset, result) = register(&registry, "").await;
    result.unwrap();
    let record = &records(&dataset, &store)[2];

    // An older dataset version, registered by another writer: the reader has not seen its
    // id; the registry answers 503 three times, then the id is learnt.
    let v1_text =
        std::fs::read_to_string(schemas_dir().join("history/lab_result.v1.avsc")).unwrap();
    let v1 = LoadedSchema::parse(&v1_text, Path::new("v1")).unwrap();
    let v1_id = registry.register("lab.snapshots-snapfeed.lab.LabResult", &v1_text);
    let mut payload = vec![0];
    payload.extend_from_slice(&v1_id.to_be_bytes());
    let mut current = Vec::new();
    dataset.encode(record, &mut current).unwrap();
    // v1's datum: the current record's fields that v1 has (the reader fills the rest).
    let value = apache_avro::from_avro_datum(
        store.writer(&current, &location()).unwrap().parsed(),
        &mut &current[5..],
        None,
    )
    .unwrap();
    let resolved = value.resolve(v1.parsed()).unwrap();
    payload.extend(apache_avro::to_avro_datum(v1.parsed(), resolved).unwrap());
    registry.fail_next(3, 503);
    assert!(store.needs_lookup(&payload), "an id not seen yet");
    let before = registry.request_count();
    let learnt = writer_off_runtime(&store, payload.clone())
        .await
        .unwrap()
        .fingerprint;
    assert_eq!(learnt, v1.fingerprint);
    assert_eq!(
        registry.request_count() - before,
        4,
        "three 503s, then the answer"
    );
    let decoded = dataset.decode(&payload, &store, &location()).unwrap();
    assert_eq!(registry.request_count() - before, 4, "learnt once");
    assert!(!store.needs_lookup(&payload));
    assert!(
        !store.needs_lookup(&current),
        "ids registered at start are known"
    );
    assert_eq!(
        decoded.key(&dataset).unwrap().into_string(),
        record.key(&dataset).unwrap().into_string()
    );

    // A refusal a retry cannot cure by itself (credentials rotated mid-run): the reader waits
    // and retries rather than reject the record; answered once the registry takes it again.
    let v1_progress =
        std::fs::read_to_string(schemas_dir().join("history/stream_progress.v1.avsc")).unwrap();
    let progress_id = registry.register("lab.state-snapfeed.StreamProgress", &v1_progress);
    let framed = [vec![0], progress_id.to_be_bytes().to_vec()].concat();
    registry.fail_next(2, 401);
    let before = registry.request_count();
    let learnt = writer_off_runtime(&store, framed)
        .await
        .unwrap()
        .name
        .clone();
    assert_eq!(learnt, "snapfeed.StreamProgress");
    assert_eq!(
        registry.request_count() - before,
        3,
        "two 401s, then the answer"
    );

    // An id the registry does not know.
    let mut unknown = vec![0, 0, 0, 0x30, 0x39];
    unknown.extend_from_slice(&current[5..]);
    let error = writer_off_runtime(&store, unknown)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(
        error,
        AvroError::UnknownRegistryId { id: 12345, .. }
    ));
    let before = registry.request_count();
    let again = writer_off_runtime(&store, vec![0, 0, 0, 0x30, 0x39, 2, 4])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(again.to_string(), error.to_string());
    assert_eq!(
        registry.request_count(),
        before,
        "the answer is kept: ids never change"
    );
    let text = error.to_string();
    assert!(
        text.contains("lab.changes/0@7")
            && text.contains("12345")
            && text.contains("does not know"),
        "{text}"
    );

    // A schema the registry has that is not in schemas/: named by its fingerprint.
    let foreign = registry.register(
        "lab.other-value",
        r#"{"type":"record","name":"Other","namespace":"x","fields":[{"name":"a","type":"int"}]}"#,
    );
    let bytes = [vec![0], foreign.to_be_bytes().to_vec(), vec![2]].concat();
    let text = writer_off_runtime(&store, bytes)
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("not in") && text.contains("fingerprint"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sent_and_a_refusal_stops_with_the_subject() {
    let registry = StubRegistry::start().await;
    registry.require_basic("svc-snapfeed", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, "s3cret\n").unwrap();
    std::fs::write(&wrong, "guess\n").unwrap();
    let auth = |file: &Path| {
        format!(
            "auth = {{ type = \"basic\", user = \"svc-snapfeed\", password = {{ file = {:?} }} }}",
            file.display().to_string()
        )
    };
    let (_, _, result) = register(&registry, &auth(&wrong)).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("subject lab.") && error.contains("401"),
        "{error}"
    );
    assert!(registry.subjects().is_empty());
    let (_, _, result) = register(&registry, &auth(&right)).await;
    result.unwrap();
    assert_eq!(registry.subjects().len(), 11);
    assert!(registry.requests().iter().all(|r| r
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic "))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_reaches_the_registry_with_its_credentials() {
    let mut registry = StubRegistry::start().await;
    registry.require_bearer("t0k3n");
    let dir = tempfile::tempdir().unwrap();
    let url = registry.url();
    let token = |value: &str| {
        let path = dir.path().join(value);
        std::fs::write(&path, value).unwrap();
        config(
            &url,
            &format!(
                "auth = {{ type = \"bearer\", token = {{ file = {:?} }} }}",
                path.display().to_string()
            ),
        )
    };
    registry.register(
        "lab.changes-value",
        r#"{"type":"record","name":"A","fields":[]}"#,
    );
    let check = registry_check(&token("t0k3n")).await;
    assert_eq!(check.result, Ok(format!("{url} answers, 1 subjects")));
    let problem = registry_check(&token("wrong")).await.result.unwrap_err();
    assert!(
        problem.contains("401") && !problem.contains("wrong"),
        "{problem}"
    );
    registry.go_down().await;
    let problem = registry_check(&token("t0k3n")).await.result.unwrap_err();
    assert!(problem.contains("not reachable"), "{problem}");
}

/// `store.writer(payload)` on a blocking thread, as the services call it: a lookup of an id
/// not seen yet waits on the registry.
async fn writer_off_runtime(
    store: &Arc<SchemaStore>,
    payload: Vec<u8>,
) -> Result<Arc<LoadedSchema>, AvroError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.writer(&payload, &location()).cloned())
        .await
        .unwrap()
}
