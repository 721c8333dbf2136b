//! The per-record decision, with no I/O: a snapshot record and the partition's state in, a
//! [`Verdict`] out — unchanged, a [`Change`] (CREATE / UPDATE, with the state updated to its
//! new version), or corrupt. The guarantee kept here is determinism: the same records against
//! the same state always give the same changes — same key, version and payload, `detected_at`
//! being the snapshot record's timestamp rather than the wall clock — which is what makes a
//! repeated batch harmless downstream in `at_least_once`.
//!
//! Most records of a snapshot are unchanged, so that is decided first and without decoding or
//! allocating ([`recognise_unchanged`]); anything else is decoded — validated — before it is
//! acted on. Snapshot-end markers decide deletes ([`deletes`]) from the state's
//! [`DeleteVerdict`](crate::state::DeleteVerdict).

use std::borrow::Cow;
use std::sync::Arc;

use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{Dataset, DatasetRecord};
use snapfeed_runtime::records::{AvroRecord, ChangeOp, SnapshotEnd};

use crate::content_hash::ContentHasher;
use crate::state::{Decision, KeyState, PartitionState};

/// One record of `snapshots`, as the decision needs it (borrowed from the message).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRecord<'a> {
    /// The message key (the canonical record key), when it has a UTF-8 one.
    pub key: Option<&'a str>,
    /// The dataset record, single-object encoded.
    pub payload: &'a [u8],
    /// Interned id of its snapshot stream.
    pub stream: u32,
    /// Its snapshot.
    pub snapshot_id: &'a str,
    /// The message timestamp (ms): the change's `detected_at` and the state's change time.
    pub at: i64,
}

/// What a snapshot record means.
#[derive(Debug, PartialEq)]
pub enum Verdict<'a> {
    /// Same content as the key's last version; stamped as seen in its snapshot.
    Unchanged,
    /// New or changed; the state already holds the new version.
    Changed(Change<'a>),
    /// Does not decode, or has no record key: why (no record contents).
    Corrupt(String),
}

/// One change to emit: the fields of its change event (provenance aside).
#[derive(Debug, Clone, PartialEq)]
pub struct Change<'a> {
    /// CREATE, UPDATE or DELETE.
    pub op: ChangeOp,
    /// Canonical record key.
    pub key: Cow<'a, str>,
    /// The new version.
    pub version: i64,
    /// Content hash of the new version (the last known one for DELETE).
    pub content_hash: u128,
    /// Content hash of the version before, if there was one.
    pub previous_hash: Option<u128>,
    /// The snapshot record; `None` for DELETE.
    pub record: Option<ChangedRecord<'a>>,
    /// The snapshot record's timestamp: a repeated batch yields a byte-identical event.
    pub detected_at: i64,
}

/// The record a CREATE or UPDATE carries: the snapshot record's payload as it came (its body is
/// spliced into the event when the current schema wrote it), and decoded into the current
/// layout (nested instead when an older version wrote it), as the decision already read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedRecord<'a> {
    /// The snapshot record's single-object payload.
    pub payload: &'a [u8],
    /// The same record, decoded.
    pub decoded: DatasetRecord,
}

impl Change<'static> {
    /// The DELETE of `key`, whose state is now `after`.
    fn deleted(key: String, after: KeyState, at: i64) -> Change<'static> {
        Change {
            op: ChangeOp::Delete,
            key: Cow::Owned(key),
            version: after.version,
            content_hash: after.hash(),
            previous_hash: Some(after.hash()),
            record: None,
            detected_at: at,
        }
    }
}

/// What the unchanged fast path made of a snapshot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognised {
    /// Same content as the key's last version; stamped as seen.
    Unchanged,
    /// Not recognised (new, changed, deleted, unreadable here, or another writer schema):
    /// decode it. `raw` is its tracked-bytes hash (0 if unknown), to remember once observed.
    Unknown {
        /// [`ContentHasher::tracked`] of the payload.
        raw: u128,
    },
}

/// The unchanged fast path of [`Decider::decide`] (public for the benchmark): first by the
/// hash of the record's tracked bytes (fields skipped, not read), then by its content hash read
/// straight from the Avro binary (remembering the tracked-bytes hash for next time).
pub fn recognise_unchanged(
    hasher: &mut ContentHasher,
    dataset: &Dataset,
    state: &mut PartitionState,
    key: &str,
    payload: &[u8],
    stream: u32,
    snapshot_id: &str,
) -> Recognised {
    let raw = hasher.tracked(dataset, payload);
    if state.recognise(key, raw, stream, snapshot_id) {
        return Recognised::Unchanged;
    }
    match hasher.payload(dataset, payload) {
        Some(hash) if state.observe_unchanged(key, hash, raw, stream, snapshot_id) => {
            Recognised::Unchanged
        }
        _ => Recognised::Unknown { raw },
    }
}

/// Decides snapshot records of one dataset: decodes, hashes, compares with state.
#[derive(Debug)]
pub struct Decider {
    dataset: Arc<Dataset>,
    schemas: Arc<SchemaStore>,
    /// Reusable buffers of the content hash.
    hasher: ContentHasher,
}

impl Decider {
    /// A decider for records of `dataset`, decoded with `schemas`.
    pub fn new(dataset: Arc<Dataset>, schemas: Arc<SchemaStore>) -> Decider {
        let hasher = ContentHasher::new(&dataset);
        Decider {
            dataset,
            schemas,
            hasher,
        }
    }

    /// Decides what `record` means against `state`, and records it there. `location` names
    /// the message in decode errors; it is built only when the record has to be decoded.
    pub fn decide<'a>(
        &mut self,
        state: &mut PartitionState,
        record: &SnapshotRecord<'a>,
        location: impl FnOnce() -> MessageLocation,
    ) -> Verdict<'a> {
        let mut raw = 0;
        if let Some(key) = record.key {
            let seen = recognise_unchanged(
                &mut self.hasher,
                &self.dataset,
                state,
                key,
                record.payload,
                record.stream,
                record.snapshot_id,
            );
            match seen {
                Recognised::Unchanged => return Verdict::Unchanged,
                Recognised::Unknown { raw: tracked } => raw = tracked,
            }
        }
        let decoded = match self
            .dataset
            .decode(record.payload, &self.schemas, &location())
        {
            Ok(decoded) => decoded,
            Err(error) => return Verdict::Corrupt(error.to_string()),
        };
        let key = match record.key {
            Some(key) => Cow::Borrowed(key),
            None => match decoded.key(&self.dataset) {
                Ok(key) => Cow::Owned(key.into_string()),
                Err(error) => return Verdict::Corrupt(format!("no record key: {error}")),
            },
        };
        if key.starts_with('\0') {
            // Reserved for the stream-progress entries on `state`: such a key would overwrite one.
            return Verdict::Corrupt("the record key starts with NUL (reserved)".into());
        }
        let hash = self.hasher.record(&decoded);
        let decision = state.observe(&key, hash, record.stream, record.snapshot_id, record.at);
        if raw != 0 {
            state.remember_raw(&key, raw);
        }
        let (op, version, previous_hash) = match decision {
            Decision::Unchanged => return Verdict::Unchanged,
            Decision::Create { version, previous } => (ChangeOp::Create, version, previous),
            Decision::Update { version, previous } => (ChangeOp::Update, version, Some(previous)),
        };
        Verdict::Changed(Change {
            op,
            key,
            version,
            content_hash: hash,
            previous_hash,
            record: Some(ChangedRecord {
                payload: record.payload,
                decoded,
            }),
            detected_at: record.at,
        })
    }

    /// Reads a snapshot-end marker; `Err` says why it is corrupt.
    pub fn read_marker(
        &self,
        payload: &[u8],
        location: &MessageLocation,
    ) -> Result<SnapshotEnd, String> {
        self.schemas
            .decode::<SnapshotEnd>(payload, SnapshotEnd::SCHEMA, location)
            .map_err(|error| error.to_string())
    }
}

/// The DELETEs of the keys a complete snapshot left out
/// ([`DeleteVerdict::Delete`](crate::state::DeleteVerdict::Delete)): each key marked deleted
/// at its next version. `at` is the marker's timestamp.
pub fn deletes(state: &mut PartitionState, absent: Vec<String>, at: i64) -> Vec<Change<'static>> {
    absent
        .into_iter()
        .filter_map(|key| {
            let after = state.delete(&key, at)?;
            Some(Change::deleted(key, after, at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Streams;
    use snapfeed_runtime::dataset::{DatasetMapping, DatasetRecord, FieldKind, FieldValue};
    use std::cell::Cell;
    use std::path::Path;

    fn decider() -> Decider {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let store = SchemaStore::load_dir(&root.join("schemas")).unwrap();
        let dataset =
            DatasetMapping::load(&root.join("deploy/config/lab_results.mapping.toml"), &store)
                .unwrap();
        Decider::new(Arc::new(dataset), Arc::new(store))
    }

    /// A record whose values follow `seed`; `volatile` varies only the volatile fields.
    fn record(dataset: &Dataset, seed: i64, volatile: i64) -> DatasetRecord {
        let values = dataset
            .fields()
            .iter()
            .map(|spec| {
                let v = if spec.volatile() { volatile } else { seed };
                match spec.kind() {
                    FieldKind::String => FieldValue::String(format!("v{v}")),
                    FieldKind::Int => FieldValue::Int(v as i32),
                    FieldKind::Long => FieldValue::Long(v),
                    FieldKind::Double => FieldValue::Double(v as f64),
                    FieldKind::Boolean => FieldValue::Boolean(v % 2 == 0),
                    FieldKind::Date => FieldValue::Date(v as i32),
                    FieldKind::TimestampMillis => FieldValue::TimestampMillis(v),
                    FieldKind::Enum => FieldValue::Enum(spec.symbols()[0].clone()),
                }
            })
            .collect();
        dataset.record(values).unwrap()
    }

    fn location() -> MessageLocation {
        MessageLocation {
            topic: "snapshots".into(),
            partition: 0,
            offset: 7,
        }
    }

    /// The real decision on one record of `seed`/`volatile` under message key `key`; also
    /// whether it had to decode the record (the fast path never does).
    fn decide(
        decider: &mut Decider,
        state: &mut PartitionState,
        key: Option<&str>,
        (seed, volatile): (i64, i64),
        snapshot: &str,
    ) -> (bool, Verdict<'static>) {
        let mut payload = Vec::new();
        let dataset = Arc::clone(&decider.dataset);
        dataset
            .encode(&record(&dataset, seed, volatile), &mut payload)
            .unwrap();
        let snapshot_record = SnapshotRecord {
            key,
            payload: &payload,
            stream: 0,
            snapshot_id: snapshot,
            at: 42,
        };
        let decoded = Cell::new(false);
        let verdict = decider.decide(state, &snapshot_record, || {
            decoded.set(true);
            location()
        });
        let verdict = match verdict {
            Verdict::Unchanged => Verdict::Unchanged,
            Verdict::Corrupt(why) => Verdict::Corrupt(why),
            Verdict::Changed(change) => Verdict::Changed(Change {
                key: Cow::Owned(change.key.into_owned()),
                record: None,
                ..change
            }),
        };
        (decoded.get(), verdict)
    }

    fn changed(verdict: &Verdict<'_>) -> Option<(ChangeOp, i64)> {
        match verdict {
            Verdict::Changed(change) => Some((change.op, change.version)),
            _ => None,
        }
    }

    #[test]
    fn the_fast_path_recognises_only_unchanged_records_through_a_key_s_history() {
        let mut decider = decider();
        let mut state = PartitionState::default();
        let state = &mut state;
        let mut step = |state: &mut PartitionState, seed: i64, volatile: i64, snapshot: &str| {
            decide(&mut decider, state, Some("k"), (seed, volatile), snapshot)
        };
        // New, then the same bytes (tracked-bytes match), then only a volatile field differs.
        let (decoded, verdict) = step(state, 1, 100, "s1");
        assert!(decoded);
        assert_eq!(changed(&verdict), Some((ChangeOp::Create, 1)));
        assert_eq!(step(state, 1, 100, "s2"), (false, Verdict::Unchanged));
        assert_eq!(step(state, 1, 101, "s3"), (false, Verdict::Unchanged));
        // Changed, then back to the first content: an UPDATE each time, never recognised.
        let (decoded, verdict) = step(state, 2, 101, "s4");
        assert!(decoded);
        assert_eq!(changed(&verdict), Some((ChangeOp::Update, 2)));
        let (decoded, verdict) = step(state, 1, 101, "s5");
        assert!(decoded);
        assert_eq!(changed(&verdict), Some((ChangeOp::Update, 3)));
        assert_eq!(step(state, 1, 102, "s6"), (false, Verdict::Unchanged));
        // Deleted, then back with the same content: a CREATE, not "unchanged".
        state.delete("k", 0);
        let (decoded, verdict) = step(state, 1, 102, "s7");
        assert!(decoded);
        assert_eq!(changed(&verdict), Some((ChangeOp::Create, 5)));
        // After a restore the tracked bytes are unknown: the content hash still recognises it.
        let streams = Streams::default();
        let entry = state.to_record("k", &streams, "s7").unwrap();
        let mut restored = PartitionState::default();
        restored.restore_entry("k", Some(&entry), &mut Streams::default());
        assert_eq!(
            step(&mut restored, 1, 103, "s8"),
            (false, Verdict::Unchanged)
        );
    }

    /// Counts the allocations of the calling thread, so a test can assert a path makes none.
    struct CountingAllocator;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: forwards every call to the system allocator unchanged; only counts.
    #[allow(unsafe_code)]
    unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            unsafe { std::alloc::System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    /// `call`'s result and how many allocations it made on this thread.
    fn allocations_in<T>(call: impl FnOnce() -> T) -> (T, u64) {
        let before = ALLOCATIONS.with(Cell::get);
        let result = call();
        (result, ALLOCATIONS.with(Cell::get) - before)
    }

    #[test]
    fn an_unchanged_record_is_decided_without_allocating() {
        let mut decider = decider();
        let dataset = Arc::clone(&decider.dataset);
        let mut payload = Vec::new();
        dataset
            .encode(&record(&dataset, 1, 0), &mut payload)
            .unwrap();
        let at = |key, snapshot_id| SnapshotRecord {
            key: Some(key),
            payload: &payload,
            stream: 0,
            snapshot_id,
            at: 0,
        };
        let mut state = PartitionState::default();
        for key in ["a", "b"] {
            decider.decide(&mut state, &at(key, "s1"), location);
        }
        // A new snapshot id is remembered once per stream; after that, per record: nothing.
        decider.decide(&mut state, &at("a", "s2"), location);
        let (verdict, allocations) =
            allocations_in(|| decider.decide(&mut state, &at("b", "s2"), location));
        assert_eq!(
            (verdict, allocations),
            (Verdict::Unchanged, 0),
            "tracked bytes"
        );

        // After a restore the tracked bytes are unknown: the content hash read from the binary.
        let mut restored = PartitionState::default();
        let mut streams = Streams::default();
        for key in ["a", "b"] {
            let entry = state.to_record(key, &Streams::default(), "s2").unwrap();
            restored.restore_entry(key, Some(&entry), &mut streams);
        }
        decider.decide(&mut restored, &at("a", "s3"), location);
        let (verdict, allocations) =
            allocations_in(|| decider.decide(&mut restored, &at("b", "s3"), location));
        assert_eq!(
            (verdict, allocations),
            (Verdict::Unchanged, 0),
            "content hash"
        );
    }

    #[test]
    fn a_change_carries_its_versions_hashes_payload_and_record_time() {
        let mut decider = decider();
        let mut state = PartitionState::default();
        let dataset = Arc::clone(&decider.dataset);
        let mut payload = Vec::new();
        dataset
            .encode(&record(&dataset, 1, 0), &mut payload)
            .unwrap();
        let first = SnapshotRecord {
            key: Some("k"),
            payload: &payload,
            stream: 0,
            snapshot_id: "s1",
            at: 1_000,
        };
        let Verdict::Changed(created) = decider.decide(&mut state, &first, location) else {
            panic!("a new key is a change");
        };
        assert_eq!(created.previous_hash, None);
        let nested = created.record.as_ref().unwrap();
        assert_eq!(nested.payload, payload.as_slice());
        assert_eq!(nested.decoded, record(&dataset, 1, 0));
        assert_eq!(created.detected_at, 1_000);
        assert_eq!(state.get("k").map(|s| s.hash()), Some(created.content_hash));
        let created_hash = created.content_hash;

        let mut changed_payload = Vec::new();
        dataset
            .encode(&record(&dataset, 2, 0), &mut changed_payload)
            .unwrap();
        let second = SnapshotRecord {
            payload: &changed_payload,
            snapshot_id: "s2",
            at: 2_000,
            ..first
        };
        let Verdict::Changed(updated) = decider.decide(&mut state, &second, location) else {
            panic!("new content is a change");
        };
        assert_eq!(
            (updated.op, updated.version, updated.previous_hash),
            (ChangeOp::Update, 2, Some(created_hash))
        );
        let after = state.get("k").unwrap();
        assert_eq!((after.version, after.last_changed_at), (2, 2_000));
        assert_eq!(after.first_seen_at, 1_000);
    }

    #[test]
    fn without_a_message_key_the_key_comes_from_the_record_and_garbage_is_corrupt() {
        let mut decider = decider();
        let mut state = PartitionState::default();
        let (decoded, verdict) = decide(&mut decider, &mut state, None, (3, 0), "s1");
        assert!(decoded, "no key: nothing to recognise it by");
        let Verdict::Changed(change) = verdict else {
            panic!("a new key is a change: {verdict:?}");
        };
        assert!(!change.key.is_empty());
        assert_eq!(state.get(&change.key).map(|s| s.version), Some(1));

        let garbage = SnapshotRecord {
            key: Some("g"),
            payload: b"\xC3\x01not avro",
            stream: 0,
            snapshot_id: "s1",
            at: 0,
        };
        assert!(matches!(
            decider.decide(&mut state, &garbage, location),
            Verdict::Corrupt(_)
        ));
        assert!(
            state.get("g").is_none(),
            "a corrupt record changes no state"
        );
    }

    #[test]
    fn deletes_take_each_absent_key_to_its_next_version() {
        let mut state = PartitionState::default();
        state.observe("gone", 9, 0, "s1", 1);
        state.observe("gone", 10, 0, "s2", 2);
        let changes = deletes(&mut state, vec!["gone".into(), "never-seen".into()], 3);
        assert_eq!(
            changes,
            vec![Change {
                op: ChangeOp::Delete,
                key: Cow::Borrowed("gone"),
                version: 3,
                content_hash: 10,
                previous_hash: Some(10),
                record: None,
                detected_at: 3,
            }]
        );
        assert_eq!(state.get("gone").map(|s| s.deleted), Some(true));
    }
}
