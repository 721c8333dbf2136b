//! Avro framing for every value snapfeed writes: single-object encoding (`C3 01`, then the
//! 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form,
//! then the datum), so every message says which schema wrote it without a registry.
//!
//! Schemas are loaded from the `schemas/` directory: each top-level `*.avsc` is the current
//! (reader) schema of one record kind; `history/*.avsc` holds earlier versions, kept so data they
//! wrote stays readable. At load every historical writer is checked against the current reader of
//! the same name (Avro schema resolution rules, by `apache-avro`) — for a composed schema, the
//! current composition nesting the same dataset — so an incompatible change fails at start, not
//! on the first old message. The one exemption is a listed legacy shape
//! ([`compose::LEGACY_SHAPES`]: the v1 change event), which readers handle themselves.
//!
//! `change_event.avsc` and `dead_letter.avsc` are templates that nest the dataset record as a
//! typed record; they are composed with each dataset schema at load ([`compose`]).
//!
//! Reading: the fingerprint selects the writer schema; the datum is decoded with it and resolved
//! into the reader's type (fields the writer lacked take the reader's defaults). The hot paths
//! encode and decode with `serde_avro_fast` — straight between bytes and Rust types, no
//! `Value` per record. Unknown fingerprints and corrupt payloads are errors that name the
//! topic/partition/offset, never panics; their messages never contain payload bytes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod compose;
use compose::{SchemaFile, CHANGE_EVENT, DATASET_PLACEHOLDER, OWN_NAMESPACE};

/// The two magic bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Magic plus fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;

/// Where a message came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageLocation {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl MessageLocation {
    /// Where `message` is.
    pub fn of(message: &impl rdkafka::Message) -> MessageLocation {
        MessageLocation {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

impl fmt::Display for MessageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Avro problems: loading schemas, or encoding and decoding values.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    /// The schema directory or a file in it could not be read.
    #[error("cannot read schema {path}: {source}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A schema file is not a valid Avro schema.
    #[error("invalid Avro schema {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A historical version cannot be read by the current schema of the same name.
    #[error("schema {history} cannot be read by the current {current}: {reason} (see schemas/README.md, evolution rule)")]
    Incompatible {
        /// The historical writer.
        history: PathBuf,
        /// The current reader.
        current: PathBuf,
        /// Why not.
        reason: String,
    },
    /// No current schema with this full name was loaded.
    #[error("no schema named {name:?} in {dir}")]
    UnknownSchema {
        /// The full name asked for.
        name: String,
        /// Where we looked.
        dir: PathBuf,
    },
    /// A composed schema was asked for by name alone, but there are several dataset schemas.
    #[error("{name} nests a dataset record and {dir} holds several dataset schemas ({datasets}); name the dataset")]
    AmbiguousDataset {
        /// The composed schema's full name.
        name: String,
        /// Where we looked.
        dir: PathBuf,
        /// The dataset schemas found.
        datasets: String,
    },
    /// The payload names a writer schema we do not know.
    #[error("message at {location} was written with unknown schema fingerprint {fingerprint} (is schemas/ older than the writer?)")]
    UnknownFingerprint {
        /// Where.
        location: MessageLocation,
        /// Hex of the 8 fingerprint bytes.
        fingerprint: String,
    },
    /// The payload was written with a known schema of another record kind.
    #[error("message at {location} holds a {written} where a {expected} was expected")]
    WrongSchema {
        /// Where.
        location: MessageLocation,
        /// What the fingerprint says.
        written: String,
        /// What the reader wanted.
        expected: String,
    },
    /// The payload is not a valid datum of its writer schema.
    #[error("corrupt Avro payload at {location}: {detail}")]
    Corrupt {
        /// Where.
        location: MessageLocation,
        /// What is wrong, never including payload bytes.
        detail: String,
    },
    /// A value could not be encoded with its schema (a programming or mapping error).
    #[error("cannot encode a {schema} value: {reason}")]
    Encode {
        /// The schema.
        schema: String,
        /// The serializer's message.
        reason: String,
    },
}

/// One schema file, parsed.
#[derive(Debug)]
pub struct LoadedSchema {
    /// Full name, e.g. `snapfeed.ChangeEvent`.
    pub name: String,
    /// CRC-64-AVRO of the parsing canonical form (little-endian), as in the message header.
    pub fingerprint: [u8; 8],
    /// Where it was loaded from (for a composed schema, its template).
    pub path: PathBuf,
    /// For a composed schema: the dataset schema version nested in it.
    pub dataset: Option<Arc<LoadedSchema>>,
    /// The schema as JSON (for a composed schema, the composition): what other tools are given.
    pub json: serde_json::Value,
    /// The fast codec's view, used to encode and decode.
    fast: serde_avro_fast::Schema,
    /// apache-avro's view, used for compatibility checks and introspection.
    parsed: apache_avro::Schema,
}

impl LoadedSchema {
    /// Parses one `.avsc` text; `path` is for messages.
    pub fn parse(json: &str, path: &Path) -> Result<LoadedSchema, AvroError> {
        let value = serde_json::from_str(json).map_err(|e| AvroError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        LoadedSchema::from_json(value, path, None)
    }

    /// Parses a schema given as JSON; `dataset` is the dataset version a composed schema nests.
    pub fn from_json(
        json: serde_json::Value,
        path: &Path,
        dataset: Option<Arc<LoadedSchema>>,
    ) -> Result<LoadedSchema, AvroError> {
        let parse_error = |reason: String| AvroError::Parse {
            path: composed_path(path, dataset.as_deref()),
            reason,
        };
        let text = json.to_string();
        let parsed =
            apache_avro::Schema::parse_str(&text).map_err(|e| parse_error(e.to_string()))?;
        let fast: serde_avro_fast::Schema = text
            .parse()
            .map_err(|e: serde_avro_fast::schema::SchemaError| parse_error(e.to_string()))?;
        let name = match &parsed {
            apache_avro::Schema::Record(record) => record.name.fullname(None),
            _ => return Err(parse_error("top level must be a record".into())),
        };
        // The fingerprint comes from serde_avro_fast, which matches the Java implementation and
        // fastavro. apache-avro 0.21 is not used for it: its canonical form keeps `logicalType`
        // attributes, so its fingerprints differ for schemas with timestamps or dates.
        let fingerprint = *fast.rabin_fingerprint();
        Ok(LoadedSchema {
            name,
            fingerprint,
            path: path.to_path_buf(),
            dataset,
            json,
            fast,
            parsed,
        })
    }

    /// apache-avro's parsed schema (field lists, logical types).
    pub fn parsed(&self) -> &apache_avro::Schema {
        &self.parsed
    }

    /// Appends the single-object encoding of `value` to `buf`.
    pub fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), AvroError> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.fast);
        serde_avro_fast::to_single_object(value, buf, &mut config).map_err(|_| {
            AvroError::Encode {
                schema: self.name.clone(),
                // The serializer's message can quote the value (e.g. an unknown enum symbol).
                reason: "a value does not fit the schema".into(),
            }
        })?;
        Ok(())
    }

    /// Appends the bare Avro binary of `value` (no header) to `buf`.
    pub fn encode_datum_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), AvroError> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.fast);
        serde_avro_fast::to_datum(value, buf, &mut config).map_err(|_| AvroError::Encode {
            schema: self.name.clone(),
            reason: "a value does not fit the schema".into(),
        })?;
        Ok(())
    }

    /// The single-object encoding of `value`.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, AvroError> {
        let mut buf = Vec::with_capacity(256);
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }

    /// Decodes a bare datum written with this schema through `seed`, e.g. a reader that
    /// resolves this writer's fields into another version's layout. Errors never quote data.
    pub fn decode_datum_seed<'a, S: serde::de::DeserializeSeed<'a>>(
        &self,
        datum: &'a [u8],
        seed: S,
        location: &MessageLocation,
    ) -> Result<S::Value, AvroError> {
        let mut state = serde_avro_fast::de::DeserializerState::from_slice(datum, &self.fast);
        seed.deserialize(state.deserializer())
            .map_err(|_| AvroError::Corrupt {
                location: location.clone(),
                detail: format!("{} bytes do not decode as {}", datum.len(), self.name),
            })
    }

    fn decode_datum<'a, T: Deserialize<'a>>(
        &self,
        datum: &'a [u8],
        location: &MessageLocation,
    ) -> Result<T, AvroError> {
        serde_avro_fast::from_datum_slice(datum, &self.fast).map_err(|_| AvroError::Corrupt {
            location: location.clone(),
            // The decoder's message may quote the data it choked on: health data stays out.
            detail: format!("{} bytes do not decode as {}", datum.len(), self.name),
        })
    }
}

/// A composed schema, whether it is a current one, and the template it came from.
type Composed<'t> = (Arc<LoadedSchema>, bool, &'t SchemaFile);

/// Every schema of a `schemas/` directory, by fingerprint (all versions) and by name (current).
#[derive(Debug, Clone)]
pub struct SchemaStore {
    dir: PathBuf,
    current: HashMap<String, Arc<LoadedSchema>>,
    by_fingerprint: HashMap<[u8; 8], Arc<LoadedSchema>>,
    /// Current composed schemas by (template name, dataset name).
    composed: HashMap<(String, String), Arc<LoadedSchema>>,
    /// Names of the dataset schemas, sorted.
    datasets: Vec<String>,
}

impl SchemaStore {
    /// Loads `dir/*.avsc` as current schemas and `dir/history/*.avsc` as earlier versions,
    /// composes the templates with every dataset schema version ([`compose`]), and checks that
    /// each current schema reads every earlier version of itself.
    pub fn load_dir(dir: &Path) -> Result<SchemaStore, AvroError> {
        let mut store = SchemaStore {
            dir: dir.to_path_buf(),
            current: HashMap::new(),
            by_fingerprint: HashMap::new(),
            composed: HashMap::new(),
            datasets: Vec::new(),
        };
        let history_dir = dir.join("history");
        let mut files: Vec<(SchemaFile, bool)> = Vec::new();
        for path in avsc_files(dir)? {
            files.push((SchemaFile::read(&path)?, false));
        }
        if history_dir.is_dir() {
            for path in avsc_files(&history_dir)? {
                files.push((SchemaFile::read(&path)?, true));
            }
        }
        let is_template = |f: &SchemaFile| f.uses(DATASET_PLACEHOLDER) || f.uses(CHANGE_EVENT);
        let (templates, plain): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|(f, _)| is_template(f));

        // Plain schemas, current ones first, then each history version against its current:
        // an incompatible dataset version is named as itself, before it is composed.
        let mut plain_history = Vec::new();
        for (file, history) in plain {
            let schema = Arc::new(LoadedSchema::from_json(
                file.json.clone(),
                &file.path,
                None,
            )?);
            if history {
                plain_history.push((file, schema));
            } else {
                store
                    .by_fingerprint
                    .insert(schema.fingerprint, schema.clone());
                store.current.insert(schema.name.clone(), schema);
            }
        }
        for (file, old) in &plain_history {
            if let Some(current) = store.current.get(&old.name) {
                check_compatible(&file.path, old, current)?;
            }
        }
        store.datasets = store
            .current
            .keys()
            .filter(|name| name.rsplit_once('.').map(|(ns, _)| ns) != Some(OWN_NAMESPACE))
            .cloned()
            .collect();
        store.datasets.sort();

        // Every version of every dataset: what the change event templates nest. Then every
        // composition registered before any is checked, so no check depends on order.
        let mut dataset_versions: Vec<(Arc<LoadedSchema>, bool)> = Vec::new();
        for name in &store.datasets {
            dataset_versions.push((store.current[name].clone(), true));
        }
        for (_, schema) in &plain_history {
            if store.datasets.contains(&schema.name) {
                dataset_versions.push((schema.clone(), false));
            }
        }
        let changes = store.compose(&templates, DATASET_PLACEHOLDER, &dataset_versions)?;
        let change_events: Vec<(Arc<LoadedSchema>, bool)> = changes
            .iter()
            .filter(|(schema, current, _)| schema.name == CHANGE_EVENT && *current)
            .chain(
                changes
                    .iter()
                    .filter(|(s, current, _)| s.name == CHANGE_EVENT && !current),
            )
            .map(|(schema, current, _)| (schema.clone(), *current))
            .collect();
        let letters = store.compose(&templates, CHANGE_EVENT, &change_events)?;
        for (schema, current, template) in changes.iter().chain(&letters) {
            if !current {
                store.check_composed(template, schema)?;
            }
        }

        // Plain history of a template (the shape before composition): against every current
        // composition of its name, unless it is a listed legacy shape.
        for (file, old) in plain_history {
            if !store.current.contains_key(&old.name) && !file.is_legacy_shape() {
                let readers: Vec<_> = store
                    .composed
                    .iter()
                    .filter(|((name, _), _)| *name == old.name)
                    .map(|(_, schema)| schema.clone())
                    .collect();
                if readers.is_empty() {
                    return Err(no_reader(&file.path, &old.name));
                }
                for current in readers {
                    check_compatible(&file.path, &old, &current)?;
                }
            }
            store.by_fingerprint.entry(old.fingerprint).or_insert(old);
        }
        Ok(store)
    }

    /// Composes every template that uses `placeholder` with every schema in `nested` (each
    /// flagged current or not) and registers them all; returns each with its flag (true only
    /// for a current template composed with a current nested schema) and its template file.
    fn compose<'t>(
        &mut self,
        templates: &'t [(SchemaFile, bool)],
        placeholder: &str,
        nested: &[(Arc<LoadedSchema>, bool)],
    ) -> Result<Vec<Composed<'t>>, AvroError> {
        let mut out = Vec::new();
        for (template, template_history) in templates.iter().filter(|(f, _)| f.uses(placeholder)) {
            for (inner, inner_current) in nested {
                let json =
                    compose::compose(template, placeholder, &inner.json, &inner.name, &inner.path)?;
                let dataset = inner.dataset.clone().unwrap_or_else(|| inner.clone());
                let dataset_name = dataset.name.clone();
                let schema = Arc::new(LoadedSchema::from_json(
                    json,
                    &template.path,
                    Some(dataset),
                )?);
                let is_current = !template_history && *inner_current;
                if is_current {
                    self.composed
                        .insert((schema.name.clone(), dataset_name), schema.clone());
                }
                self.by_fingerprint
                    .entry(schema.fingerprint)
                    .or_insert(schema.clone());
                out.push((schema, is_current, template));
            }
        }
        Ok(out)
    }

    /// Checks that the current composition nesting the same dataset reads what `old` (a
    /// composition of an earlier template or dataset version) wrote.
    fn check_composed(&self, template: &SchemaFile, old: &LoadedSchema) -> Result<(), AvroError> {
        let path = composed_path(&template.path, old.dataset.as_deref());
        let dataset = old.dataset.as_ref().map_or("", |d| d.name.as_str());
        let current = self
            .composed
            .get(&(old.name.clone(), dataset.to_string()))
            .ok_or_else(|| no_reader(&path, &old.name))?;
        check_compatible(&path, old, current)
    }

    /// The dataset schemas found (full names, sorted).
    pub fn datasets(&self) -> &[String] {
        &self.datasets
    }

    /// The current schema `name` as composed with the dataset schema `dataset`; for a schema
    /// that nests no dataset record, the same as [`SchemaStore::current`].
    pub fn current_for(&self, name: &str, dataset: &str) -> Result<Arc<LoadedSchema>, AvroError> {
        match self.composed.get(&(name.to_string(), dataset.to_string())) {
            Some(schema) => Ok(schema.clone()),
            None => self.current(name),
        }
    }

    /// Every schema known, any version, composed ones included, in fingerprint order.
    pub fn all(&self) -> Vec<&Arc<LoadedSchema>> {
        let mut all: Vec<_> = self.by_fingerprint.values().collect();
        all.sort_by_key(|s| s.fingerprint);
        all
    }

    /// The current schema named `name` (full name, e.g. `snapfeed.ChangeEvent`).
    /// A schema that nests the dataset record is composed per dataset: asked for by name alone
    /// it is the composition with the only dataset schema, and an error when there are several.
    pub fn current(&self, name: &str) -> Result<Arc<LoadedSchema>, AvroError> {
        if let Some(schema) = self.current.get(name) {
            return Ok(schema.clone());
        }
        let mut composed = self.composed.iter().filter(|((n, _), _)| n == name);
        match (composed.next(), composed.next()) {
            (Some((_, schema)), None) => Ok(schema.clone()),
            (Some(_), Some(_)) => Err(AvroError::AmbiguousDataset {
                name: name.to_string(),
                dir: self.dir.clone(),
                datasets: self.datasets.join(", "),
            }),
            _ => Err(AvroError::UnknownSchema {
                name: name.to_string(),
                dir: self.dir.clone(),
            }),
        }
    }

    /// The schema with this fingerprint, any version.
    pub fn by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<&Arc<LoadedSchema>> {
        self.by_fingerprint.get(fingerprint)
    }

    /// The writer schema of a single-object payload, whatever kind of record it is.
    pub fn writer(
        &self,
        payload: &[u8],
        location: &MessageLocation,
    ) -> Result<&Arc<LoadedSchema>, AvroError> {
        let fingerprint = header_fingerprint(payload, location)?;
        self.by_fingerprint
            .get(&fingerprint)
            .ok_or_else(|| AvroError::UnknownFingerprint {
                location: location.clone(),
                fingerprint: hex(&fingerprint),
            })
    }

    /// The writer schema of a single-object payload, checked to be a version of `expected`.
    pub fn writer_of(
        &self,
        payload: &[u8],
        expected: &str,
        location: &MessageLocation,
    ) -> Result<&Arc<LoadedSchema>, AvroError> {
        let writer = self.writer(payload, location)?;
        if writer.name != expected {
            return Err(AvroError::WrongSchema {
                location: location.clone(),
                written: writer.name.clone(),
                expected: expected.to_string(),
            });
        }
        Ok(writer)
    }

    /// Decodes a single-object payload into the reader type `T` of schema `expected`: the
    /// fingerprint selects the writer schema, fields it lacks take `T`'s serde defaults (which
    /// mirror the reader schema's defaults).
    pub fn decode<'a, T: Deserialize<'a>>(
        &self,
        payload: &'a [u8],
        expected: &str,
        location: &MessageLocation,
    ) -> Result<T, AvroError> {
        let writer = self.writer_of(payload, expected, location)?;
        writer.decode_datum(&payload[SINGLE_OBJECT_HEADER_LEN..], location)
    }

    /// The directory the schemas came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `path`, or for a composition `"<template> (composed with <dataset version>)"`: how errors
/// name a schema.
pub(crate) fn composed_path(path: &Path, dataset: Option<&LoadedSchema>) -> PathBuf {
    match dataset {
        Some(dataset) => PathBuf::from(format!(
            "{} (composed with {})",
            path.display(),
            dataset.path.display()
        )),
        None => path.to_path_buf(),
    }
}

/// Avro schema resolution: `current` must read what `old` (from `path`) wrote.
fn check_compatible(
    path: &Path,
    old: &LoadedSchema,
    current: &LoadedSchema,
) -> Result<(), AvroError> {
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old.parsed, &current.parsed)
        .map_err(|error| AvroError::Incompatible {
            history: path.to_path_buf(),
            current: composed_path(&current.path, current.dataset.as_deref()),
            reason: error.to_string(),
        })
}

/// A historical version whose record kind has no current schema to read it.
fn no_reader(path: &Path, name: &str) -> AvroError {
    AvroError::Incompatible {
        history: path.to_path_buf(),
        current: PathBuf::from(format!("(no current schema of {name})")),
        reason: "a historical version needs a current schema of the same name to read it".into(),
    }
}

fn header_fingerprint(payload: &[u8], location: &MessageLocation) -> Result<[u8; 8], AvroError> {
    if payload.len() < SINGLE_OBJECT_HEADER_LEN || payload[..2] != SINGLE_OBJECT_MAGIC {
        return Err(AvroError::Corrupt {
            location: location.clone(),
            detail: format!(
                "{} bytes without the single-object header (C3 01 + 8-byte fingerprint)",
                payload.len()
            ),
        });
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&payload[2..SINGLE_OBJECT_HEADER_LEN]);
    Ok(fingerprint)
}

fn avsc_files(dir: &Path) -> Result<Vec<PathBuf>, AvroError> {
    let read_error = |source| AvroError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "avsc") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
