//! The real lab-results mapping and a sample record of it, shared by the dataset unit tests.

use std::path::{Path, PathBuf};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{Dataset, DatasetMapping, DatasetRecord, FieldValue};
use crate::avro::{MessageLocation, SchemaStore};

pub(super) const MAPPING: &str = "deploy/config/lab_results.mapping.toml";

pub(super) fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

pub(super) fn store() -> SchemaStore {
    SchemaStore::load_dir(&schemas_dir()).unwrap()
}

pub(super) fn mapping_text() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(MAPPING),
    )
    .unwrap()
}

pub(super) fn dataset() -> Dataset {
    DatasetMapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(MAPPING),
        &store(),
    )
    .unwrap()
}

pub(super) fn sample(dataset: &Dataset) -> DatasetRecord {
    let values = dataset
        .fields()
        .iter()
        .map(|field| match field.name() {
            "patient_id" => FieldValue::String("P-000123".into()),
            "patient_last_name" => FieldValue::String("Núñez".into()),
            "patient_first_name" => FieldValue::Null,
            "patient_dob" => FieldValue::Date(-3650),
            "patient_sex" => FieldValue::Enum("M".into()),
            "facility_clia" => FieldValue::String("05d0123456".into()),
            "specimen_collection_date" => FieldValue::Date(18_700),
            "test_name" => FieldValue::String("SARS-CoV-2 RNA".into()),
            "test_code" => FieldValue::String("94500-6".into()),
            "test_result" => FieldValue::String("Detected".into()),
            "accession_number" => FieldValue::String("ACC|7".into()),
            "result_date" => FieldValue::Date(18_702),
            "date_reported" => FieldValue::Null,
            "device_id" => FieldValue::String("DEV-42".into()),
            "report_generated_at" => FieldValue::TimestampMillis(1_620_000_000_123),
            other => FieldValue::String(format!("{other} value")),
        })
        .collect();
    dataset.record(values).unwrap()
}

pub(super) fn location() -> MessageLocation {
    MessageLocation {
        topic: "p.snapshots".into(),
        partition: 0,
        offset: 7,
    }
}

/// A record as lab_result v1 wrote it: every field but `device_id` (added in v2).
pub(super) struct WithoutDeviceId<'a>(pub(super) &'a DatasetRecord);

impl Serialize for WithoutDeviceId<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.0.names().iter().zip(self.0.values()) {
            if &**name != "device_id" {
                map.serialize_entry(&**name, value)?;
            }
        }
        map.end()
    }
}
