//! CSV text → [`DatasetRecord`], or a row reject. Pure functions: no Kafka, no files, so no
//! delivery guarantee of their own (the ingest's transactions keep exactly-once per file).
//!
//! [`HeaderMap::match_header`] matches a file's header to the dataset's columns by name
//! (trimmed, case-insensitive, any order; a UTF-8 BOM on the first cell is ignored) once per
//! file; a missing column for a required field fails the whole file. [`RowConverter`] then
//! turns each row into a record following the mapping (dates in the configured formats,
//! enum normalisation, numbers, booleans, empty → null), or into a [`RowReject`] naming the
//! first bad column in file order. A reject's detail never contains the cell's value: rows
//! hold health data and rejects are widely read; the raw line travels separately, on the
//! access-restricted rejects topic.
//!
//! Speed matters (hundreds of thousands of rows per file): a converter is built once per file,
//! reuses its scratch buffer, and allocates per row only the output record; the common date
//! formats (`%m/%d/%Y`, `%Y-%m-%d`, and `%Y-%m-%d %H:%M:%S` / `%Y-%m-%dT%H:%M:%S`) are parsed
//! by hand, falling back to chrono for anything the fast path does not recognise, so the
//! result is always chrono's.
//!
//! - `header`: the file's header → which column feeds which field.
//! - `cell`: one cell → a value of its field's type (the per-type conversions).
//! - `date`: dates and timestamps, the common formats parsed by hand.
//! - here: [`RowConverter`], a whole row → values in schema order, or the first [`RowReject`].

mod cell;
mod date;
mod header;

use std::fmt;
use std::sync::Arc;

use snapfeed_runtime::dataset::{Dataset, DatasetRecord, FieldRef};

use cell::{convert_cell, ColumnPlan};
use date::DateFormat;
pub use header::{HeaderError, HeaderMap};

/// Stable reject reasons (the `reason` of a `snapfeed.RejectedRow`).
pub mod reason {
    /// The row has fewer or more fields than the header.
    pub const WRONG_FIELD_COUNT: &str = "wrong_field_count";
    /// A required field's cell is empty.
    pub const MISSING_REQUIRED: &str = "missing_required";
    /// A date or timestamp matches none of the configured formats.
    pub const BAD_DATE: &str = "bad_date";
    /// Not an enum symbol nor an `enum_map` entry.
    pub const BAD_ENUM: &str = "bad_enum";
    /// Not a number of the field's type.
    pub const BAD_NUMBER: &str = "bad_number";
    /// Not a boolean spelling we accept.
    pub const BAD_BOOLEAN: &str = "bad_boolean";
    /// The converted values do not fit the schema (a header matched against another dataset).
    pub const SCHEMA_MISMATCH: &str = "schema_mismatch";
}

/// A row that cannot become a record. Never contains the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReject {
    /// The CSV header of the offending column as written in the file; `None` when the row as a
    /// whole is wrong.
    pub column: Option<String>,
    /// Stable machine-readable reason, one of [`reason`].
    pub reason: &'static str,
    /// What was expected, e.g. `does not match any of %m/%d/%Y, %Y-%m-%d`.
    pub detail: String,
}

impl fmt::Display for RowReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "{} in column {column:?}: {}", self.reason, self.detail),
            None => write!(f, "{}: {}", self.reason, self.detail),
        }
    }
}

impl std::error::Error for RowReject {}

/// Converts the rows of one file; build once per file (after [`HeaderMap::match_header`]).
#[derive(Debug)]
pub struct RowConverter {
    dataset: Arc<Dataset>,
    /// Per CSV column, how to convert it (`None`: extra column, ignored).
    columns: Vec<Option<ColumnPlan>>,
    /// Header cells as written, for rejects.
    headers: Vec<String>,
    /// Upper-casing buffer for enum lookups, reused across rows.
    scratch: String,
}

impl RowConverter {
    /// A converter for rows under `header`, which must have been matched against `dataset`.
    pub fn new(dataset: Arc<Dataset>, header: HeaderMap) -> RowConverter {
        let columns = header
            .column_fields
            .iter()
            .map(|field| {
                let index = (*field)?;
                let spec = dataset.fields().get(index)?;
                Some(ColumnPlan {
                    field: index,
                    kind: spec.kind(),
                    nullable: spec.nullable(),
                    formats: spec
                        .date_formats()
                        .iter()
                        .map(|f| DateFormat::new(f))
                        .collect(),
                })
            })
            .collect();
        RowConverter {
            dataset,
            columns,
            headers: header.headers,
            scratch: String::with_capacity(32),
        }
    }

    /// Converts one data row; the first bad column, in file order, decides the reject.
    pub fn convert(&mut self, row: &csv::StringRecord) -> Result<DatasetRecord, RowReject> {
        let dataset = self.dataset.clone();
        let mut values = Vec::with_capacity(dataset.fields().len());
        let cells: Vec<&str> = row.iter().collect();
        self.convert_refs(&dataset, cells.into_iter(), &mut values)?;
        dataset
            .record(values.iter().map(FieldRef::to_value).collect())
            .map_err(|error| RowReject {
                column: None,
                reason: reason::SCHEMA_MISMATCH,
                detail: error.to_string(),
            })
    }

    /// Converts one data row into values borrowed from the row and from `dataset` (the
    /// converter's own), in schema order, into `out` — the per-row path: no allocation per
    /// cell. The first bad column, in file order, decides the reject. Whether the values fit
    /// the schema (nulls in required fields) is checked when they are encoded
    /// ([`Dataset::encode_refs`]).
    pub fn convert_refs<'r>(
        &mut self,
        dataset: &'r Dataset,
        row: impl ExactSizeIterator<Item = &'r str>,
        out: &mut Vec<FieldRef<'r>>,
    ) -> Result<(), RowReject> {
        if row.len() != self.columns.len() {
            return Err(RowReject {
                column: None,
                reason: reason::WRONG_FIELD_COUNT,
                detail: format!(
                    "expected {} fields, found {}",
                    self.columns.len(),
                    row.len()
                ),
            });
        }
        out.clear();
        out.resize(dataset.fields().len(), FieldRef::Null);
        for (position, (plan, cell)) in self.columns.iter().zip(row).enumerate() {
            let Some(plan) = plan else { continue };
            match convert_cell(dataset, plan, trim(cell), &mut self.scratch) {
                Ok(value) => {
                    if let Some(slot) = out.get_mut(plan.field) {
                        *slot = value;
                    }
                }
                Err((reason, detail)) => {
                    return Err(RowReject {
                        column: self.headers.get(position).cloned(),
                        reason,
                        detail,
                    })
                }
            }
        }
        Ok(())
    }
}

/// `cell.trim()`, without walking the cell when its first and last bytes are printable ASCII
/// (neither can then be part of any whitespace character): the common case, several times per
/// row.
fn trim(cell: &str) -> &str {
    match cell.as_bytes() {
        [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() => cell,
        [only] if only.is_ascii_graphic() => cell,
        _ => cell.trim(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
