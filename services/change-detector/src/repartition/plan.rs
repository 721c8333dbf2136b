//! The re-keying plan, pure: from `state` as read, the writes that make it fit the new
//! partition count — moved keys copied to their partition, then tombstoned on the old one; the
//! newest snapshot per stream on every partition; a layout entry per partition. Entries of
//! passed-over (stale) snapshots stay where they are: facts about that partition's history.

use std::collections::{BTreeMap, HashMap};

use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::{
    now_millis, AvroRecord, DetectorState, StateLayout, StreamProgress, STALE_SNAPSHOT_KEY_PREFIX,
    STREAM_PROGRESS_KEY_PREFIX,
};

use super::{schemas_failed, unreadable, RepartitionError, RepartitionReport};
use crate::detect::layout::STATE_LAYOUT_KEY;

/// `state` as it stands: per partition, the offset and last value of each key (`None`:
/// tombstoned).
pub(super) type Found = BTreeMap<i32, HashMap<String, (i64, Option<Vec<u8>>)>>;

/// A live entry of a key, and where it is.
#[derive(Debug)]
struct Held<'a> {
    location: MessageLocation,
    value: &'a [u8],
}

/// One write of the plan.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) partition: i32,
    pub(super) key: String,
    /// `None`: a tombstone.
    pub(super) value: Option<Vec<u8>>,
}

/// The writes that make `found` fit `partitions`, and what they amount to.
pub(super) fn plan(
    found: &Found,
    schemas: &SchemaStore,
    topic: &str,
    partitions: i32,
) -> Result<(Vec<Write>, RepartitionReport), RepartitionError> {
    let at = |partition: i32, offset: i64| MessageLocation {
        topic: topic.to_string(),
        partition,
        offset,
    };
    let mut report = RepartitionReport {
        partitions,
        ..RepartitionReport::default()
    };
    // key → every partition holding a live entry for it.
    let mut holders: BTreeMap<&str, Vec<Held<'_>>> = BTreeMap::new();
    // stream → the newest snapshot applied on any partition.
    let mut newest: BTreeMap<String, StreamProgress> = BTreeMap::new();
    // (stream, partition) → the time of the newest snapshot recorded there.
    let mut recorded: HashMap<(String, i32), i64> = HashMap::new();
    for (&partition, entries) in found {
        for (key, (offset, value)) in entries {
            let Some(value) = value else { continue };
            let location = at(partition, *offset);
            if key == STATE_LAYOUT_KEY {
                let layout: StateLayout = schemas
                    .decode(value, StateLayout::SCHEMA, &location)
                    .map_err(unreadable)?;
                report.previous.insert(layout.partition_count);
            } else if let Some(stream) = key.strip_prefix(STREAM_PROGRESS_KEY_PREFIX) {
                let progress: StreamProgress = schemas
                    .decode(value, StreamProgress::SCHEMA, &location)
                    .map_err(unreadable)?;
                recorded.insert((stream.to_string(), partition), progress.snapshot_time);
                let slot = newest
                    .entry(stream.to_string())
                    .or_insert_with(|| progress.clone());
                if progress.snapshot_time > slot.snapshot_time {
                    *slot = progress;
                }
            } else if key.starts_with(STALE_SNAPSHOT_KEY_PREFIX) {
                continue;
            } else {
                holders
                    .entry(key)
                    .or_default()
                    .push(Held { location, value });
            }
        }
    }

    let mut copies = Vec::new();
    let mut tombstones = Vec::new();
    for (key, held) in &holders {
        report.keys += 1;
        let target = partition_for_key(key.as_bytes(), partitions);
        let chosen = newest_entry(held, target, schemas)?;
        let at_target = held
            .iter()
            .find(|h| h.location.partition == target)
            .map(|h| h.value);
        if at_target != Some(chosen) {
            report.moved += 1;
            copies.push(Write {
                partition: target,
                key: key.to_string(),
                value: Some(chosen.to_vec()),
            });
        }
        for other in held.iter().filter(|h| h.location.partition != target) {
            tombstones.push(Write {
                partition: other.location.partition,
                key: key.to_string(),
                value: None,
            });
        }
    }
    let progress_schema = schemas
        .current(StreamProgress::SCHEMA)
        .map_err(schemas_failed)?;
    for (stream, progress) in &newest {
        report.streams += 1;
        let key = format!("{STREAM_PROGRESS_KEY_PREFIX}{stream}");
        // Its first offset is a place on the partition it came from: elsewhere unknown (an
        // older record read there counts as late until the next snapshot begins).
        let copy = StreamProgress {
            first_offset: -1,
            ..progress.clone()
        };
        let copy = progress_schema.encode(&copy).map_err(schemas_failed)?;
        for partition in 0..partitions {
            let current = recorded.get(&(stream.clone(), partition));
            if current != Some(&progress.snapshot_time) {
                copies.push(Write {
                    partition,
                    key: key.clone(),
                    value: Some(copy.clone()),
                });
            }
        }
    }
    let schema = schemas
        .current(StateLayout::SCHEMA)
        .map_err(schemas_failed)?;
    for partition in 0..partitions {
        let layout = StateLayout {
            partition_count: partitions,
            partition,
            written_at: now_millis(),
            written_by: format!("{} repartition", crate::SERVICE),
        };
        copies.push(Write {
            partition,
            key: STATE_LAYOUT_KEY.to_string(),
            value: Some(schema.encode(&layout).map_err(schemas_failed)?),
        });
        report.layouts += 1;
    }
    report.tombstones = tombstones.len() as u64;
    copies.extend(tombstones);
    Ok((copies, report))
}

/// Of a key's entries on several partitions (a repeated run after a crash, or state written
/// under two counts), the one with the highest version; on a tie, the one on `target`.
fn newest_entry<'a>(
    held: &[Held<'a>],
    target: i32,
    schemas: &SchemaStore,
) -> Result<&'a [u8], RepartitionError> {
    if let [only] = held {
        return Ok(only.value);
    }
    let mut best: Option<(i64, bool, &'a [u8])> = None;
    for one in held {
        let entry: DetectorState = schemas
            .decode(one.value, DetectorState::SCHEMA, &one.location)
            .map_err(unreadable)?;
        let rank = (entry.version, one.location.partition == target, one.value);
        if best.is_none_or(|b| (rank.0, rank.1) > (b.0, b.1)) {
            best = Some(rank);
        }
    }
    Ok(best.map(|(_, _, value)| value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn schemas() -> SchemaStore {
        SchemaStore::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")).unwrap()
    }

    fn entry(schemas: &SchemaStore, version: i64) -> Vec<u8> {
        let state = DetectorState {
            content_hash: "0".repeat(32),
            version,
            stream: "default".into(),
            first_seen_at: 0,
            last_changed_at: 0,
            last_snapshot_id: "s".into(),
            deleted: false,
            tracked_hash: None,
        };
        schemas
            .current(DetectorState::SCHEMA)
            .unwrap()
            .encode(&state)
            .unwrap()
    }

    fn progress(schemas: &SchemaStore, time: i64, first_offset: i64) -> Vec<u8> {
        let progress = StreamProgress {
            stream: "default".into(),
            snapshot_id: format!("s{time}"),
            snapshot_time: time,
            file_name: "f.csv".into(),
            first_offset,
        };
        schemas
            .current(StreamProgress::SCHEMA)
            .unwrap()
            .encode(&progress)
            .unwrap()
    }

    /// A key that sits on partition `from` under 4 partitions and on `to` under 8.
    fn key_moving(from: i32, to: i32) -> String {
        (0..)
            .map(|i| format!("K{i}"))
            .find(|k| {
                partition_for_key(k.as_bytes(), 4) == from
                    && partition_for_key(k.as_bytes(), 8) == to
            })
            .unwrap()
    }

    #[test]
    fn moved_keys_are_copied_then_tombstoned_and_the_newest_progress_goes_everywhere() {
        let schemas = schemas();
        let moving = key_moving(1, 5);
        let staying = key_moving(2, 2);
        // A key on two partitions (a repeated run after a crash): the higher version wins.
        let twice = key_moving(3, 7);
        let mut found: Found = (0..8).map(|p| (p, HashMap::new())).collect();
        let mut put = |partition: i32, key: &str, value: Vec<u8>| {
            found
                .get_mut(&partition)
                .unwrap()
                .insert(key.to_string(), (0, Some(value)));
        };
        put(1, &moving, entry(&schemas, 3));
        put(2, &staying, entry(&schemas, 1));
        put(3, &twice, entry(&schemas, 4));
        put(7, &twice, entry(&schemas, 2));
        let stream_key = format!("{STREAM_PROGRESS_KEY_PREFIX}default");
        put(0, &stream_key, progress(&schemas, 100, 0));
        put(1, &stream_key, progress(&schemas, 200, 40));
        let stale_key = format!("{STALE_SNAPSHOT_KEY_PREFIX}s50");
        put(2, &stale_key, progress(&schemas, 50, 9));

        let (writes, report) = plan(&found, &schemas, "p.state", 8).unwrap();
        assert_eq!((report.keys, report.moved, report.tombstones), (3, 2, 2));
        assert_eq!((report.streams, report.layouts), (1, 8));
        let value_at = |partition: i32, key: &str| {
            writes
                .iter()
                .find(|w| w.partition == partition && w.key == key)
                .map(|w| w.value.clone())
        };
        assert_eq!(value_at(5, &moving), Some(Some(entry(&schemas, 3))));
        assert_eq!(value_at(1, &moving), Some(None), "tombstoned where it was");
        assert_eq!(
            value_at(2, &staying),
            None,
            "a key in place is not rewritten"
        );
        assert_eq!(value_at(7, &twice), Some(Some(entry(&schemas, 4))));
        assert_eq!(value_at(3, &twice), Some(None));
        assert_eq!(value_at(1, &stream_key), None, "already the newest");
        for partition in (0..8).filter(|p| *p != 1) {
            assert_eq!(
                value_at(partition, &stream_key),
                Some(Some(progress(&schemas, 200, -1))),
                "its first offset belongs to partition 1"
            );
        }
        assert!(
            writes.iter().all(|w| w.key != stale_key),
            "a stale snapshot's entry stays where it is"
        );
        // Every tombstone comes after every copy: a crash in between leaves no key without
        // an entry.
        let first_tombstone = writes.iter().position(|w| w.value.is_none()).unwrap();
        assert!(writes[first_tombstone..].iter().all(|w| w.value.is_none()));
    }
}
