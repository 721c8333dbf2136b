//! [`SchemaStore`]: every schema of a `schemas/` directory — current, historical and
//! composed — by fingerprint and by name, checked at load so an incompatible change fails at
//! start; and payloads decoded by their writer schema, named by fingerprint (single-object)
//! or by schema registry id (Confluent framing), told apart by the first byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;

use super::compose::{self, SchemaFile, CHANGE_EVENT, DATASET_PLACEHOLDER, OWN_NAMESPACE};
use super::registry::Registry;
use super::{
    composed_path, hex, AvroError, LoadedSchema, MessageLocation, REGISTRY_HEADER_LEN,
    REGISTRY_MAGIC, SINGLE_OBJECT_HEADER_LEN, SINGLE_OBJECT_MAGIC,
};

/// What a schema registry id names: a schema's fingerprint, or why it cannot be used.
type IdAnswer = Result<[u8; 8], String>;

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
    /// Schema registry ids learnt so far, to the fingerprint of the schema they name — or to
    /// why they cannot be used (the registry does not know them, or their schema is not in
    /// this directory): an id never changes meaning, so neither answer is asked again.
    registry_ids: Arc<RwLock<HashMap<u32, IdAnswer>>>,
    /// Where ids not learnt yet are looked up (`[schema_registry]`).
    registry: Option<Arc<Registry>>,
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
            registry_ids: Arc::default(),
            registry: None,
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

    /// Looks ids up in `registry` when a payload names one not learnt yet.
    pub fn attach_registry(&mut self, registry: Arc<Registry>) {
        self.registry = Some(registry);
    }

    /// The registry attached, if any.
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// Records that registry id `id` names the schema with `fingerprint`.
    pub fn remember_id(&self, id: u32, fingerprint: [u8; 8]) {
        self.registry_ids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Ok(fingerprint));
    }

    /// Whether reading `payload` would ask the registry first (a registry id not learnt yet):
    /// an async caller then reads it where blocking is allowed.
    pub fn needs_lookup(&self, payload: &[u8]) -> bool {
        match payload.get(..REGISTRY_HEADER_LEN) {
            Some([REGISTRY_MAGIC, id @ ..]) => {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(id);
                self.registry.is_some()
                    && !self
                        .registry_ids
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains_key(&u32::from_be_bytes(bytes))
            }
            _ => false,
        }
    }

    /// The writer schema of a payload in either framing, and its datum (the bytes after the
    /// header). An id not learnt yet is looked up in the registry, once (see
    /// [`registry`](super::registry)).
    pub fn split<'p>(
        &self,
        payload: &'p [u8],
        location: &MessageLocation,
    ) -> Result<(&Arc<LoadedSchema>, &'p [u8]), AvroError> {
        let (fingerprint, datum) = match payload.first() {
            Some(&REGISTRY_MAGIC) if payload.len() >= REGISTRY_HEADER_LEN => {
                let mut id = [0u8; 4];
                id.copy_from_slice(&payload[1..REGISTRY_HEADER_LEN]);
                let id = u32::from_be_bytes(id);
                (
                    self.fingerprint_of_id(id, location)?,
                    &payload[REGISTRY_HEADER_LEN..],
                )
            }
            _ => (
                header_fingerprint(payload, location)?,
                &payload[SINGLE_OBJECT_HEADER_LEN..],
            ),
        };
        let writer =
            self.by_fingerprint
                .get(&fingerprint)
                .ok_or_else(|| AvroError::UnknownFingerprint {
                    location: location.clone(),
                    fingerprint: hex(&fingerprint),
                })?;
        Ok((writer, datum))
    }

    /// The fingerprint of the schema registry id `id`: learnt before, or asked of the
    /// registry and checked to be a schema of this directory.
    fn fingerprint_of_id(&self, id: u32, location: &MessageLocation) -> Result<[u8; 8], AvroError> {
        let known = self
            .registry_ids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        let unknown = |detail: String| AvroError::UnknownRegistryId {
            location: location.clone(),
            id,
            detail,
        };
        match known {
            Some(Ok(fingerprint)) => return Ok(fingerprint),
            Some(Err(detail)) => return Err(unknown(detail)),
            None => {}
        }
        let settled = |detail: String| {
            self.registry_ids
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, Err(detail.clone()));
            unknown(detail)
        };
        let Some(registry) = &self.registry else {
            return Err(unknown(
                "cannot be looked up: no [schema_registry] is configured".into(),
            ));
        };
        let text = match registry.schema_by_id_blocking(id) {
            Ok(Some(text)) => text,
            Ok(None) => return Err(settled("the schema registry does not know".into())),
            Err(error) => return Err(unknown(format!("could not be looked up: {error}"))),
        };
        let schema: serde_avro_fast::Schema =
            text.parse()
                .map_err(|error: serde_avro_fast::schema::SchemaError| {
                    settled(format!(
                        "is not a valid Avro schema in the registry: {error}"
                    ))
                })?;
        let fingerprint = *schema.rabin_fingerprint();
        if !self.by_fingerprint.contains_key(&fingerprint) {
            return Err(settled(format!(
                "is a schema (fingerprint {}) not in {} (is schemas/ older than the writer?)",
                hex(&fingerprint),
                self.dir.display()
            )));
        }
        self.remember_id(id, fingerprint);
        tracing::info!(message = "Learnt a schema registry id.", id, fingerprint = %hex(&fingerprint));
        Ok(fingerprint)
    }

    /// The writer schema of a payload, whatever kind of record it is.
    pub fn writer(
        &self,
        payload: &[u8],
        location: &MessageLocation,
    ) -> Result<&Arc<LoadedSchema>, AvroError> {
        Ok(self.split(payload, location)?.0)
    }

    /// The writer schema of a payload, checked to be a version of `expected`, and its datum.
    pub fn writer_of<'p>(
        &self,
        payload: &'p [u8],
        expected: &str,
        location: &MessageLocation,
    ) -> Result<(&Arc<LoadedSchema>, &'p [u8]), AvroError> {
        let (writer, datum) = self.split(payload, location)?;
        if writer.name != expected {
            return Err(AvroError::WrongSchema {
                location: location.clone(),
                written: writer.name.clone(),
                expected: expected.to_string(),
            });
        }
        Ok((writer, datum))
    }

    /// Decodes a payload into the reader type `T` of schema `expected`: the header selects
    /// the writer schema, fields it lacks take `T`'s serde defaults (which mirror the reader
    /// schema's defaults).
    pub fn decode<'a, T: Deserialize<'a>>(
        &self,
        payload: &'a [u8],
        expected: &str,
        location: &MessageLocation,
    ) -> Result<T, AvroError> {
        let (writer, datum) = self.writer_of(payload, expected, location)?;
        writer.decode_datum(datum, location)
    }

    /// The directory the schemas came from.
    pub fn dir(&self) -> &Path {
        &self.dir
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
                "{} bytes without an Avro header (C3 01 + 8-byte fingerprint, or 00 + 4-byte registry id)",
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
