//! Avro framing for every value snapfeed writes. By default single-object encoding (`C3 01`,
//! then the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing
//! canonical form, then the datum), so every message says which schema wrote it without a
//! registry. With `[schema_registry]` set ([`registry`]), the Confluent wire format instead:
//! `00`, the 4-byte big-endian schema id the registry gave the writer schema, then the datum.
//! Readers accept both, by the first byte ([`SchemaStore::split`]), so a pipeline can switch
//! framing with records of the old one still on its topics.
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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

pub mod compose;
pub mod registry;
mod store;
pub use store::SchemaStore;

/// The two magic bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Magic plus fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// The magic byte of the Confluent wire format.
pub const REGISTRY_MAGIC: u8 = 0x00;
/// Magic plus the 4-byte big-endian schema id.
pub const REGISTRY_HEADER_LEN: usize = 5;

/// The id a schema registry gave a schema, and whether values are written with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryId {
    /// The registry's (global) schema id.
    pub id: u32,
    /// Whether values of this schema are written in the Confluent wire format with `id`
    /// (`schema_registry.value_framing = "registry"`), or still single-object.
    pub frames: bool,
}

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
    /// The payload names a schema registry id that cannot be mapped to a known schema.
    #[error("message at {location} was written with schema registry id {id}, which {detail}")]
    UnknownRegistryId {
        /// Where.
        location: MessageLocation,
        /// The id in the header.
        id: u32,
        /// Why it cannot be used.
        detail: String,
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
    /// The id a schema registry gave this schema, once registered or looked up at start.
    registry: OnceLock<RegistryId>,
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
            registry: OnceLock::new(),
            fast,
            parsed,
        })
    }

    /// The registry id, if one was set at start.
    pub fn registry_id(&self) -> Option<RegistryId> {
        self.registry.get().copied()
    }

    /// Records the id the schema registry gave this schema (first call wins: ids are global
    /// per schema text, so a second lookup gives the same id).
    pub fn set_registry_id(&self, id: RegistryId) {
        let _ = self.registry.set(id);
    }

    /// Appends the header of a value written with this schema: the Confluent one (`00` + id)
    /// when the registry frames values, else the single-object one (`C3 01` + fingerprint).
    #[inline]
    pub fn write_header(&self, buf: &mut Vec<u8>) {
        match self.registry.get() {
            Some(RegistryId { id, frames: true }) => {
                buf.push(REGISTRY_MAGIC);
                buf.extend_from_slice(&id.to_be_bytes());
            }
            _ => {
                buf.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                buf.extend_from_slice(&self.fingerprint);
            }
        }
    }

    /// The datum of `payload` if its header names this schema, in either framing; `None`
    /// for any other writer (or a payload too short for its header). The hot paths' check.
    #[inline]
    pub fn body_of<'p>(&self, payload: &'p [u8]) -> Option<&'p [u8]> {
        match payload.first()? {
            0xC3 => {
                let header = payload.get(..SINGLE_OBJECT_HEADER_LEN)?;
                (header[1] == SINGLE_OBJECT_MAGIC[1] && header[2..] == self.fingerprint)
                    .then(|| &payload[SINGLE_OBJECT_HEADER_LEN..])
            }
            &REGISTRY_MAGIC => {
                let id = self.registry.get()?.id;
                let header = payload.get(..REGISTRY_HEADER_LEN)?;
                (header[1..] == id.to_be_bytes()).then(|| &payload[REGISTRY_HEADER_LEN..])
            }
            _ => None,
        }
    }

    /// apache-avro's parsed schema (field lists, logical types).
    pub fn parsed(&self) -> &apache_avro::Schema {
        &self.parsed
    }

    /// Appends `value` with its header ([`LoadedSchema::write_header`]) to `buf`.
    pub fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), AvroError> {
        self.write_header(buf);
        self.encode_datum_into(value, buf)
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
            // The serializer's message can quote the value (e.g. an unknown enum symbol).
            reason: "a value does not fit the schema".into(),
        })?;
        Ok(())
    }

    /// `value` with its header ([`LoadedSchema::write_header`]).
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
