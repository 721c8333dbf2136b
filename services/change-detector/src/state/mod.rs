//! Per-key detector state in memory, one [`PartitionState`] per assigned partition, restored
//! from the compacted `state` topic and updated as changes are decided. What "the last version
//! of a key" is lives here — content hash, version, times — so versions only ever go up: a key
//! that changes, or comes back after a DELETE, continues from its last version, and the same
//! records against the same state always give the same versions (what makes a repeated batch
//! identical downstream).
//!
//! - [`table`]: the memory layout (≤ 150 B/key) — packed slots, key arena, index — and the
//!   odds of two keys colliding.
//! - [`snapshots`]: stream names, snapshot generations and the delete verdict of a
//!   snapshot-end marker.

mod snapshots;
mod table;

use snapfeed_runtime::records::DetectorState;

use crate::content_hash::{hash_hex, parse_hash_hex};

use snapshots::SnapshotProgress;
pub use snapshots::{DeleteVerdict, SnapshotOrder, Streams};
use table::{key_id, KeyTable, Slot, MAX_VERSION};

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

/// One partition's state.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Every key's slot.
    table: KeyTable,
    /// Per stream id (interned ids are small and dense).
    progress: Vec<SnapshotProgress>,
}

impl PartitionState {
    /// Number of keys (deleted ones included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// The state of a key.
    pub fn get(&self, key: &str) -> Option<KeyState> {
        self.table
            .find(key_id(key))
            .map(|i| self.table.slot(i).view())
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
            self.table.remove(id);
            return true;
        };
        let Some(hash) = parse_hash_hex(&entry.content_hash) else {
            return false;
        };
        if !(0..=MAX_VERSION).contains(&entry.version) {
            return false;
        }
        let stream = streams.id(&entry.stream);
        let found = self.table.find(id);
        let mut slot = match found {
            Some(index) => *self.table.slot(index),
            None => Slot::new(id, hash, stream, 0),
        };
        slot.hash = hash.to_le_bytes();
        // The tracked-bytes hash of the record that wrote the entry, when it was known: the
        // first snapshot after a restart recognises unchanged records without reading them.
        slot.raw = entry
            .tracked_hash
            .as_deref()
            .and_then(parse_hash_hex)
            .map_or([0; 16], u128::to_le_bytes);
        slot.set_version(entry.version, entry.deleted);
        slot.first_seen_at = entry.first_seen_at;
        slot.last_changed_at = entry.last_changed_at;
        slot.stream = stream;
        slot.seen_generation = 0;
        match found {
            Some(index) => *self.table.slot_mut(index) = slot,
            None => {
                self.table.insert(key, id, slot);
            }
        }
        true
    }

    /// The hottest path: if `key`'s last record had the tracked bytes hashed as `raw` (and is
    /// not deleted), stamps it as seen in `snapshot_id` of `stream` and returns `true` — the
    /// record is unchanged. Otherwise changes nothing and returns `false`.
    pub fn recognise(&mut self, key: &str, raw: u128, stream: u32, snapshot_id: &str) -> bool {
        if raw == 0 {
            return false;
        }
        let Some(index) = self.table.find(key_id(key)) else {
            return false;
        };
        let slot = self.table.slot(index);
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
        let Some(index) = self.table.find(key_id(key)) else {
            return false;
        };
        let slot = self.table.slot_mut(index);
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
        if let Some(index) = self.table.find(key_id(key)) {
            self.table.slot_mut(index).raw = raw.to_le_bytes();
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
        let Some(index) = self.table.find(id) else {
            let mut slot = Slot::new(id, hash, stream, at);
            slot.set_version(1, false);
            let index = self.table.insert(key, id, slot);
            self.stamp(index, stream, generation);
            return Decision::Create {
                version: 1,
                previous: None,
            };
        };
        self.stamp(index, stream, generation);
        let slot = self.table.slot_mut(index);
        let previous = slot.content_hash();
        if slot.deleted() {
            Decision::Create {
                version: slot.change(hash, at),
                previous: Some(previous),
            }
        } else if previous == hash {
            Decision::Unchanged
        } else {
            Decision::Update {
                version: slot.change(hash, at),
                previous,
            }
        }
    }

    /// Marks `key` deleted: version + 1. Returns the new state.
    pub fn delete(&mut self, key: &str, at: i64) -> Option<KeyState> {
        let index = self.table.find(key_id(key))?;
        let slot = self.table.slot_mut(index);
        slot.set_version((slot.version() + 1).min(MAX_VERSION), true);
        slot.last_changed_at = at;
        Some(slot.view())
    }

    /// The `state` topic value for `key`'s current state.
    pub fn to_record(
        &self,
        key: &str,
        streams: &Streams,
        snapshot_id: &str,
    ) -> Option<DetectorState> {
        let slot = self.table.slot(self.table.find(key_id(key))?);
        Some(DetectorState {
            content_hash: hash_hex(slot.content_hash()),
            version: slot.version(),
            stream: streams.name(slot.stream).to_string(),
            first_seen_at: slot.first_seen_at,
            last_changed_at: slot.last_changed_at,
            last_snapshot_id: snapshot_id.to_string(),
            deleted: slot.deleted(),
            tracked_hash: (slot.raw != [0; 16]).then(|| hash_hex(u128::from_le_bytes(slot.raw))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::table::CHUNK;
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
            tracked_hash: None,
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
    fn the_tracked_hash_goes_to_state_and_comes_back_on_restore() {
        let mut streams = Streams::default();
        let a = streams.id("lab-a");
        let mut state = PartitionState::default();
        state.observe("k", 7, a, "s1", 1);
        let unknown = state.to_record("k", &streams, "s1").unwrap();
        assert_eq!(unknown.tracked_hash, None, "not known yet");
        state.remember_raw("k", 0xabc);
        let entry = state.to_record("k", &streams, "s1").unwrap();
        assert_eq!(
            entry.tracked_hash.as_deref(),
            Some(format!("{:032x}", 0xabc).as_str())
        );

        // Restored: the first snapshot after a restart recognises the record by its tracked
        // bytes alone; an entry without the hash (an older writer) does not.
        let mut restored = PartitionState::default();
        assert!(restored.restore_entry("k", Some(&entry), &mut streams));
        assert!(restored.recognise("k", 0xabc, a, "s2"));
        assert!(!restored.recognise("k", 0xabd, a, "s2"));
        let mut older = PartitionState::default();
        assert!(older.restore_entry("k", Some(&unknown), &mut streams));
        assert!(!older.recognise("k", 0xabc, a, "s2"));
        // A hash that is not one of ours is ignored, not trusted.
        let garbled = DetectorState {
            tracked_hash: Some("not-hex".into()),
            ..entry.clone()
        };
        let mut third = PartitionState::default();
        assert!(third.restore_entry("k", Some(&garbled), &mut streams));
        assert!(!third.recognise("k", 0xabc, a, "s2"));
        // A change forgets it: the next entry carries the new record's hash or none.
        restored.observe("k", 8, a, "s3", 2);
        assert_eq!(
            restored
                .to_record("k", &streams, "s3")
                .unwrap()
                .tracked_hash,
            None
        );
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
