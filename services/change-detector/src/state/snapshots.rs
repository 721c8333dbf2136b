//! Snapshot streams, generations and delete verdicts: which keys a complete snapshot leaves
//! out. The guarantee kept here is the safe side of deletes — a snapshot not seen whole on a
//! partition deletes nothing, and one snapshot stream never deletes another's keys.
//!
//! Each (partition, stream) counts snapshot *generations*. A record of a new snapshot id starts
//! a generation; every key seen in it is stamped with it. When that snapshot's end marker
//! arrives and the distinct keys stamped equal the marker's row count, the snapshot is complete
//! on this partition and keys of the stream not stamped are absent from it. A detector
//! restarted mid-snapshot stamps fewer keys than the marker says: that snapshot is then treated
//! as incomplete and deletes nothing — the safe side.

use super::PartitionState;

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

/// The snapshot a stream is in on one partition, and how many distinct keys it has shown.
#[derive(Debug, Default, Clone)]
pub(super) struct SnapshotProgress {
    snapshot_id: String,
    generation: u32,
    distinct_seen: u64,
    /// The newest snapshot applied (restored from `state`).
    newest: Option<Newest>,
    /// The late snapshot being passed over here, and its data records passed over so far.
    passing_over: Option<(String, u64)>,
}

/// The newest snapshot applied for a stream on one partition.
#[derive(Debug, Clone)]
struct Newest {
    time: i64,
    snapshot_id: String,
    /// Offset of the first record that applied it; -1 when unknown.
    first_offset: i64,
}

/// Where a snapshot's time stands against the newest one applied for its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOrder {
    /// The newest applied (or as new): decided as usual.
    Current,
    /// Newer than any applied: decided as usual, and it becomes the newest (to be recorded).
    Newer,
    /// Older than the newest applied, and read *before* the newest began on this partition
    /// (offset below its first record): decided when it was read the first time — read again
    /// after an at_least_once crash or an offset reset. It changes and deletes nothing, and is
    /// not late.
    Replayed,
    /// Older than the newest applied and read after it (a file re-sent from a backup, files
    /// arriving out of order): it changes and deletes nothing.
    Stale {
        /// The newest applied snapshot's time.
        newest_time: i64,
        /// And its id.
        newest_id: String,
    },
}

impl PartitionState {
    fn progress_mut(&mut self, stream: u32) -> &mut SnapshotProgress {
        let index = stream as usize;
        if self.progress.len() <= index {
            self.progress
                .resize_with(index + 1, SnapshotProgress::default);
        }
        &mut self.progress[index]
    }

    /// Where a record at `offset` of a snapshot taken at `time` stands in `stream` on this
    /// partition; a newer snapshot becomes the newest, from this offset. The ordering guard: a
    /// snapshot older than the newest applied must not roll records back — it is stale when
    /// read after the newest began (late), replayed when read before it (already decided).
    pub fn order_snapshot(
        &mut self,
        stream: u32,
        snapshot_id: &str,
        time: i64,
        offset: i64,
    ) -> SnapshotOrder {
        let progress = self.progress_mut(stream);
        match &progress.newest {
            Some(newest) if time < newest.time && offset < newest.first_offset => {
                SnapshotOrder::Replayed
            }
            Some(newest) if time < newest.time => SnapshotOrder::Stale {
                newest_time: newest.time,
                newest_id: newest.snapshot_id.clone(),
            },
            Some(newest) if time == newest.time => SnapshotOrder::Current,
            _ => {
                progress.newest = Some(Newest {
                    time,
                    snapshot_id: snapshot_id.to_string(),
                    first_offset: offset,
                });
                SnapshotOrder::Newer
            }
        }
    }

    /// The newest snapshot applied in `stream` from its `state` entry (the later of two wins);
    /// `first_offset` -1 when the entry does not know it.
    pub fn restore_newest(&mut self, stream: u32, snapshot_id: &str, time: i64, first_offset: i64) {
        let progress = self.progress_mut(stream);
        if progress.newest.as_ref().is_none_or(|n| time >= n.time) {
            progress.newest = Some(Newest {
                time,
                snapshot_id: snapshot_id.to_string(),
                first_offset,
            });
        }
    }

    /// Counts one data record of the late snapshot `snapshot_id` passed over.
    pub fn count_passed_over(&mut self, stream: u32, snapshot_id: &str) {
        let progress = self.progress_mut(stream);
        if let Some((id, records)) = &mut progress.passing_over {
            if id == snapshot_id {
                *records += 1;
                return;
            }
        }
        progress.passing_over = Some((snapshot_id.to_string(), 1));
    }

    /// Data records of the late snapshot `snapshot_id` passed over here, as far as this
    /// detector read it (a restart in the middle counts only the rest).
    pub fn passed_over(&self, stream: u32, snapshot_id: &str) -> u64 {
        self.progress
            .get(stream as usize)
            .and_then(|p| p.passing_over.as_ref())
            .filter(|(id, _)| id == snapshot_id)
            .map_or(0, |(_, records)| *records)
    }

    /// The generation of `snapshot_id` in `stream`: a new snapshot id starts the next one.
    pub(super) fn generation(&mut self, stream: u32, snapshot_id: &str) -> u32 {
        let progress = self.progress_mut(stream);
        if progress.snapshot_id != snapshot_id {
            progress.snapshot_id = snapshot_id.to_string();
            progress.generation = progress.generation.wrapping_add(1).max(1);
            progress.distinct_seen = 0;
        }
        progress.generation
    }

    /// Stamps the slot at `index` as seen in `generation` of `stream`, counting it once.
    pub(super) fn stamp(&mut self, index: u32, stream: u32, generation: u32) {
        let slot = self.table.slot_mut(index);
        let fresh = slot.seen_generation != generation || slot.stream != stream;
        slot.seen_generation = generation;
        slot.stream = stream;
        if fresh {
            if let Some(progress) = self.progress.get_mut(stream as usize) {
                progress.distinct_seen += 1;
            }
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
            .table
            .slots()
            .filter(|slot| slot.stream == stream && !slot.deleted())
        {
            live += 1;
            if slot.seen_generation != generation {
                absent.push(slot);
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
            .map(|slot| self.table.key_of(slot).to_string())
            .collect();
        absent.sort();
        DeleteVerdict::Delete(absent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale(newest_time: i64, newest_id: &str) -> SnapshotOrder {
        SnapshotOrder::Stale {
            newest_time,
            newest_id: newest_id.into(),
        }
    }

    #[test]
    fn an_older_snapshot_is_stale_an_equal_or_newer_one_is_not() {
        let mut state = PartitionState::default();
        assert_eq!(state.order_snapshot(0, "s2", 200, 10), SnapshotOrder::Newer);
        assert_eq!(
            state.order_snapshot(0, "s2", 200, 11),
            SnapshotOrder::Current
        );
        assert_eq!(state.order_snapshot(0, "s1", 100, 12), stale(200, "s2"));
        // Another file taken at the same time is not older.
        assert_eq!(
            state.order_snapshot(0, "s2b", 200, 13),
            SnapshotOrder::Current
        );
        assert_eq!(state.order_snapshot(0, "s3", 300, 14), SnapshotOrder::Newer);
        assert_eq!(state.order_snapshot(0, "s2", 200, 15), stale(300, "s3"));
        // Streams are ordered apart: another lab's older export is its own business.
        assert_eq!(state.order_snapshot(1, "b1", 100, 16), SnapshotOrder::Newer);
    }

    #[test]
    fn an_older_record_read_before_the_newest_began_is_replayed_not_late() {
        let mut state = PartitionState::default();
        assert_eq!(
            state.order_snapshot(0, "s3", 300, 100),
            SnapshotOrder::Newer
        );
        // Offsets below 100 were read before s3 began here: an offset reset, or the tail of
        // s2 re-read after an at_least_once crash that had already recorded s3.
        assert_eq!(
            state.order_snapshot(0, "s2", 200, 99),
            SnapshotOrder::Replayed
        );
        assert_eq!(
            state.order_snapshot(0, "s1", 100, 0),
            SnapshotOrder::Replayed
        );
        // The same old snapshot written after s3 began is late.
        assert_eq!(state.order_snapshot(0, "s2", 200, 100), stale(300, "s3"));
        assert_eq!(state.order_snapshot(0, "s2", 200, 150), stale(300, "s3"));
        // Replayed records of the newest itself are decided as usual (unchanged, by content).
        assert_eq!(
            state.order_snapshot(0, "s3", 300, 50),
            SnapshotOrder::Current
        );
    }

    #[test]
    fn records_passed_over_are_counted_per_late_snapshot() {
        let mut state = PartitionState::default();
        for _ in 0..3 {
            state.count_passed_over(0, "s1");
        }
        state.count_passed_over(1, "b1");
        assert_eq!(state.passed_over(0, "s1"), 3);
        assert_eq!(state.passed_over(1, "b1"), 1);
        assert_eq!(state.passed_over(0, "s0"), 0, "another snapshot: none");
        state.count_passed_over(0, "s0");
        assert_eq!(
            state.passed_over(0, "s0"),
            1,
            "the next late snapshot starts over"
        );
        assert_eq!(state.passed_over(0, "s1"), 0);
    }

    #[test]
    fn the_newest_comes_back_from_state_entries() {
        let mut state = PartitionState::default();
        state.restore_newest(0, "s3", 300, 40);
        state.restore_newest(0, "s2", 200, 20);
        assert_eq!(state.order_snapshot(0, "s2", 250, 50), stale(300, "s3"));
        assert_eq!(
            state.order_snapshot(0, "s2", 250, 39),
            SnapshotOrder::Replayed
        );
        assert_eq!(state.order_snapshot(0, "s4", 400, 60), SnapshotOrder::Newer);
    }

    #[test]
    fn an_entry_that_does_not_know_its_first_offset_makes_every_older_record_late() {
        let mut state = PartitionState::default();
        state.restore_newest(0, "s3", 300, -1);
        assert_eq!(state.order_snapshot(0, "s2", 200, 0), stale(300, "s3"));
    }
}
