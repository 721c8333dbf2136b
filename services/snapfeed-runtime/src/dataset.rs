//! The dataset record — one CSV row as an Avro record of the dataset schema (e.g.
//! `schemas/lab_result.avsc`) — driven by configuration, not code: a mapping file
//! (`deploy/config/*.mapping.toml`, format documented in its comments) says which CSV column
//! feeds each schema field, how dates are written, how enum values are normalised, which
//! fields form the record key and which are volatile.
//!
//! [`DatasetMapping::load`] validates the mapping against the schema once, at start, with
//! errors that name the file and the key (`field[3] (patient_dob): date field needs
//! date_formats`); the resulting [`Dataset`] is shared by every stage. A [`DatasetRecord`]
//! is the values in schema field order; it encodes straight to Avro and decodes from any
//! version of the schema kept in `schemas/history/` (reader fields the writer lacked take
//! their schema default; writer fields the reader dropped are skipped), so a schema upgrade
//! never strands data written before it. Nothing here logs or formats field values: the
//! `Debug` of a record shows field kinds only. No I/O beyond reading the mapping at start, so
//! no delivery guarantee of its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::avro::{
    AvroError, LoadedSchema, MessageLocation, SchemaStore, SINGLE_OBJECT_HEADER_LEN,
};
use crate::record_key::{KeyCase, KeyError, RecordKey};

mod raw;
pub use raw::FieldRef;

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

/// The Avro types a dataset field may have (each also as `["null", T]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `string`.
    String,
    /// `int`.
    Int,
    /// `long`.
    Long,
    /// `double`.
    Double,
    /// `boolean`.
    Boolean,
    /// `int` with logical type `date` (days since 1970-01-01).
    Date,
    /// `long` with logical type `timestamp-millis` (UTC).
    TimestampMillis,
    /// An Avro enum; its symbols are in [`FieldSpec::symbols`].
    Enum,
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldKind::String => "string",
            FieldKind::Int => "int",
            FieldKind::Long => "long",
            FieldKind::Double => "double",
            FieldKind::Boolean => "boolean",
            FieldKind::Date => "date",
            FieldKind::TimestampMillis => "timestamp-millis",
            FieldKind::Enum => "enum",
        })
    }
}

/// One validated field: its schema type joined with its mapping.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    name: Box<str>,
    column: String,
    kind: FieldKind,
    nullable: bool,
    /// Branch index of `null` in the field's union, when nullable.
    null_branch: u8,
    date_formats: Vec<String>,
    key_case: KeyCase,
    symbols: Vec<String>,
    /// The configured `enum_map`, keys trimmed and upper-cased.
    enum_map: BTreeMap<String, String>,
    /// Upper-cased input → symbol: every symbol under its own upper case, then the `enum_map`
    /// (which wins), so one lookup resolves a value.
    enum_table: HashMap<String, String>,
    volatile: bool,
    /// The reader default, used when a writer schema lacks this field.
    default: Option<FieldValue>,
}

impl FieldSpec {
    /// Avro field name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// CSV column name as configured.
    pub fn column(&self) -> &str {
        &self.column
    }
    /// Avro type.
    pub fn kind(&self) -> FieldKind {
        self.kind
    }
    /// Whether the schema type is `["null", T]`.
    pub fn nullable(&self) -> bool {
        self.nullable
    }
    /// chrono formats tried in order (date and timestamp-millis fields; empty otherwise).
    pub fn date_formats(&self) -> &[String] {
        &self.date_formats
    }
    /// Case rule for the record key (`preserve` unless configured).
    pub fn key_case(&self) -> KeyCase {
        self.key_case
    }
    /// Enum symbols in schema order (empty unless an enum).
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }
    /// The configured `enum_map`, keys upper-cased (empty unless configured).
    pub fn enum_map(&self) -> &BTreeMap<String, String> {
        &self.enum_map
    }
    /// The symbol for an enum input that is already trimmed and upper-cased: an `enum_map`
    /// entry first, else a symbol matched case-insensitively.
    pub fn resolve_enum(&self, upper: &str) -> Option<&str> {
        self.enum_table.get(upper).map(String::as_str)
    }
    /// Whether the field is left out of the content hash.
    pub fn volatile(&self) -> bool {
        self.volatile
    }
}

/// A validated mapping with its schema; built once at start and shared (`Arc<Dataset>`).
#[derive(Debug)]
pub struct Dataset {
    mapping_path: PathBuf,
    schema: Arc<LoadedSchema>,
    fields: Vec<FieldSpec>,
    names: Arc<[Box<str>]>,
    key_field_indexes: Vec<usize>,
    key_cases: Vec<KeyCase>,
    /// How the reader's own schema maps onto itself: the common case, kept out of the lock.
    identity: Arc<WriterPlan>,
    /// Resolution plans of older writer schemas, by fingerprint, built on first use.
    plans: Mutex<HashMap<[u8; 8], Arc<WriterPlan>>>,
}

/// One field value of a [`DatasetRecord`]. Its `Debug` shows the value (health data): for
/// tests and local debugging, never for logs.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Absent (nullable fields only).
    Null,
    /// A `string`.
    String(String),
    /// An `int`.
    Int(i32),
    /// A `long`.
    Long(i64),
    /// A `double`.
    Double(f64),
    /// A `boolean`.
    Boolean(bool),
    /// A `date`: days since 1970-01-01.
    Date(i32),
    /// A `timestamp-millis`: milliseconds since 1970-01-01T00:00:00Z.
    TimestampMillis(i64),
    /// An enum symbol.
    Enum(String),
}

impl FieldValue {
    /// Whether the value can stand in a field of this kind (`Null` only if nullable).
    pub fn fits(&self, kind: FieldKind, nullable: bool) -> bool {
        if let FieldValue::Null = self {
            return nullable;
        }
        matches!(
            (self, kind),
            (FieldValue::String(_), FieldKind::String)
                | (FieldValue::Int(_), FieldKind::Int)
                | (FieldValue::Long(_), FieldKind::Long)
                | (FieldValue::Double(_), FieldKind::Double)
                | (FieldValue::Boolean(_), FieldKind::Boolean)
                | (FieldValue::Date(_), FieldKind::Date)
                | (FieldValue::TimestampMillis(_), FieldKind::TimestampMillis)
                | (FieldValue::Enum(_), FieldKind::Enum)
        )
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_avro_fast picks the union branch by the serialized type.
        match self {
            FieldValue::Null => serializer.serialize_none(),
            FieldValue::String(s) | FieldValue::Enum(s) => serializer.serialize_str(s),
            FieldValue::Int(v) | FieldValue::Date(v) => serializer.serialize_i32(*v),
            FieldValue::Long(v) | FieldValue::TimestampMillis(v) => serializer.serialize_i64(*v),
            FieldValue::Double(v) => serializer.serialize_f64(*v),
            FieldValue::Boolean(v) => serializer.serialize_bool(*v),
        }
    }
}

/// One record of the dataset: values in schema field order.
#[derive(Clone, PartialEq)]
pub struct DatasetRecord {
    /// The schema's field names, shared by every record of the dataset.
    names: Arc<[Box<str>]>,
    values: Vec<FieldValue>,
}

/// A value list that does not fit the dataset (a programming error in the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordShapeError {
    /// Wrong number of values.
    #[error("expected {expected} values, got {got}")]
    Arity {
        /// Fields in the schema.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A value of the wrong type, a null in a required field, or an unknown enum symbol.
    #[error("value for field {field} does not fit its {kind} type")]
    Type {
        /// The field name.
        field: String,
        /// Its type.
        kind: FieldKind,
    },
}

impl DatasetRecord {
    /// The value of field `name`, if the schema has it.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        let index = self.names.iter().position(|n| &**n == name)?;
        self.values.get(index)
    }

    /// The values in schema field order.
    pub fn values(&self) -> &[FieldValue] {
        &self.values
    }

    /// The schema's field names, in order.
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// Consumes the record into its values.
    pub fn into_values(self) -> Vec<FieldValue> {
        self.values
    }

    /// The canonical record key from the dataset's key fields (trimmed, case rule applied).
    pub fn key(&self, dataset: &Dataset) -> Result<RecordKey, KeyError> {
        let components =
            dataset
                .key_field_indexes
                .iter()
                .map(|&index| match self.values.get(index) {
                    Some(FieldValue::String(s)) => s.as_str(),
                    // Validation makes key fields required strings; anything else is an empty component.
                    _ => "",
                });
        RecordKey::build(components, &dataset.key_cases)
    }
}

impl fmt::Debug for DatasetRecord {
    /// Field kinds only: records hold health data, which never goes into logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.names.iter().zip(&self.values) {
            let shown = match value {
                FieldValue::Null => "null",
                FieldValue::String(_) => "string(..)",
                FieldValue::Int(_) => "int(..)",
                FieldValue::Long(_) => "long(..)",
                FieldValue::Double(_) => "double(..)",
                FieldValue::Boolean(_) => "boolean(..)",
                FieldValue::Date(_) => "date(..)",
                FieldValue::TimestampMillis(_) => "timestamp-millis(..)",
                FieldValue::Enum(_) => "enum(..)",
            };
            map.entry(name, &format_args!("{shown}"));
        }
        map.finish()
    }
}

impl Serialize for DatasetRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Entries in schema order: serde_avro_fast's fast path, no reordering buffers.
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (name, value) in self.names.iter().zip(&self.values) {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
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
        let identity = Arc::new(WriterPlan {
            writer_names: names.to_vec(),
            reader_index: (0..fields.len()).map(Some).collect(),
            initial: vec![FieldValue::Null; fields.len()],
        });
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

fn field_position(fields: &[FieldSpec], name: &str) -> Option<usize> {
    fields.iter().position(|f| &*f.name == name)
}

const SUPPORTED: &str = "supported: string, int, long, double, boolean, date, timestamp-millis, enum, each optionally [\"null\", T]";

/// The field kind, whether nullable, and the enum symbols, or why the type is not supported.
fn classify(schema: &Schema) -> Result<Classified, String> {
    let (inner, nullable, null_branch) = match schema {
        Schema::Union(union) => match union.variants() {
            [Schema::Null, other] if !matches!(other, Schema::Union(_)) => (other, true, 0),
            [other, Schema::Null] if !matches!(other, Schema::Union(_)) => (other, true, 1),
            _ => return Err(format!("union type is not supported ({SUPPORTED})")),
        },
        other => (other, false, 0),
    };
    let kind = match inner {
        Schema::String => FieldKind::String,
        Schema::Int => FieldKind::Int,
        Schema::Long => FieldKind::Long,
        Schema::Double => FieldKind::Double,
        Schema::Boolean => FieldKind::Boolean,
        Schema::Date => FieldKind::Date,
        Schema::TimestampMillis => FieldKind::TimestampMillis,
        Schema::Enum(e) => {
            return Ok(Classified {
                kind: FieldKind::Enum,
                nullable,
                null_branch,
                symbols: e.symbols.clone(),
            })
        }
        other => {
            return Err(format!(
                "type {} is not supported ({SUPPORTED})",
                type_name(other)
            ))
        }
    };
    Ok(Classified {
        kind,
        nullable,
        null_branch,
        symbols: Vec::new(),
    })
}

/// What [`classify`] makes of a field's Avro type.
struct Classified {
    kind: FieldKind,
    nullable: bool,
    /// Branch index of `null` in a nullable field's union (0 or 1).
    null_branch: u8,
    symbols: Vec<String>,
}

fn type_name(schema: &Schema) -> &'static str {
    match schema {
        Schema::Null => "null",
        Schema::Float => "float",
        Schema::Bytes => "bytes",
        Schema::Array(_) => "array",
        Schema::Map(_) => "map",
        Schema::Record(_) => "record",
        Schema::Fixed(_) => "fixed",
        Schema::Decimal(_) | Schema::BigDecimal => "decimal",
        Schema::Uuid => "uuid",
        Schema::TimeMillis | Schema::TimeMicros => "time",
        Schema::TimestampMicros | Schema::TimestampNanos => "timestamp-micros/nanos",
        Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "local-timestamp",
        Schema::Duration => "duration",
        Schema::Ref { .. } => "named type reference",
        _ => "this",
    }
}

fn check_formats(field: &FieldMapping, kind: FieldKind, at: &str) -> Result<(), (String, String)> {
    let takes_formats = matches!(kind, FieldKind::Date | FieldKind::TimestampMillis);
    if takes_formats && field.date_formats.is_empty() {
        return Err((at.to_string(), format!("{kind} field needs date_formats")));
    }
    if !takes_formats && !field.date_formats.is_empty() {
        let problem = format!(
            "only date and timestamp-millis fields take date_formats, this is a {kind} field"
        );
        return Err((format!("{at}.date_formats"), problem));
    }
    for (k, format) in field.date_formats.iter().enumerate() {
        let broken = format.is_empty()
            || chrono::format::StrftimeItems::new(format)
                .any(|item| matches!(item, chrono::format::Item::Error));
        if broken {
            return Err((
                format!("{at}.date_formats[{k}]"),
                format!("{format:?} is not a valid chrono strftime format"),
            ));
        }
    }
    Ok(())
}

type EnumTables = (BTreeMap<String, String>, HashMap<String, String>);

/// The normalised `enum_map` and the lookup table (symbols, then the map) of an enum field.
fn enum_tables(
    field: &FieldMapping,
    kind: FieldKind,
    symbols: &[String],
    at: &str,
) -> Result<EnumTables, (String, String)> {
    let mut map = BTreeMap::new();
    let mut table = HashMap::new();
    if kind != FieldKind::Enum {
        if field.enum_map.is_some() {
            return Err((
                format!("{at}.enum_map"),
                format!("only enum fields take enum_map, this is a {kind} field"),
            ));
        }
        return Ok((map, table));
    }
    for symbol in symbols {
        table.insert(symbol.to_uppercase(), symbol.clone());
    }
    for (from, to) in field.enum_map.iter().flatten() {
        let key = format!("{at}.enum_map.{from:?}");
        if !symbols.contains(to) {
            return Err((
                key,
                format!(
                    "{to:?} is not a symbol of the enum ({})",
                    symbols.join(", ")
                ),
            ));
        }
        let upper = from.trim().to_uppercase();
        if map.get(&upper).is_some_and(|earlier| earlier != to) {
            return Err((
                key,
                "conflicts with another key (keys match trimmed and case-insensitively)".into(),
            ));
        }
        map.insert(upper.clone(), to.clone());
        table.insert(upper, to.clone());
    }
    Ok((map, table))
}

/// A schema default (JSON) as a value; `None` when it does not fit (the field then has none).
fn default_value(
    json: &serde_json::Value,
    kind: FieldKind,
    nullable: bool,
    symbols: &[String],
) -> Option<FieldValue> {
    use serde_json::Value as J;
    let value = match (json, kind) {
        (J::Null, _) => FieldValue::Null,
        (J::String(s), FieldKind::String) => FieldValue::String(s.clone()),
        (J::String(s), FieldKind::Enum) if symbols.contains(s) => FieldValue::Enum(s.clone()),
        (J::Bool(b), FieldKind::Boolean) => FieldValue::Boolean(*b),
        (J::Number(n), FieldKind::Int) => FieldValue::Int(i32::try_from(n.as_i64()?).ok()?),
        (J::Number(n), FieldKind::Date) => FieldValue::Date(i32::try_from(n.as_i64()?).ok()?),
        (J::Number(n), FieldKind::Long) => FieldValue::Long(n.as_i64()?),
        (J::Number(n), FieldKind::TimestampMillis) => FieldValue::TimestampMillis(n.as_i64()?),
        (J::Number(n), FieldKind::Double) => FieldValue::Double(n.as_f64()?),
        _ => return None,
    };
    value.fits(kind, nullable).then_some(value)
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

    /// A record from values in schema field order, checked against the field types (and
    /// enum symbols) so that encoding it cannot fail on a value.
    pub fn record(&self, values: Vec<FieldValue>) -> Result<DatasetRecord, RecordShapeError> {
        if values.len() != self.fields.len() {
            return Err(RecordShapeError::Arity {
                expected: self.fields.len(),
                got: values.len(),
            });
        }
        for (spec, value) in self.fields.iter().zip(&values) {
            let symbol_ok = match value {
                FieldValue::Enum(symbol) => spec.symbols.contains(symbol),
                _ => true,
            };
            if !symbol_ok || !value.fits(spec.kind, spec.nullable) {
                return Err(RecordShapeError::Type {
                    field: spec.name.to_string(),
                    kind: spec.kind,
                });
            }
        }
        Ok(DatasetRecord {
            names: self.names.clone(),
            values,
        })
    }

    /// Appends the single-object encoding of `record` to `buf`.
    pub fn encode(&self, record: &DatasetRecord, buf: &mut Vec<u8>) -> Result<(), AvroError> {
        self.schema.encode_into(record, buf)
    }

    /// Decodes a single-object payload written by any known version of the dataset schema
    /// into the current layout.
    pub fn decode(
        &self,
        payload: &[u8],
        store: &SchemaStore,
        location: &MessageLocation,
    ) -> Result<DatasetRecord, AvroError> {
        let writer = store.writer_of(payload, &self.schema.name, location)?;
        let plan = self.plan_for(writer)?;
        let seed = RecordSeed {
            dataset: self,
            plan: &plan,
        };
        writer.decode_datum_seed(&payload[SINGLE_OBJECT_HEADER_LEN..], seed, location)
    }

    /// How `writer`'s fields land in the reader's positions; built once per writer schema.
    fn plan_for(&self, writer: &LoadedSchema) -> Result<Arc<WriterPlan>, AvroError> {
        if writer.fingerprint == self.schema.fingerprint {
            return Ok(self.identity.clone());
        }
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut plans = self
            .plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(plan) = plans.get(&writer.fingerprint) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(self.build_plan(writer)?);
        plans.insert(writer.fingerprint, plan.clone());
        Ok(plan)
    }

    fn build_plan(&self, writer: &LoadedSchema) -> Result<WriterPlan, AvroError> {
        let incompatible = |reason: String| AvroError::Incompatible {
            history: writer.path.clone(),
            current: self.schema.path.clone(),
            reason,
        };
        let Schema::Record(record) = writer.parsed() else {
            return Err(incompatible("writer is not a record".into()));
        };
        let writer_names: Vec<Box<str>> = record
            .fields
            .iter()
            .map(|f| f.name.as_str().into())
            .collect();
        let reader_index: Vec<Option<usize>> = writer_names
            .iter()
            .map(|n| field_position(&self.fields, n))
            .collect();
        let mut initial = Vec::with_capacity(self.fields.len());
        for (index, spec) in self.fields.iter().enumerate() {
            if reader_index.contains(&Some(index)) {
                initial.push(FieldValue::Null);
            } else {
                let default = spec.default.clone();
                initial.push(default.ok_or_else(|| {
                    incompatible(format!(
                        "writer lacks field {} and the reader has no default for it",
                        spec.name
                    ))
                })?);
            }
        }
        Ok(WriterPlan {
            writer_names,
            reader_index,
            initial,
        })
    }
}

/// How one writer schema's fields map onto the reader's.
#[derive(Debug)]
struct WriterPlan {
    /// Writer field names in writer order, to check the datum walks the fields as planned.
    writer_names: Vec<Box<str>>,
    /// Reader position of each writer field; `None` for fields the reader dropped.
    reader_index: Vec<Option<usize>>,
    /// Starting values: defaults for reader fields the writer lacks, `Null` for the rest.
    initial: Vec<FieldValue>,
}

struct RecordSeed<'a> {
    dataset: &'a Dataset,
    plan: &'a WriterPlan,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = DatasetRecord;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<DatasetRecord, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = DatasetRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} record", self.dataset.schema.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DatasetRecord, A::Error> {
        let plan = self.plan;
        let mut values = plan.initial.clone();
        let mut position = 0;
        // The decoder yields record fields in writer-schema order, so position = writer index.
        while map
            .next_key_seed(ExpectedName(plan.writer_names.get(position).map(|n| &**n)))?
            .is_some()
        {
            match plan.reader_index.get(position).copied().flatten() {
                Some(index) => {
                    let spec = &self.dataset.fields[index];
                    values[index] = map.next_value_seed(ValueSeed(spec))?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            position += 1;
        }
        if position != plan.writer_names.len() {
            return Err(de::Error::custom("record ended before all writer fields"));
        }
        Ok(DatasetRecord {
            names: self.dataset.names.clone(),
            values,
        })
    }
}

/// Checks a record field name against the plan without allocating.
struct ExpectedName<'a>(Option<&'a str>);

impl<'de> DeserializeSeed<'de> for ExpectedName<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ExpectedName<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        match self.0 {
            Some(expected) if expected == name => Ok(()),
            _ => Err(E::custom(format_args!("unexpected writer field {name}"))),
        }
    }
}

/// Decodes one field value into the reader's kind, applying Avro's promotions.
struct ValueSeed<'a>(&'a FieldSpec);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = FieldValue;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<FieldValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn mismatch<E: de::Error>(&self, written: &str) -> E {
        // Names types only: the value itself is health data.
        E::custom(format_args!(
            "field {} ({}) holds a {written}",
            self.0.name, self.0.kind
        ))
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.0.kind)
    }

    fn visit_unit<E: de::Error>(self) -> Result<FieldValue, E> {
        match self.0.nullable {
            true => Ok(FieldValue::Null),
            false => Err(self.mismatch("null")),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<FieldValue, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<FieldValue, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::String => Ok(FieldValue::String(v.to_string())),
            FieldKind::Enum => match self.0.symbols.iter().find(|s| *s == v) {
                Some(symbol) => Ok(FieldValue::Enum(symbol.clone())),
                None => Err(self.mismatch("symbol the reader's enum lacks")),
            },
            _ => Err(self.mismatch("string")),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::String => Ok(FieldValue::String(v)),
            _ => self.visit_str(&v),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<FieldValue, E> {
        match std::str::from_utf8(v) {
            Ok(s) if self.0.kind == FieldKind::String => self.visit_str(s),
            _ => Err(self.mismatch("bytes")),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Boolean => Ok(FieldValue::Boolean(v)),
            _ => Err(self.mismatch("boolean")),
        }
    }

    fn visit_i32<E: de::Error>(self, v: i32) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Int => Ok(FieldValue::Int(v)),
            FieldKind::Date => Ok(FieldValue::Date(v)),
            FieldKind::Long => Ok(FieldValue::Long(v.into())),
            FieldKind::Double => Ok(FieldValue::Double(v.into())),
            _ => Err(self.mismatch("int")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Long => Ok(FieldValue::Long(v)),
            FieldKind::TimestampMillis => Ok(FieldValue::TimestampMillis(v)),
            // Avro promotes long to double; precision loss beyond 2^53 is Avro's rule too.
            FieldKind::Double => Ok(FieldValue::Double(v as f64)),
            _ => Err(self.mismatch("long")),
        }
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<FieldValue, E> {
        self.visit_f64(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldValue, E> {
        match self.0.kind {
            FieldKind::Double => Ok(FieldValue::Double(v)),
            _ => Err(self.mismatch("floating-point number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AvroValue;

    const MAPPING: &str = "deploy/config/lab_results.mapping.toml";

    fn schemas_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    fn store() -> SchemaStore {
        SchemaStore::load_dir(&schemas_dir()).unwrap()
    }

    fn mapping_text() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(MAPPING),
        )
        .unwrap()
    }

    fn dataset() -> Dataset {
        DatasetMapping::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(MAPPING),
            &store(),
        )
        .unwrap()
    }

    /// Loads an edited copy of the real mapping; messages name it like the real file.
    fn load_edited(edit: impl FnOnce(String) -> String) -> Result<Dataset, DatasetError> {
        let text = edit(mapping_text());
        DatasetMapping::parse(&text, Path::new(MAPPING))?.resolve(Path::new(MAPPING), &store())
    }

    fn error_of(edit: impl FnOnce(String) -> String) -> String {
        load_edited(edit).unwrap_err().to_string()
    }

    fn sample(dataset: &Dataset) -> DatasetRecord {
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

    fn location() -> MessageLocation {
        MessageLocation {
            topic: "p.snapshots".into(),
            partition: 0,
            offset: 7,
        }
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

    #[test]
    fn encode_decode_round_trip() {
        let dataset = dataset();
        let record = sample(&dataset);
        let mut buf = Vec::new();
        dataset.encode(&record, &mut buf).unwrap();
        assert_eq!(buf[..2], crate::avro::SINGLE_OBJECT_MAGIC);
        let decoded = dataset.decode(&buf, &store(), &location()).unwrap();
        assert_eq!(decoded.values(), record.values());
        assert_eq!(decoded, record);
    }

    #[test]
    fn data_written_by_v1_reads_with_device_id_null() {
        let dataset = dataset();
        let store = store();
        let v1_path = schemas_dir().join("history/lab_result.v1.avsc");
        let v1 =
            LoadedSchema::parse(&std::fs::read_to_string(&v1_path).unwrap(), &v1_path).unwrap();
        let record = sample(&dataset);

        /// The sample as v1 wrote it: every field but device_id.
        struct V1<'a>(&'a DatasetRecord);
        impl Serialize for V1<'_> {
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
        let bytes = v1.encode(&V1(&record)).unwrap();
        assert_ne!(v1.fingerprint, dataset.schema().fingerprint);

        for _ in 0..2 {
            // Twice: the second read uses the cached plan.
            let decoded = dataset.decode(&bytes, &store, &location()).unwrap();
            assert_eq!(decoded.get("device_id"), Some(&FieldValue::Null));
            for (name, value) in decoded.names().iter().zip(decoded.values()) {
                if &**name != "device_id" {
                    assert_eq!(Some(value), record.get(name), "{name}");
                }
            }
        }
    }

    #[test]
    fn apache_avro_reads_our_bytes() {
        let dataset = dataset();
        let mut bytes = Vec::new();
        dataset.encode(&sample(&dataset), &mut bytes).unwrap();
        let schema = dataset.schema().parsed();
        let value =
            apache_avro::from_avro_datum(schema, &mut &bytes[SINGLE_OBJECT_HEADER_LEN..], None)
                .unwrap();
        let AvroValue::Record(fields) = value else {
            panic!("not a record")
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("patient_id"), AvroValue::String("P-000123".into()));
        assert_eq!(
            get("patient_last_name"),
            AvroValue::Union(1, Box::new(AvroValue::String("Núñez".into())))
        );
        assert_eq!(
            get("patient_first_name"),
            AvroValue::Union(0, Box::new(AvroValue::Null))
        );
        assert_eq!(
            get("patient_dob"),
            AvroValue::Union(1, Box::new(AvroValue::Date(-3650)))
        );
        assert_eq!(
            get("patient_sex"),
            AvroValue::Union(1, Box::new(AvroValue::Enum(1, "M".into())))
        );
        assert_eq!(get("specimen_collection_date"), AvroValue::Date(18_700));
        assert_eq!(
            get("report_generated_at"),
            AvroValue::Union(1, Box::new(AvroValue::TimestampMillis(1_620_000_000_123)))
        );
    }

    #[test]
    fn key_is_built_from_key_fields_with_case_rules() {
        let dataset = dataset();
        let record = sample(&dataset);
        assert_eq!(
            record.key(&dataset).unwrap().as_str(),
            "05D0123456|ACC\\|7|94500-6"
        );
        let mut values = record.into_values();
        let test_code = dataset.key_field_indexes()[2];
        values[test_code] = FieldValue::String("  ".into());
        let blank = dataset.record(values).unwrap();
        assert_eq!(
            blank.key(&dataset),
            Err(KeyError::EmptyComponent { index: 2 })
        );
    }

    #[test]
    fn records_are_checked_against_the_schema() {
        let dataset = dataset();
        let values = sample(&dataset).into_values();
        let mut short = values.clone();
        short.pop();
        assert_eq!(
            dataset.record(short),
            Err(RecordShapeError::Arity {
                expected: 27,
                got: 26
            })
        );
        let mut null_required = values.clone();
        null_required[0] = FieldValue::Null;
        assert!(
            matches!(dataset.record(null_required), Err(RecordShapeError::Type { field, .. }) if field == "patient_id")
        );
        let mut bad_symbol = values;
        bad_symbol[4] = FieldValue::Enum("Male".into());
        assert!(
            matches!(dataset.record(bad_symbol), Err(RecordShapeError::Type { field, .. }) if field == "patient_sex")
        );
    }

    #[test]
    fn debug_output_never_shows_values() {
        let dataset = dataset();
        let shown = format!("{:?}", sample(&dataset));
        assert!(
            shown.contains("patient_last_name") && shown.contains("date(..)"),
            "{shown}"
        );
        assert!(
            !shown.contains("Núñez") && !shown.contains("P-000123"),
            "{shown}"
        );
    }

    #[test]
    fn corrupt_and_foreign_payloads_are_errors() {
        let dataset = dataset();
        let store = store();
        let mut bytes = Vec::new();
        dataset.encode(&sample(&dataset), &mut bytes).unwrap();
        let truncated = &bytes[..bytes.len() / 2];
        let error = dataset.decode(truncated, &store, &location()).unwrap_err();
        assert!(matches!(error, AvroError::Corrupt { .. }), "{error}");
        assert!(!error.to_string().contains("P-000123"));
    }
}
