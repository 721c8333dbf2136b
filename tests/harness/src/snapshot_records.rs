//! What file-source makes of a generated snapshot file, computed without file-source: each row
//! it accepts as a dataset record — its record key and its Avro single-object encoding — with
//! the line it starts on, and the file's SHA-256 as file-source identifies files.
//!
//! The values come from the generator's typed values ([`crate::generator::Meaning`]: the dates,
//! timestamp and codes it chose before formatting them), mapped onto the dataset's fields by
//! the mapping's column names (matched as the runtime matches them: trimmed, any case). So
//! nothing here parses CSV or re-implements file-source's conversion; rows the generator made
//! deliberately dirty in a way file-source rejects are left out, as file-source sends those
//! to `rejects`. Whether the result really is what file-source writes is proven by
//! `services/file-source/tests/publisher_contract.rs`.

use std::io;

use chrono::Datelike;
use sha2::{Digest, Sha256};
use snapfeed_runtime::dataset::{normalise_column, Dataset, FieldKind, FieldValue};

use crate::generator::{Meaning, Snapshot, WriteOptions, WrittenRecord};

/// Days from CE (0001-01-01 is day 1) to 1970-01-01: Avro dates count from the latter.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// One accepted row as a dataset record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// 1-based line of the file where the row starts (the `snapfeed-line` header).
    pub line: u64,
    /// The canonical record key (the Kafka key).
    pub key: String,
    /// The record's single-object Avro encoding (the Kafka value).
    pub payload: Vec<u8>,
}

/// A generated snapshot file as file-source reads it.
#[derive(Debug, Clone)]
pub struct SnapshotRecords {
    /// SHA-256 (hex) of the file's bytes: file-source's file hash.
    pub file_hash: String,
    /// The header as written.
    pub columns: Vec<String>,
    /// Data records in the file, rejected ones included.
    pub rows_total: u64,
    /// Rows file-source rejects (dirty rows, duplicate keys).
    pub rows_rejected: u64,
    /// The accepted rows, in file order.
    pub records: Vec<SourceRecord>,
}

/// The records file-source makes of `snapshot` written with `write`, under `dataset`.
///
/// Panics where file-source would fail the file as a whole (a required field's column is not
/// in the header) or where the generator and the dataset disagree on what a value is (a field
/// whose kind the generator does not write in that column): both mean the test asks for
/// something this shortcut cannot stand in for.
pub fn snapshot_records(
    snapshot: &Snapshot,
    write: &WriteOptions,
    dataset: &Dataset,
) -> io::Result<SnapshotRecords> {
    let mut hasher = Sha256::new();
    let mut columns: Option<Vec<Option<String>>> = None;
    let mut records = Vec::with_capacity(snapshot.rows().len());
    let mut rows_total = 0u64;
    let mut keys = std::collections::HashSet::with_capacity(snapshot.rows().len());
    let written = snapshot.write_to(&mut hasher, write, |record| {
        rows_total += 1;
        if !record.is_accepted() {
            return;
        }
        let columns = columns.get_or_insert_with(|| field_columns(dataset, record));
        let values = field_values(dataset, record, columns);
        let record_value = dataset.record(values).unwrap_or_else(|error| {
            panic!(
                "line {}: the generator's values do not fit the dataset: {error}",
                record.line
            )
        });
        let key = record_value
            .key(dataset)
            .unwrap_or_else(|error| panic!("line {}: no record key: {error}", record.line))
            .into_string();
        assert!(
            keys.insert(key.clone()),
            "line {}: key {key} repeats a row the generator did not mark as a duplicate",
            record.line
        );
        let mut payload = Vec::with_capacity(512);
        dataset
            .encode(&record_value, &mut payload)
            .unwrap_or_else(|error| panic!("line {}: encode: {error}", record.line));
        records.push(SourceRecord {
            line: record.line,
            key,
            payload,
        });
    })?;
    Ok(SnapshotRecords {
        file_hash: snapfeed_runtime::avro::hex(&hasher.finalize()),
        columns: written.columns,
        rows_total,
        rows_rejected: rows_total - records.len() as u64,
        records,
    })
}

/// For each dataset field, the header column (as written) it reads, matched by name the way
/// the runtime matches a mapping's columns.
fn field_columns(dataset: &Dataset, record: &WrittenRecord<'_>) -> Vec<Option<String>> {
    dataset
        .fields()
        .iter()
        .map(|field| {
            let wanted = normalise_column(field.column());
            let column = record
                .columns()
                .find(|name| normalise_column(name) == wanted)
                .map(str::to_string);
            assert!(
                column.is_some() || field.nullable(),
                "the file lacks column {} of required field {}: file-source fails it whole",
                field.column(),
                field.name()
            );
            column
        })
        .collect()
}

/// The record's values in schema field order.
fn field_values(
    dataset: &Dataset,
    record: &WrittenRecord<'_>,
    columns: &[Option<String>],
) -> Vec<FieldValue> {
    dataset
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, column)| {
            let Some(value) = column.as_deref().and_then(|c| record.value(c)) else {
                return FieldValue::Null;
            };
            if value.text.is_empty() {
                return FieldValue::Null;
            }
            match (field.kind(), value.meaning) {
                (FieldKind::String, _) => FieldValue::String(value.text.into_owned()),
                (FieldKind::Date, Meaning::Date(date)) => {
                    FieldValue::Date(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
                }
                // The CSV carries no zone: timestamps are UTC.
                (FieldKind::TimestampMillis, Meaning::DateTime(at)) => {
                    FieldValue::TimestampMillis(at.and_utc().timestamp_millis())
                }
                (FieldKind::Enum, Meaning::Code(code)) => FieldValue::Enum(code.to_string()),
                (kind, meaning) => panic!(
                    "field {} is {kind}, but the generator writes {meaning:?} in column {}",
                    field.name(),
                    field.column()
                ),
            }
        })
        .collect()
}
