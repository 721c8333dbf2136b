//! The key table under one partition's state: where each key's slot lives and how it is found.
//! It keeps no guarantee of its own; what it must keep is small — memory per key is what makes
//! 500k-key case loads cheap, so the layout is explicit (the benchmark measures it; target
//! ≤ 150 B/key):
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

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_128;

use super::KeyState;

/// Largest version a slot holds (the packed word keeps one bit for the deleted flag).
pub(super) const MAX_VERSION: i64 = i64::MAX >> 1;

/// Slots per chunk: growth allocates 16,384 × 88 B ≈ 1.4 MiB at a time instead of doubling.
pub(super) const CHUNK: usize = 16_384;

/// A key's identity in the table: the xxh3-128 of its text.
pub(super) type KeyId = [u64; 2];

/// The identity of `key`.
pub(super) fn key_id(key: &str) -> KeyId {
    let hash = xxh3_128(key.as_bytes());
    [hash as u64, (hash >> 64) as u64]
}

/// One key's entry, packed to 88 bytes (checked by a test).
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    /// xxh3-128 of the key text: the key's identity.
    pub(super) id: KeyId,
    /// Content hash of the last version (little-endian bytes; byte array keeps alignment 8).
    pub(super) hash: [u8; 16],
    /// Hash of the last record's tracked Avro bytes
    /// ([`Dataset::tracked_bytes`](snapfeed_runtime::dataset::Dataset::tracked_bytes)), to
    /// recognise an unchanged record without reading its fields; zero: not known (restored
    /// state, or an older writer schema).
    pub(super) raw: [u8; 16],
    /// `version << 1 | deleted`.
    version_deleted: u64,
    pub(super) first_seen_at: i64,
    pub(super) last_changed_at: i64,
    /// Offset of the key's length-prefixed text in the arena.
    key_at: u64,
    /// Interned stream id.
    pub(super) stream: u32,
    /// Last snapshot generation of its stream that contained it.
    pub(super) seen_generation: u32,
}

impl Slot {
    /// A live key at version 0 with content `hash`, first seen (and changed) `at`.
    pub(super) fn new(id: KeyId, hash: u128, stream: u32, at: i64) -> Slot {
        Slot {
            id,
            hash: hash.to_le_bytes(),
            raw: [0; 16],
            version_deleted: 0,
            first_seen_at: at,
            last_changed_at: at,
            key_at: 0,
            stream,
            seen_generation: 0,
        }
    }

    pub(super) fn version(&self) -> i64 {
        // Versions are kept in 0..2⁶²; the shift cannot lose a set bit.
        (self.version_deleted >> 1) as i64
    }

    pub(super) fn deleted(&self) -> bool {
        self.version_deleted & 1 == 1
    }

    pub(super) fn set_version(&mut self, version: i64, deleted: bool) {
        self.version_deleted = (version.max(0) as u64) << 1 | u64::from(deleted);
    }

    pub(super) fn content_hash(&self) -> u128 {
        u128::from_le_bytes(self.hash)
    }

    /// A new content at the next version (live again if it was deleted); the remembered
    /// tracked bytes were the old version's, so they are forgotten.
    pub(super) fn change(&mut self, hash: u128, at: i64) -> i64 {
        let version = (self.version() + 1).min(MAX_VERSION);
        self.set_version(version, false);
        self.hash = hash.to_le_bytes();
        self.raw = [0; 16];
        self.last_changed_at = at;
        version
    }

    pub(super) fn view(&self) -> KeyState {
        KeyState {
            hash: self.content_hash(),
            version: self.version(),
            first_seen_at: self.first_seen_at,
            last_changed_at: self.last_changed_at,
            deleted: self.deleted(),
        }
    }
}

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

/// Slots, key texts and the index that finds a slot by key.
#[derive(Debug, Default)]
pub(super) struct KeyTable {
    index: HashTable<u32>,
    slots: Slots,
    keys: KeyArena,
}

impl KeyTable {
    /// Number of keys (deleted ones included).
    pub(super) fn len(&self) -> usize {
        self.slots.len
    }

    /// The slot number of the key with identity `id`.
    pub(super) fn find(&self, id: KeyId) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(id[0], |&i| slots.get(i).id == id).copied()
    }

    pub(super) fn slot(&self, index: u32) -> &Slot {
        self.slots.get(index)
    }

    pub(super) fn slot_mut(&mut self, index: u32) -> &mut Slot {
        self.slots.get_mut(index)
    }

    /// Adds `key` (not in the table yet) with `slot`; returns its slot number.
    pub(super) fn insert(&mut self, key: &str, id: KeyId, mut slot: Slot) -> u32 {
        slot.id = id;
        slot.key_at = self.keys.push(key);
        let index = self.slots.push(slot);
        let slots = &self.slots;
        self.index
            .insert_unique(id[0], index, |&i| slots.get(i).id[0]);
        index
    }

    /// Forgets the key with identity `id`, if present.
    pub(super) fn remove(&mut self, id: KeyId) {
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

    /// Every slot, in no particular order.
    pub(super) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// The text of the key `slot` belongs to.
    pub(super) fn key_of(&self, slot: &Slot) -> &str {
        self.keys.get(slot.key_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_88_bytes() {
        // The memory budget (≤ 150 B/key with the index and the key text) depends on it.
        assert_eq!(std::mem::size_of::<Slot>(), 88);
    }
}
