//! Safe repartitioning, the detector's half: state is only used with the partition count it
//! was written for.
//!
//! A key lives on partition `murmur2(key) % N` of `snapshots`, `state` and `changes`. When the
//! topics get more partitions, most keys move: their next records arrive on a partition whose
//! state does not know them, so they would be re-created at version 1 (reusing Idempotency-Keys
//! the API has already seen), and their stale entries on the old partition would drive deletes.
//! So a restore checks every assigned partition before any of its records is decided, and a
//! mismatch stops the detector with an error naming `change-detector repartition`:
//!
//! - the partition's layout entry ([`STATE_LAYOUT_KEY`]) records another count;
//! - one of its keys belongs to another partition under today's count (state written before
//!   layout entries existed, or by a producer with another partitioner);
//! - a partition at or past the count the detector started with was assigned (partitions were
//!   added while it ran);
//! - an assigned partition is empty and has no layout entry, while another partition of
//!   `state` holds evidence of another count (a partition added to a running pipeline) — the
//!   one case where partitions outside the assignment are read ([`Partitions::restore`]).
//!
//! A partition restored without a layout entry gets one in the first batch that consumes from
//! it, so state knows its count from then on.
//!
//! [`Partitions::restore`]: super::restore::Partitions::restore

use std::collections::HashSet;

use snapfeed_runtime::partition::partition_for_key;
pub use snapfeed_runtime::records::STATE_LAYOUT_KEY;

/// What to run (and read) when the check fails.
const REMEDY: &str = "stop every change-detector instance and run `change-detector --config <file> repartition` (README § Changing the partition count)";

/// What a restore saw of one partition's layout.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayoutSeen {
    /// The count its layout entry records (the last one read).
    pub recorded: Option<i32>,
    /// Record entries read (tombstones and control entries not counted).
    pub entries: u64,
    /// Keys whose last entry is live and belongs to another partition under the current count
    /// (a key moved by `repartition` is tombstoned here: no longer counted). Empty unless
    /// something is wrong, so it costs nothing.
    pub misplaced: HashSet<String>,
}

impl LayoutSeen {
    /// Notes one record entry of `key` read on `partition`.
    pub fn entry(&mut self, key: &str, partition: i32, partitions: i32) {
        self.entries += 1;
        if partition_for_key(key.as_bytes(), partitions) != partition {
            self.misplaced.insert(key.to_string());
        }
    }

    /// Notes a tombstone of `key`.
    pub fn tombstone(&mut self, key: &str) {
        if !self.misplaced.is_empty() {
            self.misplaced.remove(key);
        }
    }

    /// True when the partition says anything about its layout (an entry or a record).
    pub fn is_informative(&self) -> bool {
        self.recorded.is_some() || self.entries > 0
    }

    /// Checks the partition against `partitions`: `Ok(true)` when its layout entry is there,
    /// `Ok(false)` when it is missing (to be written).
    pub fn check(&self, partition: i32, partitions: i32) -> Result<bool, LayoutMismatch> {
        let mismatch = |found| LayoutMismatch {
            partition,
            partitions,
            found,
        };
        match self.recorded {
            Some(count) if count != partitions => Err(mismatch(Found::Recorded(count))),
            _ if !self.misplaced.is_empty() => Err(mismatch(Found::Misplaced {
                keys: self.misplaced.len() as u64,
                of: self.entries,
            })),
            recorded => Ok(recorded.is_some()),
        }
    }
}

/// State written for another partition count than the topics have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{found_text}; {REMEDY}", found_text = self.describe())]
pub struct LayoutMismatch {
    /// The partition that shows it.
    pub partition: i32,
    /// The partition count of `snapshots`, `state` and `changes` now.
    pub partitions: i32,
    /// What shows it.
    pub found: Found,
}

/// The evidence of a [`LayoutMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The partition's layout entry records this count.
    Recorded(i32),
    /// This many of its keys belong to other partitions.
    Misplaced {
        /// Misplaced keys.
        keys: u64,
        /// Record entries read.
        of: u64,
    },
    /// The partition was assigned, but the topics had this many partitions at start.
    Grown(i32),
}

impl LayoutMismatch {
    fn describe(&self) -> String {
        let (partition, partitions) = (self.partition, self.partitions);
        match self.found {
            Found::Recorded(count) => format!(
                "partition {partition} of the state topic was written for {count} partitions, but snapshots, state and changes have {partitions}: keys would be looked up on the wrong partition and re-created at version 1"
            ),
            Found::Misplaced { keys, of } => format!(
                "partition {partition} of the state topic holds {keys} keys (of {of} entries read) that belong to other partitions under {partitions} partitions: it was written for another partition count (or by a producer with another partitioner)"
            ),
            Found::Grown(count) => format!(
                "partition {partition} was assigned, but the topics had {count} partitions when this detector started: partitions were added while it ran, and the keys that moved have no state on their new partition"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(keys: &[&str], partition: i32, partitions: i32) -> LayoutSeen {
        let mut seen = LayoutSeen::default();
        for key in keys {
            seen.entry(key, partition, partitions);
        }
        seen
    }

    fn keys_of(partition: i32, partitions: i32, count: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("K{i}"))
            .filter(|k| partition_for_key(k.as_bytes(), partitions) == partition)
            .take(count)
            .collect()
    }

    #[test]
    fn state_written_for_the_current_count_passes() {
        let keys = keys_of(1, 4, 50);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut layout = seen(&keys, 1, 4);
        assert_eq!(layout.check(1, 4), Ok(false), "no layout entry yet");
        layout.recorded = Some(4);
        assert_eq!(layout.check(1, 4), Ok(true));
        assert_eq!(LayoutSeen::default().check(3, 4), Ok(false));
    }

    #[test]
    fn a_recorded_count_that_differs_names_it_and_the_command() {
        let layout = LayoutSeen {
            recorded: Some(4),
            ..LayoutSeen::default()
        };
        let error = layout.check(2, 8).unwrap_err();
        assert_eq!(error.found, Found::Recorded(4));
        let text = error.to_string();
        assert!(text.contains("partition 2"), "{text}");
        assert!(text.contains("written for 4 partitions"), "{text}");
        assert!(text.contains("have 8"), "{text}");
        assert!(
            text.contains("change-detector --config <file> repartition"),
            "{text}"
        );
    }

    #[test]
    fn keys_placed_for_another_count_are_found_without_a_layout_entry() {
        // Partition 1 of 4 as it stands after the topics grew to 8: about half its keys
        // belong to partition 5 now.
        let keys = keys_of(1, 4, 100);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let layout = seen(&keys, 1, 8);
        let error = layout.check(1, 8).unwrap_err();
        let Found::Misplaced {
            keys: misplaced,
            of,
        } = error.found
        else {
            panic!("{error}");
        };
        assert_eq!(of, 100);
        assert!((30..=70).contains(&misplaced), "{misplaced} misplaced");
        assert!(error.to_string().contains("repartition"));
    }

    #[test]
    fn a_key_tombstoned_on_its_old_partition_is_no_longer_misplaced() {
        // What `repartition` leaves on an old partition: each moved key's entry, then its
        // tombstone (before compaction removes both).
        let keys = keys_of(1, 4, 100);
        let mut layout = LayoutSeen::default();
        for key in &keys {
            layout.entry(key, 1, 8);
        }
        assert!(layout.check(1, 8).is_err());
        for key in &keys {
            if partition_for_key(key.as_bytes(), 8) != 1 {
                layout.tombstone(key);
            }
        }
        layout.recorded = Some(8);
        assert_eq!(layout.check(1, 8), Ok(true));
    }
}
