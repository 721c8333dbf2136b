//! What a correct ingest looks like, from the generator's side: canonical keys, decoded values
//! and rejects to compare with what file-source wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::NaiveDate;
use snapfeed_harness::broker::TestBroker;
pub use snapfeed_harness::generator::canonical_key;
use snapfeed_harness::generator::{DirtKind, KeyTuple, LabRow, Snapshot, WrittenFile};
use snapfeed_runtime::dataset::{DatasetRecord, FieldValue};
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::records::RejectedRow;

use super::DataRecord;

pub fn canonical_keys(keys: &BTreeSet<KeyTuple>) -> BTreeSet<String> {
    keys.iter().map(canonical_key).collect()
}

/// How many times each key occurs.
pub fn key_counts(records: &[DataRecord]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts.entry(record.key.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts the records carry exactly `expected` keys, each once.
pub fn assert_exactly_once(records: &[DataRecord], expected: &BTreeSet<String>) {
    let counts = key_counts(records);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        repeated.is_empty(),
        "keys sent more than once: {repeated:?}"
    );
    assert_same_keys(&counts.into_keys().collect(), expected);
}

/// Asserts two key sets are equal, showing a few differences rather than both sets.
pub fn assert_same_keys(actual: &BTreeSet<String>, expected: &BTreeSet<String>) {
    let missing: Vec<_> = expected.difference(actual).take(5).collect();
    let unexpected: Vec<_> = actual.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "key sets differ: {} expected, {} found; missing e.g. {missing:?}; unexpected e.g. {unexpected:?}",
        expected.len(),
        actual.len()
    );
}

/// Key → encoded value, for records that occur once each.
pub fn payloads_by_key(records: &[DataRecord]) -> BTreeMap<String, Vec<u8>> {
    records
        .iter()
        .map(|r| (r.key.clone(), r.payload.clone()))
        .collect()
}

/// The snapshot's rows by canonical key (the first occurrence of each key).
pub fn rows_by_key(snapshot: &Snapshot) -> BTreeMap<String, (usize, LabRow)> {
    let mut rows = BTreeMap::new();
    for (index, row) in snapshot.rows().iter().enumerate() {
        rows.entry(canonical_key(&row.key()))
            .or_insert((index, row.clone()));
    }
    rows
}

/// Days since 1970-01-01 of a generated `%m/%d/%Y` date.
pub fn us_date_days(text: &str) -> i32 {
    let date = NaiveDate::parse_from_str(text, "%m/%d/%Y").expect("generated US date");
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    i32::try_from((date - epoch).num_days()).expect("in range")
}

/// Asserts a decoded record holds the generated row's values (a few fields of each kind).
pub fn assert_record_matches_row(record: &DatasetRecord, row: &LabRow) {
    let text = |column: &str| FieldValue::String(row.get(column).expect("column").to_string());
    let nullable = |column: &str| match row.get(column).expect("column").trim() {
        "" => FieldValue::Null,
        value => FieldValue::String(value.to_string()),
    };
    assert_eq!(record.get("patient_id"), Some(&text("Patient_ID")));
    assert_eq!(record.get("test_result"), Some(&text("Test_Result")));
    assert_eq!(
        record.get("patient_last_name"),
        Some(&nullable("Patient_Last_Name"))
    );
    assert_eq!(
        record.get("specimen_collection_date"),
        Some(&FieldValue::Date(us_date_days(
            row.get("Specimen_Collection_Date").expect("column")
        )))
    );
}

/// Expected `(line, reason, column)` of every rejected dirty row of a written file.
pub fn expected_rejects(written: &WrittenFile) -> BTreeSet<(i64, String, Option<String>)> {
    written
        .dirty
        .iter()
        .filter(|d| d.kind.is_rejected())
        .map(|d| {
            let (reason, column) = match d.kind {
                DirtKind::BadDate => ("bad_date", Some("Specimen_Collection_Date")),
                DirtKind::MissingRequired => ("missing_required", Some("Test_Result")),
                // A repeated key is the row's fault as a whole, not one column's.
                DirtKind::DuplicateKey => ("duplicate_key", None),
                DirtKind::QuotedNewline => unreachable!("accepted"),
            };
            (
                d.line as i64,
                reason.to_string(),
                column.map(str::to_string),
            )
        })
        .collect()
}

/// `(line, reason, column)` of the rejects of one file.
pub fn reject_summary(
    rejects: &[(String, RejectedRow)],
    hash: &str,
) -> BTreeSet<(i64, String, Option<String>)> {
    rejects
        .iter()
        .filter(|(_, r)| r.file_hash == hash)
        .map(|(_, r)| (r.line, r.reason.clone(), r.column.clone()))
        .collect()
}

/// SHA-256 of a file, as file-source identifies it.
pub fn file_hash(path: &Path) -> String {
    file_source::reader::SnapshotFile::identify(path)
        .expect("hash file")
        .hash
}

/// Whether the test runs where read_committed readers are shielded from aborted records and
/// transactions are used, i.e. where "exactly once" can be checked as such.
pub fn exactly_once_is_observable(broker: &TestBroker) -> bool {
    broker.guarantee() == ProcessingGuarantee::ExactlyOnce && broker.hides_aborted_records()
}
