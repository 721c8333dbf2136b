//! Composed schemas: the records that carry a dataset record nest it as a typed Avro record,
//! and the dataset schema is configuration, so those schema files are templates.
//!
//! A template names a type no file defines, in a type position:
//! - [`DATASET_PLACEHOLDER`] (`snapfeed.DatasetRecord`, in `change_event.avsc`) is replaced by
//!   each version of each dataset schema in `schemas/` (every top-level schema outside the
//!   `snapfeed` namespace, with its `history/` versions);
//! - [`CHANGE_EVENT`] (`snapfeed.ChangeEvent`, in `dead_letter.avsc`) is replaced by each
//!   composed change event.
//!
//! Every template version (current and `history/`) is composed with every version it can nest,
//! so an event written before a dataset or template upgrade still finds its writer schema by
//! fingerprint. The composed schema is a complete, standalone Avro schema: it is what the
//! fingerprint is computed over and what any other Avro tool is given.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::AvroError;

/// The placeholder a template uses for the dataset record.
pub const DATASET_PLACEHOLDER: &str = "snapfeed.DatasetRecord";
/// The placeholder a template uses for the composed change event (also its full name).
pub const CHANGE_EVENT: &str = "snapfeed.ChangeEvent";
/// The namespace of snapfeed's own record kinds; every other top-level schema is a dataset.
pub const OWN_NAMESPACE: &str = "snapfeed";

/// History files of a template kept in the shape before records were nested
/// (`ChangeEvent.record` as single-object bytes). The current schema cannot resolve them by
/// Avro's rules, so they are exempt from the compatibility check; readers of change events
/// accept both shapes (`Dataset::decode_change`).
pub const LEGACY_SHAPES: &[&str] = &["change_event.v1.avsc"];

/// One `.avsc` file as JSON, before it is parsed as a schema.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its JSON.
    pub json: Value,
}

impl SchemaFile {
    /// Reads and parses `path` as JSON.
    pub fn read(path: &Path) -> Result<SchemaFile, AvroError> {
        let text = std::fs::read_to_string(path).map_err(|source| AvroError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let json = serde_json::from_str(&text).map_err(|e| AvroError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(SchemaFile {
            path: path.to_path_buf(),
            json,
        })
    }

    /// Whether the file uses `placeholder` as a type.
    pub fn uses(&self, placeholder: &str) -> bool {
        names_type(&self.json, placeholder)
    }

    /// True for a history file kept in a pre-composition shape ([`LEGACY_SHAPES`]).
    pub fn is_legacy_shape(&self) -> bool {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| LEGACY_SHAPES.contains(&n))
    }
}

/// The template's JSON with `placeholder` replaced by `nested` (a record schema's JSON, whose
/// full name is `nested_name`): the first use gets the whole definition, later ones its name,
/// as Avro allows a named type to be defined once.
pub fn compose(
    template: &SchemaFile,
    placeholder: &str,
    nested: &Value,
    nested_name: &str,
    nested_path: &Path,
) -> Result<Value, AvroError> {
    if !nested_name.contains('.') {
        return Err(AvroError::Parse {
            path: nested_path.to_path_buf(),
            reason: format!(
                "the dataset record {nested_name:?} needs a namespace to nest inside {}",
                template.path.display()
            ),
        });
    }
    let mut json = template.json.clone();
    let mut defined = false;
    visit_types(&mut json, &mut |node| {
        if node.as_str() == Some(placeholder) {
            *node = if defined {
                Value::String(nested_name.to_string())
            } else {
                nested.clone()
            };
            defined = true;
        }
    });
    Ok(json)
}

/// The record schema `json` cut around its field `field`: a record of the fields before it and
/// one of the fields after it, so a value can be written as head + field + tail with the field
/// spliced in as bytes. Names get a `_head` / `_tail` suffix; the field order is kept.
pub fn split_around(json: &Value, field: &str) -> Option<(Value, Value)> {
    let fields = json.get("fields")?.as_array()?;
    let at = fields
        .iter()
        .position(|f| f.get("name").and_then(Value::as_str) == Some(field))?;
    let part = |suffix: &str, fields: &[Value]| {
        let mut part = json.clone();
        let name = json.get("name").and_then(Value::as_str).unwrap_or("Record");
        part["name"] = Value::String(format!("{name}_{suffix}"));
        part["fields"] = Value::Array(fields.to_vec());
        part
    };
    Some((part("head", &fields[..at]), part("tail", &fields[at + 1..])))
}

/// Whether `json` (a schema) uses the type `name` in a type position, in the places
/// [`visit_types`] walks.
fn names_type(json: &Value, name: &str) -> bool {
    match json {
        Value::String(s) => s == name,
        Value::Array(branches) => branches.iter().any(|b| names_type(b, name)),
        Value::Object(object) => {
            ["type", "items", "values"].iter().any(|key| {
                object
                    .get(*key)
                    .is_some_and(|inner| names_type(inner, name))
            }) || object
                .get("fields")
                .and_then(Value::as_array)
                .is_some_and(|fields| fields.iter().any(|f| names_type(f, name)))
        }
        _ => false,
    }
}

/// Applies `f` to every type-position node that is a name or an inline definition: the value
/// of `type`, `items` and `values`, each branch of a union, and recursively inside records.
fn visit_types(json: &mut Value, f: &mut impl FnMut(&mut Value)) {
    match json {
        Value::String(_) => f(json),
        Value::Array(branches) => branches.iter_mut().for_each(|b| visit_types(b, f)),
        Value::Object(object) => {
            for key in ["type", "items", "values"] {
                if let Some(inner) = object.get_mut(key) {
                    visit_types(inner, f);
                }
            }
            if let Some(Value::Array(fields)) = object.get_mut("fields") {
                fields.iter_mut().for_each(|field| visit_types(field, f));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn template(json: Value) -> SchemaFile {
        SchemaFile {
            path: "t.avsc".into(),
            json,
        }
    }

    #[test]
    fn the_placeholder_is_replaced_in_type_positions_only() {
        let file = template(json!({
            "type": "record", "name": "E", "namespace": "snapfeed",
            "doc": "snapfeed.DatasetRecord in a doc is not a type",
            "fields": [
                {"name": "a", "type": ["null", "snapfeed.DatasetRecord"], "doc": "snapfeed.DatasetRecord"},
                {"name": "b", "type": {"type": "array", "items": "snapfeed.DatasetRecord"}}
            ]
        }));
        assert!(file.uses(DATASET_PLACEHOLDER));
        assert!(!file.uses("snapfeed.Other"));
        let nested = json!({"type": "record", "name": "R", "namespace": "x", "fields": []});
        let out = compose(&file, DATASET_PLACEHOLDER, &nested, "x.R", Path::new("r")).unwrap();
        assert_eq!(
            out["fields"][0]["type"][1], nested,
            "first use: the definition"
        );
        assert_eq!(
            out["fields"][1]["type"]["items"],
            json!("x.R"),
            "then its name"
        );
        assert_eq!(out["doc"], file.json["doc"]);
        assert_eq!(out["fields"][0]["doc"], json!("snapfeed.DatasetRecord"));
    }

    #[test]
    fn a_dataset_without_namespace_is_refused_by_name() {
        let file = template(json!({"type": "record", "name": "E", "fields": []}));
        let error = compose(
            &file,
            DATASET_PLACEHOLDER,
            &json!({}),
            "R",
            Path::new("r.avsc"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("r.avsc"), "{error}");
        assert!(error.to_string().contains("needs a namespace"), "{error}");
    }

    #[test]
    fn split_keeps_the_fields_around_the_cut_in_order() {
        let record = json!({"type": "record", "name": "E", "namespace": "snapfeed", "fields": [
            {"name": "a", "type": "int"}, {"name": "b", "type": "int"},
            {"name": "c", "type": "int"}, {"name": "d", "type": "int"}
        ]});
        let (head, tail) = split_around(&record, "b").unwrap();
        assert_eq!(head["name"], json!("E_head"));
        assert_eq!(head["fields"].as_array().unwrap().len(), 1);
        assert_eq!(tail["fields"][0]["name"], json!("c"));
        assert_eq!(tail["fields"][1]["name"], json!("d"));
        assert!(split_around(&record, "z").is_none());
    }
}
