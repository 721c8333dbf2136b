//! Reading a record's field values straight from its Avro binary, without building a
//! [`DatasetRecord`](super::DatasetRecord): the change-detector's hot path, where almost every
//! record is unchanged and only its content hash is needed.
//!
//! Only payloads written with the dataset's current schema are walked here; anything else (an
//! older writer schema, or bytes that do not walk cleanly) is left to
//! [`Dataset::decode`](super::Dataset::decode), which resolves schemas and names the problem.
//! The walker checks the structure as `decode` does (union branch, enum index, int range,
//! boolean byte, every byte consumed) but not that the strings of tracked (non-volatile) fields
//! are UTF-8: a payload it accepts yields the values `decode` would, or has such a string
//! `decode` refuses. Callers that act on a
//! record (rather than recognise one already seen) decode it first.

use super::{Dataset, FieldKind, FieldSpec, FieldValue, RecordShapeError};
#[cfg(test)]
use crate::avro::SINGLE_OBJECT_HEADER_LEN;
use crate::record_key::{KeyError, RecordKey};

/// A field value borrowed from a record or from its Avro binary. Its `Debug` shows the value
/// (health data): for tests and local debugging, never for logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    /// Absent.
    Null,
    /// A `string`'s UTF-8 bytes (not validated when read from a payload).
    String(&'a [u8]),
    /// An `int`.
    Int(i32),
    /// A `long`.
    Long(i64),
    /// A `double`.
    Double(f64),
    /// A `boolean`.
    Boolean(bool),
    /// A `date` (days since 1970-01-01).
    Date(i32),
    /// A `timestamp-millis`.
    TimestampMillis(i64),
    /// An enum symbol.
    Enum(&'a str),
}

impl FieldValue {
    /// The value, borrowed.
    pub fn as_ref(&self) -> FieldRef<'_> {
        match self {
            FieldValue::Null => FieldRef::Null,
            FieldValue::String(s) => FieldRef::String(s.as_bytes()),
            FieldValue::Int(v) => FieldRef::Int(*v),
            FieldValue::Long(v) => FieldRef::Long(*v),
            FieldValue::Double(v) => FieldRef::Double(*v),
            FieldValue::Boolean(v) => FieldRef::Boolean(*v),
            FieldValue::Date(v) => FieldRef::Date(*v),
            FieldValue::TimestampMillis(v) => FieldRef::TimestampMillis(*v),
            FieldValue::Enum(s) => FieldRef::Enum(s),
        }
    }
}

impl FieldRef<'_> {
    /// The value, owned (a string that is not UTF-8 — possible only for bytes read from a
    /// payload — is replaced lossily).
    pub fn to_value(&self) -> FieldValue {
        match *self {
            FieldRef::Null => FieldValue::Null,
            FieldRef::String(s) => FieldValue::String(String::from_utf8_lossy(s).into_owned()),
            FieldRef::Int(v) => FieldValue::Int(v),
            FieldRef::Long(v) => FieldValue::Long(v),
            FieldRef::Double(v) => FieldValue::Double(v),
            FieldRef::Boolean(v) => FieldValue::Boolean(v),
            FieldRef::Date(v) => FieldValue::Date(v),
            FieldRef::TimestampMillis(v) => FieldValue::TimestampMillis(v),
            FieldRef::Enum(s) => FieldValue::Enum(s.to_string()),
        }
    }
}

impl Dataset {
    /// The canonical record key of borrowed values in schema order, as
    /// [`DatasetRecord::key`](super::DatasetRecord::key) builds it for the equal record.
    pub fn key_of_refs(&self, values: &[FieldRef<'_>]) -> Result<RecordKey, KeyError> {
        let components = self
            .key_field_indexes
            .iter()
            .map(|&index| match values.get(index) {
                Some(FieldRef::String(s)) => std::str::from_utf8(s).unwrap_or(""),
                // Validation makes key fields required strings; anything else is an empty component.
                _ => "",
            });
        RecordKey::build(components, &self.key_cases)
    }

    /// Calls `visit` with the index (in [`Dataset::fields`]) and value of each field of
    /// `payload` in schema order, if `payload` is a single-object datum written with the
    /// current schema whose structure is sound (see the module documentation). Returns `false`
    /// otherwise — `visit` may then have seen a prefix of the fields, and the caller must fall
    /// back to [`Dataset::decode`].
    pub fn visit_current<'a>(
        &'a self,
        payload: &'a [u8],
        mut visit: impl FnMut(usize, FieldRef<'a>),
    ) -> bool {
        let Some(body) = self.schema.body_of(payload) else {
            return false;
        };
        let mut reader = Reader { bytes: body };
        for (index, spec) in self.fields.iter().enumerate() {
            match reader.field(spec) {
                // Volatile fields stay out of content hashes, so nothing later would notice a
                // string of them that is not text: check it here.
                Some(value) if !spec.volatile || valid_text(value) => visit(index, value),
                _ => return false,
            }
        }
        reader.bytes.is_empty()
    }
}

impl Dataset {
    /// Appends to `out` the current schema's fingerprint and the Avro body of `payload` with
    /// the volatile fields' bytes left out, if `payload` was written with the current schema
    /// and its fields can be delimited; `false` otherwise (`out` then holds a prefix).
    ///
    /// Equal outputs mean equal tracked values, so a detector that remembers a hash of this
    /// recognises a re-sent unchanged record by skipping over its fields instead of reading
    /// them. The converse does not hold (a schema change alters the bytes, not the values):
    /// a mismatch says nothing, and the caller compares content hashes. Nothing is validated
    /// beyond bounds — a match with bytes once validated needs no more.
    pub fn tracked_bytes(&self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(body) = self.schema.body_of(payload) else {
            return false;
        };
        out.extend_from_slice(&self.schema.fingerprint);
        let mut pos = 0;
        let mut span_start = 0;
        for spec in &self.fields {
            let start = pos;
            if spec.volatile {
                // Left out of the bytes, so read (validated) here: a match of the rest says
                // nothing about them.
                let mut reader = Reader {
                    bytes: &body[pos..],
                };
                if !reader.field(spec).is_some_and(valid_text) {
                    return false;
                }
                pos = body.len() - reader.bytes.len();
                out.extend_from_slice(&body[span_start..start]);
                span_start = pos;
            } else {
                match skip(body, pos, spec) {
                    Some(end) => pos = end,
                    None => return false,
                }
            }
        }
        out.extend_from_slice(&body[span_start..]);
        pos == body.len()
    }
}

impl Dataset {
    /// Appends the single-object encoding of a record given as borrowed values in schema
    /// order — what [`Dataset::encode`] writes for the equal record, without building it (the
    /// file-source's per-row path). The values must fit the fields (`Null` only where
    /// nullable, enum symbols of the field's enum).
    pub fn encode_refs(
        &self,
        values: &[FieldRef<'_>],
        buf: &mut Vec<u8>,
    ) -> Result<(), RecordShapeError> {
        if values.len() != self.fields.len() {
            return Err(RecordShapeError::Arity {
                expected: self.fields.len(),
                got: values.len(),
            });
        }
        self.schema.write_header(buf);
        for (spec, value) in self.fields.iter().zip(values) {
            if spec.nullable {
                let branch = match value {
                    FieldRef::Null => spec.null_branch,
                    _ => 1 - spec.null_branch,
                };
                write_long(buf, i64::from(branch));
            }
            match (value, spec.kind) {
                (FieldRef::Null, _) if spec.nullable => {}
                (FieldRef::String(bytes), FieldKind::String) => {
                    write_long(buf, bytes.len() as i64);
                    buf.extend_from_slice(bytes);
                }
                (FieldRef::Int(v), FieldKind::Int) | (FieldRef::Date(v), FieldKind::Date) => {
                    write_long(buf, i64::from(*v))
                }
                (FieldRef::Long(v), FieldKind::Long)
                | (FieldRef::TimestampMillis(v), FieldKind::TimestampMillis) => write_long(buf, *v),
                (FieldRef::Double(v), FieldKind::Double) => buf.extend_from_slice(&v.to_le_bytes()),
                (FieldRef::Boolean(v), FieldKind::Boolean) => buf.push(u8::from(*v)),
                (FieldRef::Enum(symbol), FieldKind::Enum) => {
                    match spec.symbols.iter().position(|s| s == symbol) {
                        Some(index) => write_long(buf, index as i64),
                        None => return Err(misfit(spec)),
                    }
                }
                _ => return Err(misfit(spec)),
            }
        }
        Ok(())
    }
}

fn misfit(spec: &FieldSpec) -> RecordShapeError {
    RecordShapeError::Type {
        field: spec.name.to_string(),
        kind: spec.kind,
    }
}

/// A zig-zag varint.
fn write_long(buf: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Where the value of `spec` that starts at `pos` in `body` ends, without reading it (the
/// detector's hottest loop: kept to a few instructions per field).
#[inline]
fn skip(body: &[u8], mut pos: usize, spec: &FieldSpec) -> Option<usize> {
    if spec.nullable {
        // The branch index: zig-zag 0 or 1, one byte.
        let branch = *body.get(pos)?;
        pos += 1;
        if branch == spec.null_branch << 1 {
            return Some(pos);
        }
        if branch != (1 - spec.null_branch) << 1 {
            return None;
        }
    }
    let len = match spec.kind {
        FieldKind::String => {
            let first = *body.get(pos)?;
            if first < 0x80 {
                // A length below 64: one byte.
                pos += 1;
                usize::from(first >> 1)
            } else {
                let mut reader = Reader {
                    bytes: body.get(pos..)?,
                };
                let len = usize::try_from(reader.long()?).ok()?;
                pos = body.len() - reader.bytes.len();
                len
            }
        }
        FieldKind::Double => 8,
        FieldKind::Boolean => 1,
        FieldKind::Int
        | FieldKind::Long
        | FieldKind::Date
        | FieldKind::TimestampMillis
        | FieldKind::Enum => {
            // A varint ends at its first byte below 0x80, within 10 bytes.
            let start = pos;
            while *body.get(pos)? >= 0x80 {
                pos += 1;
                if pos - start == 10 {
                    return None;
                }
            }
            return Some(pos + 1);
        }
    };
    let end = pos.checked_add(len)?;
    (end <= body.len()).then_some(end)
}

/// A cursor over Avro binary.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn field(&mut self, spec: &'a FieldSpec) -> Option<FieldRef<'a>> {
        if spec.nullable {
            let branch = self.long()?;
            if branch == i64::from(spec.null_branch) {
                return Some(FieldRef::Null);
            }
            if branch != i64::from(1 - spec.null_branch) {
                return None;
            }
        }
        Some(match spec.kind {
            FieldKind::String => FieldRef::String(self.string()?),
            FieldKind::Int => FieldRef::Int(self.int()?),
            FieldKind::Long => FieldRef::Long(self.long()?),
            FieldKind::Double => {
                let (bytes, rest) = self.bytes.split_first_chunk::<8>()?;
                self.bytes = rest;
                FieldRef::Double(f64::from_le_bytes(*bytes))
            }
            FieldKind::Boolean => {
                let (&byte, rest) = self.bytes.split_first()?;
                self.bytes = rest;
                match byte {
                    0 => FieldRef::Boolean(false),
                    1 => FieldRef::Boolean(true),
                    _ => return None,
                }
            }
            FieldKind::Date => FieldRef::Date(self.int()?),
            FieldKind::TimestampMillis => FieldRef::TimestampMillis(self.long()?),
            FieldKind::Enum => {
                let index = usize::try_from(self.int()?).ok()?;
                FieldRef::Enum(spec.symbols.get(index)?.as_str())
            }
        })
    }

    /// A zig-zag varint of at most 10 bytes.
    fn long(&mut self) -> Option<i64> {
        // Most values (union branches, string lengths, small numbers) fit in one byte.
        let (&first, rest) = self.bytes.split_first()?;
        if first < 0x80 {
            self.bytes = rest;
            return Some(unzigzag(u64::from(first)));
        }
        let mut value = u64::from(first & 0x7f);
        for (i, &byte) in rest.iter().enumerate().take(9) {
            value |= u64::from(byte & 0x7f) << (7 * (i + 1));
            if byte < 0x80 {
                self.bytes = &rest[i + 1..];
                return Some(unzigzag(value));
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.long()?).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(text)
    }
}

/// False for a string that is not UTF-8.
fn valid_text(value: FieldRef<'_>) -> bool {
    match value {
        FieldRef::String(bytes) => std::str::from_utf8(bytes).is_ok(),
        _ => true,
    }
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::{MessageLocation, SchemaStore};
    use crate::dataset::DatasetMapping;
    use std::path::Path;

    fn dataset() -> (SchemaStore, Dataset) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let store = SchemaStore::load_dir(&root.join("schemas")).expect("schemas");
        let dataset =
            DatasetMapping::load(&root.join("deploy/config/lab_results.mapping.toml"), &store)
                .expect("mapping");
        (store, dataset)
    }

    fn location() -> MessageLocation {
        MessageLocation {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        }
    }

    /// A record with every field set to a value of its kind (or null where nullable and `i`
    /// is odd), varied by `i`.
    fn record(dataset: &Dataset, i: i64) -> super::super::DatasetRecord {
        let values = dataset
            .fields()
            .iter()
            .enumerate()
            .map(|(n, spec)| {
                if spec.nullable() && (i + n as i64) % 3 == 0 {
                    return FieldValue::Null;
                }
                match spec.kind() {
                    FieldKind::String => FieldValue::String(format!("v{i}-{n}-é")),
                    FieldKind::Int => FieldValue::Int(-(i as i32) * 1000 - n as i32),
                    FieldKind::Long => FieldValue::Long(i64::MIN + i),
                    FieldKind::Double => FieldValue::Double(i as f64 / 7.0),
                    FieldKind::Boolean => FieldValue::Boolean(i % 2 == 0),
                    FieldKind::Date => FieldValue::Date(19_000 + i as i32),
                    FieldKind::TimestampMillis => {
                        FieldValue::TimestampMillis(1_700_000_000_000 + i)
                    }
                    FieldKind::Enum => {
                        FieldValue::Enum(spec.symbols()[i as usize % spec.symbols().len()].clone())
                    }
                }
            })
            .collect();
        dataset.record(values).expect("record fits")
    }

    fn walked<'a>(dataset: &'a Dataset, payload: &'a [u8]) -> Option<Vec<FieldRef<'a>>> {
        let mut values = Vec::new();
        dataset
            .visit_current(payload, |_, value| values.push(value))
            .then_some(values)
    }

    #[test]
    fn walking_the_binary_yields_what_decode_yields() {
        let (store, dataset) = dataset();
        for i in 0..50 {
            let record = record(&dataset, i);
            let mut payload = Vec::new();
            dataset.encode(&record, &mut payload).expect("encode");
            let decoded = dataset
                .decode(&payload, &store, &location())
                .expect("decode");
            let expected: Vec<FieldRef<'_>> =
                decoded.values().iter().map(FieldValue::as_ref).collect();
            assert_eq!(walked(&dataset, &payload), Some(expected), "record {i}");
        }
    }

    #[test]
    fn anything_decode_would_question_is_left_to_decode() {
        let (_, dataset) = dataset();
        let mut payload = Vec::new();
        dataset
            .encode(&record(&dataset, 1), &mut payload)
            .expect("encode");
        // Every truncation, a trailing byte, another writer's fingerprint, a broken magic.
        for len in 0..payload.len() {
            assert_eq!(
                walked(&dataset, &payload[..len]),
                None,
                "truncated to {len}"
            );
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(walked(&dataset, &longer), None);
        let mut other = payload.clone();
        other[5] ^= 1;
        assert_eq!(walked(&dataset, &other), None);
        let mut magic = payload.clone();
        magic[0] = 0;
        assert_eq!(walked(&dataset, &magic), None);
    }

    #[test]
    fn whatever_the_walker_accepts_decodes_the_same_or_has_a_non_utf8_string() {
        let (store, dataset) = dataset();
        let mut payload = Vec::new();
        dataset
            .encode(&record(&dataset, 1), &mut payload)
            .expect("encode");
        // Flip each byte in turn: whatever the walker still accepts, decode must accept with
        // the same values — or refuse for a string that is not UTF-8 (not the walker's check).
        for at in SINGLE_OBJECT_HEADER_LEN..payload.len() {
            for flip in [0x80u8, 0xff, 0x01, 0x40] {
                let mut bad = payload.clone();
                bad[at] ^= flip;
                let Some(values) = walked(&dataset, &bad) else {
                    continue;
                };
                match dataset.decode(&bad, &store, &location()) {
                    Ok(decoded) => {
                        let expected: Vec<FieldRef<'_>> =
                            decoded.values().iter().map(FieldValue::as_ref).collect();
                        assert_eq!(values, expected, "byte {at} ^ {flip:#x}");
                    }
                    Err(error) => assert!(
                        values.iter().any(
                            |v| matches!(v, FieldRef::String(s) if std::str::from_utf8(s).is_err())
                        ),
                        "walker accepted what decode refuses at byte {at} ^ {flip:#x}: {error}"
                    ),
                }
            }
        }
    }

    #[test]
    fn tracked_bytes_ignore_volatile_fields_and_see_every_other_change() {
        let (_, dataset) = dataset();
        let volatile: Vec<usize> = dataset
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.volatile())
            .map(|(i, _)| i)
            .collect();
        assert!(!volatile.is_empty(), "the lab mapping has a volatile field");
        let tracked = |record: &super::super::DatasetRecord| {
            let mut payload = Vec::new();
            dataset.encode(record, &mut payload).expect("encode");
            let mut out = Vec::new();
            assert!(dataset.tracked_bytes(&payload, &mut out));
            out
        };
        let base = record(&dataset, 2);
        let same = tracked(&base);
        for index in 0..dataset.fields().len() {
            let mut values = base.values().to_vec();
            values[index] = match (&values[index], dataset.fields()[index].kind()) {
                (FieldValue::Null, _) => record(&dataset, 4).values()[index].clone(),
                (_, _) if dataset.fields()[index].nullable() => FieldValue::Null,
                (_, _) => record(&dataset, 5).values()[index].clone(),
            };
            if values[index] == base.values()[index] {
                continue;
            }
            let changed = tracked(&dataset.record(values).expect("fits"));
            let field = dataset.fields()[index].name();
            if volatile.contains(&index) {
                assert_eq!(
                    changed, same,
                    "volatile field {field} changed the tracked bytes"
                );
            } else {
                assert_ne!(
                    changed, same,
                    "field {field} changed but the tracked bytes did not"
                );
            }
        }
        let mut payload = Vec::new();
        dataset.encode(&base, &mut payload).expect("encode");
        for len in 0..payload.len() {
            assert!(
                !dataset.tracked_bytes(&payload[..len], &mut Vec::new()),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn encoding_borrowed_values_writes_what_encode_writes() {
        let (_, dataset) = dataset();
        for i in 0..60 {
            let record = record(&dataset, i);
            let mut expected = Vec::new();
            dataset.encode(&record, &mut expected).expect("encode");
            let refs: Vec<FieldRef<'_>> = record.values().iter().map(FieldValue::as_ref).collect();
            let mut written = Vec::new();
            dataset.encode_refs(&refs, &mut written).expect("fits");
            assert_eq!(written, expected, "record {i}");
        }
        // Values that do not fit are refused, naming the field only.
        let record = record(&dataset, 3);
        let mut refs: Vec<FieldRef<'_>> = record.values().iter().map(FieldValue::as_ref).collect();
        let required = dataset
            .fields()
            .iter()
            .position(|f| !f.nullable())
            .expect("a required field");
        refs[required] = FieldRef::Null;
        let error = dataset
            .encode_refs(&refs, &mut Vec::new())
            .expect_err("null in a required field");
        assert!(
            error
                .to_string()
                .contains(dataset.fields()[required].name()),
            "{error}"
        );
        assert!(dataset.encode_refs(&refs[1..], &mut Vec::new()).is_err());
    }

    #[test]
    fn keys_and_owned_values_of_borrowed_values_match_the_record() {
        let (_, dataset) = dataset();
        for i in 0..20 {
            let record = record(&dataset, i);
            let refs: Vec<FieldRef<'_>> = record.values().iter().map(FieldValue::as_ref).collect();
            assert_eq!(dataset.key_of_refs(&refs), record.key(&dataset));
            let owned: Vec<FieldValue> = refs.iter().map(FieldRef::to_value).collect();
            assert_eq!(owned, record.values());
        }
    }

    /// The lab dataset with `facility_name` volatile too (a string field).
    fn with_volatile_string() -> Dataset {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let store = SchemaStore::load_dir(&root.join("schemas")).expect("schemas");
        let path = root.join("deploy/config/lab_results.mapping.toml");
        let text = std::fs::read_to_string(&path).expect("mapping").replace(
            r#"volatile_fields = ["report_generated_at"]"#,
            r#"volatile_fields = ["report_generated_at", "facility_name"]"#,
        );
        DatasetMapping::parse(&text, &path)
            .and_then(|m| m.resolve(&path, &store))
            .expect("edited mapping")
    }

    #[test]
    fn a_volatile_string_that_is_not_text_is_left_to_decode() {
        let dataset = with_volatile_string();
        let index = dataset
            .fields()
            .iter()
            .position(|f| f.name() == "facility_name")
            .expect("field");
        let mut values = record(&dataset, 2).into_values();
        values[index] = FieldValue::String("ab".into());
        let mut payload = Vec::new();
        dataset
            .encode(&dataset.record(values).expect("fits"), &mut payload)
            .expect("encode");
        assert!(dataset.tracked_bytes(&payload, &mut Vec::new()));
        assert!(walked(&dataset, &payload).is_some());
        // Replace "ab" (length 2 → zig-zag 4, then 'a' 'b') by two bytes that are not UTF-8.
        let at = payload
            .windows(3)
            .position(|w| w == [4, b'a', b'b'])
            .expect("the string's bytes");
        payload[at + 1] = 0xff;
        payload[at + 2] = 0xfe;
        assert!(!dataset.tracked_bytes(&payload, &mut Vec::new()));
        assert_eq!(walked(&dataset, &payload), None);
    }

    #[test]
    fn skipping_takes_varints_of_all_ten_bytes() {
        let (_, dataset) = dataset();
        let spec = dataset
            .fields()
            .iter()
            .find(|f| f.kind() == FieldKind::TimestampMillis && !f.nullable())
            .or_else(|| {
                dataset
                    .fields()
                    .iter()
                    .find(|f| f.kind() == FieldKind::Date)
            })
            .expect("a varint field");
        let mut body = Vec::new();
        write_long(
            &mut body,
            if spec.kind() == FieldKind::Date {
                i64::from(i32::MIN)
            } else {
                i64::MIN
            },
        );
        let mut nullable = Vec::new();
        if spec.nullable() {
            write_long(&mut nullable, i64::from(1 - spec.null_branch));
        }
        nullable.extend_from_slice(&body);
        assert_eq!(skip(&nullable, 0, spec), Some(nullable.len()));
        let mut too_long = nullable.clone();
        let last = too_long.len() - 1;
        too_long[last] |= 0x80;
        too_long.extend_from_slice(&[0x80, 0x00]);
        if spec.kind() != FieldKind::Date {
            assert_eq!(skip(&too_long, 0, spec), None, "11 varint bytes");
        }
    }
}
