//! Per-key detector state in memory, one table per assigned partition, restored from the
//! compacted `state` topic and updated as changes are decided.
//!
//! Memory per key is what makes 500k-key case loads cheap, so the layout is explicit (the
//! benchmark measures it; target ≤ 150 B/key):
//! - an 88-byte [`Slot`] per key in a chunked array (no doubling reallocation): the key's
//!   128-bit xxh3 (its identity in the table), the 128-bit content hash, a 128-bit hash of the
//!   record's tracked bytes (the unchanged fast path), version and deleted flag packed in one
//!   word, two timestamps, where the key's text lives, an interned stream id and a snapshot
//!   generation (for deletes);
//! - the key text, length-prefixed, in an append-only arena (needed only to name the keys a
//!   complete snapshot deletes);
//! - an open-addressing index of 4-byte slot numbers (`hashbrown::HashTable`, ~5 B per bucket).
//!
//! Keys are compared by their 128-bit hash: two distinct keys of one partition colliding has a
//! probability around n²/2¹²⁹ — 10⁻²⁶ at 5 million keys.
//!
//! Deletes: each (partition, stream) counts snapshot *generations*. A record of a new snapshot
//! id starts a generation; every key seen in it is stamped with it. When that snapshot's
//! end marker arrives and the distinct keys stamped equal the marker's row count, the snapshot
//! is complete on this partition and keys of the stream not stamped are absent from it. A
//! detector restarted mid-snapshot stamps fewer keys than the marker says: that snapshot is then
//! treated as incomplete and deletes nothing — the safe side.

use hashbrown::HashTable;
use snapfeed_runtime::records::DetectorState;
use xxhash_rust::xxh3::xxh3_128;

use crate::content_hash::{hash_hex, parse_hash_hex};

/// What the detector remembers about one key (a copy; the table stores it packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// Content hash of the last version.
    hash: u128,
    /// Last emitted version.
    pub version: i64,
    /// When first seen (ms).
    pub first_seen_at: i64,
    /// When last changed (ms).
    pub last_changed_at: i64,
    /// Emitted as DELETE (kept so a returning key continues its versions).
    pub deleted: bool,
}

impl KeyState {
    /// The content hash.
    pub fn hash(&self) -> u128 {
        self.hash
    }
}

/// What a snapshot record means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Same content as the last version.
    Unchanged,
    /// A key never seen (or seen only as deleted): this version.
    Create {
        /// 1 for a new key; last + 1 for a key that comes back after a DELETE.
        version: i64,
        /// The hash before the DELETE, if the key comes back.
        previous: Option<u128>,
    },
    /// Content differs.
    Update {
        /// Last + 1.
        version: i64,
        /// The previous hash.
        previous: u128,
    },
}

/// What a snapshot-end marker allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteVerdict {
    /// Fewer distinct keys were seen than the marker counts (restart mid-snapshot, or the
    /// marker of another snapshot): no deletes.
    Incomplete {
        /// Distinct keys stamped.
        seen: u64,
        /// Rows the marker counts.
        expected: u64,
    },
    /// These keys (of the stream, on this partition) were absent: delete them.
    Delete(Vec<String>),
    /// Too many would go: none are deleted.
    GuardTripped {
        /// Keys absent.
        would_delete: usize,
        /// Live keys of the stream on the partition.
        of: usize,
    },
}

#[derive(Debug, Default, Clone)]
struct SnapshotProgress {
    snapshot_id: String,
    generation: u32,
    distinct_seen: u64,
}

/// One key's entry, packed to 88 bytes (checked by a test).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// xxh3-128 of the key text: the key's identity.
    id: [u64; 2],
    /// Content hash of the last version (little-endian bytes; byte array keeps alignment 8).
    hash: [u8; 16],
    /// Hash of the last record's tracked Avro bytes
    /// ([`Dataset::tracked_bytes`](snapfeed_runtime::dataset::Dataset::tracked_bytes)), to
    /// recognise an unchanged record without reading its fields; zero: not known (restored
    /// state, or an older writer schema).
    raw: [u8; 16],
    /// `version << 1 | deleted`.
    version_deleted: u64,
    first_seen_at: i64,
    last_changed_at: i64,
    /// Offset of the key's length-prefixed text in the arena.
    key_at: u64,
    /// Interned stream id.
    stream: u32,
    /// Last snapshot generation of its stream that contained it.
    seen_generation: u32,
}

impl Slot {
    fn version(&self) -> i64 {
        // Versions are kept in 0..2⁶²; the shift cannot lose a set bit.
        (self.version_deleted >> 1) as i64
    }

    fn deleted(&self) -> bool {
        self.version_deleted & 1 == 1
    }

    fn set_version(&mut self, version: i64, deleted: bool) {
        self.version_deleted = (version.max(0) as u64) << 1 | u64::from(deleted);
    }

    fn content_hash(&self) -> u128 {
        u128::from_le_bytes(self.hash)
    }

    fn view(&self) -> KeyState {
        KeyState {
            hash: self.content_hash(),
            version: self.version(),
            first_seen_at: self.first_seen_at,
            last_changed_at: self.last_changed_at,
            deleted: self.deleted(),
        }
    }
}

/// Largest version a slot holds (the packed word keeps one bit for the deleted flag).
const MAX_VERSION: i64 = i64::MAX >> 1;

/// Slots per chunk: growth allocates 16,384 × 88 B ≈ 1.4 MiB at a time instead of doubling.
const CHUNK: usize = 16_384;

/// A growable array of slots in fixed-size chunks.
#[derive(Debug, Default)]
struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slots {
    fn get(&self, index: u32) -> &Slot {
        let index = index as usize;
        &self.chunks[index / CHUNK][index % CHUNK]
    }

    fn get_mut(&mut self, index: u32) -> &mut Slot {
        let index = index as usize;
        &mut self.chunks[index / CHUNK][index % CHUNK]
    }

    fn push(&mut self, slot: Slot) -> u32 {
        if self.len % CHUNK == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(slot);
        }
        self.len += 1;
        (self.len - 1) as u32
    }

    /// Removes the slot at `index` by moving the last slot into it; returns the moved slot's
    /// old index when one moved.
    fn swap_remove(&mut self, index: u32) -> Option<u32> {
        let last_index = (self.len - 1) as u32;
        let last = self.chunks.last_mut().and_then(Vec::pop)?;
        if self.chunks.last().is_some_and(Vec::is_empty) {
            self.chunks.pop();
        }
        self.len -= 1;
        if index == last_index {
            return None;
        }
        *self.get_mut(index) = last;
        Some(last_index)
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flatten()
    }
}

/// Key texts, each prefixed by its length as a LEB128 varint, appended and never moved.
#[derive(Default)]
struct KeyArena {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for KeyArena {
    /// Sizes only: keys (accession numbers, patient ids) are not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyArena")
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl KeyArena {
    fn push(&mut self, key: &str) -> u64 {
        let at = self.bytes.len() as u64;
        let mut len = key.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                self.bytes.push(byte);
                break;
            }
            self.bytes.push(byte | 0x80);
        }
        self.bytes.extend_from_slice(key.as_bytes());
        at
    }

    fn get(&self, at: u64) -> &str {
        let mut at = at as usize;
        let (mut len, mut shift) = (0usize, 0u32);
        while let Some(&byte) = self.bytes.get(at) {
            at += 1;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        self.bytes
            .get(at..at + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

/// One partition's state.
#[derive(Debug, Default)]
pub struct PartitionState {
    index: HashTable<u32>,
    slots: Slots,
    keys: KeyArena,
    /// Per stream id (interned ids are small and dense).
    progress: Vec<SnapshotProgress>,
}

/// Interned stream names (a handful per pipeline).
#[derive(Debug, Default)]
pub struct Streams {
    names: Vec<String>,
}

impl Streams {
    /// The id of `name`, interning it.
    pub fn id(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(index) => index as u32,
            None => {
                self.names.push(name.to_string());
                (self.names.len() - 1) as u32
            }
        }
    }

    /// The name of `id`.
    pub fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// A key's identity in the table.
fn key_id(key: &str) -> [u64; 2] {
    let hash = xxh3_128(key.as_bytes());
    [hash as u64, (hash >> 64) as u64]
}

impl PartitionState {
    /// Number of keys (deleted ones included).
    pub fn len(&self) -> usize {
        self.slots.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slots.len == 0
    }

    fn find(&self, id: [u64; 2]) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(id[0], |&i| slots.get(i).id == id).copied()
    }

    fn insert(&mut self, key: &str, id: [u64; 2], mut slot: Slot) -> u32 {
        slot.id = id;
        slot.key_at = self.keys.push(key);
        let index = self.slots.push(slot);
        let slots = &self.slots;
        self.index
            .insert_unique(id[0], index, |&i| slots.get(i).id[0]);
        index
    }

    fn remove(&mut self, id: [u64; 2]) {
        let slots = &self.slots;
        let Ok(entry) = self.index.find_entry(id[0], |&i| slots.get(i).id == id) else {
            return;
        };
        let (index, _) = entry.remove();
        if let Some(moved) = self.slots.swap_remove(index) {
            let moved_id = self.slots.get(index).id;
            if let Some(slot) = self.index.find_mut(moved_id[0], |&i| i == moved) {
                *slot = index;
            }
        }
        // The key's text stays in the arena: tombstones are rare (a compacted topic keeps the
        // last value of a key), and the arena is dropped with the partition.
    }

    /// The state of a key.
    pub fn get(&self, key: &str) -> Option<KeyState> {
        self.find(key_id(key)).map(|i| self.slots.get(i).view())
    }

    /// Loads one entry read from the `state` topic (`None` value: tombstone). Entries whose
    /// hash or version cannot be ours are skipped (`false`).
    pub fn restore_entry(
        &mut self,
        key: &str,
        entry: Option<&DetectorState>,
        streams: &mut Streams,
    ) -> bool {
        let id = key_id(key);
        let Some(entry) = entry else {
            self.remove(id);
            return true;
        };
        let Some(hash) = parse_hash_hex(&entry.content_hash) else {
            return false;
        };
        if !(0..=MAX_VERSION).contains(&entry.version) {
            return false;
        }
        let stream = streams.id(&entry.stream);
        let mut slot = match self.find(id) {
            Some(index) => *self.slots.get(index),
            None => Slot {
                id,
                hash: [0; 16],
                raw: [0; 16],
                version_deleted: 0,
                first_seen_at: 0,
                last_changed_at: 0,
                key_at: 0,
                stream,
                seen_generation: 0,
            },
        };
        slot.hash = hash.to_le_bytes();
        slot.raw = [0; 16];
        slot.set_version(entry.version, entry.deleted);
        slot.first_seen_at = entry.first_seen_at;
        slot.last_changed_at = entry.last_changed_at;
        slot.stream = stream;
        slot.seen_generation = 0;
        match self.find(id) {
            Some(index) => *self.slots.get_mut(index) = slot,
            None => {
                self.insert(key, id, slot);
            }
        }
        true
    }

    /// The generation of `snapshot_id` in `stream`: a new snapshot id starts the next one.
    fn generation(&mut self, stream: u32, snapshot_id: &str) -> u32 {
        let index = stream as usize;
        if self.progress.len() <= index {
            self.progress
                .resize_with(index + 1, SnapshotProgress::default);
        }
        let progress = &mut self.progress[index];
        if progress.snapshot_id != snapshot_id {
            progress.snapshot_id = snapshot_id.to_string();
            progress.generation = progress.generation.wrapping_add(1).max(1);
            progress.distinct_seen = 0;
        }
        progress.generation
    }

    /// Stamps the slot at `index` as seen in `generation` of `stream`, counting it once.
    fn stamp(&mut self, index: u32, stream: u32, generation: u32) {
        let slot = self.slots.get_mut(index);
        let fresh = slot.seen_generation != generation || slot.stream != stream;
        slot.seen_generation = generation;
        slot.stream = stream;
        if fresh {
            if let Some(progress) = self.progress.get_mut(stream as usize) {
                progress.distinct_seen += 1;
            }
        }
    }

    /// The hottest path: if `key`'s last record had the tracked bytes hashed as `raw` (and is
    /// not deleted), stamps it as seen in `snapshot_id` of `stream` and returns `true` — the
    /// record is unchanged. Otherwise changes nothing and returns `false`.
    pub fn recognise(&mut self, key: &str, raw: u128, stream: u32, snapshot_id: &str) -> bool {
        if raw == 0 {
            return false;
        }
        let Some(index) = self.find(key_id(key)) else {
            return false;
        };
        let slot = self.slots.get(index);
        if slot.deleted() || slot.raw != raw.to_le_bytes() {
            return false;
        }
        let generation = self.generation(stream, snapshot_id);
        self.stamp(index, stream, generation);
        true
    }

    /// The hot path: if `key`'s last version has content `hash` (and is not deleted), stamps
    /// it as seen in `snapshot_id` of `stream`, remembers `raw` (the record's tracked-bytes
    /// hash, 0 if unknown) for [`recognise`](Self::recognise) and returns `true` — the record
    /// is unchanged. Otherwise changes nothing and returns `false`: the caller validates the
    /// record and calls [`observe`](Self::observe).
    pub fn observe_unchanged(
        &mut self,
        key: &str,
        hash: u128,
        raw: u128,
        stream: u32,
        snapshot_id: &str,
    ) -> bool {
        let Some(index) = self.find(key_id(key)) else {
            return false;
        };
        let slot = self.slots.get_mut(index);
        if slot.deleted() || slot.content_hash() != hash {
            return false;
        }
        slot.raw = raw.to_le_bytes();
        let generation = self.generation(stream, snapshot_id);
        self.stamp(index, stream, generation);
        true
    }

    /// Remembers `raw`, the tracked-bytes hash of the record just observed for `key`.
    pub fn remember_raw(&mut self, key: &str, raw: u128) {
        if let Some(index) = self.find(key_id(key)) {
            self.slots.get_mut(index).raw = raw.to_le_bytes();
        }
    }

    /// Decides what a snapshot record of `key` with content `hash` means, records it, and
    /// stamps the key as seen in `snapshot_id` of `stream`. `at` is the record's timestamp.
    pub fn observe(
        &mut self,
        key: &str,
        hash: u128,
        stream: u32,
        snapshot_id: &str,
        at: i64,
    ) -> Decision {
        let generation = self.generation(stream, snapshot_id);
        let id = key_id(key);
        let Some(index) = self.find(id) else {
            let mut slot = Slot {
                id,
                hash: hash.to_le_bytes(),
                raw: [0; 16],
                version_deleted: 0,
                first_seen_at: at,
                last_changed_at: at,
                key_at: 0,
                stream,
                seen_generation: 0,
            };
            slot.set_version(1, false);
            let index = self.insert(key, id, slot);
            self.stamp(index, stream, generation);
            return Decision::Create {
                version: 1,
                previous: None,
            };
        };
        self.stamp(index, stream, generation);
        let state = self.slots.get_mut(index);
        let previous = state.content_hash();
        if state.deleted() {
            let version = (state.version() + 1).min(MAX_VERSION);
            state.set_version(version, false);
            state.hash = hash.to_le_bytes();
            state.raw = [0; 16];
            state.last_changed_at = at;
            Decision::Create {
                version,
                previous: Some(previous),
            }
        } else if previous == hash {
            Decision::Unchanged
        } else {
            let version = (state.version() + 1).min(MAX_VERSION);
            state.set_version(version, false);
            state.hash = hash.to_le_bytes();
            state.raw = [0; 16];
            state.last_changed_at = at;
            Decision::Update { version, previous }
        }
    }

    /// Applies a snapshot-end marker of `stream`: which keys it deletes, if it is complete and
    /// the guard allows.
    pub fn complete_snapshot(
        &self,
        stream: u32,
        snapshot_id: &str,
        rows_in_partition: u64,
        max_share: f64,
    ) -> DeleteVerdict {
        let progress = self
            .progress
            .get(stream as usize)
            .cloned()
            .unwrap_or_default();
        if progress.snapshot_id != snapshot_id || progress.distinct_seen != rows_in_partition {
            let seen = if progress.snapshot_id == snapshot_id {
                progress.distinct_seen
            } else {
                0
            };
            if !(rows_in_partition == 0 && seen == 0 && progress.snapshot_id != snapshot_id) {
                return DeleteVerdict::Incomplete {
                    seen,
                    expected: rows_in_partition,
                };
            }
        }
        let generation = if progress.snapshot_id == snapshot_id {
            progress.generation
        } else {
            u32::MAX
        };
        let mut live = 0usize;
        let mut absent = Vec::new();
        for slot in self
            .slots
            .iter()
            .filter(|slot| slot.stream == stream && !slot.deleted())
        {
            live += 1;
            if slot.seen_generation != generation {
                absent.push(slot.key_at);
            }
        }
        if absent.is_empty() {
            return DeleteVerdict::Delete(Vec::new());
        }
        if absent.len() as f64 > max_share * live as f64 {
            return DeleteVerdict::GuardTripped {
                would_delete: absent.len(),
                of: live,
            };
        }
        let mut absent: Vec<String> = absent
            .into_iter()
            .map(|at| self.keys.get(at).to_string())
            .collect();
        absent.sort();
        DeleteVerdict::Delete(absent)
    }

    /// Marks `key` deleted: version + 1. Returns the new state.
    pub fn delete(&mut self, key: &str, at: i64) -> Option<KeyState> {
        let index = self.find(key_id(key))?;
        let state = self.slots.get_mut(index);
        state.set_version((state.version() + 1).min(MAX_VERSION), true);
        state.last_changed_at = at;
        Some(state.view())
    }

    /// The `state` topic value for `key`'s current state.
    pub fn to_record(
        &self,
        key: &str,
        streams: &Streams,
        snapshot_id: &str,
    ) -> Option<DetectorState> {
        let slot = self.slots.get(self.find(key_id(key))?);
        Some(DetectorState {
            content_hash: hash_hex(slot.content_hash()),
            version: slot.version(),
            stream: streams.name(slot.stream).to_string(),
            first_seen_at: slot.first_seen_at,
            last_changed_at: slot.last_changed_at,
            last_snapshot_id: snapshot_id.to_string(),
            deleted: slot.deleted(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_unchanged_update_and_return_after_delete_keep_versions_monotonic() {
        let mut streams = Streams::default();
        let lab = streams.id("lab-a");
        let mut state = PartitionState::default();
        assert_eq!(
            state.observe("k", 1, lab, "s1", 10),
            Decision::Create {
                version: 1,
                previous: None
            }
        );
        assert_eq!(state.observe("k", 1, lab, "s2", 20), Decision::Unchanged);
        assert_eq!(
            state.observe("k", 2, lab, "s3", 30),
            Decision::Update {
                version: 2,
                previous: 1
            }
        );
        assert_eq!(state.delete("k", 40).map(|s| s.version), Some(3));
        assert_eq!(
            state.observe("k", 2, lab, "s4", 50),
            Decision::Create {
                version: 4,
                previous: Some(2)
            }
        );
    }

    fn seed(state: &mut PartitionState, stream: u32, snapshot: &str, keys: std::ops::Range<u32>) {
        for i in keys {
            state.observe(&format!("k{i}"), u128::from(i), stream, snapshot, 0);
        }
    }

    #[test]
    fn complete_snapshot_deletes_exactly_the_absent_keys_of_its_stream() {
        let mut streams = Streams::default();
        let (a, b) = (streams.id("lab-a"), streams.id("lab-b"));
        let mut state = PartitionState::default();
        seed(&mut state, a, "a1", 0..20);
        seed(&mut state, b, "b1", 100..110);
        seed(&mut state, a, "a2", 0..19);
        assert_eq!(
            state.complete_snapshot(a, "a2", 19, 0.1),
            DeleteVerdict::Delete(vec!["k19".into()])
        );
        // Lab B's keys were never at risk.
        assert_eq!(
            state.complete_snapshot(b, "b1", 10, 0.1),
            DeleteVerdict::Delete(vec![])
        );
    }

    #[test]
    fn the_guard_trips_on_a_truncated_snapshot() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        seed(&mut state, a, "a1", 0..100);
        seed(&mut state, a, "a2", 0..50);
        assert_eq!(
            state.complete_snapshot(a, "a2", 50, 0.1),
            DeleteVerdict::GuardTripped {
                would_delete: 50,
                of: 100
            }
        );
    }

    #[test]
    fn a_snapshot_seen_only_in_part_deletes_nothing() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        seed(&mut state, a, "a1", 0..100);
        // Restarted mid-snapshot: only the tail of a2 is seen here.
        seed(&mut state, a, "a2", 60..99);
        assert_eq!(
            state.complete_snapshot(a, "a2", 99, 0.5),
            DeleteVerdict::Incomplete {
                seen: 39,
                expected: 99
            }
        );
    }

    #[test]
    fn duplicates_in_at_least_once_replays_do_not_inflate_the_count() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        seed(&mut state, a, "a1", 0..10);
        seed(&mut state, a, "a2", 0..9);
        seed(&mut state, a, "a2", 5..9);
        assert_eq!(
            state.complete_snapshot(a, "a2", 9, 0.5),
            DeleteVerdict::Delete(vec!["k9".into()])
        );
    }

    #[test]
    fn state_round_trips_through_its_topic_record() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        state.observe("k", 0xdead_beef, a, "s1", 5);
        let record = state.to_record("k", &streams, "s1").unwrap();
        let mut restored = PartitionState::default();
        restored.restore_entry("k", Some(&record), &mut streams);
        assert_eq!(restored.get("k").map(|s| s.hash()), Some(0xdead_beef));
        assert_eq!(
            restored.observe("k", 0xdead_beef, a, "s2", 6),
            Decision::Unchanged
        );
        restored.restore_entry("k", None, &mut streams);
        assert!(restored.is_empty());
    }

    #[test]
    fn a_slot_is_88_bytes() {
        // The memory budget (≤ 150 B/key with the index and the key text) depends on it.
        assert_eq!(std::mem::size_of::<Slot>(), 88);
    }

    #[test]
    fn removing_keys_keeps_every_other_key_findable() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        let keys: Vec<String> = (0..(CHUNK as u32 + 100)).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            state.observe(key, i as u128, a, "s1", 0);
        }
        // Tombstones for every third key, including the last (no slot moves) and the first.
        for key in keys.iter().step_by(3).chain(keys.last()) {
            state.restore_entry(key, None, &mut streams);
        }
        for (i, key) in keys.iter().enumerate() {
            let gone = i % 3 == 0 || i == keys.len() - 1;
            assert_eq!(
                state.get(key).map(|s| s.hash()),
                (!gone).then_some(i as u128),
                "{key}"
            );
        }
        assert_eq!(
            state.len(),
            keys.len() - keys.len().div_ceil(3) - usize::from((keys.len() - 1) % 3 != 0)
        );
    }

    #[test]
    fn deletes_name_keys_of_any_length_exactly() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        let long = "é".repeat(300); // a length that needs two varint bytes
        let keys = [String::new(), "x".into(), long, "a|b\\c".into()];
        for (i, key) in keys.iter().enumerate() {
            state.observe(key, i as u128, a, "s1", 0);
        }
        for snapshot in ["s1", "s2"] {
            for i in 0..100u32 {
                state.observe(&format!("other-{i}"), 1, a, snapshot, 0);
            }
        }
        let mut expected: Vec<String> = keys.to_vec();
        expected.sort();
        assert_eq!(
            state.complete_snapshot(a, "s2", 100, 0.5),
            DeleteVerdict::Delete(expected)
        );
    }

    #[test]
    fn restore_skips_entries_that_cannot_be_ours_and_overwrites_repeated_keys() {
        let mut streams = Streams::default();
        let mut state = PartitionState::default();
        let entry = |hash: &str, version: i64| DetectorState {
            content_hash: hash.into(),
            version,
            stream: "lab-a".into(),
            first_seen_at: 1,
            last_changed_at: 2,
            last_snapshot_id: "s".into(),
            deleted: false,
        };
        let good = format!("{:032x}", 7u128);
        assert!(!state.restore_entry("k", Some(&entry("zz", 1)), &mut streams));
        assert!(!state.restore_entry("k", Some(&entry(&good, -1)), &mut streams));
        assert!(state.is_empty());
        assert!(state.restore_entry("k", Some(&entry(&good, 1)), &mut streams));
        assert!(state.restore_entry("k", Some(&entry(&good, 5)), &mut streams));
        assert_eq!(state.len(), 1);
        assert_eq!(state.get("k").map(|s| s.version), Some(5));
    }

    #[test]
    fn the_unchanged_fast_path_stamps_like_observe_and_touches_nothing_else() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        seed(&mut state, a, "a1", 0..10);
        // Unknown key, different hash: no change at all (not even the snapshot's progress).
        assert!(!state.observe_unchanged("nope", 1, 0, a, "a2"));
        assert!(!state.observe_unchanged("k3", 99, 0, a, "a2"));
        assert_eq!(state.get("k3").map(|s| (s.hash(), s.version)), Some((3, 1)));
        for i in 0..9u32 {
            assert!(state.observe_unchanged(&format!("k{i}"), u128::from(i), 0, a, "a2"));
        }
        // Twice in one snapshot counts once.
        assert!(state.observe_unchanged("k0", 0, 0, a, "a2"));
        assert_eq!(
            state.complete_snapshot(a, "a2", 9, 0.5),
            DeleteVerdict::Delete(vec!["k9".into()])
        );
        state.delete("k9", 1);
        // A deleted key always takes the full path (it comes back as a CREATE).
        assert!(!state.observe_unchanged("k9", 9, 0, a, "a3"));
    }

    #[test]
    fn a_remembered_raw_hash_recognises_the_record_until_its_content_moves_on() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        state.observe("k", 1, a, "s1", 0);
        // Nothing remembered yet, and 0 never matches.
        assert!(!state.recognise("k", 0, a, "s2"));
        assert!(!state.recognise("k", 77, a, "s2"));
        assert!(state.observe_unchanged("k", 1, 77, a, "s2"));
        assert!(state.recognise("k", 77, a, "s3"));
        assert!(!state.recognise("k", 78, a, "s3"));
        // An update forgets it (the remembered bytes were the old version's).
        assert!(matches!(
            state.observe("k", 2, a, "s4", 0),
            Decision::Update { .. }
        ));
        assert!(!state.recognise("k", 77, a, "s5"));
        state.remember_raw("k", 79);
        assert!(state.recognise("k", 79, a, "s5"));
        // A deleted key is never recognised, and a restore forgets.
        state.delete("k", 1);
        assert!(!state.recognise("k", 79, a, "s6"));
        let record = state.to_record("k", &streams, "s6").unwrap();
        state.restore_entry("k", Some(&record), &mut streams);
        assert!(!state.recognise("k", 79, a, "s7"));
    }
}
