//! Per-key detector state in memory, one table per assigned partition, restored from the
//! compacted `state` topic and updated as changes are decided.
//!
//! Memory per key is what makes 500k-key case loads cheap: the canonical key as a boxed str,
//! the 128-bit content hash as bytes, the version, two timestamps, an interned stream id and a
//! snapshot generation (for deletes) — about 70 bytes in the table plus the key's heap
//! allocation (measured by the benchmark; target ≤ 150 B/key).
//!
//! Deletes: each (partition, stream) counts snapshot *generations*. A record of a new snapshot
//! id starts a generation; every key seen in it is stamped with it. When that snapshot's
//! end marker arrives and the distinct keys stamped equal the marker's row count, the snapshot
//! is complete on this partition and keys of the stream not stamped are absent from it. A
//! detector restarted mid-snapshot stamps fewer keys than the marker says: that snapshot is then
//! treated as incomplete and deletes nothing — the safe side.

use std::collections::HashMap;

use snapfeed_runtime::records::DetectorState;
use xxhash_rust::xxh3::Xxh3Builder;

use crate::content_hash::{hash_hex, parse_hash_hex};

/// What the detector remembers about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// Content hash of the last version (little-endian bytes of the u128).
    hash: [u8; 16],
    /// Last emitted version.
    pub version: i64,
    /// When first seen (ms).
    pub first_seen_at: i64,
    /// When last changed (ms).
    pub last_changed_at: i64,
    /// Interned stream id.
    stream: u32,
    /// Last snapshot generation of its stream that contained it.
    seen_generation: u32,
    /// Emitted as DELETE (kept so a returning key continues its versions).
    pub deleted: bool,
}

impl KeyState {
    /// The content hash.
    pub fn hash(&self) -> u128 {
        u128::from_le_bytes(self.hash)
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

/// One partition's state.
#[derive(Debug, Default)]
pub struct PartitionState {
    keys: HashMap<Box<str>, KeyState, Xxh3Builder>,
    progress: HashMap<u32, SnapshotProgress>,
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

impl PartitionState {
    /// Number of keys (deleted ones included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The state of a key.
    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.keys.get(key)
    }

    /// Loads one entry read from the `state` topic (`None` value: tombstone).
    pub fn restore_entry(
        &mut self,
        key: &str,
        entry: Option<&DetectorState>,
        streams: &mut Streams,
    ) {
        match entry {
            None => {
                self.keys.remove(key);
            }
            Some(entry) => {
                let Some(hash) = parse_hash_hex(&entry.content_hash) else {
                    return;
                };
                self.keys.insert(
                    key.into(),
                    KeyState {
                        hash: hash.to_le_bytes(),
                        version: entry.version,
                        first_seen_at: entry.first_seen_at,
                        last_changed_at: entry.last_changed_at,
                        stream: streams.id(&entry.stream),
                        seen_generation: 0,
                        deleted: entry.deleted,
                    },
                );
            }
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
        let progress = self.progress.entry(stream).or_default();
        if progress.snapshot_id != snapshot_id {
            progress.snapshot_id = snapshot_id.to_string();
            progress.generation = progress.generation.wrapping_add(1).max(1);
            progress.distinct_seen = 0;
        }
        let generation = progress.generation;
        let (decision, fresh) = match self.keys.get_mut(key) {
            Some(state) => {
                let fresh = state.seen_generation != generation || state.stream != stream;
                state.seen_generation = generation;
                state.stream = stream;
                let decision = if state.deleted {
                    let previous = state.hash();
                    state.deleted = false;
                    state.hash = hash.to_le_bytes();
                    state.version += 1;
                    state.last_changed_at = at;
                    Decision::Create {
                        version: state.version,
                        previous: Some(previous),
                    }
                } else if state.hash() == hash {
                    Decision::Unchanged
                } else {
                    let previous = state.hash();
                    state.hash = hash.to_le_bytes();
                    state.version += 1;
                    state.last_changed_at = at;
                    Decision::Update {
                        version: state.version,
                        previous,
                    }
                };
                (decision, fresh)
            }
            None => {
                self.keys.insert(
                    key.into(),
                    KeyState {
                        hash: hash.to_le_bytes(),
                        version: 1,
                        first_seen_at: at,
                        last_changed_at: at,
                        stream,
                        seen_generation: generation,
                        deleted: false,
                    },
                );
                (
                    Decision::Create {
                        version: 1,
                        previous: None,
                    },
                    true,
                )
            }
        };
        if fresh {
            if let Some(progress) = self.progress.get_mut(&stream) {
                progress.distinct_seen += 1;
            }
        }
        decision
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
        let progress = self.progress.get(&stream).cloned().unwrap_or_default();
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
        let live: Vec<(&Box<str>, &KeyState)> = self
            .keys
            .iter()
            .filter(|(_, state)| state.stream == stream && !state.deleted)
            .collect();
        let absent: Vec<String> = live
            .iter()
            .filter(|(_, state)| state.seen_generation != generation)
            .map(|(key, _)| key.to_string())
            .collect();
        if absent.is_empty() {
            return DeleteVerdict::Delete(Vec::new());
        }
        if absent.len() as f64 > max_share * live.len() as f64 {
            return DeleteVerdict::GuardTripped {
                would_delete: absent.len(),
                of: live.len(),
            };
        }
        let mut absent = absent;
        absent.sort();
        DeleteVerdict::Delete(absent)
    }

    /// Marks `key` deleted: version + 1. Returns the new state.
    pub fn delete(&mut self, key: &str, at: i64) -> Option<KeyState> {
        let state = self.keys.get_mut(key)?;
        state.deleted = true;
        state.version += 1;
        state.last_changed_at = at;
        Some(*state)
    }

    /// The `state` topic value for `key`'s current state.
    pub fn to_record(
        &self,
        key: &str,
        streams: &Streams,
        snapshot_id: &str,
    ) -> Option<DetectorState> {
        let state = self.keys.get(key)?;
        Some(DetectorState {
            content_hash: hash_hex(state.hash()),
            version: state.version,
            stream: streams.name(state.stream).to_string(),
            first_seen_at: state.first_seen_at,
            last_changed_at: state.last_changed_at,
            last_snapshot_id: snapshot_id.to_string(),
            deleted: state.deleted,
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
        assert_eq!(restored.get("k").map(KeyState::hash), Some(0xdead_beef));
        assert_eq!(
            restored.observe("k", 0xdead_beef, a, "s2", 6),
            Decision::Unchanged
        );
        restored.restore_entry("k", None, &mut streams);
        assert!(restored.is_empty());
    }
}
