//! Matching a file's header to the dataset, once per file: which CSV column feeds which
//! field. Columns match by name (trimmed, case-insensitive, any order; a UTF-8 BOM on the first
//! cell is ignored); a missing column of a required field fails the whole file, a missing
//! column of a nullable field makes that field null, unknown columns are reported and ignored.
//! Pure: no Kafka, no files, so no delivery guarantee of its own.

use std::collections::{HashMap, HashSet};

use snapfeed_runtime::dataset::{normalise_column, Dataset};

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
    pub(super) column_fields: Vec<Option<usize>>,
    /// The header cells as written (BOM removed), for reject messages.
    pub(super) headers: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{converter, lab_dataset, row, schema_order};
    use crate::convert::RowConverter;
    use snapfeed_runtime::dataset::FieldValue;

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
}
