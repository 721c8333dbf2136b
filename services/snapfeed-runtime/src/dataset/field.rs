//! One dataset field: its Avro type ([`FieldKind`], each optionally `["null", T]`) joined with
//! its `[[field]]` entry into a [`FieldSpec`]. The checks here concern one entry at a time — a
//! supported type, `date_formats` exactly where dates are parsed, `enum_map` only onto real
//! symbols — and return the key and the problem for
//! [`DatasetMapping::resolve`](super::DatasetMapping::resolve) to report; the rules across
//! entries (keys, duplicates, unmapped fields) live there.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use apache_avro::Schema;

use super::mapping::FieldMapping;
use super::record::FieldValue;
use crate::record_key::KeyCase;

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
    pub(super) name: Box<str>,
    pub(super) column: String,
    pub(super) kind: FieldKind,
    pub(super) nullable: bool,
    /// Branch index of `null` in the field's union, when nullable.
    pub(super) null_branch: u8,
    pub(super) date_formats: Vec<String>,
    pub(super) key_case: KeyCase,
    pub(super) symbols: Vec<String>,
    /// The configured `enum_map`, keys trimmed and upper-cased.
    pub(super) enum_map: BTreeMap<String, String>,
    /// Upper-cased input → symbol: every symbol under its own upper case, then the `enum_map`
    /// (which wins), so one lookup resolves a value.
    pub(super) enum_table: HashMap<String, String>,
    pub(super) volatile: bool,
    /// The reader default, used when a writer schema lacks this field.
    pub(super) default: Option<FieldValue>,
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

const SUPPORTED: &str = "supported: string, int, long, double, boolean, date, timestamp-millis, enum, each optionally [\"null\", T]";

/// The field kind, whether nullable, and the enum symbols, or why the type is not supported.
pub(super) fn classify(schema: &Schema) -> Result<Classified, String> {
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
pub(super) struct Classified {
    pub(super) kind: FieldKind,
    pub(super) nullable: bool,
    /// Branch index of `null` in a nullable field's union (0 or 1).
    pub(super) null_branch: u8,
    pub(super) symbols: Vec<String>,
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

pub(super) fn check_formats(
    field: &FieldMapping,
    kind: FieldKind,
    at: &str,
) -> Result<(), (String, String)> {
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

pub(super) type EnumTables = (BTreeMap<String, String>, HashMap<String, String>);

/// The normalised `enum_map` and the lookup table (symbols, then the map) of an enum field.
pub(super) fn enum_tables(
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
pub(super) fn default_value(
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
