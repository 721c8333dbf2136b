//! The mapping file (`deploy/config/*.mapping.toml`) and what it becomes. [`DatasetMapping`] is
//! the file as written; [`DatasetMapping::resolve`] checks it against the current dataset schema
//! once, at start, and yields the [`Dataset`] every stage shares. Each refusal is a
//! [`DatasetError`] naming the file and the key, so a wrong mapping stops the service before it
//! reads a row. The only I/O is reading the mapping and its schema file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use serde::Deserialize;

use super::decode::WriterPlan;
use super::field::{
    check_formats, classify, default_value, enum_tables, Classified, FieldKind, FieldSpec,
};
use crate::avro::{AvroError, LoadedSchema, SchemaStore};
use crate::record_key::KeyCase;

/// A mapping file or its fit to the schema is wrong; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The mapping file could not be read.
    #[error("cannot read dataset mapping {}: {source}", path.display())]
    Read {
        /// The mapping file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The mapping file.
        path: PathBuf,
        /// The parser's message, which names line, column and key.
        message: String,
    },
    /// The `schema` file cannot be read, parsed or found among the loaded schemas.
    #[error("{}: schema: {source}", path.display())]
    Schema {
        /// The mapping file.
        path: PathBuf,
        /// The schema problem.
        source: AvroError,
    },
    /// The mapping breaks a rule (see the module docs of the mapping file).
    #[error("{}: {key}: {problem}", path.display())]
    Invalid {
        /// The mapping file.
        path: PathBuf,
        /// Key path, e.g. `field[3] (patient_dob)` or `key_fields[1] (accession_number)`.
        key: String,
        /// What is wrong and what is expected.
        problem: String,
    },
}

/// The mapping file as written: `schema`, `key_fields`, `volatile_fields` and one `[[field]]`
/// per schema field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMapping {
    /// The dataset schema file, relative to the schemas directory.
    pub schema: PathBuf,
    /// The record key fields, in key order.
    pub key_fields: Vec<String>,
    /// Fields left out of the content hash because they change in every snapshot.
    #[serde(default)]
    pub volatile_fields: Vec<String>,
    /// One entry per schema field.
    #[serde(rename = "field", default)]
    pub fields: Vec<FieldMapping>,
}

/// One `[[field]]` table of a mapping file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Avro field name.
    pub name: String,
    /// CSV header of the column holding the value.
    pub column: String,
    /// chrono formats, tried in order (date and timestamp-millis fields only).
    #[serde(default)]
    pub date_formats: Vec<String>,
    /// Case rule when the value is part of the record key (key fields only).
    #[serde(default)]
    pub key_case: Option<KeyCase>,
    /// Value → symbol normalisation table (enum fields only), matched case-insensitively.
    #[serde(default)]
    pub enum_map: Option<BTreeMap<String, String>>,
}

/// A validated mapping with its schema; built once at start and shared (`Arc<Dataset>`).
#[derive(Debug)]
pub struct Dataset {
    pub(super) mapping_path: PathBuf,
    pub(super) schema: Arc<LoadedSchema>,
    pub(super) fields: Vec<FieldSpec>,
    pub(super) names: Arc<[Box<str>]>,
    pub(super) key_field_indexes: Vec<usize>,
    pub(super) key_cases: Vec<KeyCase>,
    /// How the reader's own schema maps onto itself: the common case, kept out of the lock.
    pub(super) identity: Arc<WriterPlan>,
    /// Resolution plans of older writer schemas, by fingerprint, built on first use.
    pub(super) plans: Mutex<HashMap<[u8; 8], Arc<WriterPlan>>>,
}

impl DatasetMapping {
    /// Reads, parses and validates the mapping at `path` against the current schemas of
    /// `store`; `schema` is resolved relative to [`SchemaStore::dir`].
    pub fn load(path: &Path, store: &SchemaStore) -> Result<Dataset, DatasetError> {
        let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        DatasetMapping::parse(&text, path)?.resolve(path, store)
    }

    /// Parses mapping TOML; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<DatasetMapping, DatasetError> {
        toml::from_str(text).map_err(|error: toml::de::Error| DatasetError::Syntax {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })
    }

    /// Validates the mapping against its schema in `store`; `path` is for messages.
    pub fn resolve(self, path: &Path, store: &SchemaStore) -> Result<Dataset, DatasetError> {
        let invalid = |key: String, problem: String| DatasetError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        let schema = current_schema(&self.schema, path, store)?;
        let Schema::Record(record) = schema.parsed() else {
            return Err(invalid(
                "schema".into(),
                "top level must be a record".into(),
            ));
        };

        let mut specs: Vec<Option<FieldSpec>> = vec![None; record.fields.len()];
        let mut mapped_by: HashMap<&str, usize> = HashMap::new();
        let mut columns: HashMap<String, usize> = HashMap::new();
        for (i, field) in self.fields.iter().enumerate() {
            let at = format!("field[{i}] ({})", field.name);
            let Some(&position) = record.lookup.get(&field.name) else {
                return Err(invalid(
                    at,
                    format!("the schema {} has no such field", schema.name),
                ));
            };
            if let Some(first) = mapped_by.insert(&field.name, i) {
                return Err(invalid(
                    at,
                    format!("field is mapped twice (first in field[{first}])"),
                ));
            }
            let normalised = normalise_column(&field.column);
            if normalised.is_empty() {
                return Err(invalid(format!("{at}.column"), "must not be empty".into()));
            }
            if let Some(first) = columns.insert(normalised, i) {
                let problem = format!(
                    "column {:?} is already mapped by field[{first}] ({}) (columns match trimmed and case-insensitively)",
                    field.column, self.fields[first].name
                );
                return Err(invalid(format!("{at}.column"), problem));
            }
            let avro_field = &record.fields[position];
            let Classified {
                kind,
                nullable,
                null_branch,
                symbols,
            } = classify(&avro_field.schema).map_err(|problem| invalid(at.clone(), problem))?;
            check_formats(field, kind, &at).map_err(|(key, problem)| invalid(key, problem))?;
            let (enum_map, enum_table) = enum_tables(field, kind, &symbols, &at)
                .map_err(|(key, problem)| invalid(key, problem))?;
            let default = avro_field
                .default
                .as_ref()
                .and_then(|json| default_value(json, kind, nullable, &symbols));
            specs[position] = Some(FieldSpec {
                name: field.name.as_str().into(),
                column: field.column.clone(),
                kind,
                nullable,
                null_branch,
                date_formats: field.date_formats.clone(),
                key_case: field.key_case.unwrap_or_default(),
                symbols,
                enum_map,
                enum_table,
                volatile: false,
                default,
            });
        }
        let unmapped: Vec<&str> = record
            .fields
            .iter()
            .zip(&specs)
            .filter(|(_, spec)| spec.is_none())
            .map(|(field, _)| field.name.as_str())
            .collect();
        if !unmapped.is_empty() {
            let problem = format!(
                "schema fields without a [[field]] entry: {}",
                unmapped.join(", ")
            );
            return Err(invalid("field".into(), problem));
        }
        let mut fields: Vec<FieldSpec> = specs.into_iter().flatten().collect();

        if self.key_fields.is_empty() {
            return Err(invalid(
                "key_fields".into(),
                "needs at least one field".into(),
            ));
        }
        let mut key_field_indexes = Vec::with_capacity(self.key_fields.len());
        for (k, name) in self.key_fields.iter().enumerate() {
            let at = format!("key_fields[{k}] ({name})");
            let index = field_position(&fields, name)
                .ok_or_else(|| invalid(at.clone(), "no such field in the schema".into()))?;
            let spec = &fields[index];
            if spec.kind != FieldKind::String || spec.nullable {
                let problem = format!(
                    "a key field must be a required string, this one is {}{}",
                    if spec.nullable { "a nullable " } else { "a " },
                    spec.kind
                );
                return Err(invalid(at, problem));
            }
            if key_field_indexes.contains(&index) {
                return Err(invalid(at, "listed twice".into()));
            }
            key_field_indexes.push(index);
        }
        let stray_key_case = self
            .fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.key_case.is_some() && !self.key_fields.contains(&f.name));
        if let Some((i, field)) = stray_key_case {
            let at = format!("field[{i}] ({}).key_case", field.name);
            return Err(invalid(at, "only key fields take key_case".into()));
        }
        let mut volatile = HashSet::new();
        for (k, name) in self.volatile_fields.iter().enumerate() {
            let at = format!("volatile_fields[{k}] ({name})");
            let index = field_position(&fields, name)
                .ok_or_else(|| invalid(at.clone(), "no such field in the schema".into()))?;
            if !volatile.insert(index) {
                return Err(invalid(at, "listed twice".into()));
            }
            fields[index].volatile = true;
        }

        let key_cases = key_field_indexes
            .iter()
            .map(|&i| fields[i].key_case)
            .collect();
        let names: Arc<[Box<str>]> = fields.iter().map(|f| f.name.clone()).collect();
        let identity = Arc::new(WriterPlan::identity(&names));
        Ok(Dataset {
            mapping_path: path.to_path_buf(),
            schema,
            fields,
            names,
            key_field_indexes,
            key_cases,
            identity,
            plans: Mutex::new(HashMap::new()),
        })
    }
}

/// The form in which CSV headers and mapped columns are compared: trimmed, lower-cased.
pub fn normalise_column(column: &str) -> String {
    column.trim().to_lowercase()
}

fn current_schema(
    relative: &Path,
    mapping: &Path,
    store: &SchemaStore,
) -> Result<Arc<LoadedSchema>, DatasetError> {
    let schema_error = |source| DatasetError::Schema {
        path: mapping.to_path_buf(),
        source,
    };
    let file = store.dir().join(relative);
    let json = std::fs::read_to_string(&file).map_err(|source| {
        schema_error(AvroError::Read {
            path: file.clone(),
            source,
        })
    })?;
    let named = LoadedSchema::parse(&json, &file).map_err(schema_error)?;
    let current = store.current(&named.name).map_err(schema_error)?;
    if current.fingerprint != named.fingerprint {
        return Err(DatasetError::Invalid {
            path: mapping.to_path_buf(),
            key: "schema".into(),
            problem: format!(
                "{} is not the current version of {} (that is {})",
                file.display(),
                named.name,
                current.path.display()
            ),
        });
    }
    Ok(current)
}

pub(super) fn field_position(fields: &[FieldSpec], name: &str) -> Option<usize> {
    fields.iter().position(|f| &*f.name == name)
}

impl Dataset {
    /// The fields in schema order.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// The field names in schema order, shared with every record.
    pub fn field_names(&self) -> &Arc<[Box<str>]> {
        &self.names
    }

    /// Positions (in [`Dataset::fields`]) of the key fields, in key order.
    pub fn key_field_indexes(&self) -> &[usize] {
        &self.key_field_indexes
    }

    /// Case rules of the key fields, in key order.
    pub fn key_cases(&self) -> &[KeyCase] {
        &self.key_cases
    }

    /// The current (reader) dataset schema.
    pub fn schema(&self) -> &Arc<LoadedSchema> {
        &self.schema
    }

    /// Its full name, e.g. `snapfeed.lab.LabResult`.
    pub fn schema_name(&self) -> &str {
        &self.schema.name
    }

    /// The mapping file it was loaded from.
    pub fn mapping_path(&self) -> &Path {
        &self.mapping_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::fixtures::{dataset, mapping_text, store, MAPPING};

    /// Loads an edited copy of the real mapping; messages name it like the real file.
    fn load_edited(edit: impl FnOnce(String) -> String) -> Result<Dataset, DatasetError> {
        let text = edit(mapping_text());
        DatasetMapping::parse(&text, Path::new(MAPPING))?.resolve(Path::new(MAPPING), &store())
    }

    fn error_of(edit: impl FnOnce(String) -> String) -> String {
        load_edited(edit).unwrap_err().to_string()
    }

    #[test]
    fn dataset_mapping_loads_the_lab_results_mapping() {
        let dataset = dataset();
        assert_eq!(dataset.schema_name(), "snapfeed.lab.LabResult");
        assert_eq!(dataset.fields().len(), 27);
        let key_names: Vec<&str> = dataset
            .key_field_indexes()
            .iter()
            .map(|&i| dataset.fields()[i].name())
            .collect();
        assert_eq!(
            key_names,
            ["facility_clia", "accession_number", "test_code"]
        );
        assert_eq!(
            dataset.key_cases(),
            [KeyCase::Upper, KeyCase::Preserve, KeyCase::Preserve]
        );
        let volatile: Vec<&str> = dataset
            .fields()
            .iter()
            .filter(|f| f.volatile())
            .map(|f| f.name())
            .collect();
        assert_eq!(volatile, ["report_generated_at"]);

        let field = |name: &str| dataset.fields().iter().find(|f| f.name() == name).unwrap();
        let dob = field("patient_dob");
        assert_eq!(
            (dob.kind(), dob.nullable(), dob.column()),
            (FieldKind::Date, true, "Patient_DOB")
        );
        assert_eq!(dob.date_formats(), ["%m/%d/%Y", "%Y-%m-%d"]);
        let sex = field("patient_sex");
        assert_eq!(sex.kind(), FieldKind::Enum);
        assert_eq!(sex.symbols(), ["F", "M", "U", "O"]);
        assert_eq!(sex.resolve_enum("MALE"), Some("M"));
        assert_eq!(sex.resolve_enum("F"), Some("F"));
        assert_eq!(sex.resolve_enum("X"), None);
        assert_eq!(sex.enum_map().get("FEMALE").map(String::as_str), Some("F"));
        assert_eq!(field("patient_id").kind(), FieldKind::String);
        assert!(!field("patient_id").nullable());
        assert_eq!(
            field("report_generated_at").kind(),
            FieldKind::TimestampMillis
        );
    }

    #[test]
    fn date_field_without_formats_is_refused() {
        let error = error_of(|t| {
            t.replacen(
                "column = \"Patient_DOB\"\ndate_formats = [\"%m/%d/%Y\", \"%Y-%m-%d\"]",
                "column = \"Patient_DOB\"",
                1,
            )
        });
        assert_eq!(error, "deploy/config/lab_results.mapping.toml: field[3] (patient_dob): date field needs date_formats");
        let error = error_of(|t| {
            t.replace(
                "date_formats = [\"%Y-%m-%d %H:%M:%S\", \"%Y-%m-%dT%H:%M:%S\"]",
                "",
            )
        });
        assert!(
            error.ends_with(
                "field[26] (report_generated_at): timestamp-millis field needs date_formats"
            ),
            "{error}"
        );
    }

    #[test]
    fn formats_on_other_fields_and_broken_formats_are_refused() {
        let error = error_of(|t| {
            t.replace(
                "column = \"Patient_ID\"",
                "column = \"Patient_ID\"\ndate_formats = [\"%Y\"]",
            )
        });
        assert!(error.ends_with("field[0] (patient_id).date_formats: only date and timestamp-millis fields take date_formats, this is a string field"), "{error}");
        let error = error_of(|t| {
            t.replacen(
                "[\"%m/%d/%Y\", \"%Y-%m-%d\"]",
                "[\"%m/%d/%Y\", \"%Y-%m-%!\"]",
                1,
            )
        });
        assert!(error.ends_with("field[3] (patient_dob).date_formats[1]: \"%Y-%m-%!\" is not a valid chrono strftime format"), "{error}");
    }

    #[test]
    fn unknown_duplicate_and_unmapped_fields_are_refused() {
        let error = error_of(|t| t + "\n[[field]]\nname = \"nope\"\ncolumn = \"Nope\"\n");
        assert!(
            error
                .ends_with("field[27] (nope): the schema snapfeed.lab.LabResult has no such field"),
            "{error}"
        );
        let error = error_of(|t| t + "\n[[field]]\nname = \"device_id\"\ncolumn = \"Device\"\n");
        assert!(
            error.ends_with("field[27] (device_id): field is mapped twice (first in field[25])"),
            "{error}"
        );
        let error = error_of(|t| {
            t.replace("[[field]]\nname = \"device_id\"                      # string, nullable\ncolumn = \"Device_ID\"", "")
        });
        assert!(
            error.ends_with(": field: schema fields without a [[field]] entry: device_id"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_columns_are_refused_case_insensitively() {
        let error = error_of(|t| t.replace("column = \"Device_ID\"", "column = \" patient_id \""));
        assert!(
            error.ends_with("field[25] (device_id).column: column \" patient_id \" is already mapped by field[0] (patient_id) (columns match trimmed and case-insensitively)"),
            "{error}"
        );
        let error = error_of(|t| t.replace("column = \"Device_ID\"", "column = \"  \""));
        assert!(
            error.ends_with("field[25] (device_id).column: must not be empty"),
            "{error}"
        );
    }

    #[test]
    fn key_fields_must_exist_and_be_required_strings() {
        let with_keys = |keys: &'static str| {
            move |t: String| {
                t.replace(
                    "key_fields = [\"facility_clia\", \"accession_number\", \"test_code\"]",
                    keys,
                )
            }
        };
        let error = error_of(with_keys("key_fields = [\"facility_clia\", \"nope\"]"));
        assert!(
            error.ends_with("key_fields[1] (nope): no such field in the schema"),
            "{error}"
        );
        let error = error_of(with_keys(
            "key_fields = [\"facility_clia\", \"patient_last_name\"]",
        ));
        assert!(error.ends_with("key_fields[1] (patient_last_name): a key field must be a required string, this one is a nullable string"), "{error}");
        let error = error_of(with_keys("key_fields = [\"specimen_collection_date\"]"));
        assert!(error.ends_with("key_fields[0] (specimen_collection_date): a key field must be a required string, this one is a date"), "{error}");
        let error = error_of(with_keys("key_fields = [\"test_code\", \"test_code\"]"));
        assert!(
            error.ends_with("key_fields[1] (test_code): listed twice"),
            "{error}"
        );
        let error = error_of(with_keys("key_fields = []"));
        assert!(
            error.ends_with("key_fields: needs at least one field"),
            "{error}"
        );
        // key_case on a field that is not (or no longer) a key field is a mistake.
        let error = error_of(with_keys(
            "key_fields = [\"test_code\", \"accession_number\"]",
        ));
        assert!(
            error.ends_with("field[13] (facility_clia).key_case: only key fields take key_case"),
            "{error}"
        );
    }

    #[test]
    fn volatile_fields_must_exist() {
        let error = error_of(|t| {
            t.replace(
                "volatile_fields = [\"report_generated_at\"]",
                "volatile_fields = [\"generated\"]",
            )
        });
        assert!(
            error.ends_with("volatile_fields[0] (generated): no such field in the schema"),
            "{error}"
        );
    }

    #[test]
    fn enum_map_only_on_enums_and_only_to_symbols() {
        let error = error_of(|t| {
            t.replace(
                "enum_map = { \"MALE\" = \"M\",",
                "enum_map = { \"MALE\" = \"Male\",",
            )
        });
        assert!(error.ends_with("field[4] (patient_sex).enum_map.\"MALE\": \"Male\" is not a symbol of the enum (F, M, U, O)"), "{error}");
        let error = error_of(|t| {
            t.replace(
                "column = \"Patient_ID\"",
                "column = \"Patient_ID\"\nenum_map = { \"A\" = \"B\" }",
            )
        });
        assert!(error.ends_with("field[0] (patient_id).enum_map: only enum fields take enum_map, this is a string field"), "{error}");
    }

    #[test]
    fn unknown_keys_and_non_current_schemas_are_refused() {
        let error = error_of(|t| {
            t.replace(
                "column = \"Patient_ID\"",
                "column = \"Patient_ID\"\ncolumns = \"x\"",
            )
        });
        assert!(
            error.starts_with("deploy/config/lab_results.mapping.toml: "),
            "{error}"
        );
        assert!(error.contains("unknown field `columns`"), "{error}");
        let error = error_of(|t| {
            t.replace(
                "schema = \"lab_result.avsc\"",
                "schema = \"history/lab_result.v1.avsc\"",
            )
        });
        assert!(
            error.contains(": schema: ")
                && error.contains("is not the current version of snapfeed.lab.LabResult"),
            "{error}"
        );
        let error =
            error_of(|t| t.replace("schema = \"lab_result.avsc\"", "schema = \"missing.avsc\""));
        assert!(error.contains(": schema: cannot read schema"), "{error}");
    }

    #[test]
    fn unsupported_field_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let schema = r#"{"type": "record", "name": "Odd", "namespace": "t", "fields": [
            {"name": "id", "type": "string"},
            {"name": "weight", "type": ["null", "float"], "default": null}]}"#;
        std::fs::write(dir.path().join("odd.avsc"), schema).unwrap();
        let store = SchemaStore::load_dir(dir.path()).unwrap();
        let text = "schema = \"odd.avsc\"\nkey_fields = [\"id\"]\n[[field]]\nname = \"id\"\ncolumn = \"ID\"\n[[field]]\nname = \"weight\"\ncolumn = \"W\"\n";
        let error = DatasetMapping::parse(text, Path::new("odd.toml"))
            .unwrap()
            .resolve(Path::new("odd.toml"), &store)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "odd.toml: field[1] (weight): type float is not supported (supported: string, int, long, double, boolean, date, timestamp-millis, enum, each optionally [\"null\", T])"
        );
    }
}
