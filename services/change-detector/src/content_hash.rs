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

use snapfeed_runtime::dataset::{Dataset, DatasetRecord, FieldValue};
use xxhash_rust::xxh3::Xxh3;

/// The 128-bit content hash of `record`.
pub fn content_hash(dataset: &Dataset, record: &DatasetRecord) -> u128 {
    let mut hasher = Xxh3::new();
    for (spec, value) in dataset.fields().iter().zip(record.values()) {
        if spec.volatile() {
            continue;
        }
        let (tag, number, text): (u8, Option<Padded>, &[u8]) = match value {
            FieldValue::Null => continue,
            FieldValue::String(s) => (1, None, s.as_bytes()),
            FieldValue::Enum(s) => (8, None, s.as_bytes()),
            FieldValue::Int(v) => (2, Some(padded(&v.to_le_bytes())), &[]),
            FieldValue::Long(v) => (3, Some(padded(&v.to_le_bytes())), &[]),
            FieldValue::Double(v) => (4, Some(padded(&v.to_bits().to_le_bytes())), &[]),
            FieldValue::Boolean(v) => (5, Some(padded(&[u8::from(*v)])), &[]),
            FieldValue::Date(v) => (6, Some(padded(&v.to_le_bytes())), &[]),
            FieldValue::TimestampMillis(v) => (7, Some(padded(&v.to_le_bytes())), &[]),
        };
        let bytes = match &number {
            Some((buf, len)) => &buf[..*len],
            None => text,
        };
        let name = spec.name().as_bytes();
        hasher.update(&(name.len() as u32).to_le_bytes());
        hasher.update(name);
        hasher.update(&[tag]);
        hasher.update(&(bytes.len() as u32).to_le_bytes());
        hasher.update(bytes);
    }
    hasher.digest128()
}

/// A number's little-endian bytes in a fixed buffer, and how many of them count.
type Padded = ([u8; 8], usize);

fn padded(bytes: &[u8]) -> Padded {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    (buf, bytes.len())
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
