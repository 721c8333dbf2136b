//! CSV text → [`DatasetRecord`], or a row reject. Pure functions: no Kafka, no files, so no
//! delivery guarantee of their own (the ingest loop's transactions keep exactly-once per file).
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime};
use snapfeed_runtime::dataset::{normalise_column, Dataset, DatasetRecord, FieldKind, FieldRef};

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

/// Why a file's header cannot be used; the whole file fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Columns of required fields are absent (all listed, as configured in the mapping).
    #[error("header lacks required columns: {}", .0.join(", "))]
    MissingColumns(Vec<String>),
    /// The same column name appears twice (as written in the file).
    #[error("header has column {0:?} more than once (names match trimmed and case-insensitively)")]
    DuplicateColumn(String),
}

/// A file's header matched to the dataset: which CSV column feeds which field.
#[derive(Debug, Clone)]
pub struct HeaderMap {
    /// Per CSV column, the dataset field (position in [`Dataset::fields`]) it feeds.
    column_fields: Vec<Option<usize>>,
    /// The header cells as written (BOM removed), for reject messages.
    headers: Vec<String>,
    /// Columns no field maps, reported once per file.
    extra_columns: Vec<String>,
    /// Configured columns of nullable fields the file lacks; those fields are null.
    missing_optional: Vec<String>,
}

impl HeaderMap {
    /// Matches header cells to the dataset's columns. Accepts `&csv::StringRecord` or any
    /// iterator of `&str`.
    pub fn match_header<'h>(
        header: impl IntoIterator<Item = &'h str>,
        dataset: &Dataset,
    ) -> Result<HeaderMap, HeaderError> {
        let by_column: HashMap<String, usize> = dataset
            .fields()
            .iter()
            .enumerate()
            .map(|(index, field)| (normalise_column(field.column()), index))
            .collect();
        let mut seen = HashSet::new();
        let mut matched = vec![false; dataset.fields().len()];
        let mut map = HeaderMap {
            column_fields: Vec::new(),
            headers: Vec::new(),
            extra_columns: Vec::new(),
            missing_optional: Vec::new(),
        };
        for (position, cell) in header.into_iter().enumerate() {
            let cell = match position {
                0 => cell.strip_prefix('\u{feff}').unwrap_or(cell),
                _ => cell,
            };
            let normalised = normalise_column(cell);
            if !seen.insert(normalised.clone()) {
                return Err(HeaderError::DuplicateColumn(cell.to_string()));
            }
            let field = by_column.get(&normalised).copied();
            match field {
                Some(index) => matched[index] = true,
                None => map.extra_columns.push(cell.to_string()),
            }
            map.column_fields.push(field);
            map.headers.push(cell.to_string());
        }
        let mut missing = Vec::new();
        for (field, found) in dataset.fields().iter().zip(matched) {
            match (found, field.nullable()) {
                (true, _) => {}
                (false, true) => map.missing_optional.push(field.column().to_string()),
                (false, false) => missing.push(field.column().to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(HeaderError::MissingColumns(missing));
        }
        Ok(map)
    }

    /// Header cells no field maps (ignored; report them once per file).
    pub fn extra_columns(&self) -> &[String] {
        &self.extra_columns
    }

    /// Configured columns of nullable fields the file lacks (those fields are null in every row).
    pub fn missing_optional(&self) -> &[String] {
        &self.missing_optional
    }

    /// The header cells as written (BOM removed).
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Number of columns in the header (and so in every row).
    pub fn column_count(&self) -> usize {
        self.headers.len()
    }
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

/// One date format, with the common ones parsed by hand.
#[derive(Debug, Clone)]
enum DateFormat {
    /// `%m/%d/%Y`.
    MonthDayYear,
    /// `%Y-%m-%d`.
    YearMonthDay,
    /// `%Y-%m-%d %H:%M:%S` or `%Y-%m-%dT%H:%M:%S` (the separator byte).
    IsoDateTime(u8),
    /// Anything else, by chrono.
    Chrono(String),
}

impl DateFormat {
    fn new(format: &str) -> DateFormat {
        match format {
            "%m/%d/%Y" => DateFormat::MonthDayYear,
            "%Y-%m-%d" => DateFormat::YearMonthDay,
            "%Y-%m-%d %H:%M:%S" => DateFormat::IsoDateTime(b' '),
            "%Y-%m-%dT%H:%M:%S" => DateFormat::IsoDateTime(b'T'),
            other => DateFormat::Chrono(other.to_string()),
        }
    }

    /// Chrono's spelling, for the fallback.
    fn chrono(&self) -> &str {
        match self {
            DateFormat::MonthDayYear => "%m/%d/%Y",
            DateFormat::YearMonthDay => "%Y-%m-%d",
            DateFormat::IsoDateTime(b'T') => "%Y-%m-%dT%H:%M:%S",
            DateFormat::IsoDateTime(_) => "%Y-%m-%d %H:%M:%S",
            DateFormat::Chrono(format) => format,
        }
    }

    fn parse_date(&self, text: &str) -> Option<NaiveDate> {
        let fast = match self {
            DateFormat::MonthDayYear => fast_mdy(text.as_bytes()),
            DateFormat::YearMonthDay => fast_ymd(text.as_bytes()),
            _ => Fast::NotRecognised,
        };
        match fast {
            Fast::Parsed(date) => Some(date),
            Fast::Invalid => None,
            Fast::NotRecognised => NaiveDate::parse_from_str(text, self.chrono()).ok(),
        }
    }

    fn parse_datetime(&self, text: &str) -> Option<NaiveDateTime> {
        let fast = match self {
            DateFormat::IsoDateTime(separator) => fast_iso_datetime(text.as_bytes(), *separator),
            _ => Fast::NotRecognised,
        };
        match fast {
            Fast::Parsed(datetime) => Some(datetime),
            Fast::Invalid => None,
            Fast::NotRecognised => NaiveDateTime::parse_from_str(text, self.chrono()).ok(),
        }
    }
}

/// The outcome of a hand parser: it only claims inputs chrono would read the same way.
enum Fast<T> {
    Parsed(T),
    /// The right shape but no such date (e.g. 02/30/2021): chrono would refuse it too.
    Invalid,
    /// Leave it to chrono (e.g. a 2-digit year, which chrono's `%Y` reads as year 20).
    NotRecognised,
}

/// Reads 1–2 ASCII digits, returning the value and the rest.
fn digits_1_2(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [a @ b'0'..=b'9', b @ b'0'..=b'9', rest @ ..] => {
            Some((u32::from(a - b'0') * 10 + u32::from(b - b'0'), rest))
        }
        [a @ b'0'..=b'9', rest @ ..] => Some((u32::from(a - b'0'), rest)),
        _ => None,
    }
}

/// Reads exactly `N` ASCII digits.
fn digits_exact<const N: usize>(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_at_checked(N)?;
    let mut value = 0;
    for &b in head {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some((value, rest))
}

fn ymd(year: u32, month: u32, day: u32) -> Fast<NaiveDate> {
    let year = i32::try_from(year).unwrap_or(i32::MAX);
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => Fast::Parsed(date),
        None => Fast::Invalid,
    }
}

/// `M/D/YYYY` with 1–2 digit month and day and a 4-digit year.
fn fast_mdy(bytes: &[u8]) -> Fast<NaiveDate> {
    let parsed = (|| {
        let (month, rest) = digits_1_2(bytes)?;
        let (day, rest) = digits_1_2(rest.strip_prefix(b"/")?)?;
        let (year, rest) = digits_exact::<4>(rest.strip_prefix(b"/")?)?;
        rest.is_empty().then_some((year, month, day))
    })();
    match parsed {
        Some((year, month, day)) => ymd(year, month, day),
        None => Fast::NotRecognised,
    }
}

/// `YYYY-M-D` with a 4-digit year and 1–2 digit month and day.
fn fast_ymd(bytes: &[u8]) -> Fast<NaiveDate> {
    match split_ymd(bytes) {
        Some((year, month, day, [])) => ymd(year, month, day),
        _ => Fast::NotRecognised,
    }
}

fn split_ymd(bytes: &[u8]) -> Option<(u32, u32, u32, &[u8])> {
    let (year, rest) = digits_exact::<4>(bytes)?;
    let (month, rest) = digits_1_2(rest.strip_prefix(b"-")?)?;
    let (day, rest) = digits_1_2(rest.strip_prefix(b"-")?)?;
    Some((year, month, day, rest))
}

/// `YYYY-MM-DD?HH:MM:SS` with exactly two digits per time part.
fn fast_iso_datetime(bytes: &[u8], separator: u8) -> Fast<NaiveDateTime> {
    let parsed = (|| {
        let (year, month, day, rest) = split_ymd(bytes)?;
        let (hour, rest) = digits_exact::<2>(rest.strip_prefix(&[separator])?)?;
        let (minute, rest) = digits_exact::<2>(rest.strip_prefix(b":")?)?;
        let (second, rest) = digits_exact::<2>(rest.strip_prefix(b":")?)?;
        // 60 is a leap second to chrono; leave that rarity to it.
        (rest.is_empty() && second < 60).then_some((year, month, day, hour, minute, second))
    })();
    let Some((year, month, day, hour, minute, second)) = parsed else {
        return Fast::NotRecognised;
    };
    match (
        ymd(year, month, day),
        NaiveTime::from_hms_opt(hour, minute, second),
    ) {
        (Fast::Parsed(date), Some(time)) => Fast::Parsed(date.and_time(time)),
        _ => Fast::Invalid,
    }
}

/// Days from 0001-01-01 (CE day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// How one mapped column converts.
#[derive(Debug)]
struct ColumnPlan {
    /// Position of the field in the dataset.
    field: usize,
    kind: FieldKind,
    nullable: bool,
    formats: Vec<DateFormat>,
}

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

/// A cell's problem: reason and detail; the column is added by the caller.
type CellError = (&'static str, String);

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
        self.convert_refs(&dataset, row, &mut values)?;
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
        row: &'r csv::StringRecord,
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
        for (position, (plan, cell)) in self.columns.iter().zip(row.iter()).enumerate() {
            let Some(plan) = plan else { continue };
            match convert_cell(dataset, plan, cell.trim(), &mut self.scratch) {
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

fn convert_cell<'r>(
    dataset: &'r Dataset,
    plan: &ColumnPlan,
    cell: &'r str,
    scratch: &mut String,
) -> Result<FieldRef<'r>, CellError> {
    if cell.is_empty() {
        return match plan.nullable {
            true => Ok(FieldRef::Null),
            false => Err((reason::MISSING_REQUIRED, "required value is empty".into())),
        };
    }
    match plan.kind {
        FieldKind::String => Ok(FieldRef::String(cell.as_bytes())),
        FieldKind::Int => cell.parse().map(FieldRef::Int).map_err(|_| {
            (
                reason::BAD_NUMBER,
                "not a whole number in the int range".into(),
            )
        }),
        FieldKind::Long => cell.parse().map(FieldRef::Long).map_err(|_| {
            (
                reason::BAD_NUMBER,
                "not a whole number in the long range".into(),
            )
        }),
        FieldKind::Double => match cell.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(FieldRef::Double(v)),
            _ => Err((reason::BAD_NUMBER, "not a finite decimal number".into())),
        },
        FieldKind::Boolean => parse_bool(cell).map(FieldRef::Boolean).ok_or_else(|| {
            (
                reason::BAD_BOOLEAN,
                "expected true/false, yes/no or 1/0".into(),
            )
        }),
        FieldKind::Date => plan
            .formats
            .iter()
            .find_map(|format| format.parse_date(cell))
            .map(|date| FieldRef::Date(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE))
            .ok_or_else(|| no_format_matches(plan)),
        FieldKind::TimestampMillis => plan
            .formats
            .iter()
            .find_map(|format| format.parse_datetime(cell))
            // The CSV carries no zone: timestamps are read as UTC.
            .map(|datetime| FieldRef::TimestampMillis(datetime.and_utc().timestamp_millis()))
            .ok_or_else(|| no_format_matches(plan)),
        FieldKind::Enum => {
            let spec = dataset.fields().get(plan.field);
            scratch.clear();
            if cell.is_ascii() {
                scratch.push_str(cell);
                scratch.make_ascii_uppercase();
            } else {
                scratch.extend(cell.chars().flat_map(char::to_uppercase));
            }
            match spec.and_then(|spec| spec.resolve_enum(scratch)) {
                Some(symbol) => Ok(FieldRef::Enum(symbol)),
                None => {
                    let symbols = spec.map(|s| s.symbols().join(", ")).unwrap_or_default();
                    Err((
                        reason::BAD_ENUM,
                        format!("not one of {symbols} nor a value the mapping's enum_map knows"),
                    ))
                }
            }
        }
    }
}

fn no_format_matches(plan: &ColumnPlan) -> CellError {
    let formats: Vec<&str> = plan.formats.iter().map(DateFormat::chrono).collect();
    (
        reason::BAD_DATE,
        format!("does not match any of {}", formats.join(", ")),
    )
}

fn parse_bool(cell: &str) -> Option<bool> {
    const TRUE: [&str; 3] = ["true", "yes", "1"];
    const FALSE: [&str; 3] = ["false", "no", "0"];
    if TRUE.iter().any(|t| cell.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|f| cell.eq_ignore_ascii_case(f)) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use snapfeed_runtime::avro::SchemaStore;
    use snapfeed_runtime::dataset::{DatasetMapping, FieldValue};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn lab_dataset() -> Arc<Dataset> {
        let store = SchemaStore::load_dir(&repo().join("schemas")).unwrap();
        Arc::new(
            DatasetMapping::load(
                &repo().join("deploy/config/lab_results.mapping.toml"),
                &store,
            )
            .unwrap(),
        )
    }

    /// A valid lab result row, by column.
    const GOOD: [(&str, &str); 27] = [
        ("Patient_ID", "P-000123"),
        ("Patient_Last_Name", "Núñez-Øster"),
        ("Patient_First_Name", "Zoë"),
        ("Patient_DOB", "7/4/1980"),
        ("Patient_Sex", " female "),
        ("Patient_Race", "White"),
        ("Patient_Ethnicity", ""),
        ("Patient_Street", "1 Main St"),
        ("Patient_City", "Denver"),
        ("Patient_Zip", "80202"),
        ("Patient_County", "Denver"),
        ("Patient_Phone", "303-555-0100"),
        ("Facility_Name", "Front Range Lab"),
        ("Facility_CLIA", "05d0123456"),
        ("Ordering_Provider_NPI", "1234567890"),
        ("Specimen_ID", "S-1"),
        ("Specimen_Collection_Date", "2021-03-15"),
        ("Specimen_Type", "Nasopharyngeal swab"),
        ("Test_Name", "SARS-CoV-2 RNA"),
        ("Test_Code", "94500-6"),
        ("Test_Result", "Detected"),
        ("Test_Result_Code", "260373001"),
        ("Result_Date", "03/16/2021"),
        ("Date_Reported", "  "),
        ("Accession_Number", "ACC-1"),
        ("Device_ID", "DEV-9"),
        ("Report_Generated_At", "2021-03-17 08:09:10"),
    ];

    /// The GOOD row laid out under `header`, with `changes` applied (by column, any case).
    fn row(header: &[&str], changes: &[(&str, &str)]) -> csv::StringRecord {
        let value = |column: &str| {
            let column = normalise_column(column.trim_start_matches('\u{feff}'));
            let pick = |pairs: &[(&str, &str)]| {
                pairs
                    .iter()
                    .find(|(c, _)| normalise_column(c) == column)
                    .map(|(_, v)| v.to_string())
            };
            pick(changes).or_else(|| pick(&GOOD)).unwrap_or_default()
        };
        header.iter().map(|c| value(c)).collect()
    }

    fn schema_order() -> Vec<&'static str> {
        GOOD.iter().map(|(c, _)| *c).collect()
    }

    fn converter(dataset: &Arc<Dataset>, header: &[&str]) -> RowConverter {
        let map = HeaderMap::match_header(header.iter().copied(), dataset).unwrap();
        RowConverter::new(dataset.clone(), map)
    }

    fn reject(header: &[&str], changes: &[(&str, &str)]) -> RowReject {
        let dataset = lab_dataset();
        converter(&dataset, header)
            .convert(&row(header, changes))
            .unwrap_err()
    }

    fn days(y: i32, m: u32, d: u32) -> i32 {
        let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
        (date - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
    }

    #[test]
    fn the_per_row_path_encodes_and_keys_what_the_record_path_does() {
        let dataset = lab_dataset();
        let mut header = schema_order();
        header.reverse();
        let mut converter = converter(&dataset, &header);
        for changes in [
            vec![],
            vec![("Patient_Sex", "male"), ("Patient_Ethnicity", "Hispanic")],
            vec![("Report_Generated_At", ""), ("Patient_ID", " p-9 ")],
        ] {
            let row = row(&header, &changes);
            let record = converter.convert(&row).unwrap();
            let mut expected = Vec::new();
            dataset.encode(&record, &mut expected).unwrap();
            let mut values = Vec::new();
            converter.convert_refs(&dataset, &row, &mut values).unwrap();
            let mut payload = Vec::new();
            dataset.encode_refs(&values, &mut payload).unwrap();
            assert_eq!(payload, expected, "{changes:?}");
            assert_eq!(dataset.key_of_refs(&values), record.key(&dataset));
        }
    }

    #[test]
    fn good_row_converts_by_the_mapping() {
        let dataset = lab_dataset();
        let header = schema_order();
        let record = converter(&dataset, &header)
            .convert(&row(&header, &[]))
            .unwrap();
        let get = |name: &str| record.get(name).unwrap().clone();
        assert_eq!(get("patient_id"), FieldValue::String("P-000123".into()));
        // Non-ASCII passes through unchanged.
        assert_eq!(
            get("patient_last_name"),
            FieldValue::String("Núñez-Øster".into())
        );
        assert_eq!(get("patient_first_name"), FieldValue::String("Zoë".into()));
        assert_eq!(get("patient_dob"), FieldValue::Date(days(1980, 7, 4)));
        assert_eq!(get("patient_sex"), FieldValue::Enum("F".into()));
        assert_eq!(get("patient_ethnicity"), FieldValue::Null);
        assert_eq!(get("date_reported"), FieldValue::Null);
        assert_eq!(
            get("specimen_collection_date"),
            FieldValue::Date(days(2021, 3, 15))
        );
        assert_eq!(get("result_date"), FieldValue::Date(days(2021, 3, 16)));
        let generated = NaiveDate::from_ymd_opt(2021, 3, 17)
            .unwrap()
            .and_hms_opt(8, 9, 10)
            .unwrap();
        assert_eq!(
            get("report_generated_at"),
            FieldValue::TimestampMillis(generated.and_utc().timestamp_millis())
        );
        assert_eq!(
            record.key(&dataset).unwrap().as_str(),
            "05D0123456|ACC-1|94500-6"
        );
        let mut buf = Vec::new();
        dataset.encode(&record, &mut buf).unwrap();
    }

    #[test]
    fn reordered_header_gives_the_same_records() {
        let dataset = lab_dataset();
        let header = schema_order();
        let mut reordered = header.clone();
        reordered.reverse();
        reordered.swap(3, 17);
        let a = converter(&dataset, &header)
            .convert(&row(&header, &[]))
            .unwrap();
        let b = converter(&dataset, &reordered)
            .convert(&row(&reordered, &[]))
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn header_matches_with_bom_spaces_and_any_case() {
        let dataset = lab_dataset();
        let mut cells: Vec<String> = schema_order()
            .iter()
            .map(|c| format!("  {}  ", c.to_uppercase()))
            .collect();
        cells[0] = format!("\u{feff}{}", schema_order()[0]);
        let header: Vec<&str> = cells.iter().map(String::as_str).collect();
        let map = HeaderMap::match_header(csv::StringRecord::from(header.clone()).iter(), &dataset)
            .unwrap();
        assert!(map.extra_columns().is_empty() && map.missing_optional().is_empty());
        assert_eq!(
            map.headers()[0],
            "Patient_ID",
            "BOM removed from the header as reported"
        );
        let record = RowConverter::new(dataset.clone(), map)
            .convert(&row(&header, &[]))
            .unwrap();
        let plain = converter(&dataset, &schema_order())
            .convert(&row(&schema_order(), &[]))
            .unwrap();
        assert_eq!(record, plain);
    }

    #[test]
    fn missing_required_columns_are_all_listed() {
        let dataset = lab_dataset();
        let header: Vec<&str> = schema_order()
            .into_iter()
            .filter(|c| !matches!(*c, "Test_Result" | "Facility_CLIA" | "Device_ID"))
            .collect();
        let error = HeaderMap::match_header(header.iter().copied(), &dataset).unwrap_err();
        assert_eq!(
            error,
            HeaderError::MissingColumns(vec!["Facility_CLIA".into(), "Test_Result".into()])
        );
        assert_eq!(
            error.to_string(),
            "header lacks required columns: Facility_CLIA, Test_Result"
        );
    }

    #[test]
    fn missing_optional_column_is_null_and_reported() {
        let dataset = lab_dataset();
        let header: Vec<&str> = schema_order()
            .into_iter()
            .filter(|c| *c != "Device_ID")
            .collect();
        let map = HeaderMap::match_header(header.iter().copied(), &dataset).unwrap();
        assert_eq!(map.missing_optional(), ["Device_ID"]);
        let record = RowConverter::new(dataset, map)
            .convert(&row(&header, &[]))
            .unwrap();
        assert_eq!(record.get("device_id"), Some(&FieldValue::Null));
    }

    #[test]
    fn extra_columns_are_reported_and_ignored() {
        let dataset = lab_dataset();
        let mut header = schema_order();
        header.insert(5, "Lab_Comment");
        header.push("Internal Ref");
        let map = HeaderMap::match_header(header.iter().copied(), &dataset).unwrap();
        assert_eq!(map.extra_columns(), ["Lab_Comment", "Internal Ref"]);
        assert_eq!(map.column_count(), 29);
        let record = RowConverter::new(dataset.clone(), map)
            .convert(&row(&header, &[("Lab_Comment", "x")]))
            .unwrap();
        let plain = converter(&dataset, &schema_order())
            .convert(&row(&schema_order(), &[]))
            .unwrap();
        assert_eq!(record, plain);
    }

    #[test]
    fn duplicate_header_is_an_error() {
        let dataset = lab_dataset();
        let mut header = schema_order();
        header.push(" patient_dob");
        let error = HeaderMap::match_header(header.iter().copied(), &dataset).unwrap_err();
        assert_eq!(error, HeaderError::DuplicateColumn(" patient_dob".into()));
    }

    #[test]
    fn wrong_field_count_is_a_row_reject() {
        let dataset = lab_dataset();
        let header = schema_order();
        let mut converter = converter(&dataset, &header);
        let mut short = row(&header, &[]);
        short.truncate(26);
        let error = converter.convert(&short).unwrap_err();
        assert_eq!(
            error,
            RowReject {
                column: None,
                reason: reason::WRONG_FIELD_COUNT,
                detail: "expected 27 fields, found 26".into()
            }
        );
        let mut long = row(&header, &[]);
        long.push_field("");
        assert_eq!(
            converter.convert(&long).unwrap_err().detail,
            "expected 27 fields, found 28"
        );
    }

    #[test]
    fn rejects_name_the_column_as_written_and_the_reason() {
        let header = ["test_result "]
            .into_iter()
            .chain(schema_order().into_iter().filter(|c| *c != "Test_Result"))
            .collect::<Vec<_>>();
        let error = reject(&header, &[("Test_Result", "   ")]);
        assert_eq!(
            (error.column.as_deref(), error.reason, error.detail.as_str()),
            (
                Some("test_result "),
                reason::MISSING_REQUIRED,
                "required value is empty"
            )
        );
        let header = schema_order();
        let error = reject(&header, &[("Specimen_Collection_Date", "2021-02-30")]);
        assert_eq!(
            (error.column.as_deref(), error.reason, error.detail.as_str()),
            (
                Some("Specimen_Collection_Date"),
                reason::BAD_DATE,
                "does not match any of %m/%d/%Y, %Y-%m-%d"
            )
        );
        let error = reject(&header, &[("Report_Generated_At", "2021-03-17 25:00:00")]);
        assert_eq!(
            (error.column.as_deref(), error.reason, error.detail.as_str()),
            (
                Some("Report_Generated_At"),
                reason::BAD_DATE,
                "does not match any of %Y-%m-%d %H:%M:%S, %Y-%m-%dT%H:%M:%S"
            )
        );
        let error = reject(&header, &[("Patient_Sex", "Woman")]);
        assert_eq!(
            (error.column.as_deref(), error.reason, error.detail.as_str()),
            (
                Some("Patient_Sex"),
                reason::BAD_ENUM,
                "not one of F, M, U, O nor a value the mapping's enum_map knows"
            )
        );
    }

    #[test]
    fn first_failing_column_in_file_order_wins() {
        let header = schema_order();
        let bad = [
            ("Patient_DOB", "13/45/1980"),
            ("Patient_Sex", "??"),
            ("Test_Result", ""),
        ];
        assert_eq!(reject(&header, &bad).column.as_deref(), Some("Patient_DOB"));
        let mut reversed = header.clone();
        reversed.reverse();
        assert_eq!(
            reject(&reversed, &bad).column.as_deref(),
            Some("Test_Result")
        );
    }

    #[test]
    fn reject_detail_never_contains_the_value() {
        let header = schema_order();
        let secret = "Zyx-Secret-4711";
        for column in [
            "Patient_DOB",
            "Patient_Sex",
            "Report_Generated_At",
            "Result_Date",
        ] {
            let error = reject(&header, &[(column, secret)]);
            assert!(
                !error.detail.contains(secret) && !error.to_string().contains(secret),
                "{error}"
            );
            assert!(!error.detail.contains("4711"), "{error}");
        }
    }

    #[test]
    fn enum_values_normalise_through_map_and_symbols() {
        let dataset = lab_dataset();
        let header = schema_order();
        let mut converter = converter(&dataset, &header);
        for (raw, symbol) in [
            ("MALE", "M"),
            ("male", "M"),
            ("m", "M"),
            ("U", "U"),
            ("Other", "O"),
        ] {
            let record = converter
                .convert(&row(&header, &[("Patient_Sex", raw)]))
                .unwrap();
            assert_eq!(
                record.get("patient_sex"),
                Some(&FieldValue::Enum(symbol.into())),
                "{raw}"
            );
        }
    }

    #[test]
    fn date_fast_paths_agree_with_chrono() {
        let inputs = [
            "01/05/2020",
            "1/5/2020",
            "12/31/1999",
            "02/29/2020",
            "02/29/2021",
            "13/01/2020",
            "1/5/20",
            "1/5/02020",
            "2020-01-05",
            "2020-1-5",
            "2020-13-01",
            "20-01-05",
            "2020-01-05x",
            "x",
            "",
            "+2020-01-05",
            "1/ 5/2020",
        ];
        for format in ["%m/%d/%Y", "%Y-%m-%d"] {
            let fast = DateFormat::new(format);
            assert!(!matches!(fast, DateFormat::Chrono(_)));
            for input in inputs {
                assert_eq!(
                    fast.parse_date(input),
                    NaiveDate::parse_from_str(input, format).ok(),
                    "{format} {input:?}"
                );
            }
        }
        let stamps = [
            "2021-03-17 08:09:10",
            "2021-03-17T08:09:10",
            "2021-3-7 8:09:10",
            "2021-03-17 24:00:00",
            "2021-02-29 00:00:00",
            "2021-03-17 08:09:60",
            "2021-03-17 08:09",
            "2021-03-17 08:09:10.5",
        ];
        for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
            let fast = DateFormat::new(format);
            assert!(matches!(fast, DateFormat::IsoDateTime(_)));
            for input in stamps {
                assert_eq!(
                    fast.parse_datetime(input),
                    NaiveDateTime::parse_from_str(input, format).ok(),
                    "{format} {input:?}"
                );
            }
        }
    }

    /// A dataset with the number and boolean types the lab results lack.
    fn reading_dataset(dir: &Path) -> Arc<Dataset> {
        let schema = r#"{"type": "record", "name": "Reading", "namespace": "t", "fields": [
            {"name": "id", "type": "string"},
            {"name": "count", "type": "int"},
            {"name": "total", "type": ["null", "long"], "default": null},
            {"name": "ratio", "type": ["null", "double"], "default": null},
            {"name": "ok", "type": ["null", "boolean"], "default": null}]}"#;
        std::fs::write(dir.join("reading.avsc"), schema).unwrap();
        let mapping = "schema = \"reading.avsc\"\nkey_fields = [\"id\"]\n\
            [[field]]\nname = \"id\"\ncolumn = \"ID\"\n[[field]]\nname = \"count\"\ncolumn = \"Count\"\n\
            [[field]]\nname = \"total\"\ncolumn = \"Total\"\n[[field]]\nname = \"ratio\"\ncolumn = \"Ratio\"\n\
            [[field]]\nname = \"ok\"\ncolumn = \"OK\"\n";
        std::fs::write(dir.join("reading.toml"), mapping).unwrap();
        let store = SchemaStore::load_dir(dir).unwrap();
        Arc::new(DatasetMapping::load(&dir.join("reading.toml"), &store).unwrap())
    }

    #[test]
    fn numbers_and_booleans_convert_or_reject() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = reading_dataset(dir.path());
        let header = ["ID", "Count", "Total", "Ratio", "OK"];
        let mut converter = converter(&dataset, &header);
        let convert = |c: &mut RowConverter, cells: [&str; 5]| {
            c.convert(&csv::StringRecord::from(cells.to_vec()))
        };

        let record = convert(&mut converter, ["a", " -7 ", "9000000000", "0.25", "Yes"]).unwrap();
        assert_eq!(
            record.values(),
            [
                FieldValue::String("a".into()),
                FieldValue::Int(-7),
                FieldValue::Long(9_000_000_000),
                FieldValue::Double(0.25),
                FieldValue::Boolean(true)
            ]
        );
        let record = convert(&mut converter, ["a", "0", "", "", "0"]).unwrap();
        assert_eq!(
            record.values()[2..],
            [
                FieldValue::Null,
                FieldValue::Null,
                FieldValue::Boolean(false)
            ]
        );
        for (ok, expected) in [("TRUE", true), ("no", false), ("1", true), ("False", false)] {
            let record = convert(&mut converter, ["a", "1", "", "", ok]).unwrap();
            assert_eq!(record.values()[4], FieldValue::Boolean(expected));
        }

        let cases = [
            (
                ["a", "9000000000", "", "", ""],
                "Count",
                reason::BAD_NUMBER,
                "not a whole number in the int range",
            ),
            (
                ["a", "1.5", "", "", ""],
                "Count",
                reason::BAD_NUMBER,
                "not a whole number in the int range",
            ),
            (
                ["a", "1", "12abc", "", ""],
                "Total",
                reason::BAD_NUMBER,
                "not a whole number in the long range",
            ),
            (
                ["a", "1", "", "NaN", ""],
                "Ratio",
                reason::BAD_NUMBER,
                "not a finite decimal number",
            ),
            (
                ["a", "1", "", "1,5", ""],
                "Ratio",
                reason::BAD_NUMBER,
                "not a finite decimal number",
            ),
            (
                ["a", "1", "", "", "maybe"],
                "OK",
                reason::BAD_BOOLEAN,
                "expected true/false, yes/no or 1/0",
            ),
            (
                ["a", "", "", "", ""],
                "Count",
                reason::MISSING_REQUIRED,
                "required value is empty",
            ),
        ];
        for (cells, column, reason, detail) in cases {
            let error = convert(&mut converter, cells).unwrap_err();
            assert_eq!(
                (error.column.as_deref(), error.reason, error.detail.as_str()),
                (Some(column), reason, detail),
                "{cells:?}"
            );
        }
    }
}
