//! The topics read by tools that are not snapfeed's (issue #14): after a scenario, every topic
//! the pipeline wrote is read by `interop/read_topics.py` — Confluent's Python client
//! (`confluent-kafka`) to consume; single-object values decoded by fastavro given only the
//! schema files the `schemas --out` operator command exports, registry-framed values by
//! Confluent's own `AvroDeserializer` through the registry the pipeline registered with. Each dataset record it finds (on `snapshots`,
//! nested in change events and dead letters) is compared field by field with what the
//! generator wrote, from the generator's typed values ([`snapshot_records`]), not from
//! anything snapfeed computed.
//!
//! The Python environment is `.ci/python-env`'s (pinned, hash-checked): its interpreter is
//! named by `SNAPFEED_PYTHON`, which `.ci/run` exports.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value as Json};
use snapfeed_harness::broker::repo_root;
use snapfeed_harness::generator::{Snapshot, WriteOptions};
use snapfeed_harness::schemas::{lab_results_mapping, load_dataset, schemas_dir};
use snapfeed_harness::snapshot_records::snapshot_records;
use snapfeed_runtime::avro::MessageLocation;
use snapfeed_runtime::dataset::FieldValue;
use tokio::task::block_in_place;

use crate::rig::{Rig, Service};

/// A file a scenario dropped: its name and what was written into it.
#[derive(Debug)]
pub struct Dropped<'a> {
    /// File name in the inbox.
    pub name: &'a str,
    /// The snapshot it holds.
    pub snapshot: &'a Snapshot,
    /// How it was written (dirt, encoding, order).
    pub options: &'a WriteOptions,
}

/// Reads every topic of `rig`'s pipeline with confluent-kafka — fastavro for single-object
/// values, `AvroDeserializer` with the schema registry at `registry` for registry-framed ones
/// (`None`: there must be none) — and checks each dataset record against the generator's
/// values for `files`; panics with the script's output when anything does not decode or
/// differs. Prints the script's per-topic summary and returns it.
pub fn read_every_topic(rig: &Rig, files: &[Dropped<'_>], registry: Option<&str>) -> String {
    let python = std::env::var("SNAPFEED_PYTHON").unwrap_or_else(|_| {
        panic!(
            "SNAPFEED_PYTHON is not set: run `eval \"$(.ci/python-env)\"` first (a pinned \
             virtualenv with fastavro and confluent-kafka), as .ci/run does"
        )
    });
    let schemas = rig.root.path().join("exported-schemas");
    let out = schemas.display().to_string();
    let exported = block_in_place(|| {
        rig.operator_command(Service::ApiSink, "interop", &["schemas", "--out", &out])
    });
    assert!(
        exported.status.success(),
        "schemas --out failed: {}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let expected = rig.root.path().join("expected-records.json");
    std::fs::write(&expected, expected_records(files).to_string()).expect("expected records");
    let topics = &rig.pipeline.topics;
    let script = script();
    let output = block_in_place(|| {
        std::process::Command::new(&python)
            .arg(&script)
            .arg("--bootstrap")
            .arg(rig.broker.bootstrap())
            .arg("--schemas")
            .arg(&schemas)
            .arg("--expected")
            .arg(&expected)
            .args(
                registry
                    .map(|url| ["--registry", url])
                    .into_iter()
                    .flatten(),
            )
            .args([
                &topics.snapshots,
                &topics.files,
                &topics.rejects,
                &topics.state,
                &topics.changes,
                &topics.deliveries,
                &topics.dead_letters,
            ])
            .output()
            .unwrap_or_else(|e| panic!("run {python} {}: {e}", script.display()))
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "read_topics.py failed:\n{stdout}\n{stderr}"
    );
    for line in stdout.lines() {
        println!("INTEROP {line}");
    }
    stdout.into_owned()
}

/// `{"dataset": full name, "files": {file name: {record key: {field: value}}}}` with the
/// values as fastavro's reader gives them once dates are days and timestamps milliseconds.
fn expected_records(files: &[Dropped<'_>]) -> Json {
    let (store, dataset) = load_dataset(&schemas_dir(), &lab_results_mapping());
    let location = MessageLocation {
        topic: "expected".into(),
        partition: 0,
        offset: 0,
    };
    let mut by_file = BTreeMap::new();
    for file in files {
        let records = snapshot_records(file.snapshot, file.options, &dataset)
            .unwrap_or_else(|e| panic!("records of {}: {e}", file.name));
        let mut by_key = Map::new();
        for record in records.records {
            let decoded = dataset
                .decode(&record.payload, &store, &location)
                .expect("the generator's record decodes");
            let fields: Map<String, Json> = decoded
                .names()
                .iter()
                .zip(decoded.values())
                .map(|(name, value)| (name.to_string(), plain(value)))
                .collect();
            by_key.insert(record.key, Json::Object(fields));
        }
        by_file.insert(file.name.to_string(), Json::Object(by_key));
    }
    json!({ "dataset": dataset.schema_name(), "files": by_file })
}

fn plain(value: &FieldValue) -> Json {
    match value {
        FieldValue::Null => Json::Null,
        FieldValue::String(s) | FieldValue::Enum(s) => json!(s),
        FieldValue::Boolean(b) => json!(b),
        FieldValue::Int(i) | FieldValue::Date(i) => json!(i),
        FieldValue::Long(i) | FieldValue::TimestampMillis(i) => json!(i),
        FieldValue::Double(f) => json!(f),
    }
}

/// The reader script.
fn script() -> PathBuf {
    repo_root().join("tests/fault/interop/read_topics.py")
}
