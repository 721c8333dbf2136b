//! Which offsets may be committed: per partition, the contiguous prefix of offsets whose
//! change is delivered or dead-lettered. With several lanes per partition a later offset can be
//! done before an earlier one; the committed offset only ever moves past offsets that are done,
//! so a crash re-delivers at most what was in flight — never skips a change.

use std::collections::{BTreeMap, BTreeSet};

/// Done offsets per partition and the committable prefix.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Lowest offset not yet done (the offset to commit), once known.
    next: Option<i64>,
    /// Offsets handed out and not yet done.
    in_flight: BTreeSet<i64>,
    /// Offsets done but above a gap.
    done_ahead: BTreeSet<i64>,
    /// The last `next` committed.
    committed: Option<i64>,
}

impl OffsetTracker {
    /// Registers a consumed offset as in flight.
    pub fn started(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        if p.next.is_none() {
            p.next = Some(offset);
        }
        p.in_flight.insert(offset);
    }

    /// Marks an offset done (delivered, dead-lettered or deliberately skipped).
    pub fn done(&mut self, partition: i32, offset: i64) {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return;
        };
        if !p.in_flight.remove(&offset) {
            return;
        }
        p.done_ahead.insert(offset);
        // Advance over every done offset with no in-flight offset below it.
        let lowest_in_flight = p.in_flight.first().copied();
        while let Some(&first) = p.done_ahead.first() {
            if lowest_in_flight.is_some_and(|low| low < first) {
                break;
            }
            p.done_ahead.remove(&first);
            p.next = Some(p.next.map_or(first + 1, |n| n.max(first + 1)));
        }
    }

    /// Offsets to commit now (partition → next offset), only where they moved since the last
    /// call; the caller commits them and calls [`OffsetTracker::committed`].
    pub fn committable(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(partition, p)| {
                let next = p.next?;
                // Not past anything in flight.
                let next = p.in_flight.first().map_or(next, |low| next.min(*low));
                (p.committed != Some(next)).then_some((*partition, next))
            })
            .collect()
    }

    /// Records a successful commit.
    pub fn committed(&mut self, offsets: &[(i32, i64)]) {
        for (partition, offset) in offsets {
            if let Some(p) = self.partitions.get_mut(partition) {
                p.committed = Some(*offset);
            }
        }
    }

    /// Forgets partitions (revoked).
    pub fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }

    /// Changes in flight over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Changes in flight on one partition.
    pub fn in_flight_on(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.in_flight.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_contiguous_prefix_is_committable() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.started(0, o);
        }
        assert_eq!(t.committable(), vec![(0, 10)]);
        t.committed(&[(0, 10)]);
        t.done(0, 12);
        t.done(0, 13);
        assert_eq!(t.committable(), vec![], "12 and 13 are done but 10 is not");
        t.done(0, 10);
        assert_eq!(t.committable(), vec![(0, 11)]);
        t.done(0, 11);
        assert_eq!(t.committable(), vec![(0, 14)]);
        t.committed(&[(0, 14)]);
        t.done(0, 14);
        assert_eq!(t.committable(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_forgettable() {
        let mut t = OffsetTracker::default();
        t.started(0, 0);
        t.started(1, 100);
        t.done(1, 100);
        let mut c = t.committable();
        c.sort();
        assert_eq!(c, vec![(0, 0), (1, 101)]);
        t.forget(&[1]);
        assert_eq!(t.committable(), vec![(0, 0)]);
    }

    #[test]
    fn a_done_offset_not_started_is_ignored() {
        let mut t = OffsetTracker::default();
        t.started(0, 5);
        t.done(0, 4);
        assert_eq!(t.in_flight_on(0), 1);
        assert_eq!(t.committable(), vec![(0, 5)]);
    }
}
