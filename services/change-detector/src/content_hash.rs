//! The content hash of a record: 128-bit xxh3 over its field values in a canonical form, so
//! "changed" means "a value a person cares about changed".
//!
//! Canonical form: for each field in schema order that is not volatile and not null — the
//! field name, a type tag and the value, each length-prefixed. Hence:
//! - column order in the CSV does not matter (values are taken by field, not by column);
//! - volatile fields (e.g. `report_generated_at`) never count;
//! - adding a nullable field to the schema changes no hash while the field is null (null fields
//!   contribute nothing), so a schema upgrade does not mark every record as changed;
//! - changing any tracked value changes the hash.

use snapfeed_runtime::dataset::{Dataset, DatasetRecord, FieldKind, FieldRef};
use xxhash_rust::xxh3::xxh3_128;

/// Computes content hashes of one dataset's records, with the constant part of each field's
/// canonical form prepared once and one reusable buffer (hashed in one call: the same digest
/// as feeding the parts to a streaming xxh3, which is how hashes stored by earlier versions
/// were made).
#[derive(Debug)]
pub struct ContentHasher {
    /// Per field, in schema order: name length, name and type tag; `None` for volatile fields.
    prefixes: Vec<Option<Box<[u8]>>>,
    canonical: Vec<u8>,
}

impl ContentHasher {
    /// A hasher for records of `dataset`.
    pub fn new(dataset: &Dataset) -> ContentHasher {
        let prefixes = dataset
            .fields()
            .iter()
            .map(|spec| {
                if spec.volatile() {
                    return None;
                }
                let name = spec.name().as_bytes();
                let mut prefix = Vec::with_capacity(name.len() + 5);
                prefix.extend_from_slice(&(name.len() as u32).to_le_bytes());
                prefix.extend_from_slice(name);
                prefix.push(tag(spec.kind()));
                Some(prefix.into_boxed_slice())
            })
            .collect();
        ContentHasher {
            prefixes,
            canonical: Vec::with_capacity(2048),
        }
    }

    /// The content hash of a decoded record of the dataset.
    pub fn record(&mut self, record: &DatasetRecord) -> u128 {
        self.canonical.clear();
        for (prefix, value) in self.prefixes.iter().zip(record.values()) {
            append(&mut self.canonical, prefix.as_deref(), value.as_ref());
        }
        xxh3_128(&self.canonical)
    }

    /// The content hash of a snapshot payload read straight from its Avro binary, without
    /// decoding it; `None` when the payload needs [`Dataset::decode`] (an older writer
    /// schema, or bytes that do not walk cleanly). Strings are not checked for UTF-8 here: a
    /// hash equal to one stored for a decoded record proves the bytes are that record's.
    pub fn payload(&mut self, dataset: &Dataset, payload: &[u8]) -> Option<u128> {
        self.canonical.clear();
        let (canonical, prefixes) = (&mut self.canonical, &self.prefixes);
        dataset
            .visit_current(payload, |index, value| {
                if let Some(prefix) = prefixes.get(index) {
                    append(canonical, prefix.as_deref(), value);
                }
            })
            .then(|| xxh3_128(&self.canonical))
    }
}

impl ContentHasher {
    /// The hash of a payload's tracked bytes
    /// ([`Dataset::tracked_bytes`](snapfeed_runtime::dataset::Dataset::tracked_bytes)) — equal
    /// hashes mean equal tracked values — or 0 when the payload is not of the current schema
    /// or does not walk.
    pub fn tracked(&mut self, dataset: &Dataset, payload: &[u8]) -> u128 {
        self.canonical.clear();
        match dataset.tracked_bytes(payload, &mut self.canonical) {
            true => xxh3_128(&self.canonical).max(1),
            false => 0,
        }
    }
}

/// The 128-bit content hash of `record`.
pub fn content_hash(dataset: &Dataset, record: &DatasetRecord) -> u128 {
    ContentHasher::new(dataset).record(record)
}

/// The canonical form's type tag of a field kind.
fn tag(kind: FieldKind) -> u8 {
    match kind {
        FieldKind::String => 1,
        FieldKind::Int => 2,
        FieldKind::Long => 3,
        FieldKind::Double => 4,
        FieldKind::Boolean => 5,
        FieldKind::Date => 6,
        FieldKind::TimestampMillis => 7,
        FieldKind::Enum => 8,
    }
}

/// Appends one field's canonical form — `prefix` (name and tag), then the value's length and
/// bytes; nothing for volatile (`None` prefix) and null fields. Fixed-size values are appended
/// as fixed-size arrays so the copies compile to plain stores.
#[inline]
fn append(canonical: &mut Vec<u8>, prefix: Option<&[u8]>, value: FieldRef<'_>) {
    let (Some(prefix), false) = (prefix, matches!(value, FieldRef::Null)) else {
        return;
    };
    canonical.extend_from_slice(prefix);
    match value {
        FieldRef::Null => {}
        FieldRef::String(bytes) => {
            canonical.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            canonical.extend_from_slice(bytes);
        }
        FieldRef::Enum(symbol) => {
            canonical.extend_from_slice(&(symbol.len() as u32).to_le_bytes());
            canonical.extend_from_slice(symbol.as_bytes());
        }
        FieldRef::Int(v) | FieldRef::Date(v) => canonical.extend_from_slice(&four(v.to_le_bytes())),
        FieldRef::Long(v) | FieldRef::TimestampMillis(v) => {
            canonical.extend_from_slice(&eight(v.to_le_bytes()))
        }
        FieldRef::Double(v) => canonical.extend_from_slice(&eight(v.to_bits().to_le_bytes())),
        FieldRef::Boolean(v) => canonical.extend_from_slice(&[1, 0, 0, 0, u8::from(v)]),
    }
}

/// Length 4 (little-endian u32), then the 4 bytes.
fn four(bytes: [u8; 4]) -> [u8; 8] {
    let mut out = [4, 0, 0, 0, 0, 0, 0, 0];
    out[4..].copy_from_slice(&bytes);
    out
}

/// Length 8 (little-endian u32), then the 8 bytes.
fn eight(bytes: [u8; 8]) -> [u8; 12] {
    let mut out = [8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    out[4..].copy_from_slice(&bytes);
    out
}

/// Lower-case hex of a content hash (as stored in `state` and `changes`).
pub fn hash_hex(hash: u128) -> String {
    format!("{hash:032x}")
}

/// Parses [`hash_hex`] output.
pub fn parse_hash_hex(text: &str) -> Option<u128> {
    (text.len() == 32)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapfeed_runtime::avro::SchemaStore;
    use snapfeed_runtime::dataset::{DatasetMapping, FieldValue};
    use std::path::Path;
    use xxhash_rust::xxh3::Xxh3;

    /// The hash as the first version computed it (streaming, one update per part): hashes
    /// already stored in `state` topics must stay valid, or an upgrade floods `changes`.
    fn streaming_hash(dataset: &Dataset, record: &DatasetRecord) -> u128 {
        let mut hasher = Xxh3::new();
        for (spec, value) in dataset.fields().iter().zip(record.values()) {
            if spec.volatile() {
                continue;
            }
            let (tag, bytes): (u8, Vec<u8>) = match value {
                FieldValue::Null => continue,
                FieldValue::String(s) => (1, s.as_bytes().to_vec()),
                FieldValue::Enum(s) => (8, s.as_bytes().to_vec()),
                FieldValue::Int(v) => (2, v.to_le_bytes().to_vec()),
                FieldValue::Long(v) => (3, v.to_le_bytes().to_vec()),
                FieldValue::Double(v) => (4, v.to_bits().to_le_bytes().to_vec()),
                FieldValue::Boolean(v) => (5, vec![u8::from(*v)]),
                FieldValue::Date(v) => (6, v.to_le_bytes().to_vec()),
                FieldValue::TimestampMillis(v) => (7, v.to_le_bytes().to_vec()),
            };
            let name = spec.name().as_bytes();
            hasher.update(&(name.len() as u32).to_le_bytes());
            hasher.update(name);
            hasher.update(&[tag]);
            hasher.update(&(bytes.len() as u32).to_le_bytes());
            hasher.update(&bytes);
        }
        hasher.digest128()
    }

    #[test]
    fn payload_record_and_first_version_hashes_agree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let store = SchemaStore::load_dir(&root.join("schemas")).unwrap();
        let dataset =
            DatasetMapping::load(&root.join("deploy/config/lab_results.mapping.toml"), &store)
                .unwrap();
        let mut hasher = ContentHasher::new(&dataset);
        for i in 0..40i64 {
            let values = dataset
                .fields()
                .iter()
                .enumerate()
                .map(|(n, spec)| {
                    if spec.nullable() && (i + n as i64) % 4 == 0 {
                        return FieldValue::Null;
                    }
                    match spec.kind() {
                        FieldKind::String => FieldValue::String(format!("{i}:{n}")),
                        FieldKind::Int => FieldValue::Int(i as i32 - 20),
                        FieldKind::Long => FieldValue::Long(i << 40),
                        FieldKind::Double => FieldValue::Double(i as f64 * 0.1),
                        FieldKind::Boolean => FieldValue::Boolean(i % 3 == 0),
                        FieldKind::Date => FieldValue::Date(20_000 - i as i32),
                        FieldKind::TimestampMillis => FieldValue::TimestampMillis(i * 1_000),
                        FieldKind::Enum => FieldValue::Enum(
                            spec.symbols()[i as usize % spec.symbols().len()].clone(),
                        ),
                    }
                })
                .collect();
            let record = dataset.record(values).unwrap();
            let mut payload = Vec::new();
            dataset.encode(&record, &mut payload).unwrap();
            let expected = streaming_hash(&dataset, &record);
            assert_eq!(hasher.record(&record), expected, "record {i}");
            assert_eq!(
                hasher.payload(&dataset, &payload),
                Some(expected),
                "payload {i}"
            );
        }
    }
}
