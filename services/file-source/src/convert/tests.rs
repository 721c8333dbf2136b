//! Whole rows through the converter against the lab-results mapping: the mapping applied, any
//! column order, rejects naming column and reason (never the value), the per-row path agreeing
//! with the record path. The fixtures (the dataset, a good row laid out under any header) serve
//! the header and cell tests and the ingest's row-outcome tests too.

use super::*;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::{normalise_column, DatasetMapping, FieldValue};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn lab_dataset() -> Arc<Dataset> {
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
pub(crate) fn row(header: &[&str], changes: &[(&str, &str)]) -> csv::StringRecord {
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

pub(crate) fn schema_order() -> Vec<&'static str> {
    GOOD.iter().map(|(c, _)| *c).collect()
}

pub(crate) fn converter(dataset: &Arc<Dataset>, header: &[&str]) -> RowConverter {
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
        let cells: Vec<&str> = row.iter().collect();
        converter
            .convert_refs(&dataset, cells.into_iter(), &mut values)
            .unwrap();
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

proptest::proptest! {
    #[test]
    fn the_quick_trim_is_str_trim(
        cell in proptest::collection::vec(
            proptest::sample::select(vec!['a', 'Z', '1', ' ', '\t', '\u{a0}', '\u{2003}', '\u{3000}', 'é', '\u{85}', '"']),
            0..8,
        )
    ) {
        let cell: String = cell.into_iter().collect();
        proptest::prop_assert_eq!(super::trim(&cell), cell.trim());
    }
}
