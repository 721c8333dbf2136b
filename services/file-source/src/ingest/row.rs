//! The fate of one data row — the source stage's decision, kept pure: no files, no Kafka. A
//! row is **accepted** with its record key and Avro payload, or **rejected** with a reason: the
//! converter's reject (a bad cell, the wrong field count), [`BAD_ENCODING`] (not text in the
//! configured encoding) or [`DUPLICATE_KEY`] (an earlier row of the same file has its key: the
//! first occurrence wins, so one file never flip-flops a record). A rejected row claims no key.
//!
//! Both passes of the ingest decide with a fresh [`RowDecider`], in file order, so they agree on
//! every row's fate; that agreement is what lets the validation pass decide before anything is
//! sent. Per row the decision allocates only the record key: cells become values borrowed from
//! the row, encoded straight into a reused buffer, and the duplicate-key set holds a 16-byte
//! fingerprint per accepted key.

use std::collections::HashSet;
use std::sync::Arc;

use snapfeed_runtime::dataset::{Dataset, FieldRef};
use snapfeed_runtime::record_key::RecordKey;

use crate::convert::{reason, HeaderMap, RowConverter, RowReject};
use crate::reader::{Record, TextFields};

/// Reason of a row whose bytes are not valid text in the configured encoding.
pub const BAD_ENCODING: &str = "bad_encoding";
/// Reason of a row repeating an earlier row's key (the first occurrence wins).
pub const DUPLICATE_KEY: &str = "duplicate_key";

/// What becomes of one data row.
#[derive(Debug, PartialEq)]
pub enum RowOutcome<'d> {
    /// To `snapshots`, under this key.
    Accepted {
        /// The record key.
        key: RecordKey,
        /// The record's single-object Avro encoding (valid until the next row is decided).
        payload: &'d [u8],
    },
    /// To `rejects`, with why.
    Rejected(RowReject),
}

/// Decides the fate of each row of one file, in file order.
#[derive(Debug)]
pub struct RowDecider {
    dataset: Arc<Dataset>,
    converter: RowConverter,
    seen_keys: DuplicateKeys,
    /// The accepted row's encoding, reused across rows.
    payload: Vec<u8>,
    /// Always empty between rows: the allocation that holds a row's borrowed values.
    values: Vec<FieldRef<'static>>,
}

impl RowDecider {
    /// A decider for the rows under `header` (matched against `dataset`).
    pub fn new(dataset: Arc<Dataset>, header: HeaderMap) -> RowDecider {
        let fields = dataset.fields().len();
        RowDecider {
            converter: RowConverter::new(dataset.clone(), header),
            dataset,
            seen_keys: DuplicateKeys::default(),
            payload: Vec::with_capacity(1024),
            values: Vec::with_capacity(fields),
        }
    }

    /// Makes room for the keys of `rows` rows at once (no rehashing on the way).
    pub fn expect_rows(&mut self, rows: u64) {
        self.seen_keys.reserve(rows);
    }

    /// The fate of the row whose raw cells are `row` (the raw text of a rejected row goes to
    /// `rejects`).
    pub fn decide(&mut self, row: &Record) -> RowOutcome<'_> {
        let Some(text) = row.text() else {
            return RowOutcome::Rejected(RowReject {
                column: None,
                reason: BAD_ENCODING,
                detail: "the row is not valid text in the configured encoding (source.encoding)"
                    .into(),
            });
        };
        let converted = self.encode(text);
        match converted {
            Ok(key) if self.seen_keys.first_time(&key) => RowOutcome::Accepted {
                key,
                payload: &self.payload,
            },
            Ok(_) => RowOutcome::Rejected(RowReject {
                column: None,
                reason: DUPLICATE_KEY,
                detail: "an earlier row of this file has the same key; the first occurrence wins"
                    .into(),
            }),
            Err(reject) => RowOutcome::Rejected(reject),
        }
    }

    /// Converts the row to values borrowed from it and encodes them into `self.payload`: no
    /// allocation per cell. Returns the record key.
    fn encode(&mut self, text: TextFields<'_>) -> Result<RecordKey, RowReject> {
        // The previous row's (empty) vector, lent out again for this row's lifetime.
        let mut values: Vec<FieldRef<'_>> = std::mem::take(&mut self.values);
        let converted = self
            .converter
            .convert_refs(&self.dataset, text, &mut values)
            .and_then(|()| {
                self.payload.clear();
                self.dataset
                    .encode_refs(&values, &mut self.payload)
                    .map_err(|error| RowReject {
                        column: None,
                        reason: reason::SCHEMA_MISMATCH,
                        detail: error.to_string(),
                    })?;
                self.dataset
                    .key_of_refs(&values)
                    .map_err(|error| RowReject {
                        column: None,
                        reason: reason::MISSING_REQUIRED,
                        detail: format!("cannot build the record key: {error}"),
                    })
            });
        self.values = recycle(values);
        converted
    }
}

/// The keys accepted so far in one file, as fingerprints seeded at random per decider (see
/// [`KeyFingerprints`]).
#[derive(Debug)]
struct DuplicateKeys {
    seen: HashSet<u128, KeyFingerprints>,
    seed: u64,
}

impl Default for DuplicateKeys {
    fn default() -> DuplicateKeys {
        DuplicateKeys {
            seen: HashSet::default(),
            seed: KeyFingerprints::seed(),
        }
    }
}

impl DuplicateKeys {
    /// True the first time `key` is seen in this file.
    fn first_time(&mut self, key: &RecordKey) -> bool {
        self.seen.insert(xxhash_rust::xxh3::xxh3_128_with_seed(
            key.as_str().as_bytes(),
            self.seed,
        ))
    }

    fn reserve(&mut self, keys: u64) {
        self.seen.reserve(keys as usize);
    }
}

/// Hashing for the duplicate-key set, whose members are already 128-bit xxh3 fingerprints of
/// the keys: the table uses their low 64 bits as they are. The fingerprint is seeded at random
/// per file, so a file cannot be crafted to make its keys collide in the table.
#[derive(Debug, Default, Clone)]
struct KeyFingerprints;

impl KeyFingerprints {
    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0);
        hasher.finish()
    }
}

impl std::hash::BuildHasher for KeyFingerprints {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

/// See [`KeyFingerprints`].
#[derive(Debug, Default)]
struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; anything else is folded in so the hasher stays correct.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u128(&mut self, fingerprint: u128) {
        self.0 = fingerprint as u64;
    }
}

/// Empties `values` and keeps its allocation for the next row (collecting in place from an
/// empty iterator reuses the buffer; no element is ever mapped).
fn recycle(mut values: Vec<FieldRef<'_>>) -> Vec<FieldRef<'static>> {
    values.clear();
    values.into_iter().map(|_| FieldRef::Null).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{lab_dataset, row, schema_order};

    fn decider() -> RowDecider {
        let dataset = lab_dataset();
        let header = HeaderMap::match_header(schema_order(), &dataset).unwrap();
        RowDecider::new(dataset, header)
    }

    /// The good lab row with `changes`, as raw cells.
    fn raw(changes: &[(&str, &str)]) -> Record {
        Record::from_fields(row(&schema_order(), changes).iter())
    }

    fn accepted_key(outcome: RowOutcome<'_>) -> String {
        match outcome {
            RowOutcome::Accepted { key, .. } => key.as_str().to_string(),
            RowOutcome::Rejected(reject) => panic!("rejected: {reject}"),
        }
    }

    fn reason_of(outcome: RowOutcome<'_>) -> &'static str {
        match outcome {
            RowOutcome::Rejected(reject) => reject.reason,
            RowOutcome::Accepted { key, .. } => panic!("accepted {}", key.as_str()),
        }
    }

    #[test]
    fn a_good_row_is_accepted_with_its_key_and_the_datasets_encoding() {
        let dataset = lab_dataset();
        let mut decider = decider();
        let row = raw(&[]);
        let RowOutcome::Accepted { key, payload } = decider.decide(&row) else {
            panic!("rejected")
        };
        let record = crate::convert::tests::converter(&dataset, &schema_order())
            .convert(&crate::convert::tests::row(&schema_order(), &[]))
            .unwrap();
        let mut expected = Vec::new();
        dataset.encode(&record, &mut expected).unwrap();
        assert_eq!(key.as_str(), "05D0123456|ACC-1|94500-6");
        assert_eq!(payload, expected.as_slice());
        assert_eq!(row, raw(&[]), "the row is left as read");
    }

    #[test]
    fn a_repeated_key_is_rejected_and_the_first_occurrence_wins() {
        let mut decider = decider();
        let first = accepted_key(decider.decide(&raw(&[("Patient_Sex", "M")])));
        let other = accepted_key(decider.decide(&raw(&[("Accession_Number", "ACC-2")])));
        assert_ne!(first, other);
        // Same key (the key columns are equal after normalisation), other content.
        let repeat = decider.decide(&raw(&[
            ("Patient_Sex", "F"),
            ("Facility_CLIA", "05D0123456"),
        ]));
        assert_eq!(reason_of(repeat), DUPLICATE_KEY);
        assert_eq!(
            reason_of(decider.decide(&raw(&[("Accession_Number", "ACC-2")]))),
            DUPLICATE_KEY
        );
    }

    #[test]
    fn a_rejected_row_claims_no_key() {
        let mut decider = decider();
        let bad = decider.decide(&raw(&[("Result_Date", "31/31/2021")]));
        assert_eq!(
            bad,
            RowOutcome::Rejected(RowReject {
                column: Some("Result_Date".into()),
                reason: reason::BAD_DATE,
                detail: "does not match any of %m/%d/%Y, %Y-%m-%d".into(),
            })
        );
        // The same key, now convertible: its first acceptable occurrence.
        accepted_key(decider.decide(&raw(&[])));
    }

    #[test]
    fn bytes_that_are_not_text_are_a_bad_encoding_reject_kept_as_read() {
        let mut decider = decider();
        let mut cells: Vec<Vec<u8>> = raw(&[]).fields().map(<[u8]>::to_vec).collect();
        cells[1] = b"N\xfa\xf1ez".to_vec();
        let row = Record::from_fields(cells);
        let before = row.clone();
        assert_eq!(reason_of(decider.decide(&row)), BAD_ENCODING);
        assert_eq!(row, before, "the raw cells go to rejects untouched");
        // Its key is not claimed either.
        accepted_key(decider.decide(&raw(&[])));
    }

    #[test]
    fn deciding_again_gives_the_same_fates() {
        let rows = [
            raw(&[]),
            raw(&[("Patient_DOB", "x")]),
            raw(&[("Patient_Sex", "F")]),
            raw(&[("Accession_Number", "ACC-9")]),
        ];
        let fates = |decider: &mut RowDecider| -> Vec<String> {
            rows.iter()
                .map(|r| match decider.decide(&r.clone()) {
                    RowOutcome::Accepted { key, payload } => {
                        format!("{}:{}", key.as_str(), payload.len())
                    }
                    RowOutcome::Rejected(reject) => reject.to_string(),
                })
                .collect()
        };
        let (first, second) = (fates(&mut decider()), fates(&mut decider()));
        assert_eq!(first, second, "the validation and send passes agree");
        assert!(first[2].starts_with(DUPLICATE_KEY), "{first:?}");
    }

    #[test]
    fn the_duplicate_key_set_tells_fingerprints_apart() {
        let seed = KeyFingerprints::seed();
        let mut seen: HashSet<u128, KeyFingerprints> = HashSet::default();
        for key in ["a|1", "a|2", "b|1"] {
            assert!(seen.insert(xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), seed)));
        }
        assert!(!seen.insert(xxhash_rust::xxh3::xxh3_128_with_seed(b"a|2", seed)));
    }

    #[test]
    fn recycling_keeps_the_allocation() {
        let text = b"x".to_vec();
        let mut values: Vec<FieldRef<'_>> = Vec::with_capacity(32);
        values.push(FieldRef::String(&text));
        let recycled = recycle(values);
        assert!(recycled.is_empty());
        assert!(recycled.capacity() >= 32);
    }
}
