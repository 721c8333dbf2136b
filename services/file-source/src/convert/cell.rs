//! One cell → one value of its field's type, borrowed from the row: strings as they are,
//! numbers and booleans parsed, dates and timestamps in the configured formats ([`date`]),
//! enums through the mapping's `enum_map` and symbols, empty → null (or a reject when the field
//! is required). A problem is a reason from [`reason`] and a detail that never holds the value.
//! Pure: no delivery guarantee of its own.
//!
//! [`date`]: super::date

use chrono::Datelike;
use snapfeed_runtime::dataset::{Dataset, FieldKind, FieldRef};

use super::date::{DateFormat, UNIX_EPOCH_DAYS_FROM_CE};
use super::reason;

/// How one mapped column converts.
#[derive(Debug)]
pub(super) struct ColumnPlan {
    /// Position of the field in the dataset.
    pub(super) field: usize,
    /// Its type.
    pub(super) kind: FieldKind,
    /// Empty cells are null rather than a reject.
    pub(super) nullable: bool,
    /// Date/timestamp formats, tried in order.
    pub(super) formats: Vec<DateFormat>,
}

/// A cell's problem: reason and detail; the column is added by the caller.
pub(super) type CellError = (&'static str, String);

/// Converts one trimmed cell by its column's plan; the value borrows from the cell (or, for
/// enums, from the dataset's symbols).
pub(super) fn convert_cell<'r>(
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
    use std::path::Path;
    use std::sync::Arc;

    use snapfeed_runtime::avro::SchemaStore;
    use snapfeed_runtime::dataset::{DatasetMapping, FieldValue};

    use super::*;
    use crate::convert::tests::converter;
    use crate::convert::RowConverter;

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
